"""Engine throughput on the embedded models, the price of determinism, and batching.

Default: tokens/s (greedy, sampled, beam) and images/s, each in deterministic and relaxed mode,
measured interleaved in this one run; the figure to watch is the ratio deterministic / relaxed
time (target <= 1.10). Absolute numbers drift between runs on these machines; ratios don't.

--batching: throughput of 16 concurrent greedy tasks (continuous batching, packed pass) against
the serial engine (transformers' forward, one task at a time) and against the packed pass with a
batch of one, on tiny-text and on a GPT-2-shaped 124M model built locally from a seeded config
(targets >= 4x and >= 2.5x the serial engine), measured interleaved in one run at 2 threads; then
token differences between batched and alone over mixed tasks (>= 1,000 on tiny-text; target 0);
then images: 8 concurrent tiny-image tasks batched against one at a time, and byte differences
(pixels and trajectory tensors) between batched and alone over >= 100 mixed image tasks (target
0). --quick shortens every part to suite size; --images-only runs the image part alone.

    python bench/bench_engines.py [--rounds 5] [--json]
    python bench/bench_engines.py --batching [--quick] [--json] [--gpt2-dir DIR] [--images-only]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from trustgen.engines.batching import run_continuous  # noqa: E402
from trustgen.engines.decoding import task_state  # noqa: E402
from trustgen.engines.determinism import configure  # noqa: E402
from trustgen.engines.generate import load_engine  # noqa: E402
from trustgen.engines.packed import packed_runner  # noqa: E402
from trustgen.engines.params import ImageParams, TextParams  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from local_gpt2 import build_gpt2  # noqa: E402

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


WORDS = "verifiable training of the gossip protocol byzantine consensus we propose locality sensitive hashing".split()


def mixed_tasks(n: int, seed: int, max_tokens: int) -> list[TextParams]:
    """Greedy, sampled and beam tasks of mixed prompts, lengths and sampling options."""
    rng = random.Random(seed)
    return [
        TextParams(
            prompt=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 24))),
            max_new_tokens=rng.randint(1, max_tokens),
            decoding=("greedy", "sample", "beam")[i % 3],
            num_beams=rng.randint(2, 4),
            seed=rng.randrange(2**31),
            temperature=rng.choice([0.7, 1.0, 1.5]),
            top_k=rng.choice([0, 20, 50]),
            top_p=rng.choice([1.0, 0.9]),
        )
        for i in range(n)
    ]


def throughput(engine, new_tokens: int, rounds: int, concurrent: int = 16) -> dict:
    """Tokens/s: serial engine (one task), packed batch of one, and `concurrent` tasks batched."""
    p = TextParams(prompt="Verifiable training", max_new_tokens=new_tokens)
    batch = [p] * concurrent
    ways = {
        "serial": lambda: [engine.generate_unpacked(p)],
        "packed_alone": lambda: [engine.generate(p)],
        "batched": lambda: engine.generate_batch(batch, concurrent),
        # The packed pass with addmm matmuls (the mode before MKL's packed-weight gemm).
        "packed_alone_addmm": lambda: addmm_mode(engine, [p], 1),
        "batched_addmm": lambda: addmm_mode(engine, batch, concurrent),
    }
    for run in ways.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in ways}
    tokens: dict[str, int] = {}
    for _ in range(rounds):  # interleaved so the machine's load hits every way alike
        for name, run in ways.items():
            t0 = time.perf_counter()
            outs = run()
            times[name].append(time.perf_counter() - t0)
            tokens[name] = sum(len(o.token_ids) for o in outs)
    rate = {k: tokens[k] / statistics.median(v) for k, v in times.items()}
    return {
        "tokens_per_s": {k: round(v, 1) for k, v in rate.items()},
        "batched_over_serial": round(rate["batched"] / rate["serial"], 2),
        "batched_over_packed_alone": round(rate["batched"] / rate["packed_alone"], 2),
        "packed_alone_over_serial": round(rate["packed_alone"] / rate["serial"], 2),
        "packed_alone_addmm_over_serial": round(rate["packed_alone_addmm"] / rate["serial"], 2),
        "batched_over_batched_addmm": round(rate["batched"] / rate["batched_addmm"], 2),
    }


def addmm_mode(engine, tasks: list[TextParams], capacity: int) -> list:
    """Tasks through the packed pass with addmm matmuls (packed_runner(prepack=False))."""
    runner = packed_runner(engine.model, prepack=False)
    states = [task_state(p, engine.prompt_ids(p), engine.eos_id) for p in tasks]
    with torch.inference_mode():
        run_continuous(runner, states, capacity)
    return [SimpleNamespace(token_ids=st.tokens) for st in states]


def invariance(engine, tasks: list[TextParams], concurrent: int = 16) -> dict:
    """Token (and beam score) differences between batched and alone, task by task."""
    t0 = time.perf_counter()
    together = engine.generate_batch(tasks, concurrent)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [engine.generate(p) for p in tasks]
    t_alone = time.perf_counter() - t0
    tasks_differing = sum(a.token_ids != b.token_ids or a.score != b.score for a, b in zip(alone, together))
    positions = sum(
        sum(x != y for x, y in zip(a.token_ids, b.token_ids)) + abs(len(a.token_ids) - len(b.token_ids))
        for a, b in zip(alone, together)
    )
    return {
        "tasks": len(tasks),
        "tokens": sum(len(o.token_ids) for o in alone),
        "tasks_differing": tasks_differing,
        "token_differences": positions,
        "alone_over_batched_time": round(t_alone / t_batch, 2),
    }


IMAGE_WORDS = "small large red blue green yellow white black circle square triangle cross".split()
SAMPLERS = ["ddim", "euler", "euler_ancestral", "dpmsolver", "pndm", "ddpm"]


def mixed_images(n: int, seed: int) -> list[ImageParams]:
    """Mixed prompts, seeds, guidance (1.0 and above), step counts, sizes and all six samplers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sched = SAMPLERS[i % len(SAMPLERS)]
        out.append(
            ImageParams(
                prompt="a " + " ".join(rng.choice(IMAGE_WORDS) for _ in range(rng.randint(1, 6))),
                seed=rng.randrange(2**31),
                steps=rng.randint(4, 8) if sched == "pndm" else rng.randint(1, 8),
                guidance=rng.choice([1.0, 2.0, 3.0, 7.5]),
                height=rng.choice([16, 32]),
                width=rng.choice([16, 32]),
                scheduler=sched,
            )
        )
    return out


def image_throughput(engine, rounds: int, concurrent: int = 8, steps: int = 20) -> dict:
    """Images/s of `concurrent` tiny-image tasks (32x32, DDIM, guidance 3, trajectories recorded as
    a worker does): one at a time against one batched call, interleaved."""
    tasks = [ImageParams(prompt=f"a {IMAGE_WORDS[i % 12]} circle", seed=i, steps=steps) for i in range(concurrent)]
    ways = {
        "serial": lambda: [engine.generate(p, record=True) for p in tasks],
        "batched": lambda: engine.generate_batch(tasks, record=True),
    }
    for run in ways.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in ways}
    cpu: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            c0 = time.process_time()
            times[name].append(timed(run))
            cpu[name].append(time.process_time() - c0)
    rate = {k: concurrent / statistics.median(v) for k, v in times.items()}
    # CPU seconds too: on a host loaded by others the wall clock swings with the neighbours.
    cpu_rate = {k: concurrent / statistics.median(v) for k, v in cpu.items()}
    return {
        "images_per_s": {k: round(v, 2) for k, v in rate.items()},
        "batched_over_serial": round(rate["batched"] / rate["serial"], 2),
        "images_per_cpu_s": {k: round(v, 2) for k, v in cpu_rate.items()},
        "batched_over_serial_cpu": round(cpu_rate["batched"] / cpu_rate["serial"], 2),
    }


def _byte_differences(a: bytes, b: bytes) -> int:
    import numpy as np

    n = min(len(a), len(b))
    same_len = np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8)
    return int(same_len.sum()) + abs(len(a) - len(b))


def image_invariance(engine, tasks: list[ImageParams]) -> dict:
    """Byte differences (pixels and trajectory tensors) between batched and alone, task by task."""
    t0 = time.perf_counter()
    together = engine.generate_batch(tasks, record=True)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [engine.generate(p, record=True) for p in tasks]
    t_alone = time.perf_counter() - t0
    diffs = [
        _byte_differences(a.pixels.tobytes(), b.pixels.tobytes())
        + _byte_differences(a.trajectory.to_bytes(), b.trajectory.to_bytes())
        for a, b in zip(alone, together)
    ]
    return {
        "tasks": len(tasks),
        "bytes_compared": sum(len(a.pixels.tobytes()) + len(a.trajectory.to_bytes()) for a in alone),
        "tasks_differing": sum(d > 0 for d in diffs),
        "byte_differences": sum(diffs),
        "alone_over_batched_time": round(t_alone / t_batch, 2),
    }


def image_batching(quick: bool, rounds: int) -> dict:
    engine = load_engine("tiny-image", "image", threads=2)
    return {
        "tiny_image_8": image_throughput(engine, 1 if quick else rounds, steps=4 if quick else 20),
        "invariance_tiny_image": image_invariance(engine, mixed_images(12 if quick else 120, 3)),
        "image_profile_batching": engine.profile.flags["batching"],
    }


def print_images(report: dict) -> None:
    r = report["tiny_image_8"]
    rates = ", ".join(f"{k} {v:.2f} img/s" for k, v in r["images_per_s"].items())
    print(
        f"tiny_image_8: {rates}; batched/serial {r['batched_over_serial']:.2f}x wall, "
        f"{r['batched_over_serial_cpu']:.2f}x in CPU seconds"
    )
    r = report["invariance_tiny_image"]
    print(
        f"invariance_tiny_image: {r['tasks']} mixed tasks, {r['bytes_compared']} bytes (pixels and "
        f"trajectories): {r['tasks_differing']} tasks and {r['byte_differences']} bytes differ from "
        f"alone (target 0); alone/batched time {r['alone_over_batched_time']:.2f}x"
    )


def batching(args: argparse.Namespace) -> None:
    quick = args.quick
    if args.images_only:
        report = image_batching(quick, args.rounds)
        if args.json:
            print(json.dumps(report))
        else:
            print_images(report)
        return
    gpt2_dir = args.gpt2_dir or pathlib.Path(tempfile.gettempdir()) / "trustgen-bench-gpt2-124m"
    report: dict = {"threads": 2, "quick": quick}
    tiny = load_engine("tiny-text", "text", threads=2)
    report["tiny_text_16"] = throughput(tiny, 32 if quick else 128, 1 if quick else args.rounds)
    big = load_engine(str(build_gpt2(gpt2_dir)), "text", threads=2)
    report["gpt2_124m_16"] = throughput(big, 16 if quick else 128, 1 if quick else 2)
    report["invariance_tiny_text"] = invariance(tiny, mixed_tasks(96 if quick else 1200, 1, 32))
    report["invariance_gpt2_124m"] = invariance(big, mixed_tasks(8 if quick else 48, 2, 8 if quick else 16))
    report["profile_batching"] = tiny.profile.flags["batching"]
    report |= image_batching(quick, args.rounds)
    if args.json:
        print(json.dumps(report))
        return
    for name, target in (("tiny_text_16", 4.0), ("gpt2_124m_16", 2.5)):
        r = report[name]
        rates = ", ".join(f"{k} {v:.1f} tok/s" for k, v in r["tokens_per_s"].items())
        print(
            f"{name}: {rates}; batched/serial {r['batched_over_serial']:.2f}x (target >= {target}x), "
            f"batched/packed-alone {r['batched_over_packed_alone']:.2f}x; a lone task packed/serial "
            f"{r['packed_alone_over_serial']:.2f}x (addmm mode {r['packed_alone_addmm_over_serial']:.2f}x); "
            f"batched MKL-packed/addmm {r['batched_over_batched_addmm']:.2f}x"
        )
    for name in ("invariance_tiny_text", "invariance_gpt2_124m"):
        r = report[name]
        print(
            f"{name}: {r['tasks']} mixed tasks, {r['tokens']} tokens: {r['tasks_differing']} tasks and "
            f"{r['token_differences']} tokens differ from alone (target 0); alone/batched time "
            f"{r['alone_over_batched_time']:.2f}x"
        )
    print_images(report)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batching", action="store_true", help="batched generation: throughput and invariance")
    ap.add_argument("--quick", action="store_true", help="with --batching: suite-sized")
    ap.add_argument("--images-only", action="store_true", help="with --batching: the image part alone")
    ap.add_argument("--gpt2-dir", type=pathlib.Path, help="where the local 124M model is built (reused)")
    args = ap.parse_args()
    if args.batching:
        batching(args)
        return

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
