"""`trustgen train ...`: run, replay, spot-check and show verifiable training jobs."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from trustgen.cli_shared import check_transport
from trustgen.errors import UsageError
from trustgen.training.adversary import MODES as TRAIN_MODES

train_app = typer.Typer(no_args_is_help=True, help="Verifiable training jobs: run, replay, check-step, show.")
out_console = Console()


def _strict(v: Any) -> Any:
    """`v` with every infinite or NaN float as None: JSON has no such numbers (Python would write
    `Infinity`, which strict parsers refuse), and a diverged loss or an unbounded distance has them."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x) for x in v]
    return v


def _emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(_strict(obj), sort_keys=True, allow_nan=False) + "\n")


def _load_spec(job: str | None, default: bool) -> Any:
    from trustgen.training import spec as specs

    if default == (job is not None):
        raise UsageError("give a job file or --default (not both)")
    return specs.load(job if job is not None else specs.DEFAULT_JOB)


def _check_out(out: pathlib.Path) -> None:
    """Refuse an --out that cannot become a run directory, before any work (run_job creates it)."""
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory: choose a new directory for the run")
        parent = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    except OSError as e:
        raise UsageError(f"--out {out} cannot be used ({e.strerror or e})") from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {parent} is not a directory this user can write in")


@train_app.command("run")
def run_cmd(
    job: str | None = typer.Argument(None, help="Job TOML file, or a shipped job's name (diloco, spsa, ...)."),
    out: pathlib.Path = typer.Option(..., "--out", help="New run directory."),
    default: bool = typer.Option(False, "--default", help="Run the shipped default job."),
    trainers: int = typer.Option(4, "--trainers", help="Trainer processes (keys generated into the run)."),
    adversary: str = typer.Option("", "--adversary", help=f"Make one trainer cheat: {', '.join(TRAIN_MODES)}."),
    adversary_trainer: int = typer.Option(0, "--adversary-trainer", help="Which trainer cheats."),
    keep_states: bool = typer.Option(False, "--keep-states", help="Keep every inner state (local SGD) for check-step."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run a job with its trainers as separate processes; the run directory holds everything replay needs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trustgen.training.run import run_job
    from trustgen.training.spec import MAX_TRAINERS

    if not 1 <= trainers <= MAX_TRAINERS:
        raise UsageError(f"--trainers must be between 1 and {MAX_TRAINERS}")
    spec = _load_spec(job, default)
    _check_out(out)
    with Progress(
        TextColumn("[bold]train[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=as_json,
        transient=True,
    ) as bar:
        task = bar.add_task("train", total=None, loss="")

        def progress(done: int, total: int, ev: dict[str, Any]) -> None:
            loss = f"held-out {ev['heldout_loss']:.4f} @ {ev['step']}" if ev else ""
            bar.update(task, completed=done, total=total, loss=loss)

        summary = run_job(spec, out, trainers, adversary, adversary_trainer, keep_states, progress)
    report = {
        k: summary[k]
        for k in (
            "job_id",
            "name",
            "algorithm",
            "final_checkpoint_digest",
            "final_model_digest",
            "final_step",
            "base_heldout_loss",
            "final_heldout_loss",
            "rejected",
            "checks",
            "updates",
            "wall_s",
        )
    }
    report["out"] = str(out)
    _emit(report, as_json)
    if not as_json:
        out_console.print(f"job {report['job_id'][:16]}… ({report['algorithm']}, {len(summary['trainers'])} trainers)")
        out_console.print(
            f"held-out loss {report['base_heldout_loss']:.4f} -> {report['final_heldout_loss']:.4f} "
            f"(best at step {report['final_step']}); final model {out / 'final'} {report['final_model_digest']}"
        )
        for r in report["rejected"]:
            out_console.print(
                f"[red]rejected[/red] trainer {r['index']} at step {r['step']}: {r['code']} ({r['reason']})"
            )


@train_app.command("replay")
def replay_cmd(
    run_dir: pathlib.Path = typer.Argument(..., help="Run directory, or a node's data directory (with --job)."),
    job: str = typer.Option("", "--job", help="With a node directory: the job id to replay from its ledger."),
    threads: int = typer.Option(0, "--threads", help="Replay with this many threads (0: the job's)."),
    no_losses: bool = typer.Option(False, "--no-losses", help="Compare digests only, not held-out losses."),
    mode: str = typer.Option("full", "--mode", help="Local SGD: full (re-execute every inner step) or deltas."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recompute every checkpoint from the signed job and updates. Exit 0 match, 1 mismatch, 2 bad input."""
    from trustgen.training.ledger_job import is_node_dir, parse_job_id, replay_node
    from trustgen.training.replay import replay

    if mode not in ("full", "deltas"):
        raise UsageError("--mode must be full or deltas")
    if is_node_dir(run_dir):
        if not job:
            raise UsageError(f"{run_dir} is a node directory: name the job to replay with --job JOB_ID")
        rep = replay_node(run_dir, parse_job_id(job), threads or None, not no_losses, mode)
    elif job:
        raise UsageError(f"--job needs a node directory (one holding ledger.db); {run_dir} is not one")
    else:
        rep = replay(run_dir, threads or None, not no_losses, mode)
    _emit(rep.to_dict(), as_json)
    if not as_json:
        if rep.ok:
            out_console.print(f"[green]match[/green]: {rep.checkpoints} checkpoints, final {rep.final_digest[:16]}…")
        else:
            out_console.print(f"[red]mismatch[/red]: {rep.first_bad}")
        if not rep.same_profile:
            out_console.print("replayed under another execution profile: compared within tolerance")
        if rep.from_state:
            out_console.print(
                f"rounds {rep.from_state} taken from their finalised state blobs (deltas not on this node)"
            )
    raise typer.Exit(0 if rep.ok else 1)


@train_app.command("check-step")
def check_step_cmd(
    run_dir: pathlib.Path = typer.Argument(..., help="Run directory."),
    step: int = typer.Option(..., "--step", help="SPSA step, or local-SGD round."),
    trainer: str = typer.Option(..., "--trainer", help="Trainer index or key prefix."),
    inner: int = typer.Option(0, "--inner", help="Local SGD: inner step (1-based; 0: the round's challenge)."),
    threads: int = typer.Option(0, "--threads"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-execute one trainer's step. Exit 0 accept, 1 reject, 2 bad input."""
    from trustgen.training.replay import check_step

    # An index is ASCII digits and a key prefix ASCII hex: anything else (say a superscript "²",
    # which str.isdigit accepts and int() refuses) names no trainer.
    if not trainer or not all(c in "0123456789abcdefABCDEF" for c in trainer):
        raise UsageError(f"--trainer {trainer!r} must be a trainer index or a hex key prefix")
    res = check_step(run_dir, step, trainer, inner or None, threads or None)
    _emit(res, as_json)
    if not as_json:
        verdict = "[green]accept[/green]" if res["accept"] else f"[red]reject[/red]: {res['reason']}"
        out_console.print(f"{verdict} (distance {res['distance']}, {res['method']}, {res['check_cpu_s']:.2f} CPU-s)")
    raise typer.Exit(0 if res["accept"] else 1)


@train_app.command("show")
def show_cmd(
    run_dir: pathlib.Path = typer.Argument(..., help="Run directory."),
    plot: pathlib.Path = typer.Option(None, "--plot", help="PNG to write (default RUN/loss.png)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The loss curve as a table and a PNG plot, with the checkpoints and rejections."""
    from trustgen.training.plot import loss_plot
    from trustgen.training.records import RunError, open_run

    run = open_run(run_dir)
    info = run.info()  # unsigned notes; broken ones read as none
    rows = [(c.body["step"], c.body["heldout_loss"], c.body["digest"].hex()) for c in run.checkpoints]
    if not rows:
        raise RunError(f"{run_dir} records no checkpoint yet: nothing to show")
    x = "round" if run.spec.algorithm["name"] == "diloco" else "step"
    png = plot or pathlib.Path(run_dir) / "loss.png"
    loss_plot({run.spec.section("job")["name"]: [(s, v) for s, v, _ in rows]}, png, f"job {run.spec.id.hex()[:16]}", x)
    obj = {
        "job_id": run.spec.id.hex(),
        "algorithm": run.spec.algorithm["name"],
        "trainers": len(run.spec.trainers),
        "checkpoints": [{"step": s, "heldout_loss": v, "digest": d} for s, v, d in rows],
        "updates": len(run.updates),
        "rejected": info.get("rejected", []),
        "final_step": info.get("final_step"),
        "plot": str(png),
    }
    _emit(obj, as_json)
    if not as_json:
        t = Table(title=f"{run.spec.section('job')['name']} ({obj['algorithm']}, {obj['trainers']} trainers)")
        for col in (x, "held-out loss", "checkpoint"):
            t.add_column(col)
        for s, v, d in rows:
            mark = " (final)" if s == obj["final_step"] else ""
            t.add_row(str(s), f"{v:.4f}{mark}", d[:16] + "…")
        out_console.print(t)
        out_console.print(f"plot: {png}")


# -- on the network (docs/training-network.md) -----------------------------------------------------


def _print_job(st: dict[str, Any]) -> None:
    t = Table(title=f"job {st['job_id'][:16]}… {st['name']}: {st['state']} {st.get('detail', '')}")
    for col in ("round", "delivered", "accepted", "rejected", "held-out loss", "checkpoint", "s"):
        t.add_column(col)
    for r in st["rounds_done"]:
        t.add_row(
            str(r["round"] + 1),
            str(len(r["delivered"])),
            str(len(r["accepted"])),
            ", ".join(x[:12] for x in r["rejected"]) or "-",
            f"{r['heldout_loss']:.4f}",
            r["digest"][:16] + "…",
            f"{r.get('wall_s', 0):.1f}",
        )
    out_console.print(t)
    if st.get("best"):
        b = st["best"]
        out_console.print(
            f"base held-out loss {st['base_heldout_loss'] or float('nan'):.4f}; best {b['heldout_loss']:.4f} after round "
            f"{b['round']} (checkpoint {b['digest'][:16]}…)"
        )
    for k, why in st.get("excluded", {}).items():
        out_console.print(f"[red]excluded trainer {k[:12]}…: {why}[/]")


@train_app.command("submit")
def submit_cmd(
    job: str | None = typer.Argument(None, help="Job TOML file (without [trainers]), or a shipped job's name."),
    gateway: str = typer.Option(..., "--gateway", help="HOST:PORT"),
    default: bool = typer.Option(False, "--default", help="Submit the shipped default job."),
    trainers: int = typer.Option(4, "--trainers", help="At most this many of the network's trainers."),
    verifiers: int = typer.Option(3, "--verifiers", help="Verifiers assigned to each round."),
    wait: bool = typer.Option(False, "--wait", help="Follow the job until it is final."),
    timeout: float = typer.Option(1800.0, "--timeout"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext gRPC (loopback, tests)."),
    tls_ca: str = typer.Option("", "--tls-ca", help="CA certificate for TLS."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Submit a training job to a gateway; the network's trainers run it and its verifiers vote."""
    import asyncio

    from trustgen.consensus.identity import Identity
    from trustgen.node.training_client import submit_job

    check_transport(insecure, tls_ca)
    spec = _load_spec(job, default)
    last = [-1]

    def progress(st: dict[str, Any]) -> None:
        if not as_json and len(st["rounds_done"]) != last[0]:
            last[0] = len(st["rounds_done"])
            out_console.print(f"[dim]round {last[0]}/{st['rounds_total']}[/]")

    st = asyncio.run(
        submit_job(
            gateway,
            spec,
            Identity.generate(),
            insecure,
            ca_file=tls_ca,
            trainers=trainers,
            verifiers=verifiers,
            wait=wait,
            timeout_s=timeout,
            on_status=progress,
        )
    )
    _emit(st, as_json)
    if not as_json:
        _print_job(st)
    if wait and st["state"] != "final":
        raise typer.Exit(1)


@train_app.command("status")
def status_cmd(
    job_id: str = typer.Argument(..., help="The job id (hex) `train submit` printed."),
    gateway: str = typer.Option(..., "--gateway", help="HOST:PORT"),
    network: str = typer.Option("trustgen-local"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext gRPC (loopback, tests)."),
    tls_ca: str = typer.Option("", "--tls-ca", help="CA certificate for TLS."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A network training job's progress: rounds, held-out loss, checkpoints, excluded trainers."""
    import asyncio

    from trustgen.node.training_client import job_status
    from trustgen.training.ledger_job import parse_job_id

    jid = parse_job_id(job_id, "JOB_ID")
    check_transport(insecure, tls_ca)
    st = asyncio.run(job_status(gateway, jid, network, insecure, tls_ca))
    _emit(st, as_json)
    if not as_json:
        _print_job(st)


@train_app.command("fetch")
def fetch_cmd(
    node_dir: pathlib.Path = typer.Argument(..., help="A node's directory (its ledger proves the checkpoint)."),
    job_id: str = typer.Option(..., "--job", help="The job id (hex)."),
    out: pathlib.Path = typer.Option(..., "--out", help="Where to write the checkpoint as a model directory."),
    source: list[str] = typer.Option([], "--from", help="HOST:PORT of a peer to fetch from (first)."),
    network: str = typer.Option("trustgen-local"),
    insecure: bool = typer.Option(False, "--insecure", help="Plaintext gRPC (loopback, tests)."),
    tls_ca: str = typer.Option("", "--tls-ca", help="CA certificate for TLS."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fetch a network job's latest finalised checkpoint, proven by the ledger's verifier votes."""
    import asyncio

    from trustgen.node.training_fetch import fetch_checkpoint
    from trustgen.training.ledger_job import parse_job_id

    jid = parse_job_id(job_id)
    check_transport(insecure, tls_ca)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out {out} is not empty")
    res = asyncio.run(fetch_checkpoint(node_dir, network, jid, out, source, insecure, tls_ca))
    _emit(res, as_json)
    if not as_json:
        out_console.print(
            f"checkpoint {res['digest'][:16]}… (round {res['round']}, held-out loss {res['heldout_loss']:.4f}) "
            f"proven by {res['rounds_proven']} finalised rounds, written to {res['out']} in {res['total_s']:.1f}s"
        )
