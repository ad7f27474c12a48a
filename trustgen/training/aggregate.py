"""Byzantine-robust aggregation of trainer deltas: one registry entry per rule.

Each rule takes the trainers' deltas in canonical order (sorted by trainer key, so float sums
have one order) and returns one delta. Coordinate-wise rules work tensor by tensor; centred
clipping works on whole updates. References: coordinate-wise trimmed mean and median (Yin et
al., 2018); centred clipping (Karimireddy et al., 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from trustgen.training.tensors import Tensors

CLIP_ITERATIONS = 3


def _stack(deltas: list[Tensors], name: str) -> torch.Tensor:
    return torch.stack([d[name] for d in deltas])


def mean(deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    return {n: _stack(deltas, n).mean(dim=0) for n in deltas[0]}


def trimmed_k(n: int, trim: float) -> int:
    """Values cut from each side: floor(trim · n), but at least one whenever trimming is asked for
    and three or more values remain (else 4 trainers at trim 0.2 would get a plain mean)."""
    k = math.floor(trim * n)
    if trim > 0 and n >= 3:
        k = max(1, k)
    return min(k, (n - 1) // 2)


def trimmed_mean(deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    k = trimmed_k(len(deltas), params["trim"])
    if k == 0:
        return mean(deltas, params)
    out = {}
    for n in deltas[0]:
        s = torch.sort(_stack(deltas, n), dim=0).values
        out[n] = s[k : len(deltas) - k].mean(dim=0)
    return out


def median(deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    # The mean of the two middle values for an even count (torch.median would take the lower).
    return {n: torch.quantile(_stack(deltas, n).double(), 0.5, dim=0).to(deltas[0][n].dtype) for n in deltas[0]}


def _norm(d: Tensors) -> float:
    # NumPy's float64 sum is single-threaded (pairwise), so the norm, and with it the clipping,
    # does not depend on torch's thread count: replay across thread counts stays bit-exact.
    return math.sqrt(math.fsum(float(np.square(d[n].detach().double().numpy()).sum()) for n in sorted(d)))


def centred_clip(deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    """Start at the coordinate-wise median, then move by the mean of the differences clipped
    to radius τ = clip × (median distance to the centre)."""
    v = median(deltas, params)
    for _ in range(CLIP_ITERATIONS):
        diffs = [{n: d[n] - v[n] for n in v} for d in deltas]
        norms = [_norm(x) for x in diffs]
        tau = params["clip"] * sorted(norms)[len(norms) // 2]
        step = {n: torch.zeros_like(v[n]) for n in v}
        for x, nx in zip(diffs, norms):
            f = min(1.0, tau / nx) if nx > 0 else 1.0
            for n in v:
                step[n].add_(x[n], alpha=f / len(deltas))
        v = {n: v[n] + step[n] for n in v}
    return v


RULES: dict[str, Callable[[list[Tensors], dict[str, float]], Tensors]] = {
    "mean": mean,
    "trimmed-mean": trimmed_mean,
    "median": median,
    "centred-clip": centred_clip,
}


def aggregate(rule: str, deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    if not deltas:
        raise ValueError("no deltas to aggregate")
    return RULES[rule](deltas, params)
