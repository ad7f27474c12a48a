"""Commands that run or talk to nodes: `node`, `cluster`, `submit`, `events`, `blob`."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import typer

from trustgen.cli_shared import INSECURE, TLS_CA, check_transport, emit, err, out, task_params
from trustgen.errors import TrustgenError

node_app = typer.Typer(no_args_is_help=True, help="Run a node.")
cluster_app = typer.Typer(no_args_is_help=True, help="A local cluster of node processes.")
blob_app = typer.Typer(no_args_is_help=True, help="Content-addressed blobs (outputs, checkpoints).")


@node_app.command("run")
def node_run(
    config: pathlib.Path = typer.Option(..., "--config", help="node.toml"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run a node until SIGTERM."""
    from trustgen.node.config import load_config
    from trustgen.node.daemon import run_node

    run_node(load_config(config), log_level)


# What `--node-setting NAME=KEY:VALUE` may set, and how its value is read.
_SETTINGS: dict[str, Any] = {
    "adversary": str,
    "delay_s": float,
    "explorer_port": int,
    "train_adversary": str,
    "training_round_timeout_s": float,
    "training_retry_s": float,
}


def _node_settings(specs: list[str]) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        if not name or not rest:
            raise TrustgenError(f"--node-setting wants NAME=KEY:VALUE, got {spec!r}")
        key, _, value = rest.partition(":")
        if key not in _SETTINGS:
            raise TrustgenError(f"unknown node setting {key!r} ({', '.join(_SETTINGS)})")
        try:
            settings.setdefault(name, {})[key] = _SETTINGS[key](value)
        except ValueError:
            raise TrustgenError(f"--node-setting {spec!r}: {key} wants a number") from None
    return settings


@cluster_app.command("up")
def cluster_up(
    dir: pathlib.Path = typer.Option(..., "--dir"),
    workers: int = typer.Option(3, "--workers"),
    verifiers: int = typer.Option(3, "--verifiers"),
    trainers: int = typer.Option(0, "--trainers", help="Trainer nodes (network training jobs)."),
    node_setting: list[str] = typer.Option(
        [],
        "--node-setting",
        help="NAME=KEY:VALUE; KEY: adversary, delay_s, train_adversary, training_round_timeout_s, training_retry_s",
    ),
    outsider: list[str] = typer.Option([], "--outsider", help="NAME of a node to leave out of the genesis."),
    probation: int = typer.Option(5, "--probation", help="Agreements a verifier admitted later needs."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a gateway, workers, verifiers and trainers as separate processes on loopback, admitted
    by a genesis the launcher writes (DIR/genesis.bin; its authority key in DIR/authority)."""
    from trustgen.node import cluster

    if not (1 <= workers <= 32 and 1 <= verifiers <= 32 and 0 <= trainers <= 32):
        raise TrustgenError("workers and verifiers must be in [1, 32], trainers in [0, 32]")
    if not 0 <= probation <= 1000:
        raise TrustgenError("--probation must be in [0, 1000]")
    ready = cluster.up(
        dir, workers, verifiers, _node_settings(node_setting), tuple(outsider), probation, trainers=trainers
    )
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


@cluster_app.command("restart")
def cluster_restart(
    name: str = typer.Argument(..., help="The node's name (gateway, worker-1, verifier-2, trainer-1, ...)."),
    dir: pathlib.Path = typer.Option(..., "--dir"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restart one node of a local cluster on its address; its ledger and keys stay."""
    from trustgen.node import cluster

    info = cluster.restart(dir, name)
    if as_json:
        emit({"name": name, **info}, True)
    else:
        out.print(f"{name:<12} {info['address']:<22} pid {info['pid']}", highlight=False)


@cluster_app.command("down")
def cluster_down(dir: pathlib.Path = typer.Option(..., "--dir"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop every node of a local cluster (SIGTERM, then SIGKILL after 15 s)."""
    from trustgen.node import cluster

    n = cluster.down(dir)
    emit({"stopped": n}, True) if as_json else out.print(f"stopped {n} nodes")


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
    chat: bool = typer.Option(False, "--chat", help="Apply the model's chat template to the prompt."),
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

    check_transport(insecure, tls_ca)
    params = task_params(
        kind,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        decoding=decoding,
        num_beams=num_beams,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        chat=chat,
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

    check_transport(insecure, tls_ca)

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
    check_transport(insecure, tls_ca)

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
