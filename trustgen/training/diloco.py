"""Local-SGD rounds (DiLoCo style): inner AdamW steps per trainer, int8 deltas, robust outer step.

Round r starts every trainer from the round's checkpoint θ_r with a fresh inner optimizer, so
the state before inner step 0 is public. A trainer runs H inner steps on its own samples
(`data.select` with global step r·H + h), publishes the digest of its state (parameters and
both AdamW moments) after every inner step, and its delta θ_H − θ_r as a content-addressed
blob, quantised to int8 with one float32 scale per tensor. The round aggregates the deltas
with a robust rule and takes an outer Nesterov step. A verifier re-executes one inner step h,
chosen after every update of the round is in, from the trainer's committed state h − 1, and
checks the delta against the committed final state (docs/training.md).

The inner AdamW is written out here rather than taken from torch.optim so that its whole state
is a plain tensor dict that can be digested, shipped and restored exactly.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field

import torch

from trustgen.consensus.domains import TRAIN_CHALLENGE as CHALLENGE_DOMAIN
from trustgen.consensus.domains import TRAIN_INNER_STATE as STATE_DOMAIN
from trustgen.training.data import select
from trustgen.training.tensors import TensorError, Tensors, from_bytes, tensor_digest, to_bytes

BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
GRAD_CLIP = 1.0
QMAX = 127
MAX_DELTA_ABS = 1e6


def initial_state(base: Tensors) -> Tensors:
    out: Tensors = {}
    for n, p in base.items():
        out["p/" + n] = p.detach().clone()
        out["m/" + n] = torch.zeros_like(p)
        out["v/" + n] = torch.zeros_like(p)
    return out


def params_of(state: Tensors) -> Tensors:
    return {k[2:]: v for k, v in state.items() if k.startswith("p/")}


def state_digest(state: Tensors, step: int) -> bytes:
    return tensor_digest(state, STATE_DOMAIN + struct.pack(">Q", step))


def inner_step(objective, state: Tensors, t: int, indices: list[int], hp: dict) -> Tensors:  # noqa: ANN001
    """State after AdamW step t (1-based) on `indices`, from `state`; `state` is not changed."""
    params = {n: v.detach().clone().requires_grad_(True) for n, v in params_of(state).items()}
    names = sorted(params)
    loss = objective.loss(params, indices)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    gscale = min(1.0, GRAD_CLIP / (norm + 1e-6))
    lr, wd = hp["inner_lr"], hp["weight_decay"]
    b1, b2 = BETAS
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    out: Tensors = {}
    with torch.no_grad():
        for n, g in zip(names, grads):
            g = g * gscale
            m = state["m/" + n] * b1 + g * (1 - b1)
            v = state["v/" + n] * b2 + g * g * (1 - b2)
            p = state["p/" + n] * (1 - lr * wd)
            p = p - lr * (m / bc1) / ((v / bc2).sqrt() + ADAM_EPS)
            out["p/" + n], out["m/" + n], out["v/" + n] = p, m, v
    return out


@dataclass
class RoundWork:
    """One trainer's round: the digest of every inner state, and the states kept for checks."""

    digests: list[bytes] = field(default_factory=list)
    states: dict[int, Tensors] = field(default_factory=dict)  # inner step -> state after it
    final: Tensors = field(default_factory=dict)


def run_round(
    objective,  # noqa: ANN001
    base: Tensors,
    job_id: bytes,
    rnd: int,
    trainer: bytes,
    hp: dict,
    keep: bool = True,
) -> RoundWork:
    H = hp["inner_steps"]
    state = initial_state(base)
    work = RoundWork()
    for h in range(H):
        idx = select(job_id, rnd * H + h, trainer, hp["batch"], objective.split.train)
        state = inner_step(objective, state, h + 1, idx, hp)
        work.digests.append(state_digest(state, h + 1))
        if keep:
            work.states[h + 1] = state
    work.final = state
    return work


def delta_of(final: Tensors, base: Tensors) -> Tensors:
    return {n: final["p/" + n] - base[n] for n in base}


def encode_delta(delta: Tensors, fmt: str) -> bytes:
    """A delta blob: int8 values with one float32 scale per tensor, or plain float32."""
    out: Tensors = {}
    for n, d in delta.items():
        if fmt == "float32":
            out["f/" + n] = d.to(torch.float32)
            continue
        amax = float(d.abs().max()) if d.numel() else 0.0
        scale = amax / QMAX if amax > 0 else 0.0
        q = torch.zeros_like(d, dtype=torch.int8) if scale == 0 else torch.round(d / scale).clamp(-QMAX, QMAX)
        out["q/" + n] = q.to(torch.int8)
        out["s/" + n] = torch.tensor(scale, dtype=torch.float32)
    return to_bytes(out)


def decode_delta(blob: bytes, like: Tensors, fmt: str, what: str) -> Tensors:
    """Parse a delta blob against the trainable layout (every name, shape and dtype checked)."""
    if fmt == "float32":
        expect = {"f/" + n: (p.shape, torch.float32) for n, p in like.items()}
        got = from_bytes(blob, expect, what)
        return _bounded({n: got["f/" + n].to(p.dtype) for n, p in like.items()}, what)
    expect = {}
    for n, p in like.items():
        expect["q/" + n] = (p.shape, torch.int8)
        expect["s/" + n] = (torch.Size([]), torch.float32)
    got = from_bytes(blob, expect, what)
    for n in like:
        s = float(got["s/" + n])
        if not 0.0 <= s <= MAX_DELTA_ABS / QMAX:
            raise TensorError(f"{what}: scale {s!r} of {n} is negative or out of range")
    return _bounded({n: got["q/" + n].to(p.dtype) * got["s/" + n].to(p.dtype) for n, p in like.items()}, what)


def _bounded(delta: Tensors, what: str) -> Tensors:
    """A delta whose every value is finite and at most MAX_DELTA_ABS: no honest update comes near
    it, and it keeps every later sum (aggregation, the outer step) finite."""
    for n, d in delta.items():
        if d.numel() and not float(d.abs().max()) <= MAX_DELTA_ABS:
            raise TensorError(f"{what}: delta of {n} is not finite or exceeds {MAX_DELTA_ABS:g}")
    return delta


def outer_step(params: Tensors, agg: Tensors, momentum: Tensors, hp: dict) -> None:
    """Nesterov SGD on the outer gradient −Δ, in place on params and momentum."""
    lr, mu = hp["outer_lr"], hp["outer_momentum"]
    with torch.no_grad():
        for n in sorted(params):
            g = -agg[n]
            momentum[n].mul_(mu).add_(g)
            params[n].add_(g + mu * momentum[n], alpha=-lr)


def challenge(job_id: bytes, rnd: int, trainer: bytes, round_updates: bytes, inner_steps: int) -> int:
    """The inner step (1..H) a verifier re-executes for this trainer's round; it depends on the
    digest of every update of the round, so no trainer knows it before committing."""
    h = hashlib.sha256(CHALLENGE_DOMAIN + job_id + struct.pack(">Q", rnd) + trainer + round_updates).digest()
    return 1 + int.from_bytes(h[:8], "big") % inner_steps
