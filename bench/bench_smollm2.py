"""The real embedded model (smollm2-135m), measured in one run:

- first-use conversion is not timed here (it runs once; docs/benchmarks.md has the figure);
- load time of the converted float32 directory, computed in float32 and in bfloat16;
- generation speed (tokens/s) and the prefill check's cost as a ratio of generating the same
  256 tokens (target: at least 25x cheaper, 2 threads), for greedy decoding, sampling from the
  whole distribution, and top-p sampling (p = 0.95, where the gap computation, before issue 18's
  top-p rewrite, cost more than the model: its figure with the sorting rule is printed beside);
- where the time goes: in generation, the model's forward calls vs the decoding loop around
  them; in the check, the transformer body, the output projection (all positions vs only the
  claimed ones, `logits_to_keep`), and the gap computation, in CPU seconds; the check at 1 and
  2 threads.

Every figure is the best of its repetitions (the host is shared; the minimum is the least
disturbed run), and each ratio divides two figures taken in this run, both in CPU seconds (what
the work costs, whatever else the host runs) and in wall-clock seconds.

    python bench/bench_smollm2.py [--quick] [--ratio-only] [--reps N] [--json]     (--quick: 64 tokens)

--ratio-only measures the three ratios alone (no loads in bfloat16, no breakdown): the figure to
repeat, one process per run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from trustgen.engines.generate import load_engine  # noqa: E402
from trustgen.engines.params import TextParams  # noqa: E402
from trustgen.engines.sampling import gumbel_noise_rows, top_p_by_sort  # noqa: E402
from trustgen.errors import ModelError  # noqa: E402
from trustgen.verifier.prefill import prefill_check, token_gaps  # noqa: E402

MODEL = "smollm2-135m"
# Chat prompts that make the model write at length; the first that runs the full budget is used.
PROMPTS = [
    "Write a long, detailed story about a robot who checks the work of other robots.",
    "Explain in detail how a bicycle works, part by part.",
    "Describe a day in the life of a lighthouse keeper, hour by hour.",
]


def cpu_of(fn: Callable[[], Any], n: int) -> float:
    return timed(fn, n)[1]


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds (this process, all its threads) over n runs. On a
    host shared with other jobs the wall clock measures the neighbours as much as the work;
    CPU time is what the work itself costs."""
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


MODES = {
    "greedy": dict(decoding="greedy"),
    "sample": dict(decoding="sample", temperature=0.7),
    "sample_top_p": dict(decoding="sample", temperature=0.7, top_p=0.95),
}


def _full_length(engine: Any, n: int, mode: str) -> tuple[TextParams, list[int]]:
    for prompt in PROMPTS:
        p = TextParams(prompt=prompt, chat=True, max_new_tokens=n, seed=5, **MODES[mode])
        out = engine.generate(p)
        if len(out.token_ids) == n:
            return p, out.token_ids
    raise SystemExit(f"no prompt generated {n} tokens")


def _raw_decode(engine: Any, prompt: list[int], tokens: list[int]) -> None:
    """The model calls generation makes (prompt, then one token at a time with the KV cache),
    feeding the known tokens: what generation costs without its decoding loop."""
    with torch.inference_mode():
        res = engine.model(input_ids=torch.tensor([prompt]), use_cache=True)
        past = res.past_key_values
        for t in tokens[:-1]:
            past = engine.model(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True).past_key_values


def _sorting_rule_gaps(p: TextParams, tokens: list[int], logits: torch.Tensor) -> torch.Tensor:
    """The sampled gaps as computed before issue 18: top-p by a stable sort of every row, noise
    for the whole vocabulary (same bits as token_gaps; the cost is what differs)."""
    x = top_p_by_sort(logits.double() / p.temperature, p.top_p)
    s = x + gumbel_noise_rows(p.seed, range(len(tokens)), x.shape[1])
    return (s.max(dim=-1).values - s.gather(1, torch.tensor(tokens)[:, None])[:, 0]) * p.temperature


def _parts(engine: Any, p: TextParams, prompt: list[int], tokens: list[int], reps: int) -> dict[str, float]:
    ids = torch.tensor([prompt + tokens[:-1]])
    keep = len(tokens)
    out: dict[str, float] = {}
    with torch.inference_mode():
        h = engine.model.model(input_ids=ids).last_hidden_state
        out["body_s"] = cpu_of(lambda: engine.model.model(input_ids=ids), reps)
        out["lm_head_all_positions_s"] = cpu_of(lambda: engine.model.lm_head(h), reps)
        out["lm_head_claimed_positions_s"] = cpu_of(lambda: engine.model.lm_head(h[:, -keep:]), reps)
        out["plain_forward_s"] = cpu_of(lambda: engine.model(input_ids=ids), reps)
        logits = engine.model.lm_head(h[:, -keep:])[0].float()
    out["gaps_s"] = cpu_of(lambda: token_gaps(engine, p, tokens, logits), reps)
    if p.top_p < 1.0:
        assert torch.equal(_sorting_rule_gaps(p, tokens, logits), token_gaps(engine, p, tokens, logits))
        out["gaps_sorting_rule_s"] = cpu_of(lambda: _sorting_rule_gaps(p, tokens, logits), reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64 tokens instead of 256")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of each generation (checks run two more)")
    ap.add_argument("--ratio-only", action="store_true", help="the three ratios alone")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n, reps = (64 if args.quick else 256), max(1, args.reps)
    res: dict[str, float] = {"tokens": n}
    try:
        t0 = time.perf_counter()
        engine = load_engine(MODEL, "text", threads=2)
        res["load_float32_s"] = time.perf_counter() - t0
    except ModelError as e:
        sys.exit(f"error: {e}")
    if not args.ratio_only:
        t0 = time.perf_counter()
        bf16 = load_engine(MODEL, "text", dtype="bfloat16", threads=2)
        res["load_bfloat16_s"] = time.perf_counter() - t0
    res["load_average_1min_start"] = os.getloadavg()[0]
    for mode in MODES:
        p, tokens = _full_length(engine, n, mode)
        prompt = engine.prompt_ids(p)
        t_gen, c_gen = timed(lambda: engine.generate(p), reps)
        t_pre, c_pre = timed(lambda: prefill_check(engine, p, tokens, 1e-3), reps + 2)
        assert prefill_check(engine, p, tokens, 1e-3).accept
        res[f"generate_{mode}_s"] = t_gen
        res[f"generate_{mode}_cpu_s"] = c_gen
        res[f"generate_{mode}_tokens_per_s"] = n / t_gen
        res[f"prefill_{mode}_s"] = t_pre
        res[f"prefill_{mode}_cpu_s"] = c_pre
        res[f"prefill_cheaper_{mode}_x"] = t_gen / t_pre
        res[f"prefill_cheaper_{mode}_cpu_x"] = c_gen / c_pre
        if args.ratio_only:
            continue
        if mode == "greedy":
            res[f"generate_{mode}_model_calls_cpu_s"] = timed(lambda: _raw_decode(engine, prompt, tokens), reps)[1]
        for k, v in _parts(engine, p, prompt, tokens, reps + 2).items():
            res[f"prefill_{mode}_{k}"] = v
        res[f"plain_forward_cheaper_{mode}_x"] = c_gen / res[f"prefill_{mode}_plain_forward_s"]
        if mode == "greedy":
            torch.set_num_threads(1)
            one = timed(lambda: prefill_check(engine, p, tokens, 1e-3), reps + 1)
            res["prefill_greedy_1_thread_s"], res["prefill_greedy_1_thread_cpu_s"] = one
            res["prefill_cheaper_greedy_1_thread_cpu_x"] = c_gen / one[1]
            torch.set_num_threads(2)
            res["generate_greedy_bfloat16_cpu_s"] = timed(lambda: bf16.generate(p), 1)[1]
    res["load_average_1min"] = os.getloadavg()[0]

    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in res.items()}))
        return
    _print(res, n, args.ratio_only)


def _print(res: dict[str, float], n: int, ratio_only: bool) -> None:
    loads = "" if ratio_only else f", {res['load_bfloat16_s']:.2f} s (bfloat16)"
    print(
        f"{MODEL}: load {res['load_float32_s']:.2f} s (float32){loads}; host load average "
        f"{res['load_average_1min_start']:.1f} at the start, {res['load_average_1min']:.1f} at the end, "
        f"on {os.cpu_count()} CPUs"
    )
    for mode in MODES:
        print(
            f"{mode}, {n} tokens: generation {res[f'generate_{mode}_s']:.2f} s wall, "
            f"{res[f'generate_{mode}_cpu_s']:.2f} s CPU ({res[f'generate_{mode}_tokens_per_s']:.1f} tokens/s); "
            f"prefill check {res[f'prefill_{mode}_s'] * 1e3:.0f} ms wall, {res[f'prefill_{mode}_cpu_s'] * 1e3:.0f} ms "
            f"CPU: {res[f'prefill_cheaper_{mode}_cpu_x']:.1f}x cheaper in CPU, "
            f"{res[f'prefill_cheaper_{mode}_x']:.1f}x in wall time (target >= 25x)"
        )
        if ratio_only:
            continue
        before = res.get(f"prefill_{mode}_gaps_sorting_rule_s")
        print(
            f"  check parts, CPU: body {res[f'prefill_{mode}_body_s'] * 1e3:.0f} ms, output projection "
            f"{res[f'prefill_{mode}_lm_head_claimed_positions_s'] * 1e3:.0f} ms (all positions "
            f"{res[f'prefill_{mode}_lm_head_all_positions_s'] * 1e3:.0f} ms), gaps "
            f"{res[f'prefill_{mode}_gaps_s'] * 1e3:.0f} ms"
            + (f" (with the sorting rule: {before * 1e3:.0f} ms)" if before is not None else "")
            + f"; a plain transformers forward {res[f'prefill_{mode}_plain_forward_s'] * 1e3:.0f} ms "
            f"({res[f'plain_forward_cheaper_{mode}_x']:.1f}x)"
        )
    if not ratio_only:
        print(
            f"greedy generation's model calls alone: {res['generate_greedy_model_calls_cpu_s']:.2f} s CPU; "
            f"in bfloat16: {res['generate_greedy_bfloat16_cpu_s']:.2f} s CPU; "
            f"greedy check at 1 thread: {res['prefill_greedy_1_thread_s'] * 1e3:.0f} ms wall, "
            f"{res['prefill_greedy_1_thread_cpu_s'] * 1e3:.0f} ms CPU "
            f"({res['prefill_cheaper_greedy_1_thread_cpu_x']:.1f}x cheaper than the 2-thread generation)"
        )


if __name__ == "__main__":
    main()
