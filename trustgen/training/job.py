"""The state of a job as every party computes it: weights after each step or round, as a pure
function of the spec and the signed updates. Trainers, the run's coordinator and replay all
use these two classes, so there is one definition of "the checkpoint after step t"."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trustgen.consensus.domains import TRAIN_CHECKPOINT as CHECKPOINT_DOMAIN
from trustgen.consensus.messages import Signed
from trustgen.errors import TrustgenError
from trustgen.training import diloco, directions, spsa
from trustgen.training.aggregate import aggregate
from trustgen.training.objectives import Objective
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors, clone, tensor_digest


class UpdateError(TrustgenError):
    """An update that cannot be applied; `code` names why (for reports and tests)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def checkpoint_digest(params: Tensors) -> bytes:
    return tensor_digest(params, CHECKPOINT_DOMAIN)


def by_trainer(updates: list[Signed]) -> list[Signed]:
    """Canonical order within a step or round: by trainer key."""
    return sorted(updates, key=lambda u: u.signer)


@dataclass
class SpsaState:
    spec: JobSpec
    params: Tensors
    step: int = 0

    @classmethod
    def start(cls, spec: JobSpec, objective: Objective) -> SpsaState:
        return cls(spec, objective.initial())

    def direction(self) -> Tensors:
        return directions.for_step(self.spec, self.step, self.params)

    def apply(self, updates: list[Signed], z: Tensors | None = None) -> None:
        """Apply step `self.step`'s accepted updates (any order: the byte sum is exact)."""
        hp = self.spec.algorithm
        qs = []
        seen = set()
        for u in updates:
            b = u.body
            if b["step"] != self.step:
                raise UpdateError("wrong_step", f"update for step {b['step']} applied at step {self.step}")
            if u.signer in seen:
                raise UpdateError("duplicate", f"two updates from one trainer at step {self.step}")
            if not -spsa.QMAX <= b["q"] <= spsa.QMAX:
                raise UpdateError("out_of_range", f"scalar {b['q']} is outside one signed byte")
            why = spsa.arithmetic_error(b["q"], b["diffs"], hp["batch"], hp["scale"])
            if why is not None:
                raise UpdateError("wrong_scalar", why)
            seen.add(u.signer)
            qs.append(b["q"])
        spsa.apply(self.params, z if z is not None else self.direction(), qs, hp["lr"], hp["scale"])
        self.step += 1


@dataclass
class DilocoState:
    spec: JobSpec
    params: Tensors
    momentum: Tensors
    step: int = 0  # rounds done

    @classmethod
    def start(cls, spec: JobSpec, objective: Objective) -> DilocoState:
        p = objective.initial()
        return cls(spec, p, {n: torch.zeros_like(v) for n, v in p.items()})

    @property
    def digest(self) -> bytes:
        return checkpoint_digest(self.params)

    def decode(self, update: Signed, blob: bytes) -> Tensors:
        hp = self.spec.algorithm
        return diloco.decode_delta(blob, self.params, hp["delta_format"], f"delta of {update.signer.hex()[:12]}")

    def check(self, update: Signed) -> None:
        b = update.body
        if b["round"] != self.step:
            raise UpdateError("wrong_round", f"update for round {b['round']} at round {self.step}")
        if b["base"] != self.digest:
            raise UpdateError("stale_base", f"delta starts from {b['base'].hex()[:12]}…, not this round's checkpoint")
        states = b["states"]
        if len(states) != self.spec.algorithm["inner_steps"] or not all(
            isinstance(s, bytes) and len(s) == 32 for s in states
        ):
            raise UpdateError("malformed", "an update must commit one 32-byte digest per inner step")

    def apply(self, deltas: list[Tensors]) -> None:
        """Aggregate the round's accepted deltas (in canonical trainer order) and step."""
        hp = self.spec.algorithm
        if deltas:
            agg = aggregate(hp["aggregator"], deltas, {"trim": hp["trim"], "clip": hp["clip"]})
            diloco.outer_step(self.params, agg, self.momentum, hp)
        self.step += 1


def evaluation_points(spec: JobSpec) -> set[int]:
    """The steps (SPSA) or rounds (local SGD) after which a checkpoint is evaluated and recorded:
    the start, every `eval_every` steps and the last step; every round."""
    a = spec.algorithm
    if a["name"] == "spsa":
        return {0, a["steps"], *range(a["eval_every"], a["steps"] + 1, a["eval_every"])}
    return set(range(a["rounds"] + 1))


def rounds_of(spec: JobSpec) -> int:
    """Network rounds of a job: local SGD's rounds; SPSA's blocks of `eval_every` steps (the last
    may be shorter), each ending at an evaluation point."""
    a = spec.algorithm
    if a["name"] == "spsa":
        return -(-a["steps"] // a["eval_every"])
    return a["rounds"]


def checkpoint_step(spec: JobSpec, rnd: int) -> int:
    """The `step` of the checkpoint that ends network round `rnd`: what a local run records there."""
    a = spec.algorithm
    if a["name"] == "spsa":
        return min((rnd + 1) * a["eval_every"], a["steps"])
    return rnd + 1


def start_state(spec: JobSpec, objective: Objective) -> SpsaState | DilocoState:
    return (SpsaState if spec.algorithm["name"] == "spsa" else DilocoState).start(spec, objective)


def snapshot(state: SpsaState | DilocoState) -> Tensors:
    return clone(state.params)
