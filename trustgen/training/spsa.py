"""Shared-randomness SPSA ("one byte" updates).

Step t has one perturbation direction z_t, drawn from a generator seeded by H(job ‖ t): every
trainer, verifier and replayer draws the same z_t, so replay cost does not grow with the
number of trainers. A trainer's contribution is its projected gradient
g = (L(θ + εz) − L(θ − εz)) / 2ε on its own samples, quantised to one signed byte
q = clamp(round(g / scale), −127, 127): saturating, so one bad byte moves the model by at most
one quantum. With the byte a trainer signs each sample's value
d_i = (L_i(θ + εz) − L_i(θ − εz)) / 2ε, and g is their exactly rounded mean: a verifier checks
that arithmetic for free and re-computes one randomly chosen sample at 1/batch of the cost of
the whole scalar (docs/training.md). The step applies θ ← θ − lr · scale · (Σ q) / n · z. The
sum of integers is exact
and taken before any float arithmetic, so the update does not depend on the order updates
arrive in, and θ_t is a pure function of the spec and the signed bytes up to t. Replay needs
no forward pass at all: it redraws z_t and applies the bytes.
"""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

import torch

from trustgen.consensus.domains import TRAIN_SPSA_Z as Z_DOMAIN
from trustgen.training.tensors import Tensors

QMAX = 127
DMAX = 1e30


def direction(job_id: bytes, step: int, params: Tensors) -> Tensors:
    """z_t: standard normal per element, drawn in name order from the step's generator."""
    seed = int.from_bytes(hashlib.sha256(Z_DOMAIN + job_id + struct.pack(">Q", step)).digest()[:8], "big") >> 1
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(params[n].shape, generator=g, dtype=params[n].dtype) for n in sorted(params)}


def finite(d: float) -> float:
    """A per-sample value as it is signed: NaN -> 0, anything past ±DMAX (infinities too) -> ±DMAX
    (the canonical encoding carries finite floats only)."""
    if d != d:
        return 0.0
    return max(-DMAX, min(DMAX, d))


def sample_diffs(objective: Any, params: Tensors, z: Tensors, indices: list[int], eps: float) -> list[float]:
    """Each sample's (L(θ + εz) − L(θ − εz)) / 2ε, from one batched forward pass per side."""
    with torch.no_grad():
        plus = {n: p + eps * z[n] for n, p in params.items()}
        minus = {n: p - eps * z[n] for n, p in params.items()}
        lp = objective.sample_losses(plus, indices).double().tolist()
        lm = objective.sample_losses(minus, indices).double().tolist()
    return [finite((a - b) / (2.0 * eps)) for a, b in zip(lp, lm)]


def scalar(diffs: list[float], scale: float) -> int:
    """The byte a list of per-sample values commits to: their exactly rounded mean, quantised."""
    return quantise(math.fsum(diffs) / len(diffs), scale) if diffs else 0


def arithmetic_error(q: int, diffs: list[Any], batch: int, scale: float) -> str | None:
    """Why a signed byte does not follow from its committed samples (None when it does). Free to
    check: every coordinator and replayer checks every update."""
    if len(diffs) != batch or not all(isinstance(x, float) and abs(x) <= DMAX for x in diffs):
        return f"{len(diffs)} committed samples, the job's batch is {batch}"
    mine = scalar(diffs, scale)
    return None if mine == q else f"signed byte {q}, its samples give {mine}"


def quantise(g: float, scale: float) -> int:
    """The signed byte for projected gradient g: NaN (a loss that blew up) contributes nothing;
    anything past the range, infinities included, saturates."""
    if g != g:
        return 0
    x = g / scale
    if x >= QMAX:
        return QMAX
    if x <= -QMAX:
        return -QMAX
    return int(round(x))


def apply(params: Tensors, z: Tensors, qs: list[int], lr: float, scale: float) -> None:
    """θ ← θ − lr · scale · mean(q) · z, in place."""
    if not qs:
        return
    c = lr * scale * sum(qs) / len(qs)
    if c == 0.0:
        return
    with torch.no_grad():
        for n in sorted(params):
            params[n].add_(z[n], alpha=-c)
