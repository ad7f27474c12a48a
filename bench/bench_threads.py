"""Thread defaults on a loaded host: the node's settings against torch's naive ones, under a CPU hog.

While one busy-looping process per core runs, two fresh interpreters time the same tiny-text
generation (median of `--reps`):

- default: what a node runs with: OpenMP waits passively (trustgen sets `OMP_WAIT_POLICY=PASSIVE`
  unless the operator set it) and one engine thread (`threads = 1` in node config);
- naive: torch's own defaults: as many threads as cores, OpenMP threads spinning while they wait.

The figure is naive / default, measured in one run (higher: the defaults matter more).

    python bench/bench_threads.py [--tokens 32] [--reps 5] [--json]
    python bench/bench_threads.py --quick      # 8 tokens, 3 reps
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys

CHILD = """
import json, statistics, sys, time
naive = sys.argv[1] == "naive"
if not naive:
    import trustgen  # noqa: F401  (sets the OpenMP default before torch loads)
import torch
from trustgen.engines.generate import load_engine
from trustgen.engines.params import TextParams
engine = load_engine("tiny-text", "text", threads=None if naive else 1)
if naive:
    torch.set_num_threads(__import__("os").cpu_count())
p = TextParams(prompt="The network", max_new_tokens=int(sys.argv[2]))
engine.generate(p)
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    engine.generate(p)
    times.append(time.perf_counter() - t0)
print(json.dumps({"median_s": statistics.median(times), "threads": torch.get_num_threads()}))
"""


def _hog() -> None:
    while True:
        pass


def timed(mode: str, tokens: int, reps: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    if mode == "naive":
        env["OMP_WAIT_POLICY"] = "ACTIVE"  # spinning waits, as without the default (and `make`'s)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(tokens), str(reps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="8 tokens, 3 reps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tokens, reps = (8, 3) if args.quick else (args.tokens, args.reps)
    cores = os.cpu_count() or 1
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(cores)]
    for h in hogs:
        h.start()
    try:
        default = timed("default", tokens, reps)
        naive = timed("naive", tokens, reps)
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    res = {
        "cores": cores,
        "hogs": cores,
        "tokens": tokens,
        "default_s": round(default["median_s"], 4),
        "default_threads": default["threads"],
        "naive_s": round(naive["median_s"], 4),
        "naive_threads": naive["threads"],
        "naive_over_default": round(naive["median_s"] / default["median_s"], 2),
    }
    if args.json:
        print(json.dumps(res))
        return
    print(f"{tokens}-token tiny-text generation under {cores} busy-looping processes ({cores} cores)")
    print(f"default (passive OpenMP, {res['default_threads']} thread): {res['default_s'] * 1e3:.0f} ms")
    print(f"naive (spinning OpenMP, {res['naive_threads']} threads): {res['naive_s'] * 1e3:.0f} ms")
    print(f"naive / default: {res['naive_over_default']}x")


if __name__ == "__main__":
    main()
