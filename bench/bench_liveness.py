"""Task latency with one verifier frozen (SIGSTOP) against the same network with none, in one run.

A local multi-process network (gateway, one worker, three verifiers, each its own process) runs
text tasks that ask for all three verifiers (k = 3), one after another: first with every verifier
answering, then with verifier-1 stopped. The stopped verifier is assigned to every task (k is the
whole pool), so each task must be decided by the two others' matching votes; before early
finality each waited for the stopped one's deadline. The gateway keeps its default verifier
deadline (60 s), so a gateway that waited would show it. Target: p50 ratio <= 1.2.

    python bench/bench_liveness.py [--tasks 10] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.node import cluster  # noqa: E402
from trustgen.node.client import make_task, submit  # noqa: E402

NET = "trustgen-local"


async def one(gw: str, i: int, tokens: int) -> float:
    me = Identity.generate()
    task = make_task(me, NET, "text", "tiny-text", {"prompt": f"Liveness {i}", "max_new_tokens": tokens}, 3)
    t0 = time.perf_counter()
    res = await submit(gw, task, me, NET, insecure=True, timeout_s=600)
    assert res["decision"] == "accept", res
    return time.perf_counter() - t0


def p50s(gw: str, n: int, tokens: int, offset: int) -> list[float]:
    return [asyncio.run(one(gw, offset + i, tokens)) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10, help="tasks per phase")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="4 tasks per phase, 8 tokens")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n, tokens = (4, 8) if args.quick else (args.tasks, args.max_new_tokens)
    with tempfile.TemporaryDirectory() as d:
        ready = cluster.up(d, workers=1, verifiers=3)
        gw = ready["gateway"]["address"]
        pid = ready["verifier-1"]["pid"]
        try:
            p50s(gw, 1, tokens, -1)  # warm-up: engines and channels
            clean = p50s(gw, n, tokens, 0)
            os.kill(pid, signal.SIGSTOP)
            try:
                stopped = p50s(gw, n, tokens, n)
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            cluster.down(d)
    out = {
        "tasks_per_phase": n,
        "max_new_tokens": tokens,
        "p50_clean_s": round(statistics.median(clean), 3),
        "p50_one_verifier_stopped_s": round(statistics.median(stopped), 3),
        "max_one_verifier_stopped_s": round(max(stopped), 3),
        "ratio": round(statistics.median(stopped) / statistics.median(clean), 3),
        "target_ratio": 1.2,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"p50 latency, all verifiers answering : {out['p50_clean_s']:.3f} s ({n} tasks, k = 3 of 3)")
    print(f"p50 latency, verifier-1 SIGSTOPped   : {out['p50_one_verifier_stopped_s']:.3f} s")
    print(f"ratio stopped / clean                : {out['ratio']:.3f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
