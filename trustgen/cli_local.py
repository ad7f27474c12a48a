"""Commands that run on this machine alone: `generate`, `keys`, `audit`, `verify`, `calibrate`."""

from __future__ import annotations

import pathlib

import typer

from trustgen.cli_shared import emit, err, out, task_params
from trustgen.errors import TrustgenError

generate_app = typer.Typer(no_args_is_help=True, help="One local generation, no network.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 node identities.")


@generate_app.command("text")
def generate_text(
    prompt: str = typer.Argument(..., help="The prompt."),
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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate text locally with controlled determinism."""
    from trustgen.engines.generate import run_text

    params = task_params(
        "text",
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        num_beams=num_beams,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        chat=chat,
    )
    result = run_text(model, params, device=device, dtype=dtype, threads=threads)
    if as_json:
        emit(result, True)
    else:
        out.print(result["text"], markup=False, highlight=False)
        err.print(
            f"[dim]{len(result['token_ids'])} tokens, {result['finish_reason']}; "
            f"output {result['output_digest'][:23]}…, model {result['model_digest'][:23]}…[/]"
        )


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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate an image locally with controlled determinism."""
    from trustgen.engines.generate import run_image

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
    result = run_image(model, params, output, device=device, dtype=dtype, threads=threads)
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
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify every feed, link, signature, assignment, vote, decision and commitment; with several
    ledgers, also every replica of every feed against the others. Exit 0 when clean, 1 on
    violations, 2 on unusable input."""
    from trustgen.consensus.audit import audit_paths
    from trustgen.node.report import print_audit

    reports = audit_paths(paths)
    ok = all(r.ok for r in reports)
    if as_json:
        emit({"ok": ok, "ledgers": [r.to_dict() for r in reports]}, True)
    else:
        print_audit(out, reports)
    raise typer.Exit(0 if ok else 1)


def verify(
    result: pathlib.Path = typer.Argument(..., help="A result written by `trustgen generate --json`."),
    method: str = typer.Option("prefill", help="Text: prefill | regenerate. Images always re-generate."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-check a result. Exit 0 on accept, 1 on reject, 2 on bad input."""
    from trustgen.verifier.verify import verify_file

    vote = verify_file(result, method)
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
