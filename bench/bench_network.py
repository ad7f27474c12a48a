"""End-to-end cost of verified tasks on a local multi-process network.

1. Baseline, measured in this run: one generation of the text task plus one prefill
   verification of its output, in-process on the same machine.
2. The same task submitted to the network (gateway, workers, verifiers as separate processes)
   and followed until its certificate is checked by the client: median latency.
   Overhead = median end-to-end / baseline - 1 (target: under 20 %).
3. Throughput: verified tasks per second with 1, 4 and 16 concurrent clients.

    python bench/bench_network.py [--tasks 12] [--max-new-tokens 256] [--json]

--batching: only the 16-client throughput, side by side in one run: batching off (worker_batch 1,
verifier_batch 1) and on (16 each: a worker's tasks decode together, continuously; a verifier's
concurrent checks share one prefill pass), with the CPU time each role spent per task.
--profile DIR: also cProfile every node (and the clients) over the measured run and print each
role's CPU per task by phase (bench/profile_phases.py); profiling slows everything, so the
throughput figures of a profiled run are not the ones to quote.

    python bench/bench_network.py --batching [--per-client 4] [--profile DIR] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.engines.generate import load_engine  # noqa: E402
from trustgen.engines.params import TextParams  # noqa: E402
from trustgen.node import cluster  # noqa: E402
from trustgen.node.client import make_task, submit  # noqa: E402
from trustgen.node.profiling import ENV as PROFILE_ENV  # noqa: E402
from trustgen.verifier.prefill import prefill_check  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from profile_phases import report  # noqa: E402

NET = "trustgen-local"


async def one(gw: str, params: TextParams, verifiers: int) -> float:
    me = Identity.generate()
    task = make_task(me, NET, "text", "tiny-text", params.to_dict(), verifiers)
    t0 = time.perf_counter()
    res = await submit(gw, task, me, NET, insecure=True, timeout_s=600)
    assert res["decision"] == "accept", res
    return time.perf_counter() - t0


async def clients(gw: str, n_clients: int, per_client: int, verifiers: int, tokens: int) -> float:
    async def client(c: int) -> None:
        for i in range(per_client):
            await one(gw, TextParams(prompt=f"Client {c} task {i}", max_new_tokens=tokens), verifiers)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(n_clients)))
    return n_clients * per_client / (time.perf_counter() - t0)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_role(ready: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, info in ready.items():
        role = name.split("-")[0]
        out[role] = out.get(role, 0.0) + _cpu_s(info["pid"])
    return out


def _profiles(ready: dict, where: pathlib.Path, timeout_s: float = 60.0) -> dict[str, list[str]]:
    """Ask every node for its profile (SIGUSR2) and wait for the files; paths by role."""
    want = {name: where / f"{info['pid']}.prof" for name, info in ready.items()}
    for info in ready.values():
        os.kill(info["pid"], signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in want.values()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no profile from {[n for n, p in want.items() if not p.exists()]}")
        time.sleep(0.1)  # polling files a child writes: nothing to wait on
    out: dict[str, list[str]] = {}
    for name, path in want.items():
        out.setdefault(name.split("-")[0], []).append(str(path))
    return out


def batching(args: argparse.Namespace) -> None:
    """Verified tasks/s at 16 clients with batching off (workers and verifiers one task or check
    at a time), then on; clusters started alike. Also the CPU seconds each role spent per task
    (gateway, all workers, all verifiers, and the 16 clients in this process): where the time goes."""
    res: dict = {}
    for batch in (1, 16):
        root = tempfile.mkdtemp(prefix="tg-bench-net-batch-")
        settings = {f"worker-{i + 1}": {"worker_batch": batch} for i in range(args.workers)}
        settings |= {f"verifier-{i + 1}": {"verifier_batch": batch} for i in range(args.verifiers)}
        prof_dir = pathlib.Path(args.profile) / f"batch_{batch}" if args.profile else None
        if prof_dir:
            os.environ[PROFILE_ENV] = str(prof_dir)
        ready = cluster.up(root, workers=args.workers, verifiers=args.verifiers, node_settings=settings)
        os.environ.pop(PROFILE_ENV, None)
        gw = ready["gateway"]["address"]
        n_tasks = 16 * args.per_client
        try:
            asyncio.run(one(gw, TextParams(prompt="We", max_new_tokens=64), args.verifiers))  # warm-up
            if prof_dir:
                for info in ready.values():
                    os.kill(info["pid"], signal.SIGUSR1)  # the profiled window starts now
            prof = cProfile.Profile(time.thread_time) if prof_dir else None
            cpu0 = _cpu_by_role(ready) | {"clients": time.process_time()}
            if prof:
                prof.enable()
            res[f"batch_{batch}"] = round(asyncio.run(clients(gw, 16, args.per_client, args.verifiers, 64)), 3)
            if prof:
                prof.disable()
            cpu1 = _cpu_by_role(ready) | {"clients": time.process_time()}
            res[f"cpu_ms_per_task_batch_{batch}"] = {k: round((cpu1[k] - cpu0[k]) * 1e3 / n_tasks, 1) for k in cpu0}
            if prof_dir and prof:
                by_role = _profiles(ready, prof_dir)
                prof.dump_stats(prof_dir / "clients.prof")
                by_role["clients"] = [str(prof_dir / "clients.prof")]
                for role, paths in by_role.items():
                    print(report(paths, n_tasks, f"batch {batch}, {role}: "), file=sys.stderr)
        finally:
            cluster.down(root)
    res["ratio"] = round(res["batch_16"] / res["batch_1"], 2)
    if args.json:
        print(json.dumps(res))
        return
    print(
        f"16 clients x {args.per_client} 64-token tasks, {args.workers} workers, {args.verifiers} verifiers: "
        f"{res['batch_1']:.2f} verified tasks/s batching off, {res['batch_16']:.2f} on "
        f"({res['ratio']:.2f}x; target >= 3x)"
    )
    for b in (1, 16):
        cpu = res[f"cpu_ms_per_task_batch_{b}"]
        print(f"CPU ms per task, batch {b}: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--verifiers", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batching", action="store_true", help="16-client throughput, worker batching off vs on")
    ap.add_argument("--per-client", type=int, default=4, help="with --batching: tasks per client")
    ap.add_argument("--profile", metavar="DIR", help="with --batching: cProfile every node, print phases")
    args = ap.parse_args()
    if args.batching:
        batching(args)
        return
    params = TextParams(prompt="We", max_new_tokens=args.max_new_tokens)

    engine = load_engine("tiny-text", "text", threads=1)  # the nodes run one thread each
    out = engine.generate(params)
    gen_t, ver_t = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        out = engine.generate(params)
        gen_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert prefill_check(engine, params, out.token_ids, 1e-3).accept
        ver_t.append(time.perf_counter() - t0)
    baseline = statistics.median(gen_t) + statistics.median(ver_t)

    root = tempfile.mkdtemp(prefix="tg-bench-net-")
    ready = cluster.up(root, workers=args.workers, verifiers=args.verifiers)
    gw = ready["gateway"]["address"]
    try:
        asyncio.run(one(gw, params, args.verifiers))  # warm-up: first-call costs in every process
        lat = [asyncio.run(one(gw, params, args.verifiers)) for _ in range(args.tasks)]
        tput = {
            n: asyncio.run(clients(gw, n, max(1, 16 // n) if n < 16 else 1, args.verifiers, 64)) for n in (1, 4, 16)
        }
    finally:
        cluster.down(root)
    med = statistics.median(lat)
    res = {
        "tokens": len(out.token_ids),
        "generate_s": round(statistics.median(gen_t), 4),
        "verify_s": round(statistics.median(ver_t), 4),
        "baseline_s": round(baseline, 4),
        "e2e_median_s": round(med, 4),
        "e2e_p90_s": round(sorted(lat)[int(0.9 * (len(lat) - 1))], 4),
        "overhead": round(med / baseline - 1, 3),
        "tasks_per_s": {str(k): round(v, 3) for k, v in tput.items()},
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"text task, {res['tokens']} tokens, {args.verifiers} verifiers, {args.workers} workers")
    print(
        f"baseline (generate + one prefill check): {baseline * 1e3:.0f} ms "
        f"({res['generate_s'] * 1e3:.0f} + {res['verify_s'] * 1e3:.0f})"
    )
    print(f"end to end, median of {len(lat)}: {med * 1e3:.0f} ms (p90 {res['e2e_p90_s'] * 1e3:.0f} ms)")
    print(f"network overhead at the median: {res['overhead']:+.1%} (target < 20%)")
    for k, v in tput.items():
        print(f"throughput with {k:>2} concurrent clients: {v:.2f} verified tasks/s (64-token tasks)")


if __name__ == "__main__":
    main()
