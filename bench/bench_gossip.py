"""Gossip dissemination: rounds and seconds until one new entry reaches every node, and bytes
sent per node per entry, for 8, 16 and 32 real nodes (gRPC servers on loopback, one process).

Targets: within ceil(log2 N) + 3 rounds, and at most 3x the entry's size sent per node.
Rounds are driven in lock-step (every node runs one round, then the next); seconds are the
wall time of those rounds here, where all nodes share 2 cores. Bytes count every gossip frame a
node writes, as client or server (protobuf message bytes: bodies, tags, hellos; not HTTP/2 or
TCP framing). Sessions are long-lived, so the figures are taken with sessions open and feeds
numbered, as in a network that has been running; the one-off cost of opening a session is
printed separately. The single-entry figure is the worst case for per-message overhead; a
burst of entries amortises it.

    python bench/bench_gossip.py [--sizes 8 16 32] [--trials 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from tests.swarm import Swarm  # noqa: E402


def total_bytes(s: Swarm) -> int:
    return sum(n.gossip.bytes_sent for n in s.nodes.values())


def open_sessions(s: Swarm) -> int:
    return sum(n.gossip.client.open_sessions() for n in s.nodes.values())


async def spread(s: Swarm, origin: int, n_entries: int, pad: int = 0) -> tuple[int, float, float]:
    """Append entries at `origin`; rounds, seconds and bytes/node/entry-byte until all have them.
    pad = 0 gives the smallest entry type (NodeJoined, ~350 B); pad > 0 an Evidence entry of
    about that many more bytes (a VoteCast is ~2 KB, a TaskFinalized ~6 KB in the demo ledger)."""
    before = total_bytes(s)
    node = s.nodes[origin]
    me = node.identity.public_key
    entries = [
        node.ledger.append("NodeJoined", {"address": node.address, "roles": ["bench", str(k)]})
        if not pad
        else node.ledger.append("Evidence", {"kind": "bench", "subject": me, "proof": {"pad": bytes(pad), "k": k}})
        for k in range(n_entries)
    ]
    entry_bytes = statistics.mean(len(e.payload) + len(e.sig) for e in entries)
    target = node.ledger.head(node.identity.public_key)
    t0 = time.perf_counter()
    rounds = 0
    while not all(x.ledger.head(node.identity.public_key) == target for x in s.nodes.values()):
        await s.rounds()
        rounds += 1
        if rounds > 100:
            raise RuntimeError("entry did not spread")
    secs = time.perf_counter() - t0
    per_node = (total_bytes(s) - before) / len(s.nodes) / n_entries
    return rounds, secs, per_node / entry_bytes


async def measure(n: int, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = Swarm(pathlib.Path(tmp))
        try:
            await s.start_many(n, links=3, seed=n)
            await s.until_converged(200)  # everyone learns everyone from NodeJoined entries
            await s.rounds(4)  # drain the warm-up's announcements
            # Sessions are long-lived: open them all, and let one entry per feed cross them so
            # they have numbered their feeds, as in a network that has been running a while.
            before, opened = total_bytes(s), open_sessions(s)
            await asyncio.gather(*(x.gossip.connect() for x in s.nodes.values()))
            setup = (total_bytes(s) - before) / max(1, open_sessions(s) - opened)
            for x in s.nodes.values():
                x.ledger.append("NodeJoined", {"address": x.address, "roles": ["warm-up"]})
            await s.until_converged(200)
            await s.rounds(4)
            single = [await spread(s, t % n, 1) for t in range(trials)]
            vote_sized = [await spread(s, t % n, 1, pad=1700) for t in range(trials)]
            burst = await spread(s, 0, 20)
        finally:
            await s.close()
    return {
        "nodes": n,
        "target_rounds": math.ceil(math.log2(n)) + 3,
        "rounds_median": statistics.median(r for r, _, _ in single),
        "rounds_max": max(r for r, _, _ in single),
        "seconds_median": round(statistics.median(t for _, t, _ in single), 3),
        "bytes_per_node_per_entry_x": round(statistics.median(b for _, _, b in single), 2),
        "vote_sized_bytes_per_node_per_entry_x": round(statistics.median(b for _, _, b in vote_sized), 2),
        "vote_sized_rounds_max": max(r for r, _, _ in vote_sized),
        "burst20_bytes_per_node_per_entry_x": round(burst[2], 2),
        "burst20_rounds": burst[0],
        "session_setup_bytes": round(setup),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [asyncio.run(measure(n, args.trials)) for n in args.sizes]
    if args.json:
        print(json.dumps(rows))
        return
    print("bytes sent per node per entry, as a multiple of the entry's size:")
    print(
        f"{'nodes':>5} {'rounds med/max':>15} {'target':>7} {'seconds':>8} {'350 B entry':>12} {'2 KB entry':>11} {'burst of 20':>12}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>5} {r['rounds_median']:>9}/{r['rounds_max']:<5} {r['target_rounds']:>7} "
            f"{r['seconds_median']:>8} {r['bytes_per_node_per_entry_x']:>11}x "
            f"{r['vote_sized_bytes_per_node_per_entry_x']:>10}x {r['burst20_bytes_per_node_per_entry_x']:>11}x"
        )
    print("targets: rounds <= ceil(log2 N) + 3; bytes sent per node per entry <= 3x the entry's size.")
    print(
        f"Sessions are long-lived; opening one costs about {rows[-1]['session_setup_bytes']} B (signed hello and accept), once."
    )


if __name__ == "__main__":
    main()
