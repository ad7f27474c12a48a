"""Byzantine-robust aggregation of trainer deltas: one registry entry per rule.

Each rule takes the trainers' deltas in canonical order (sorted by trainer key, so float sums
have one order) and returns one delta. Coordinate-wise rules work tensor by tensor; centred
clipping works on whole updates. References: coordinate-wise trimmed mean and median (Yin et
al., 2018); centred clipping (Karimireddy et al., 2021).

A rule's name is part of the job spec, so a rule never changes once shipped: a better rule gets a
new name (`screened-trimmed-mean` next to `trimmed-mean`) and old jobs replay bit for bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch

from trustgen.training.tensors import Tensors

CLIP_ITERATIONS = 3
# Screening radius of `screened-trimmed-mean`, in median distances to the coordinate-wise median.
# Part of the rule: another radius would be another rule name.
SCREEN_RADIUS = 3.0


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


def screen(deltas: list[Tensors], centre: Tensors) -> list[bool]:
    """Which deltas `screened-trimmed-mean` keeps: those within SCREEN_RADIUS · R of `centre` (the
    coordinate-wise median) in L2, R the median of all n distances. At least half are kept."""
    dist = [_norm({name: d[name] - centre[name] for name in centre}) for d in deltas]
    radius = SCREEN_RADIUS * sorted(dist)[(len(dist) - 1) // 2]
    return [r <= radius for r in dist]


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for n inputs, as (low, high) compare-exchange pairs: the
    network for the next power of two, less every comparator that touches a padding input (an
    input of +inf at the end, which no comparator ever moves)."""
    pairs = []
    size = 1 << max(0, n - 1).bit_length()
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sorted(deltas: list[Tensors]) -> dict[str, list[torch.Tensor]]:
    """Each tensor's n values per coordinate in ascending order, by a sorting network of
    elementwise minimum and maximum: the values torch.sort gives, at a fraction of its cost for
    a handful of rows (it sorts each coordinate's few values one segment at a time)."""
    out = {}
    for name in deltas[0]:
        v = [d[name] for d in deltas]
        for a, b in sorting_network(len(v)):
            v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
        out[name] = v
    return out


def _median_of_sorted(s: list[torch.Tensor]) -> torch.Tensor:
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def coordinate_median(deltas: list[Tensors]) -> Tensors:
    return {name: _median_of_sorted(s) for name, s in _sorted(deltas).items()}


def screened_trimmed_mean(deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    """Screen whole deltas, average the rest, clamp to the trimmed mean's envelope.

    1. Drop the deltas `screen` flags: farther from the coordinate-wise median than SCREEN_RADIUS
       median distances (never more than half).
    2. Average the rest, summed in canonical order.
    3. Clamp each coordinate to [s_k, s_(n-1-k)], the k-th smallest and largest of all n values,
       k = trimmed_k(n, trim): the interval the plain trimmed mean averages within.
    Step 3 keeps the trimmed mean's worst case: with at most k Byzantine deltas every coordinate
    lies within the honest deltas' range for that coordinate, whatever steps 1-2 let through.
    Steps 1-2 remove its bias: the trimmed mean cuts k honest values per coordinate along with
    the attacker's, while a screened outlier costs only itself and honest deltas are averaged.
    """
    n = len(deltas)
    k = trimmed_k(n, params["trim"])
    if k == 0:
        return mean(deltas, params)
    ordered = _sorted(deltas)  # one sort per tensor gives both the centre and the clamp bounds
    centre = {name: _median_of_sorted(s) for name, s in ordered.items()}
    keep = [d for d, ok in zip(deltas, screen(deltas, centre)) if ok]
    out = {}
    for name, s in ordered.items():
        acc = keep[0][name].clone()
        for d in keep[1:]:
            acc.add_(d[name])
        out[name] = torch.minimum(torch.maximum(acc / len(keep), s[k]), s[n - 1 - k])
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
    "screened-trimmed-mean": screened_trimmed_mean,
    "median": median,
    "centred-clip": centred_clip,
}


def aggregate(rule: str, deltas: list[Tensors], params: dict[str, float]) -> Tensors:
    if not deltas:
        raise ValueError("no deltas to aggregate")
    return RULES[rule](deltas, params)
