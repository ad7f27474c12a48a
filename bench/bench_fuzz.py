"""Fuzz every RPC of a real node process with malformed messages: 0 crashes, 0 UNKNOWN, bounded log.

One node process (gateway, worker, verifier and trainer roles, so every service answers) on a
loopback port, logging to a rotated file. Each RPC gets `--per-rpc` messages (default 10,000), a
quarter of each kind:

- random bytes (0..512 of them);
- a valid signed request for the method, truncated at a random byte;
- the same with 1..4 random bits flipped;
- a correctly signed request whose arguments have wrong types, hostile values or unknown keys
  (including signed Tasks with wrongly typed parameters and models nobody serves).

Reported per RPC: the status codes answered, UNKNOWN (must be 0), and whether the process is still
alive and answering; overall: bytes of log written per 1,000 bad messages.

    python bench/bench_fuzz.py [--per-rpc 10000] [--json]
    python bench/bench_fuzz.py --quick          # 400 per RPC
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import random
import signal
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402

from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.net.auth import make_request  # noqa: E402
from trustgen.node import cluster  # noqa: E402
from trustgen.node.client import make_task  # noqa: E402

NET = "trustgen-local"
SIGNED = {
    "/trustgen.v1.Gateway/Submit": ("unary", ["task"]),
    "/trustgen.v1.Gateway/Status": ("unary", ["task_id"]),
    "/trustgen.v1.Gateway/Watch": ("stream", ["task_id"]),
    "/trustgen.v1.Gateway/Join": ("unary", ["entries"]),
    "/trustgen.v1.Worker/Execute": ("unary", ["task"]),
    "/trustgen.v1.Verifier/Check": ("unary", ["task", "result", "output"]),
    "/trustgen.v1.Blobs/Manifest": ("unary", ["digest"]),
    "/trustgen.v1.Blobs/Fetch": ("stream", ["digest", "from_index"]),
    "/trustgen.v1.Training/Submit": ("unary", ["job", "verifiers"]),
    "/trustgen.v1.Training/Status": ("unary", ["job_id"]),
    "/trustgen.v1.Training/Work": ("unary", ["job", "round"]),
    "/trustgen.v1.Training/States": ("unary", ["job", "step"]),
    "/trustgen.v1.Training/Check": ("unary", ["job", "round", "updates"]),
    "/trustgen.v1.Training/Attest": ("unary", ["job", "round", "checkpoint"]),
}
UNSIGNED = {"/trustgen.v1.Node/Info": "unary", "/trustgen.v1.Gossip/Session": "bidi"}


def hostile_values(me: Identity, rng: random.Random) -> list[Any]:
    """Values of every wrong type, extremes, and signed Tasks that must be refused at the edge."""
    bad_tasks = [
        make_task(me, NET, "text", "tiny-text", {"prompt": "x", "max_new_tokens": 8.0}, 1).wire(),
        make_task(me, NET, "text", "tiny-text", {"prompt": "x", "gpu": 0}, 1).wire(),
        make_task(me, NET, "text", "sha256:" + "0" * 64, {"prompt": "x"}, 1).wire(),
        make_task(
            me, NET, "image", "tiny-image", {"prompt": "x", "height": 1024, "width": 1024, "steps": 200}, 1
        ).wire(),
    ]
    return [
        0, -1, 2**63 - 1, -(2**63), 8.0, 1e308, True, False, "", "x" * 5000, "\u2603",
        b"", b"\x00" * 32, b"\xff" * 33, os.urandom(64), [], [b"a", b"b"], [[b"x", b"y"]] * 3, {}, {"a": 1},
        *bad_tasks,
    ]  # fmt: skip


def signed_message(me: Identity, method: str, keys: list[str], values: list[Any], rng: random.Random) -> bytes:
    args = {k: rng.choice(values) for k in keys if rng.random() < 0.85}
    if rng.random() < 0.3:
        args[rng.choice(["x", "extra", "task", "Task", ""])] = rng.choice(values)
    return make_request(me, NET, method, args).SerializeToString()


def messages(method: str, n: int, me: Identity, rng: random.Random) -> list[bytes]:
    keys = SIGNED.get(method, ("", []))[1]
    values = hostile_values(me, rng)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(os.urandom(rng.randrange(0, 513)))
            continue
        base = signed_message(me, method, keys, values, rng) if keys else os.urandom(rng.randrange(1, 64))
        if kind == 1:
            out.append(base[: rng.randrange(0, len(base))])
        elif kind == 2:
            b = bytearray(base)
            for _ in range(rng.randrange(1, 5)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            out.append(bytes(b))
        else:
            out.append(base)
    return out


async def send(ch: grpc.aio.Channel, method: str, shape: str, data: bytes) -> str:
    try:
        if shape == "unary":
            await ch.unary_unary(method)(data, timeout=30)
        elif shape == "stream":
            async for _ in ch.unary_stream(method)(data, timeout=30):
                pass
        else:  # a gossip session: one malformed first frame

            async def frames():
                yield data

            async for _ in ch.stream_stream(method)(frames(), timeout=30):
                pass
    except grpc.aio.AioRpcError as e:
        return e.code().name
    return "OK"


def log_bytes(d: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in d.glob("node.log*")) + sum(p.stat().st_size for p in d.glob("node.out"))


async def fuzz(address: str, per_rpc: int, seed: int, node_dir: pathlib.Path, pid: int) -> dict[str, Any]:
    rng = random.Random(seed)
    me = Identity.generate()
    methods = {**{m: s for m, (s, _) in SIGNED.items()}, **UNSIGNED}
    report: dict[str, Any] = {}
    before = log_bytes(node_dir)
    sem = asyncio.Semaphore(32)
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 24)]) as ch:
        for method, shape in methods.items():
            codes: collections.Counter[str] = collections.Counter()

            async def one(data: bytes, method: str = method, shape: str = shape) -> None:
                async with sem:
                    codes[await send(ch, method, shape, data)] += 1

            await asyncio.gather(*(one(m) for m in messages(method, per_rpc, me, rng)))
            alive = _alive(pid)
            report[method] = {"codes": dict(codes), "unknown": codes.get("UNKNOWN", 0), "alive_after": alive}
            if not alive:
                break
        info = await send(ch, "/trustgen.v1.Node/Info", "unary", b"")
    total = sum(sum(r["codes"].values()) for r in report.values())
    grown = log_bytes(node_dir) - before
    return {
        "per_rpc": per_rpc,
        "rpcs": len(report),
        "messages": total,
        "seconds": round(time.perf_counter() - t0, 1),
        "unknown": sum(r["unknown"] for r in report.values()),
        "crashed": not _alive(pid) or info != "OK",
        "log_bytes": grown,
        "log_bytes_per_1000": round(grown * 1000 / max(1, total), 1),
        "by_rpc": report,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-rpc", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="400 messages per RPC")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    per_rpc = 400 if args.quick else args.per_rpc
    root = pathlib.Path(tempfile.mkdtemp(prefix="tg-bench-fuzz-"))
    d = cluster.write_node(root, "node", ["gateway", "worker", "verifier", "trainer"], open_network=True)
    proc = cluster.start(d)
    try:
        info = cluster.wait_ready(d, proc, joined=False)
        res = asyncio.run(fuzz(info["address"], per_rpc, args.seed, d, proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['messages']} malformed messages over {res['rpcs']} RPCs ({per_rpc} each) in {res['seconds']} s")
    for m, r in res["by_rpc"].items():
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items(), key=lambda kv: -kv[1]))
        print(f"  {m}: {codes}")
    print(f"UNKNOWN: {res['unknown']}; crashed: {res['crashed']}")
    print(f"log: {res['log_bytes']} bytes, {res['log_bytes_per_1000']} bytes per 1,000 bad messages")


if __name__ == "__main__":
    main()
