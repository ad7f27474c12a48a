"""Trainers that cheat on purpose, for tests and demonstrations: one registry entry per mode.

Each mode is real misbehaviour inside a real trainer process; nothing downstream is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # node configs read the mode names without importing torch
    from trustgen.training.tensors import Tensors


@dataclass(frozen=True)
class Mode:
    algorithm: str
    what: str
    scalar: Callable[[int], int] | None = None  # SPSA: the byte sent instead of the honest one
    diffs: Callable[[list[float]], list[float]] | None = None  # SPSA: forged per-sample values
    delta: Callable[[Tensors], Tensors] | None = None  # local SGD: the delta sent instead
    stale_base: bool = False  # local SGD: keep training from the first round's checkpoint
    withhold: bool = False  # local SGD: sign the update but never hand over its delta blob


def _flip_byte(q: int) -> int:
    return -q if q != 0 else 127


MODES: dict[str, Mode] = {
    "wrong-scalar": Mode("spsa", "sends the negated (or a saturated) byte instead of its scalar", scalar=_flip_byte),
    # Consistent forgery: every sample value pushed up by 20 units, the byte recomputed from them,
    # so the arithmetic holds and only re-computing a sample shows it.
    "forged-samples": Mode(
        "spsa",
        "shifts every committed sample value and signs the byte they give",
        diffs=lambda d: [x + 20.0 for x in d],
    ),
    "scaled": Mode("diloco", "sends -10x its delta", delta=lambda d: {n: v * -10.0 for n, v in d.items()}),
    "sign-flip": Mode("diloco", "sends its delta with the sign flipped", delta=lambda d: {n: -v for n, v in d.items()}),
    "stale-base": Mode("diloco", "trains every round from the first round's checkpoint", stale_base=True),
    "withhold-blob": Mode("diloco", "signs its update but never serves the delta blob", withhold=True),
}


def mode(name: str, algorithm: str) -> Mode | None:
    """The mode called `name` (None for ""), checked against the job's algorithm."""
    if not name:
        return None
    m = MODES.get(name)
    if m is None:
        raise ValueError(f"unknown adversary {name!r} (known: {', '.join(MODES)})")
    if m.algorithm != algorithm:
        raise ValueError(f"adversary {name!r} applies to {m.algorithm} jobs, not {algorithm}")
    return m
