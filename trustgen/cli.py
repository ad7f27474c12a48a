"""The `trustgen` command line. Each command is a thin shell over library functions; every
command that reports has --json (one object on stdout). User errors print one line, exit 2."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import typer
from rich.console import Console

from trustgen.errors import TrustgenError
from trustgen.train_cli import train_app

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Verifiable generative AI in trustless networks.",
)
generate_app = typer.Typer(no_args_is_help=True, help="One local generation, no network.")
app.add_typer(generate_app, name="generate")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 node identities.")
app.add_typer(keys_app, name="keys")
node_app = typer.Typer(no_args_is_help=True, help="Run a node.")
app.add_typer(node_app, name="node")
cluster_app = typer.Typer(no_args_is_help=True, help="A local cluster of node processes.")
app.add_typer(cluster_app, name="cluster")
blob_app = typer.Typer(no_args_is_help=True, help="Content-addressed blobs (outputs, checkpoints).")
app.add_typer(blob_app, name="blob")
app.add_typer(train_app, name="train")

out = Console()
err = Console(stderr=True, soft_wrap=True)


def emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def _task_params(kind: str, **options: Any) -> Any:
    """A task kind's parameters from command-line options (each kind takes the options it knows).
    Unknown kinds and invalid values raise UsageError: one line, exit 2."""
    from trustgen.engines.kinds import engine_kind

    k = engine_kind(kind)
    return k.parse_params({name: options[name] for name in k.param_names() if name in options})


# The options of every command that talks to a node.
INSECURE = typer.Option(False, "--insecure", help="Plaintext gRPC (loopback, tests).")
TLS_CA = typer.Option("", "--tls-ca", help="CA certificate for TLS.")


def _check_transport(insecure: bool, tls_ca: str) -> None:
    if not insecure and not tls_ca:
        raise TrustgenError("give --tls-ca FILE, or --insecure for plaintext gRPC")


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
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    threads: int | None = typer.Option(None, help="CPU threads (recorded in the profile)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate text locally with controlled determinism."""
    from trustgen.engines.generate import run_text

    params = _task_params(
        "text",
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        num_beams=num_beams,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
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

    params = _task_params(
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


@app.command("audit")
def audit(
    path: pathlib.Path = typer.Argument(..., help="A node data directory or a ledger.db file."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify every feed, link, signature, assignment, decision and commitment. Exit 0 when
    clean, 1 on violations, 2 on unusable input."""
    from trustgen.consensus.audit import audit_path
    from trustgen.node.report import print_audit

    reports = audit_path(path)
    ok = all(r.ok for r in reports)
    if as_json:
        emit({"ok": ok, "ledgers": [r.to_dict() for r in reports]}, True)
    else:
        print_audit(out, reports)
    raise typer.Exit(0 if ok else 1)


@app.command("verify")
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


@app.command("calibrate")
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


@node_app.command("run")
def node_run(
    config: pathlib.Path = typer.Option(..., "--config", help="node.toml"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run a node until SIGTERM."""
    from trustgen.node.config import load_config
    from trustgen.node.daemon import run_node

    run_node(load_config(config), log_level)


def _node_settings(specs: list[str]) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not name or not rest:
            raise TrustgenError(f"--node-setting wants NAME=KEY:VALUE, got {spec!r}")
        key, _, value = rest.partition(":")
        if key not in ("adversary", "delay_s"):
            raise TrustgenError(f"unknown node setting {key!r} (adversary, delay_s)")
        settings.setdefault(name, {})[key] = float(value) if key == "delay_s" else value
    return settings


@cluster_app.command("up")
def cluster_up(
    dir: pathlib.Path = typer.Option(..., "--dir"),
    workers: int = typer.Option(3, "--workers"),
    verifiers: int = typer.Option(3, "--verifiers"),
    node_setting: list[str] = typer.Option([], "--node-setting", help="NAME=adversary:MODE or NAME=delay_s:SECONDS"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a gateway, workers and verifiers as separate processes on loopback."""
    from trustgen.node import cluster

    if not (1 <= workers <= 32 and 1 <= verifiers <= 32):
        raise TrustgenError("workers and verifiers must be in [1, 32]")
    ready = cluster.up(dir, workers, verifiers, _node_settings(node_setting))
    if as_json:
        emit({"dir": str(dir), "nodes": ready}, True)
    else:
        for name, info in ready.items():
            out.print(f"{name:<12} {info['address']:<22} pid {info['pid']}", highlight=False)


@cluster_app.command("status")
def cluster_status(
    dir: pathlib.Path = typer.Option(..., "--dir"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Which nodes of a local cluster run."""
    from trustgen.node import cluster

    nodes = cluster.status(dir)
    if as_json:
        emit({"dir": str(dir), "nodes": nodes}, True)
        return
    for n in nodes:
        state = "[green]running[/]" if n["running"] else "[red]stopped[/]"
        out.print(f"{n['name']:<12} {','.join(n['roles']):<10} {n['address']:<22} {state} {n['adversary']}")


@cluster_app.command("down")
def cluster_down(dir: pathlib.Path = typer.Option(..., "--dir"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop every node of a local cluster (SIGTERM, then SIGKILL after 15 s)."""
    from trustgen.node import cluster

    n = cluster.down(dir)
    emit({"stopped": n}, True) if as_json else out.print(f"stopped {n} nodes")


@app.command("submit")
def submit(
    kind: str = typer.Argument(..., help="text | image"),
    prompt: str = typer.Argument(...),
    gateway: str = typer.Option(..., "--gateway", help="HOST:PORT"),
    wait: bool = typer.Option(False, "--wait", help="Follow the task until it is final."),
    model: str | None = typer.Option(None, help="Model name or sha256 digest."),
    verifiers: int = typer.Option(3, "--verifiers"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    decoding: str = typer.Option("greedy"),
    num_beams: int = typer.Option(4, "--num-beams"),
    seed: int = typer.Option(0),
    temperature: float = typer.Option(1.0),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    steps: int = typer.Option(20),
    guidance: float = typer.Option(3.0),
    height: int = typer.Option(32),
    width: int = typer.Option(32),
    scheduler: str = typer.Option("ddim"),
    output: pathlib.Path = typer.Option(pathlib.Path("output.png"), "-o", "--output"),
    network: str = typer.Option("trustgen-local"),
    insecure: bool = INSECURE,
    tls_ca: str = TLS_CA,
    timeout: float = typer.Option(300.0, "--timeout"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Submit a task to a gateway; with --wait, follow it and check the certificate."""
    import asyncio

    from trustgen.consensus.identity import Identity
    from trustgen.engines.kinds import engine_kind
    from trustgen.node.client import make_task, save_output
    from trustgen.node.client import submit as do_submit

    _check_transport(insecure, tls_ca)
    params = _task_params(
        kind,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        num_beams=num_beams,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        scheduler=scheduler,
    )
    me = Identity.generate()
    task = make_task(me, network, kind, model or engine_kind(kind).default_model, params.to_dict(), verifiers)

    def progress(st: Any) -> None:
        if not as_json:
            err.print(f"[dim]{st.state}{': ' + st.detail if st.detail else ''}[/]")

    res = asyncio.run(do_submit(gateway, task, me, network, insecure, tls_ca, wait, timeout, progress))
    save_output(res, output)  # writes the output's blob (an image) when the task has one
    if as_json:
        emit(res, True)
    else:
        from trustgen.node.report import print_task

        print_task(out, res)
    if wait and res.get("decision") != "accept":
        raise typer.Exit(1)


@app.command("events")
def events(
    node: str = typer.Option(..., "--node", help="HOST:PORT of the node's gRPC address."),
    count: int = typer.Option(0, "--count", help="Stop after this many events (0: never)."),
    timeout: float = typer.Option(0.0, "--timeout", help="Stop after this many seconds (0: never)."),
    insecure: bool = INSECURE,
    tls_ca: str = TLS_CA,
) -> None:
    """Tail a node's live event feed (one JSON object a line)."""
    import asyncio

    import grpc

    from trustgen.net import transport
    from trustgen.node.events import subscribe
    from trustgen.rpc import trustgen_pb2 as pb
    from trustgen.rpc import trustgen_pb2_grpc as rpc

    _check_transport(insecure, tls_ca)

    async def info() -> Any:
        async with transport.channel(node, insecure, tls_ca) as ch:
            return await rpc.NodeStub(ch).Info(pb.InfoRequest(), timeout=5)

    try:
        port = asyncio.run(info()).events_port
    except grpc.aio.AioRpcError as e:
        raise TrustgenError(f"{node}: {e.code().name}") from None
    host = node.rsplit(":", 1)[0]
    seen = 0
    for topic, body in subscribe(host, port, timeout or None):
        sys.stdout.write(json.dumps({"topic": topic, **body}) + "\n")
        sys.stdout.flush()
        seen += 1
        if count and seen >= count:
            break


@blob_app.command("get")
def blob_get(
    digest: str = typer.Argument(..., help="The blob's address: a Merkle root, 64 hex digits."),
    peer: list[str] = typer.Option(..., "--peer", help="HOST:PORT of a node to ask; repeat for more."),
    output: pathlib.Path = typer.Option(..., "-o", "--output"),
    network: str = typer.Option("trustgen-local"),
    insecure: bool = INSECURE,
    tls_ca: str = TLS_CA,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Fetch a blob by digest from whichever of the peers has it, every chunk checked; a peer
    serving bad data is skipped and the download continues from another."""
    import asyncio
    import re

    from trustgen.consensus.identity import Identity
    from trustgen.gossip.blobfetch import fetch_blob
    from trustgen.net.peers import Peers

    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise TrustgenError("digest must be 64 lowercase hex digits")
    _check_transport(insecure, tls_ca)

    async def fetch() -> tuple[bytes, list[str]]:
        peers = Peers(Identity.generate(), network, insecure, tls_ca)
        try:
            return await fetch_blob(peers, digest, list(peer))
        finally:
            await peers.close()

    data, dropped = asyncio.run(fetch())
    tmp = output.with_name(output.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(output)  # never a half-written file under the asked-for name
    emit({"digest": digest, "bytes": len(data), "output": str(output), "bad_peers": dropped}, as_json)
    if not as_json:
        out.print(
            f"{digest[:16]}: {len(data)} bytes -> {output}"
            + (f" (skipped bad peers: {', '.join(dropped)})" if dropped else "")
        )


@app.command("demo")
def demo(
    as_json: bool = typer.Option(False, "--json"),
    workers: int = typer.Option(3, "--workers"),
    verifiers: int = typer.Option(3, "--verifiers"),
    keep: pathlib.Path | None = typer.Option(None, "--dir", help="Keep the cluster's files here."),
) -> None:
    """The main job: a local network verifies a text and an image task, then audits itself."""
    from trustgen.node.demo import run_demo

    ok = run_demo(out, as_json, workers, verifiers, keep)
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except TrustgenError as e:
        sys.stderr.write(f"error: {e}\n")  # one line, never wrapped
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
