"""A long text calibration in chunks: `calibrate text` with one seed per chunk, each chunk's
report saved as it finishes and all of them merged after each one, so a run cut short (a
deadline, a loaded host) keeps every pair it measured.

    python scripts/calibrate_text_chunks.py --model smollm2-135m --chunks 10 --out DIR
    python scripts/calibrate_text_chunks.py --model smollm2-135m --dtype bfloat16 --chunks 10 --out DIR

A chunk of 3 samples is one greedy, one sampled and one beam task (the order calibrate uses).
With --dtype, claims computed in that dtype are checked as the policy checks them (a chunk of 2
samples: one greedy, one sampled task; calibrate_text_dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trustgen.verifier.calibrate import (  # noqa: E402
    calibrate_text,
    calibrate_text_dtype,
    merge_text_reports,
    write_report,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-text")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--chunk-samples", type=int, default=3)
    ap.add_argument("--dtype", default=None, help="calibrate claims computed in this dtype (bfloat16, float16)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k in range(args.chunks):
        seed = args.first_seed + k
        t0, c0 = time.perf_counter(), time.process_time()
        if args.dtype is None:
            rep = calibrate_text(args.chunk_samples, args.model, args.max_new_tokens, seed=seed)
        else:
            rep = calibrate_text_dtype(args.chunk_samples, args.model, args.dtype, args.max_new_tokens, seed=seed)
        rep["seed"] = seed
        rep["wall_s"], rep["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        (args.out / f"chunk-{seed}.json").write_text(json.dumps(rep, indent=1) + "\n")
        chunks = [json.loads(p.read_text()) for p in sorted(args.out.glob("chunk-*.json"))]
        merged = merge_text_reports(chunks)
        merged["seeds"] = [c["seed"] for c in chunks]
        merged["cpu_s"] = sum(c["cpu_s"] for c in chunks)
        write_report(merged, args.out)
        r = merged["rates"]
        print(
            f"chunk seed {seed}: {rep['cpu_s']:.0f} s CPU, {rep['wall_s']:.0f} s wall; pooled "
            f"{merged['honest_pairs']} honest / {merged['dishonest_pairs']} dishonest gaps, "
            f"false reject {r['false_reject']:.3f} {r['false_reject_ci95']}, "
            f"false accept {r['false_accept']:.3f} {r['false_accept_ci95']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
