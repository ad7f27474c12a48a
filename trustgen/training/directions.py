"""SPSA direction kinds: how step t's shared direction z_t is drawn from its seed.

Every kind draws from the one generator seeded by H(job ‖ t) (spsa.direction's seed), so every
trainer, verifier and replayer draws the same z_t and replay cost stays independent of the
number of trainers. A job names its kind in `algorithm.direction`; the default, `full`, is the
original draw (standard normal per element), and a job that does not name a kind keeps its
canonical bytes and its id.

`tensor-power` scales tensor b's share of the standard normal draw by n_b^(−p) (n_b its
element count, p = `algorithm.direction_power`), renormalised so the whole direction keeps the
full draw's expected squared norm (so eps and lr keep their meaning). Small tensors (biases,
norms) get a larger share of the perturbation: at a fresh initialisation they hold most of the
gradient's energy per element, and an SPSA step's progress grows with the gradient energy
density of the coordinates it perturbs (docs/decisions.md, issue 12 SPSA).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trustgen.errors import UsageError
from trustgen.training import spsa
from trustgen.training.spec import JobSpec, algorithm_values
from trustgen.training.tensors import Tensors

Draw = Callable[[bytes, int, Tensors, dict[str, Any]], Tensors]


def _full(job_id: bytes, step: int, params: Tensors, hp: dict[str, Any]) -> Tensors:
    return spsa.direction(job_id, step, params)


def tensor_weights(params: Tensors, power: float) -> dict[str, float]:
    """Per-tensor factors n_b^(−power), scaled so that sum_b n_b w_b^2 = sum_b n_b."""
    sizes = {n: params[n].numel() for n in sorted(params)}
    total = sum(sizes.values())
    raw = {n: float(k) ** -power for n, k in sizes.items()}
    c = (total / sum(k * raw[n] ** 2 for n, k in sizes.items())) ** 0.5
    return {n: raw[n] * c for n in sizes}


def _tensor_power(job_id: bytes, step: int, params: Tensors, hp: dict[str, Any]) -> Tensors:
    z = spsa.direction(job_id, step, params)
    w = tensor_weights(params, hp["direction_power"])
    return {n: z[n].mul_(w[n]) for n in z}


DIRECTIONS: dict[str, Draw] = {"full": _full, "tensor-power": _tensor_power}


def draw(kind: str, job_id: bytes, step: int, params: Tensors, hp: dict[str, Any]) -> Tensors:
    try:
        f = DIRECTIONS[kind]
    except KeyError:
        raise UsageError(f"SPSA direction {kind!r} is not available (available: {', '.join(DIRECTIONS)})") from None
    return f(job_id, step, params, hp)


def for_step(spec: JobSpec, step: int, params: Tensors) -> Tensors:
    """The job's direction z_step."""
    hp = algorithm_values(spec)
    return draw(hp["direction"], spec.id, step, params, hp)
