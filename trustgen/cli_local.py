"""Commands that run on this machine alone: `generate`, `keys`, `audit`, `verify`, `calibrate`."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import typer

from trustgen.cli_shared import emit, err, out, task_params
from trustgen.errors import TrustgenError, UsageError

generate_app = typer.Typer(no_args_is_help=True, help="One local generation, no network.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 node identities.")


@generate_app.command("text")
def generate_text(
    prompt: str | None = typer.Argument(None, help="The prompt (or --prompts FILE)."),
    prompts: pathlib.Path | None = typer.Option(None, "--prompts", help="A file of prompts, one a line."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="With --prompts: tasks decoding at once (default: all, at most 256)."
    ),
    model: str = typer.Option("tiny-text", help="Embedded name, directory[@sha256:HEX] or hub id."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    decoding: str = typer.Option("greedy", help="greedy | beam | sample"),
    num_beams: int = typer.Option(4, "--num-beams"),
    seed: int = typer.Option(0),
    temperature: float = typer.Option(1.0),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    chat: bool = typer.Option(False, "--chat", help="Apply the model's chat template to the prompt."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: int | None = typer.Option(None, help="CPU threads (recorded in the profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (a list with --prompts)."),
) -> None:
    """Generate text locally with controlled determinism: one prompt, or a file of them batched
    (each output identical to generating it alone)."""
    if (prompt is None) == (prompts is None):
        raise UsageError("give a prompt or --prompts FILE (not both)")
    if batch_size is not None and prompts is None:
        raise UsageError("--batch-size goes with --prompts FILE")
    options = dict(
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        num_beams=num_beams,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        chat=chat,
    )
    engine_opts = dict(device=device, dtype=dtype, threads=threads)
    # Parameters are checked before the engines (torch, transformers) load: a bad one is a quick error.
    single = task_params("text", prompt=prompt, **options) if prompts is None else None
    from trustgen.engines.generate import read_prompts, run_text, run_text_batch

    if single is not None:
        result = run_text(model, single, **engine_opts)
        if as_json:
            emit(result, True)
        else:
            out.print(result["text"], markup=False, highlight=False)
            err.print(
                f"[dim]{len(result['token_ids'])} tokens, {result['finish_reason']}; "
                f"output {result['output_digest'][:23]}…, model {result['model_digest'][:23]}…[/]"
            )
        return
    assert prompts is not None  # exactly one of prompt and prompts, checked above
    lines = read_prompts(prompts)
    labels = [f"{prompts}:{n}" for n, _ in lines]
    batch = []
    for label, (_, text) in zip(labels, lines):
        try:
            batch.append(task_params("text", prompt=text, **options))
        except UsageError as e:
            raise UsageError(f"{label}: {e}") from None
    results = run_text_batch(model, batch, batch_size, labels, **engine_opts)
    if as_json:
        sys.stdout.write(json.dumps(results, sort_keys=True) + "\n")
        return
    for r in results:  # one line per prompt: newlines inside a text are shown escaped
        out.print(r["text"].replace("\\", "\\\\").replace("\n", "\\n"), markup=False, highlight=False, soft_wrap=True)
    err.print(f"[dim]{len(results)} prompts, {sum(len(r['token_ids']) for r in results)} tokens[/]")


@generate_app.command("image")
def generate_image(
    prompt: str = typer.Argument(..., help="The prompt."),
    model: str = typer.Option("tiny-image", help="Embedded name, directory[@sha256:HEX] or hub id."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(20),
    guidance: float = typer.Option(3.0),
    height: int = typer.Option(32),
    width: int = typer.Option(32),
    scheduler: str = typer.Option("ddim", help="ddim | euler | euler_ancestral | dpmsolver | pndm | ddpm"),
    output: pathlib.Path | None = typer.Option(None, "-o", "--output", help="PNG file to write."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: int | None = typer.Option(None, help="CPU threads (recorded in the profile)."),
    trajectory: bool = typer.Option(
        False, "--trajectory", help="Record the denoising trajectory (NAME.traj.safetensors) and commit to it."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate an image locally with controlled determinism."""
    commit = None
    if trajectory:
        from trustgen.verifier.trajectory import commitment

        commit = commitment

    params = task_params(
        "image",
        prompt=prompt,
        seed=seed,
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        scheduler=scheduler,
    )
    from trustgen.engines.generate import run_image  # after the parameters are checked

    result = run_image(model, params, output, commit, device=device, dtype=dtype, threads=threads)
    if as_json:
        emit(result, True)
    else:
        out.print(
            f"wrote {result['image_path']} ({result['width']}x{result['height']}); "
            f"pixels {result['output_digest'][:23]}…",
            highlight=False,
        )


def _passphrase(env_var: str | None) -> bytes | None:
    import os

    if env_var is None:
        return None
    value = os.environ.get(env_var)
    if not value:
        raise TrustgenError(f"environment variable {env_var} is empty or unset")
    return value.encode()


@keys_app.command("new")
def keys_new(
    home: pathlib.Path = typer.Option(..., "--home", help="Node home directory."),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="Encrypt the key with the passphrase in this variable."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a new identity (key file mode 0600). Refuses to overwrite one."""
    from trustgen.consensus.identity import KEY_FILE, Identity

    if (home / KEY_FILE).exists():
        raise TrustgenError(f"{home / KEY_FILE} already exists; refusing to overwrite a key")
    ident = Identity.generate()
    path = ident.save(home, _passphrase(passphrase_env))
    info = {"node_id": ident.node_id, "key_file": str(path), "encrypted": passphrase_env is not None}
    emit(info, as_json) if as_json else out.print(f"node id {ident.node_id}\nkey file {path} (mode 0600)")


@keys_app.command("show")
def keys_show(
    home: pathlib.Path = typer.Option(..., "--home", help="Node home directory."),
    passphrase_env: str | None = typer.Option(None, "--passphrase-env"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the public identity of a node home (never the private key)."""
    from trustgen.consensus.identity import KEY_FILE, Identity

    ident = Identity.load(home, _passphrase(passphrase_env))
    info = {"node_id": ident.node_id, "key_file": str(home / KEY_FILE)}
    emit(info, as_json) if as_json else out.print(f"node id {ident.node_id}")


def audit(
    paths: list[pathlib.Path] = typer.Argument(
        ..., help="Node data directories, a cluster directory or ledger.db files (every ledger.db under each)."
    ),
    genesis: pathlib.Path | None = typer.Option(None, "--genesis", help="Pin the genesis every ledger must run under."),
    recheck: float = typer.Option(0.0, "--recheck", help="Re-verify this fraction of finalised results (0..1]."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the re-check sample (default: random)."),
    record: pathlib.Path | None = typer.Option(
        None, "--record", help="Node directory (stopped) whose feed gets evidence of failed re-checks."
    ),
    text_model: str = typer.Option("tiny-text", "--text-model", help="Model a text re-check runs."),
    image_model: str = typer.Option("tiny-image", "--image-model", help="Model an image re-check runs."),
    full: bool = typer.Option(False, "--full", help="Re-verify everything from scratch; read or write no audit state."),
    follow: bool = typer.Option(False, "--follow", help="Keep auditing as entries arrive (Ctrl-C stops)."),
    poll: float = typer.Option(0.5, "--poll", min=0.05, max=60.0, help="Seconds between checks for --follow."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify every feed, link, signature, admission, assignment, vote, decision, commitment and
    training entry; with several ledgers, also every replica of every feed against the others;
    with --recheck, run the verifier again on a sample of finalised results. By default only what
    is new since the last audit is verified (state in audit-state.sqlite beside each ledger,
    under a genesis or not; a changed old row means verifying again from the start, --full or
    --genesis a full audit). Exit 0 when clean, 1 on violations or failed re-checks, 2 on
    unusable input."""
    from trustgen.consensus.admission import Genesis
    from trustgen.consensus.audit import audit_paths
    from trustgen.consensus.audit_incremental import audit_paths_incremental
    from trustgen.node.report import print_audit, print_follow
    from trustgen.training.audit_training import add_training_violations

    if not 0.0 <= recheck <= 1.0:
        raise TrustgenError("--recheck wants a fraction in [0, 1]")
    if record is not None and not recheck:
        raise TrustgenError("--record needs --recheck")
    if full and follow:
        raise TrustgenError("--follow audits incrementally; it cannot be combined with --full")
    pinned = Genesis.load(genesis) if genesis is not None else None
    if follow:
        import signal
        import threading

        from trustgen.consensus.audit_follow import follow as follow_ledgers

        stop = threading.Event()
        # Ctrl-C ends the loop between audits, never half-way through writing the audit state.
        signal.signal(signal.SIGINT, lambda *_: stop.set())

        def report(outcomes: list) -> None:
            if as_json:
                emit({"ok": all(o.report.ok for o in outcomes), "ledgers": [_audit_dict(o) for o in outcomes]}, True)
                sys.stdout.flush()
            else:
                print_follow(out, outcomes)

        follow_ledgers(paths, report, stop, poll)
        raise typer.Exit(0)
    outcomes = None if full or pinned is not None else audit_paths_incremental(paths)
    reports = audit_paths(paths, pinned) if outcomes is None else [o.report for o in outcomes]
    add_training_violations(reports)  # every training entry: assignments, majorities, evidence
    ledgers = (
        [{**r.to_dict(), "audit_mode": "full"} for r in reports]
        if outcomes is None
        else [_audit_dict(o) for o in outcomes]
    )
    ok = all(r.ok for r in reports)
    result: dict = {"ok": ok, "ledgers": ledgers}
    if recheck:
        from trustgen.logs import quiet_libraries
        from trustgen.node.recheck import recheck as do_recheck
        from trustgen.node.recheck import record as do_record

        quiet_libraries()
        rc = do_recheck(paths, recheck, seed, {"text": text_model, "image": image_model}, pinned)
        result["recheck"] = rc.to_dict()
        if record is not None and reports:
            result["recheck"]["recorded"] = do_record(record, rc, paths, reports[0].network)
        ok = ok and rc.ok
        result["ok"] = ok
    if as_json:
        emit(result, True)
    else:
        print_audit(out, reports)
        if "recheck" in result:
            r = result["recheck"]
            out.print(
                f"re-checked {r['sampled']} of {r['finalised']} finalised results: {r['failed']} failed",
                highlight=False,
            )
            for c in r["checks"]:
                if c["outcome"] != "pass":
                    who = ", ".join(v[:16] for v in c["voted_for"])
                    out.print(
                        f"  [{'red' if c['outcome'] == 'fail' else 'yellow'}]{c['outcome']}[/] certificate "
                        f"{c['certificate'][:16]} (task {c['task'][:16]}, worker {c['worker'][:16]}; voted for by "
                        f"{who or 'nobody'}): {c['reason']}",
                        highlight=False,
                    )
        for d in ledgers:
            if "new_entries" in d:  # how much this run verified, and how
                out.print(f"{d['path']}: {d['new_entries']} entries verified ({d['audit_mode']})", highlight=False)
    raise typer.Exit(0 if ok else 1)


def _audit_dict(o: Any) -> dict[str, Any]:
    return {**o.report.to_dict(), "audit_mode": o.mode, "new_entries": o.new_entries}


def explorer(
    ledger_dir: pathlib.Path = typer.Argument(..., help="A node's data directory or its ledger.db."),
    port: int = typer.Option(8470, "--port", min=0, max=65535, help="0 picks a free port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Loopback by default; anything else serves the network."),
    exit_with_stdin: bool = typer.Option(
        False, "--exit-with-stdin", hidden=True, help="Stop when standard input closes (a node's explorer child)."
    ),
) -> None:
    """Serve read-only web pages over a ledger: overview, tasks with outputs, votes and certificates,
    nodes, training jobs, raw signed entries, search."""
    import ipaddress
    import socket

    import uvicorn

    from trustgen.explorer.app import create_app

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err.print(f"[yellow]warning[/]: serving on {host}, not loopback: anyone who can reach it can read the ledger")
    app = create_app(ledger_dir)
    # Bound here, so `--port 0` can say which port it got before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise TrustgenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}/"
    out.print(f"explorer of {app.state.index.path} on {url} (Ctrl-C stops)", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    if exit_with_stdin:
        _stop_when_stdin_closes(server)
    server.run(sockets=[sock])


def _stop_when_stdin_closes(server: Any) -> None:
    """A node holds the write end of this child's stdin: the kernel closes it when the node exits
    however it exits (SIGKILL included), so the explorer never outlives its node."""
    import threading

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def verify(
    result: pathlib.Path = typer.Argument(..., help="A result written by `trustgen generate --json`."),
    method: str | None = typer.Option(
        None,
        help="Text: prefill (default) | regenerate. Images: regenerate (default) | trajectory | auto "
        "(trajectory, a sampled fraction re-generated in full).",
    ),
    checks: int = typer.Option(2, "--checks", help="Trajectory: denoising steps to re-execute."),
    beacon: str | None = typer.Option(
        None, "--beacon", help="Trajectory: 64 hex digits choosing the steps (default: fresh randomness)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-check a result. Exit 0 on accept, 1 on reject, 2 on bad input."""
    from trustgen.verifier.verify import verify_file

    if beacon is not None and not (len(beacon) == 64 and all(c in "0123456789abcdefABCDEF" for c in beacon)):
        raise TrustgenError("--beacon must be 64 hex digits")
    vote = verify_file(result, method, bytes.fromhex(beacon) if beacon else None, checks)
    if as_json:
        emit(vote.to_dict(), True)
    else:
        word = "[green]ACCEPT[/]" if vote.accept else "[red]REJECT[/]"
        where = "" if vote.position is None else f" at position {vote.position}"
        out.print(
            f"{word} ({vote.method}): {vote.reason}{where}; distance {vote.distance:.4g}, margin {vote.margin:.4g}",
            highlight=False,
        )
    raise typer.Exit(0 if vote.accept else 1)


def calibrate(
    kind: str = typer.Argument(..., help="image | text"),
    samples: int = typer.Option(20, "--samples", help="Tasks to sample."),
    out_dir: pathlib.Path = typer.Option(pathlib.Path("calibration"), "--out"),
    model: str | None = typer.Option(None, help="Model (default: the embedded one)."),
    trajectory: bool = typer.Option(
        False, "--trajectory", help="Images: calibrate trajectory checks and pHash with a held-out split."
    ),
    steps: int = typer.Option(20, "--steps", help="With --trajectory: denoising steps per task."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure honest vs dishonest distances, choose thresholds, report error rates."""
    from trustgen.logs import quiet_libraries
    from trustgen.node.kinds import task_kind
    from trustgen.verifier.calibrate import write_report

    task = task_kind(kind)
    if not 1 <= samples <= 10_000:
        raise TrustgenError("samples must be in [1, 10000]")
    quiet_libraries()
    if trajectory:
        _calibrate_trajectory(task.name, samples, steps, model or task.engine.default_model, out_dir, as_json)
        return
    rep = task.calibrate(samples, model or task.engine.default_model)
    files = write_report(rep, out_dir)
    summary = {k: rep[k] for k in ("kind", "samples", "honest_pairs", "dishonest_pairs", "rates")}
    summary.update(
        threshold=rep.get("threshold"),
        files=files,
        per_pair={
            k: {kk: v[kk] for kk in ("honest", "n", "rejected_outright", "min", "median", "max")}
            for k, v in rep["pairs"].items()
        },
    )
    if as_json:
        emit(summary, True)
        return
    from rich.table import Table

    t = Table(title=f"{kind} calibration ({rep['measure']})")
    for c in ("pair", "honest", "n", "rejected", "min", "median", "max"):
        t.add_column(c)
    for k, v in summary["per_pair"].items():
        t.add_row(
            k,
            "yes" if v["honest"] else "no",
            str(v["n"]),
            str(v["rejected_outright"]),
            *(f"{x:.4g}" if x is not None else "-" for x in (v["min"], v["median"], v["max"])),
        )
    out.print(t)
    r = rep["rates"]
    out.print(
        f"threshold {rep.get('threshold', 'policy tolerance')}: false accept {r['false_accept']:.4%}, "
        f"false reject {r['false_reject']:.4%}; majority of 3: false accept "
        f"{r['majority3_false_accept']:.6%}, false reject {r['majority3_false_reject']:.6%}"
    )
    out.print(f"wrote {files['json']} and {files['png']}")


def _calibrate_trajectory(
    kind: str, samples: int, steps: int, model: str, out_dir: pathlib.Path, as_json: bool
) -> None:
    from trustgen.engines.params import MAX_STEPS
    from trustgen.verifier.calibrate_traj import calibrate_trajectory, write_report

    if kind != "image":
        raise TrustgenError("--trajectory calibrates image verification; use kind image")
    if not 2 <= steps <= MAX_STEPS:
        raise TrustgenError(f"steps must be in [2, {MAX_STEPS}]")
    rep = calibrate_trajectory(samples, model, steps)
    files = write_report(rep, out_dir)
    summary = {k: rep[k] for k in ("samples", "steps", "checks", "fitted_tolerance", "phash_threshold", "detection")}
    summary["heldout_accept_rates"] = {
        method: {k: v["accept_rate"] for k, v in rates.items()} for method, rates in rep["heldout"].items()
    }
    summary["files"] = files
    if as_json:
        emit(summary, True)
        return
    for method, rates in summary["heldout_accept_rates"].items():
        out.print(f"{method}: " + ", ".join(f"{k} {v:.0%}" for k, v in rates.items()), highlight=False)
    for k, d in rep["detection"].items():
        if "formula" in d:
            out.print(f"{k}: detected {d['measured']} (formula {d['formula']}, 95% CI {d['measured_ci95']})")
    out.print(f"wrote {', '.join(files.values())}")
