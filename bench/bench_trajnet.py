"""Verifying image tasks on a real network: by trajectory vs by full regeneration, in one run.

Real nodes in this process (a gateway, a worker and one verifier, gRPC on loopback, the embedded
tiny-image model): the same kind of 20-step image task is submitted with every task checked by
trajectory (audit fraction 0: the verifier fetches the committed tensors from the worker, replays
the scheduler chain and re-executes c = 2 model steps), then with every task checked by
regeneration (audit fraction 1). Reported per method, from the verifier's own timings: the wall
time of a check and the process CPU time it took (the blob fetch included, and the worker's side
of serving it: the nodes share this process, and nothing else runs while the verifier checks),
and their ratio; plus the client-side end-to-end time per task.

    python bench/bench_trajnet.py [--tasks N] [--steps S] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from trustgen.consensus import challenge  # noqa: E402
from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.node.client import make_task, submit  # noqa: E402
from trustgen.node.config import NodeConfig  # noqa: E402
from trustgen.node.daemon import Node, ready_info  # noqa: E402

NET = "trustgen-local"


async def _start(root: pathlib.Path, name: str, roles: list[str], **settings: Any) -> tuple[Node, asyncio.Task]:
    d = root / name
    Identity.generate().save(d)
    cfg = NodeConfig(
        name=name,
        data_dir=d,
        roles=roles,
        insecure=True,
        metrics_port=-1,
        gossip_interval_s=0,
        open_network=True,
        **settings,
    )
    node = Node(cfg)
    task = asyncio.get_running_loop().create_task(node.run(handle_signals=False))
    await asyncio.wait_for(node.serving.wait(), 120)
    if set(roles) & {"worker", "verifier"}:
        deadline = time.monotonic() + 60
        while not (ready_info(d) or {}).get("joined"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never joined")
            await asyncio.sleep(0.05)
    return node, task


async def run(tasks: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        started = [await _start(root, "gateway", ["gateway"])]
        gw = started[0][0]
        started.append(await _start(root, "worker", ["worker"], gateway=gw.address))
        started.append(await _start(root, "verifier", ["verifier"], gateway=gw.address))
        verifier = started[-1][0].verifier
        assert verifier is not None
        me = Identity.generate()
        out: dict[str, Any] = {"tasks_per_method": tasks, "steps": steps, "c": challenge.CHECKS}
        try:
            # A regenerated image is voted on by its pHash distance: method "phash" in the Vote.
            for method, fraction, voted in (("trajectory", 0.0, "trajectory"), ("regenerate", 1.0, "phash")):
                challenge.AUDIT_FRACTION = fraction
                verifier.timings.clear()
                t0 = time.perf_counter()
                for i in range(tasks):
                    params = {"prompt": f"a small red circle number {i}", "seed": 1000 + i, "steps": steps}
                    t = make_task(me, NET, "image", "tiny-image", params, 1)
                    got = await submit(gw.address, t, me, NET, insecure=True, timeout_s=300)
                    assert got["decision"] == "accept", got
                n, wall, cpu = verifier.timings[voted]
                assert n == tasks, verifier.timings
                out[method] = {
                    "check_wall_s": wall / n,
                    "check_cpu_s": cpu / n,
                    "task_end_to_end_s": (time.perf_counter() - t0) / tasks,
                }
        finally:
            challenge.AUDIT_FRACTION = 0.1
            for node, task in reversed(started):
                node.stop()
                await task
    tr, rg = out["trajectory"], out["regenerate"]
    out["wall_ratio"] = tr["check_wall_s"] / rg["check_wall_s"]
    out["cpu_ratio"] = tr["check_cpu_s"] / rg["check_cpu_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3, help="tasks per method")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="the suite-sized run: 1 task per method, 4 steps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tasks, steps = (1, 4) if args.quick else (args.tasks, args.steps)
    res = asyncio.run(run(tasks, steps))
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"image tasks of {steps} steps, {tasks} per method, c = {res['c']}, one verifier on a real network")
    for m in ("trajectory", "regenerate"):
        r = res[m]
        print(
            f"  {m:10s}: check {r['check_wall_s'] * 1000:8.1f} ms wall, {r['check_cpu_s'] * 1000:8.1f} ms CPU;"
            f" task end to end {r['task_end_to_end_s']:.2f} s"
        )
    print(f"  trajectory / regeneration: wall {res['wall_ratio']:.3f}, CPU {res['cpu_ratio']:.3f}")


if __name__ == "__main__":
    main()
