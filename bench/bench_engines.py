"""Engine throughput on the embedded models, and the price of determinism.

Prints tokens/s (greedy, sampled, beam) and images/s, each in deterministic and relaxed mode,
measured interleaved in this one run; the figure to watch is the ratio deterministic / relaxed
time (target <= 1.10). Absolute numbers drift between runs on these machines; ratios don't.

    python bench/bench_engines.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trustgen.engines.determinism import configure  # noqa: E402
from trustgen.engines.generate import load_engine  # noqa: E402
from trustgen.engines.params import ImageParams, TextParams  # noqa: E402

TEXT = {
    "greedy": TextParams(prompt="Verifiable training", max_new_tokens=128),
    "sample": TextParams(prompt="Verifiable training", max_new_tokens=128, decoding="sample", seed=1, top_p=0.95),
    "beam4": TextParams(prompt="Verifiable training", max_new_tokens=64, decoding="beam", num_beams=4),
}
IMAGE = ImageParams(prompt="a large red circle on a blue background", seed=1, steps=20)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    text = load_engine("tiny-text", "text")
    image = load_engine("tiny-image", "image")
    cases = {f"text_{k}": (text, p) for k, p in TEXT.items()}
    cases["image"] = (image, IMAGE)
    times: dict[str, dict[bool, list[float]]] = {k: {True: [], False: []} for k in cases}
    units: dict[str, int] = {}
    for name, (eng, p) in cases.items():  # warm-up, and count the units produced
        out = eng.generate(p)
        units[name] = len(out.token_ids) if name.startswith("text") else 1
    for _ in range(args.rounds):
        for det in (True, False):  # interleaved so drift hits both modes alike
            configure("cpu", deterministic=det)
            for name, (eng, p) in cases.items():
                times[name][det].append(timed(lambda: eng.generate(p)))
    configure("cpu", deterministic=True)

    report = {}
    for name, t in times.items():
        det, rel = statistics.median(t[True]), statistics.median(t[False])
        unit = "images/s" if name == "image" else "tokens/s"
        report[name] = {
            unit: round(units[name] / det, 2),
            f"{unit}_relaxed": round(units[name] / rel, 2),
            "det_over_relaxed": round(det / rel, 3),
        }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{'case':<14}{'deterministic':>18}{'relaxed':>18}{'det/relaxed':>14}")
    for name, r in report.items():
        unit = "images/s" if name == "image" else "tokens/s"
        print(
            f"{name:<14}{r[unit]:>12.1f} {unit[:-2]}/s{r[unit + '_relaxed']:>12.1f} {unit[:-2]}/s"
            f"{r['det_over_relaxed']:>14.3f}"
        )
    worst = max(r["det_over_relaxed"] for r in report.values())
    print(f"cost of deterministic mode (worst case): {worst:.3f}x (target <= 1.10)")


if __name__ == "__main__":
    main()
