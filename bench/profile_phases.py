"""Sum a node's cProfile (trustgen.node.profiling) by phase: where a verified task's CPU goes.

Self time (tottime) of every function is given to one phase by where the function lives, so the
phases add up to the profile's total; a few key operations are also shown by cumulative time
(which overlaps the phases).

    python bench/profile_phases.py DIR/*.prof [--tasks 64]
"""

from __future__ import annotations

import argparse
import pstats

# First match wins: (phase, substrings of "file:function").
PHASES: list[tuple[str, tuple[str, ...]]] = [
    (
        "model (torch, engines, prefill)",
        ("torch", "trustgen/engines", "trustgen/verifier", "transformers", "numpy", "safetensors", "tokenizers"),
    ),
    ("signatures (nacl, sha256)", ("nacl", "_sodium", "hashlib", "openssl_sha", "sha256", "blake2")),
    ("canonical encoding", ("trustgen/consensus/encoding.py", "_struct", "struct.")),
    ("messages (schemas, open/sign)", ("trustgen/consensus/messages.py", "trustgen/net/auth.py")),
    ("ledger (sqlite, merkle)", ("sqlite3", "trustgen/consensus/ledger.py", "trustgen/consensus/merkle.py")),
    ("reputation, liveness, audit", ("trustgen/consensus/",)),
    ("gRPC and protobuf", ("grpc", "google/protobuf", "google._upb", "trustgen/rpc", "trustgen/net/")),
    ("gossip", ("trustgen/gossip",)),
    ("node roles", ("trustgen/node",)),
    ("asyncio, threads, selectors", ("asyncio", "selectors", "threading", "concurrent/futures", "epoll", "queue")),
    ("sockets, poll", ("_socket", "select.poll", "_contextvars")),
    ("json, logging", ("json", "logging")),
]
KEY_OPS = [
    ("identity.py", "verify"),
    ("identity.py", "sign"),
    ("encoding.py", "encode"),
    ("encoding.py", "decode"),
    ("encoding.py", "signing_bytes"),
    ("ledger.py", "append"),
    ("ledger.py", "ingest"),
    ("ledger.py", "parse_entry"),
    ("ledger.py", "__exit__"),
    ("messages.py", "open_wire"),
    ("messages.py", "sign"),
    ("gossip/replica.py", "ingest"),
]


def phase_of(key: tuple[str, int, str]) -> str:
    where = f"{key[0]}:{key[2]}"
    for name, needles in PHASES:
        if any(n in where for n in needles):
            return name
    return "other"


def summarise(paths: list[str]) -> tuple[dict[str, float], dict[str, float], float]:
    """(self seconds by phase, cumulative seconds of the key operations, total seconds)."""
    stats = pstats.Stats(paths[0])
    for p in paths[1:]:
        stats.add(p)
    raw = stats.stats  # type: ignore[attr-defined]
    phases: dict[str, float] = {}
    ops: dict[str, float] = {}
    total = 0.0
    for key, (_cc, _nc, tt, ct, _callers) in raw.items():
        phases[phase_of(key)] = phases.get(phase_of(key), 0.0) + tt
        total += tt
        for file_end, fn in KEY_OPS:
            if key[0].endswith(file_end) and key[2] == fn:
                ops[f"{file_end}:{fn}"] = ops.get(f"{file_end}:{fn}", 0.0) + ct
    return phases, ops, total


def report(paths: list[str], tasks: int, label: str = "") -> str:
    phases, ops, total = summarise(paths)
    lines = [f"{label}profiled CPU {total * 1e3 / tasks:.1f} ms per task ({len(paths)} profiles):"]
    for name, s in sorted(phases.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<34} {s * 1e3 / tasks:7.2f} ms  {s / total:6.1%}")
    lines.append("  key operations, cumulative (overlapping the phases):")
    for name, s in sorted(ops.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<32} {s * 1e3 / tasks:7.2f} ms")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--tasks", type=int, default=64, help="verified tasks in the profiled window")
    ap.add_argument("--top", type=int, default=0, help="also print the top N functions by self time")
    args = ap.parse_args()
    print(report(args.profiles, args.tasks))
    if args.top:
        stats = pstats.Stats(args.profiles[0])
        for p in args.profiles[1:]:
            stats.add(p)
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
