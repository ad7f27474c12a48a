"""Hostile tasks interleaved with honest ones: honest p50 latency against a clean run (target <= 1.5x).

A local network of processes (gateway, one worker, one verifier: the case where one worker made
unlucky must hurt most). First `--honest` honest 8-token text tasks, one after another, each
followed to its checked certificate: the clean p50. Then the same number again while 100 hostile
tasks are submitted between them (a few before each honest task, not awaited): wrong types and
unknown parameters, models nobody serves, a verifier count over the pool, the protocol's
maximum sizes (a 1024x1024 image at 200 steps, a 4096-character prompt with 1024 new tokens and
16 beams: over every worker's budget) and prompts over the model's context (valid at the edge, the
worker refuses them). The figure is hostile p50 / clean p50, measured in one run; the hostile
tasks' outcomes are counted. `--at-budget` makes one in ten hostile tasks an image exactly at the
worker's budget (64x64, 10 steps here): legal work that runs, so it shows what the operator's
budget costs honest tasks on a single worker, not what refusing bad input costs.

    python bench/bench_hostile.py [--honest 20] [--hostile 100] [--at-budget] [--json]
    python bench/bench_hostile.py --quick      # 8 honest, 40 hostile
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402

from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.net.peers import Peers  # noqa: E402
from trustgen.node import cluster  # noqa: E402
from trustgen.node.client import make_task, submit  # noqa: E402

NET = "trustgen-local"
BUDGET_SIDE, BUDGET_STEPS = 64, 10  # the worker's image budget in this bench: one 64x64 image, 10 steps
UNSERVED = "sha256:" + "0" * 64


def hostile_tasks(me: Identity, n: int, at_budget: bool) -> list[tuple[str, Any]]:
    text = [
        ("bad type", {"prompt": "x", "max_new_tokens": 8.0}),
        ("bad type", {"prompt": "x", "seed": 1.0}),
        ("bad type", {"prompt": "x", "temperature": "hot"}),
        ("unknown parameter", {"prompt": "x", "gpu": 0}),
        ("maximum size", {"prompt": "x" * 4096, "max_new_tokens": 1024, "decoding": "beam", "num_beams": 16}),
        ("over the context", {"prompt": "word " * 200, "max_new_tokens": 200}),
    ]
    image = [
        ("maximum size", {"prompt": "x", "height": 1024, "width": 1024, "steps": 200}),
        ("at the budget", {"prompt": "a budget", "height": BUDGET_SIDE, "width": BUDGET_SIDE, "steps": BUDGET_STEPS})
        if at_budget
        else ("bad type", {"prompt": "x", "height": 64.0}),
    ]
    out: list[tuple[str, Any]] = []
    for i in range(n):
        j = i % 10
        if j < 6:
            label, params = text[j]
            out.append((label, make_task(me, NET, "text", "tiny-text", params, 1)))
        elif j == 6:
            out.append(("unknown model", make_task(me, NET, "text", UNSERVED, {"prompt": "x"}, 1)))
        elif j == 7:
            out.append(("too many verifiers", make_task(me, NET, "text", "tiny-text", {"prompt": "x"}, 3)))
        else:
            label, params = image[j - 8]
            out.append((label, make_task(me, NET, "image", "tiny-image", params, 1)))
    return out


async def honest(gw: str, i: int) -> float:
    me = Identity.generate()
    task = make_task(me, NET, "text", "tiny-text", {"prompt": f"Honest task {i}", "max_new_tokens": 8}, 1)
    t0 = time.perf_counter()
    res = await submit(gw, task, me, NET, insecure=True, timeout_s=600)
    assert res["decision"] == "accept", res
    return time.perf_counter() - t0


async def run(gw: str, n_honest: int, n_hostile: int, at_budget: bool) -> dict[str, Any]:
    await honest(gw, -1)  # warm-up: first-call costs in every process
    clean = [await honest(gw, i) for i in range(n_honest)]
    me = Identity.generate()
    peers = Peers(me, NET, insecure=True)
    outcomes: collections.Counter[str] = collections.Counter()
    pending: list[asyncio.Task] = []

    async def hostile(label: str, task: Any) -> None:
        try:
            await peers.call(gw, "Gateway", "Submit", {"task": task.wire()}, timeout=30)
            outcomes[f"{label}: accepted"] += 1
        except grpc.aio.AioRpcError as e:
            outcomes[f"{label}: {e.code().name}"] += 1

    bad = hostile_tasks(me, n_hostile, at_budget)
    per = -(-len(bad) // n_honest)
    loaded = []
    try:
        for i in range(n_honest):
            for label, task in bad[i * per : (i + 1) * per]:
                pending.append(asyncio.ensure_future(hostile(label, task)))
            loaded.append(await honest(gw, 1000 + i))
        await asyncio.gather(*pending)
    finally:
        await peers.close()
    p_clean, p_loaded = statistics.median(clean), statistics.median(loaded)
    return {
        "honest": n_honest,
        "at_budget": at_budget,
        "hostile": len(bad),
        "clean_p50_s": round(p_clean, 3),
        "hostile_p50_s": round(p_loaded, 3),
        "ratio": round(p_loaded / p_clean, 3),
        "clean_max_s": round(max(clean), 3),
        "hostile_max_s": round(max(loaded), 3),
        "outcomes": dict(sorted(outcomes.items())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--honest", type=int, default=20)
    ap.add_argument("--hostile", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="8 honest, 40 hostile")
    ap.add_argument("--at-budget", action="store_true", help="one in ten hostile tasks exactly at the image budget")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_honest, n_hostile = (8, 40) if args.quick else (args.honest, args.hostile)
    root = tempfile.mkdtemp(prefix="tg-bench-hostile-")
    budget = {"max_image_cost": BUDGET_SIDE * BUDGET_SIDE * BUDGET_STEPS}
    ready = cluster.up(root, workers=1, verifiers=1, node_settings={"worker-1": budget})
    try:
        res = asyncio.run(run(ready["gateway"]["address"], n_honest, n_hostile, args.at_budget))
    finally:
        cluster.down(root)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['honest']} honest 8-token text tasks, clean then with {res['hostile']} hostile tasks interleaved")
    print(
        f"honest p50: clean {res['clean_p50_s']} s, hostile {res['hostile_p50_s']} s: {res['ratio']}x (target <= 1.5x)"
    )
    print(f"honest max: clean {res['clean_max_s']} s, hostile {res['hostile_max_s']} s")
    for k, v in res["outcomes"].items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
