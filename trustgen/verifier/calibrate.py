"""Calibration: measure what verification thresholds rest on.

Honest pairs reproduce one task under realistic changes of execution profile (float32 vs
bfloat16, other thread counts, tiny numeric noise in the weights, another sampler implementation
where the result should not change). Dishonest pairs are what a cheating worker could return
instead (another seed, prompt or model, fewer steps, a quantised model, altered or truncated
text). The report gives both distance distributions, the chosen threshold, and false-accept and
false-reject rates for one verifier and for a majority of three.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from trustgen.engines.generate import load_engine
from trustgen.engines.params import ImageParams, TextParams
from trustgen.verifier.compare import distance
from trustgen.verifier.fingerprints import image_fingerprint
from trustgen.verifier.policy import PREFILL_TOL_SAME_DTYPE, TEXT_DTYPES, Refused, text_check
from trustgen.verifier.prefill import LOGITS, judge, token_gaps
from trustgen.verifier.reexec import regenerate_text
from trustgen.verifier.vote import VoteValue

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "cross"]
TEXT_PROMPTS = [
    "Verifiable",
    "We propose",
    "Decentralized training",
    "The gossip",
    "Byzantine",
    "Language models",
    "Consensus among",
    "In this paper",
    "Federated learning",
    "Our method",
    "Diffusion models",
    "Locality-sensitive",
]


def majority_error(p: float, k: int = 3) -> float:
    """P(a strict majority of k independent verifiers errs), each erring with probability p."""
    need = k // 2 + 1
    return sum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(need, k + 1))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (z = 1.96: 95 %)."""
    if n == 0:
        return (0.0, 1.0)
    ph = k / n
    den = 1 + z * z / n
    mid = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def _perturbed(module: torch.nn.Module, rel: float, seed: int) -> torch.nn.Module:
    m = copy.deepcopy(module)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.abs().mean() * rel)
    return m


def _quantised(module: torch.nn.Module) -> torch.nn.Module:
    """Per-tensor symmetric int8 weight quantisation (dequantised back to float)."""
    m = copy.deepcopy(module)
    with torch.no_grad():
        for p in m.parameters():
            scale = p.abs().max() / 127 if p.abs().max() > 0 else torch.tensor(1.0)
            p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
    return m


@dataclass(frozen=True)
class ImageEngines:
    """The engines image calibration compares: the verifier's own (float32), and the variations
    honest workers and cheaters run. One builder, so the pHash and the trajectory calibrations
    measure the same adversaries."""

    fp32: Any
    bf16: Any
    noisy: Any  # weights perturbed by 1e-4 (honest: a stand-in for another device's rounding)
    other: Any  # weights perturbed by 0.3 (another model)
    quant: Any  # int8-quantised weights


def image_engines(model: str) -> ImageEngines:
    fp32 = load_engine(model, "image")
    noisy, other, quant = (load_engine(model, "image") for _ in range(3))
    noisy.pipe.unet = _perturbed(fp32.pipe.unet, 1e-4, 1)
    other.pipe.unet = _perturbed(fp32.pipe.unet, 0.3, 2)
    quant.pipe.unet = _quantised(fp32.pipe.unet)
    return ImageEngines(fp32, load_engine(model, "image", dtype="bfloat16"), noisy, other, quant)


def _with_threads(n: int, fn: Callable[[], Any]) -> Any:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _rates(honest: list[float], dishonest: list[float], threshold: float) -> dict[str, float]:
    frr = sum(d > threshold for d in honest) / max(len(honest), 1)
    far = sum(d <= threshold for d in dishonest) / max(len(dishonest), 1)
    return {
        "false_reject": frr,
        "false_accept": far,
        "majority3_false_reject": majority_error(frr),
        "majority3_false_accept": majority_error(far),
    }


def choose_threshold(honest: list[float], dishonest: list[float], max_bits: int) -> float:
    """Accept every honest reproduction seen, with a margin (a quarter of the largest honest
    distance, at least 2 bits) for profiles calibration did not cover. False accepts are then
    reported per class: a class whose outputs really are the same images (a model that ignores
    a prompt word, a near-lossless quantisation) cannot be separated by any output comparison,
    and must not push honest workers into rejection."""
    top = max(honest, default=0.0)
    t = top + max(2.0, math.ceil(0.25 * top))
    return float(min(t, max_bits))


def histogram_png(
    path: pathlib.Path, honest: list[float], dishonest: list[float], threshold: float, max_x: int, title: str
) -> None:
    w, h, pad = 720, 360, 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    bins = max_x + 1
    hc = np.bincount(np.clip(np.asarray(honest, dtype=int), 0, max_x), minlength=bins)
    dc = np.bincount(np.clip(np.asarray(dishonest, dtype=int), 0, max_x), minlength=bins)
    top = max(int(hc.max(initial=0)), int(dc.max(initial=0)), 1)
    bw = (w - 2 * pad) / bins
    for i in range(bins):
        x = pad + i * bw
        for count, color, off in ((hc[i], (40, 160, 70), 0), (dc[i], (210, 50, 50), bw / 2)):
            if count:
                y = h - pad - (h - 2 * pad) * count / top
                d.rectangle([x + off, y, x + off + bw / 2 - 1, h - pad], fill=color)
    tx = pad + (threshold + 1) * bw
    d.line([tx, pad, tx, h - pad], fill=(30, 30, 200), width=2)
    d.line([pad, h - pad, w - pad, h - pad], fill="black")
    d.text((pad, 10), f"{title}  green: honest  red: dishonest  blue: threshold {threshold:g}", fill="black")
    for v in range(0, bins, max(1, bins // 8)):
        d.text((pad + v * bw, h - pad + 5), str(v), fill="black")
    img.save(path)


def _ddim_float64(engine: Any) -> Any:
    """The same DDIM update rule computed by another implementation: diffusers' DDIM with its
    schedule tables held in float64 instead of float32. It should not change the picture."""
    # From its defining module: the package's lazy top level shows type checkers a placeholder.
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler, DDIMSchedulerOutput

    class DDIM64(DDIMScheduler):
        def set_timesteps(self, *a: Any, **k: Any) -> None:
            super().set_timesteps(*a, **k)
            self.alphas_cumprod = self.alphas_cumprod.double()
            self.final_alpha_cumprod = torch.as_tensor(self.final_alpha_cumprod, dtype=torch.float64)

        def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *a: Any, **k: Any) -> Any:
            out = super().step(model_output.double(), timestep, sample.double(), *a, **k)
            assert isinstance(out, DDIMSchedulerOutput)  # the pipelines never pass return_dict=False
            out.prev_sample = out.prev_sample.to(sample.dtype)
            return out

    alt = copy.copy(engine)
    alt.pipe = copy.copy(engine.pipe)
    alt._set_scheduler = lambda name: setattr(alt.pipe, "scheduler", DDIM64.from_config(engine._base_scheduler_config))
    return alt


def calibrate_image(
    samples: int, model: str = "tiny-image", steps: int = 20, seed: int = 0, algo: str = "phash_rgb"
) -> dict[str, Any]:
    rng = random.Random(seed)
    e = image_engines(model)
    fp32, bf16, noisy, other, quant = e.fp32, e.bf16, e.noisy, e.other, e.quant
    ddim64 = _ddim_float64(fp32)

    def fp(engine, p: ImageParams) -> dict:
        return image_fingerprint(engine.generate(p).pixels, algo)

    dist: dict[str, list[float]] = defaultdict(list)
    honest_kinds = ["bfloat16", "threads", "weight_noise_1e-4", "scheduler_impl"]
    for _ in range(samples):
        fg, bg = rng.sample(COLORS, 2)
        prompt = f"a {rng.choice(['small', 'large'])} {fg} {rng.choice(SHAPES)} on a {bg} background"
        p = ImageParams(prompt=prompt, seed=rng.randrange(2**31), steps=steps)
        ref = fp(fp32, p)
        dist["bfloat16"].append(distance(ref, fp(bf16, p)))
        dist["threads"].append(distance(ref, _with_threads(1, lambda: fp(fp32, p))))
        dist["weight_noise_1e-4"].append(distance(ref, fp(noisy, p)))
        dist["scheduler_impl"].append(distance(ref, fp(ddim64, p)))
        # A worker that ignores the task's sampler (Euler instead of DDIM) is cheating.
        dist["other_scheduler"].append(distance(ref, fp(fp32, ImageParams(**{**p.to_dict(), "scheduler": "euler"}))))
        fg2 = rng.choice([c for c in COLORS if c != fg])
        dist["other_seed"].append(distance(ref, fp(fp32, ImageParams(**{**p.to_dict(), "seed": p.seed + 1}))))
        dist["other_prompt"].append(
            distance(ref, fp(fp32, ImageParams(**{**p.to_dict(), "prompt": prompt.replace(fg, fg2, 1)})))
        )
        dist["other_model"].append(distance(ref, fp(other, p)))
        dist["fewer_steps"].append(distance(ref, fp(fp32, ImageParams(**{**p.to_dict(), "steps": max(1, steps // 4)}))))
        dist["quantised_model"].append(distance(ref, fp(quant, p)))
    honest = [d for k in honest_kinds for d in dist[k]]
    dishonest = [d for k, v in dist.items() if k not in honest_kinds for d in v]
    bits = ref["bits"]
    threshold = choose_threshold(honest, dishonest, bits)
    rep = _report(
        "image", f"{algo} Hamming bits ({bits})", samples, dist, honest_kinds, honest, dishonest, threshold, bits
    )
    rep["per_kind_accept_rate"] = {k: sum(d <= threshold for d in v) / len(v) for k, v in dist.items()}
    return rep


def _alter(tokens: list[int], vocab: int, rng: random.Random) -> list[int]:
    out = list(tokens)
    i = rng.randrange(len(out))
    out[i] = (out[i] + 1 + rng.randrange(vocab - 1)) % vocab
    return out


def policy_check(
    engines: dict[str, Any], p: TextParams, tokens: list[int], dtype: str
) -> tuple[VoteValue, float | None]:
    """The verdict the verifier's policy gives a claim computed in `dtype` (`engines`: the
    verifier's engine per dtype), and the claim's worst logit gap under that check (None for
    re-generation and for claims rejected before any model runs)."""
    check = text_check(p.to_dict(), dtype, "float32")
    if isinstance(check, Refused):
        raise ValueError(check.reason)
    engine = engines[check.dtype]
    if check.method == "regenerate":
        return regenerate_text(engine, p, tokens), None
    if not tokens or len(tokens) > p.max_new_tokens:
        return judge(engine, p, tokens, torch.empty(0), check.tolerance, check.method), None
    logits = LOGITS[check.method](engine, [(engine.task_prompt(p), tokens)])[0]
    vote = judge(engine, p, tokens, logits, check.tolerance, check.method)
    gap = float(token_gaps(engine, p, tokens, logits).max()) if p.decoding != "beam" else None
    return vote, gap


def calibrate_text(samples: int, model: str = "tiny-text", max_new_tokens: int = 48, seed: int = 0) -> dict[str, Any]:
    """Text verification is a pass/fail check, chosen by the policy (verifier/policy.py) for the
    claim's decoding and dtype. Distances are the largest logit gap between a claimed token and
    the one the decoding rule picks (greedy and sampled tasks; inf for a token top-k/top-p
    excluded); accept rates cover every pair, beam tasks (re-generated) included."""
    rng = random.Random(seed)
    ver = load_engine(model, "text")
    bf16 = load_engine(model, "text", dtype="bfloat16")
    engines = {"float32": ver, "bfloat16": load_engine(model, "text", dtype="bfloat16")}
    noisy = load_engine(model, "text")
    noisy.model = _perturbed(ver.model, 1e-5, 1)
    other = load_engine(model, "text")
    other.model = _perturbed(ver.model, 0.3, 2)
    dist: dict[str, list[float]] = defaultdict(list)
    accepted: dict[str, list[bool]] = defaultdict(list)
    honest_kinds = ["bfloat16", "threads", "weight_noise_1e-5"]
    vocab = ver.model.config.vocab_size
    # An instruct model is asked as its users would ask it: the prompt as a chat turn.
    chat = bool(ver.tokenizer.chat_template)

    def check(kind: str, p: TextParams, tokens: list[int], dtype: str = "float32") -> None:
        v, gap = policy_check(engines, p, tokens, dtype)
        accepted[kind].append(v.accept)
        # The worst token's gap in logits (greedy and sampled tasks; structural rejections such
        # as a truncation have none): what a tolerance must stay below to catch the pair.
        if gap is not None:
            dist[kind].append(gap)

    for i in range(samples):
        decoding = ["greedy", "sample", "beam"][i % 3]
        p = TextParams(
            prompt=rng.choice(TEXT_PROMPTS),
            max_new_tokens=max_new_tokens,
            decoding=decoding,
            seed=rng.randrange(2**31),
            num_beams=3,
            temperature=0.8,
            top_p=0.95,
            chat=chat,
        )
        honest = ver.generate(p).token_ids
        check("bfloat16", p, bf16.generate(p).token_ids, "bfloat16")
        check("threads", p, _with_threads(1, lambda: ver.generate(p).token_ids))
        check("weight_noise_1e-5", p, noisy.generate(p).token_ids)
        if decoding == "sample":
            check("other_seed", p, ver.generate(TextParams(**{**p.to_dict(), "seed": p.seed + 1})).token_ids)
        other_prompt = rng.choice([q for q in TEXT_PROMPTS if q != p.prompt])
        check("other_prompt", p, ver.generate(TextParams(**{**p.to_dict(), "prompt": other_prompt})).token_ids)
        check("other_model", p, other.generate(p).token_ids)
        check("altered_token", p, _alter(honest, vocab, rng))
        if len(honest) > 2:
            check("truncated", p, honest[: len(honest) // 2])
        check("extended", p, honest + [honest[-1]])
    honest_d = [d for k in honest_kinds for d in dist[k]]
    dishonest_d = [d for k, v in dist.items() if k not in honest_kinds for d in v]
    rep = _report(
        "text", "prefill logit gap (inf = rejected)", samples, dist, honest_kinds, honest_d, dishonest_d, None, None
    )
    rep["per_kind_accepted"] = {k: [sum(v), len(v)] for k, v in accepted.items()}
    rep["honest_kinds"] = honest_kinds
    _text_rates(rep)
    return rep


def _cast_like(target: torch.nn.Module, source: torch.nn.Module, rel: float, seed: int) -> torch.nn.Module:
    """`target` (a model loaded in a narrower dtype) with `source`'s parameters (float32) plus
    relative noise `rel`, rounded to `target`'s dtype: a worker whose float32 weights differ by
    `rel` before the cast. Only parameters change (buffers such as rotary tables stay as loaded)."""
    m = copy.deepcopy(target)
    g = torch.Generator().manual_seed(seed)
    src = dict(source.named_parameters())
    with torch.no_grad():
        for name, p in m.named_parameters():
            w = src[name]
            p.copy_((w + torch.randn(w.shape, generator=g) * w.abs().mean() * rel).to(p.dtype))
    return m


def calibrate_text_dtype(
    samples: int, model: str = "tiny-text", dtype: str = "bfloat16", max_new_tokens: int = 48, seed: int = 0
) -> dict[str, Any]:
    """Claims computed in `dtype` checked as the policy checks them (in an engine of that dtype).
    Honest: a worker of the same profile (its own load), one at 1 thread against the verifier's
    2. Dishonest: another prompt's or seed's output, one altered token, another model (weights
    0.3 off), weights 1e-5 off before the cast (a stand-in for other numerics: it is not the
    model the digest names), all computed in `dtype`. A dishonest claim that is the honest output
    token for token is not a cheat and is counted apart (`identical_to_honest`). Greedy and
    sampled tasks (beam tasks are re-generated: exact by construction). Besides the policy's
    verdict, each pair records its worst gap under a one-pass prefill in `dtype`
    ("prefill_gap"): the tolerance a prefill check would need."""
    rng = random.Random(seed)
    fp32 = load_engine(model, "text", threads=2)
    engines = {dtype: load_engine(model, "text", dtype=dtype, threads=2)}
    ver = engines[dtype]
    worker = load_engine(model, "text", dtype=dtype, threads=2)
    noisy = load_engine(model, "text", dtype=dtype, threads=2)
    noisy.model = _cast_like(ver.model, fp32.model, 1e-5, 1)
    other = load_engine(model, "text", dtype=dtype, threads=2)
    other.model = _cast_like(ver.model, fp32.model, 0.3, 2)
    del fp32
    dist: dict[str, list[float]] = defaultdict(list)
    prefill_gaps: dict[str, list[float]] = defaultdict(list)
    accepted: dict[str, list[bool]] = defaultdict(list)
    honest_kinds = [dtype, f"{dtype}_1_thread"]
    identical: dict[str, int] = defaultdict(int)
    vocab = ver.model.config.vocab_size
    chat = bool(ver.tokenizer.chat_template)

    def check(kind: str, p: TextParams, tokens: list[int], honest: list[int] | None = None) -> None:
        if honest is not None and tokens == honest:
            identical[kind] += 1
            return
        v, gap = policy_check(engines, p, tokens, dtype)
        accepted[kind].append(v.accept)
        if gap is not None:
            dist[kind].append(gap)
            one_pass = ver.prefill_logits([(ver.task_prompt(p), tokens)])[0]
            prefill_gaps[kind].append(float(token_gaps(ver, p, tokens, one_pass).max()))

    for i in range(samples):
        p = TextParams(
            prompt=rng.choice(TEXT_PROMPTS),
            max_new_tokens=max_new_tokens,
            decoding=["greedy", "sample"][i % 2],
            seed=rng.randrange(2**31),
            temperature=0.8,
            top_p=0.95,
            chat=chat,
        )
        honest = worker.generate(p).token_ids
        check(dtype, p, honest)
        check(f"{dtype}_1_thread", p, _with_threads(1, lambda: worker.generate(p).token_ids))
        check("weight_noise_1e-5", p, noisy.generate(p).token_ids, honest)
        if p.decoding == "sample":
            reseeded = TextParams(**{**p.to_dict(), "seed": p.seed + 1})
            check("other_seed", p, worker.generate(reseeded).token_ids, honest)
        other_prompt = rng.choice([q for q in TEXT_PROMPTS if q != p.prompt])
        prompt = TextParams(**{**p.to_dict(), "prompt": other_prompt})
        check("other_prompt", p, worker.generate(prompt).token_ids, honest)
        check("other_model", p, other.generate(p).token_ids, honest)
        check("altered_token", p, _alter(honest, vocab, rng))
    honest_d = [d for k in honest_kinds for d in dist[k]]
    dishonest_d = [d for k, v in dist.items() if k not in honest_kinds for d in v]
    measure = f"{dtype} claims: worst logit gap under the policy's check (inf = rejected)"
    rep = _report("text", measure, samples, dist, honest_kinds, honest_d, dishonest_d, None, None)
    rep["dtype"] = dtype
    rep["identical_to_honest"] = dict(identical)
    rep["prefill_gap"] = _gap_summaries(prefill_gaps)
    rep["per_kind_accepted"] = {k: [sum(v), len(v)] for k, v in accepted.items()}
    rep["honest_kinds"] = honest_kinds
    _text_rates(rep)
    return rep


def _gap_summaries(gaps: dict[str, list[float]]) -> dict[str, Any]:
    return {k: {**_summary(v), "values": [x if math.isfinite(x) else None for x in v]} for k, v in gaps.items()}


def _text_rates(rep: dict[str, Any]) -> None:
    """Error rates from the per-kind accept counts, with 95 % Wilson intervals: a run of n pairs
    with no error bounds the rate, it does not show it is zero."""
    counts, honest_kinds = rep["per_kind_accepted"], rep["honest_kinds"]
    hon_ok = sum(counts[k][0] for k in honest_kinds if k in counts)
    hon_n = sum(counts[k][1] for k in honest_kinds if k in counts)
    dis_ok = sum(c[0] for k, c in counts.items() if k not in honest_kinds)
    dis_n = sum(c[1] for k, c in counts.items() if k not in honest_kinds)
    frr = (hon_n - hon_ok) / hon_n if hon_n else 0.0
    far = dis_ok / dis_n if dis_n else 0.0
    rep["rates"] = {
        "false_reject": frr,
        "false_accept": far,
        "false_reject_ci95": wilson(hon_n - hon_ok, hon_n),
        "false_accept_ci95": wilson(dis_ok, dis_n),
        "majority3_false_reject": majority_error(frr),
        "majority3_false_accept": majority_error(far),
    }
    rep["per_kind_accept_rate"] = {k: a / n for k, (a, n) in counts.items()}
    rep["per_kind_accept_ci95"] = {k: wilson(a, n) for k, (a, n) in counts.items()}
    rep["tolerance"] = {
        "same_dtype": PREFILL_TOL_SAME_DTYPE,
        "by_dtype": {d: [r.method, r.tolerance] for d, r in TEXT_DTYPES.items()},
    }


def merge_text_reports(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One text report from several runs (other seeds, other processes): distances and accept
    counts pooled per pair kind, rates recomputed. Lets a long calibration run in chunks whose
    results survive an interrupted run."""
    if not reps:
        raise ValueError("no reports to merge")
    honest_kinds = reps[0]["honest_kinds"]
    dist: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, list[int]] = {}
    for r in reps:
        for k, pair in r["pairs"].items():
            dist[k].extend(math.inf if v is None else v for v in pair["values"])
        for k, (a, n) in r["per_kind_accepted"].items():
            c = counts.setdefault(k, [0, 0])
            c[0], c[1] = c[0] + a, c[1] + n
    honest_d = [d for k in honest_kinds for d in dist[k]]
    dishonest_d = [d for k, v in dist.items() if k not in honest_kinds for d in v]
    rep = _report(
        "text",
        reps[0]["measure"],
        sum(r["samples"] for r in reps),
        dist,
        honest_kinds,
        honest_d,
        dishonest_d,
        None,
        None,
    )
    rep["per_kind_accepted"] = counts
    rep["honest_kinds"] = honest_kinds
    if "prefill_gap" in reps[0]:  # dtype calibrations: the one-pass gaps beside the policy's
        gaps: dict[str, list[float]] = defaultdict(list)
        for r in reps:
            for k, g in r["prefill_gap"].items():
                gaps[k].extend(math.inf if v is None else v for v in g["values"])
        rep["prefill_gap"], rep["dtype"] = _gap_summaries(gaps), reps[0]["dtype"]
        same: dict[str, int] = defaultdict(int)
        for r in reps:
            for k, n in r.get("identical_to_honest", {}).items():
                same[k] += n
        rep["identical_to_honest"] = dict(same)
    _text_rates(rep)
    return rep


def _summary(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    return {
        "n": len(values),
        "rejected_outright": len(values) - len(finite),
        "min": min(finite) if finite else None,
        "median": float(np.median(finite)) if finite else None,
        "max": max(finite) if finite else None,
    }


def _report(
    kind: str,
    measure: str,
    samples: int,
    dist: dict,
    honest_kinds: list[str],
    honest: list[float],
    dishonest: list[float],
    threshold: float | None,
    max_bits: int | None,
) -> dict[str, Any]:
    rep: dict[str, Any] = {
        "kind": kind,
        "measure": measure,
        "samples": samples,
        "pairs": {
            k: {"honest": k in honest_kinds, **_summary(v), "values": [v_ if math.isfinite(v_) else None for v_ in v]}
            for k, v in dist.items()
        },
        "honest_pairs": len(honest),
        "dishonest_pairs": len(dishonest),
        "paper_targets": {"honest_match_rate_above": 0.9989, "intra_class_collision_below": 0.000267},
    }
    if threshold is not None:
        rep["threshold"] = threshold
        rep["rates"] = _rates(honest, dishonest, threshold)
        rep["max_honest_distance"] = max(honest) if honest else None
        rep["min_dishonest_distance"] = min(dishonest) if dishonest else None
        rep["max_bits"] = max_bits
    rep["majority_note"] = (
        "majority-of-3 rates assume independent verifier errors; verifiers on one "
        "execution profile err together, so these are lower bounds for them"
    )
    return rep


def write_report(rep: dict[str, Any], out: pathlib.Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"calibration-{rep['kind']}.json").write_text(json.dumps(rep, indent=1) + "\n")
    honest = [v for k in rep["pairs"].values() if k["honest"] for v in k["values"]]
    dishonest = [v for k in rep["pairs"].values() if not k["honest"] for v in k["values"]]
    png = out / f"calibration-{rep['kind']}.png"
    if rep["kind"] == "image":
        histogram_png(png, honest, dishonest, rep["threshold"], min(rep["max_bits"], 96), rep["measure"])
    else:
        # Text: plot gaps in units of 0.01 logits; rejected pairs land in the last bin.
        def scale(v):
            return 50 if v is None else min(50, int(v * 100))

        histogram_png(
            png,
            [scale(v) for v in honest],
            [scale(v) for v in dishonest],
            rep["tolerance"]["same_dtype"] * 100,
            50,
            "prefill gap x100 (50 = rejected)",
        )
    return {"json": str(out / f"calibration-{rep['kind']}.json"), "png": str(png)}
