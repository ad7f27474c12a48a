"""Spot checks: re-execute one SPSA scalar, or one local-SGD inner step, and compare.

Under the execution profile the job names, a check is exact (the same byte, the same state
digest). Under another profile (other thread count, say) float reductions differ in the last
bits, so the check compares within a tolerance measured by `bench/bench_training.py` and
documented in docs/training.md: one quantum for an SPSA byte, a relative L2 distance for an
inner state.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustgen.consensus.messages import Signed
from trustgen.training import diloco, spsa
from trustgen.training.data import select
from trustgen.training.objectives import Objective
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors, relative_l2

SPSA_CROSS_PROFILE_QUANTA = 1
STATE_CROSS_PROFILE_REL_L2 = 1e-4


@dataclass(frozen=True)
class CheckResult:
    accept: bool
    distance: float
    reason: str
    method: str

    def to_dict(self) -> dict[str, object]:
        return {"accept": self.accept, "distance": self.distance, "reason": self.reason, "method": self.method}


def honest_scalar(objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, step: int, trainer: bytes) -> int:
    hp = spec.algorithm
    idx = select(spec.id, step, trainer, hp["batch"], objective.split.train)
    return spsa.quantise(spsa.projected_gradient(objective.loss, params, z, idx, hp["eps"]), hp["scale"])


def check_scalar(
    objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, update: Signed, same_profile: bool
) -> CheckResult:
    """Re-compute the trainer's byte at θ_t and compare it with the one it signed."""
    b = update.body
    mine = honest_scalar(objective, spec, params, z, b["step"], update.signer)
    dist = abs(mine - b["q"])
    limit = 0 if same_profile else SPSA_CROSS_PROFILE_QUANTA
    reason = "" if dist <= limit else f"signed byte {b['q']}, re-computed {mine}"
    return CheckResult(dist <= limit, float(dist), reason, "spsa-rescalar")


def check_inner_step(
    objective: Objective,
    spec: JobSpec,
    update: Signed,
    h: int,
    before: Tensors,
    after: Tensors | None,
    same_profile: bool,
) -> CheckResult:
    """Re-execute inner step h (1-based) from the committed state before it and compare with the
    committed state after it (`before` must already match its commitment)."""
    hp = spec.algorithm
    b = update.body
    idx = select(spec.id, b["round"] * hp["inner_steps"] + h - 1, update.signer, hp["batch"], objective.split.train)
    mine = diloco.inner_step(objective, before, h, idx, hp)
    committed = b["states"][h - 1]
    if diloco.state_digest(mine, h) == committed:
        return CheckResult(True, 0.0, "", "inner-step")
    if same_profile or after is None:
        return CheckResult(False, float("inf"), f"inner step {h} re-executed to another state", "inner-step")
    if diloco.state_digest(after, h) != committed:
        return CheckResult(False, float("inf"), f"the state given for step {h} is not the committed one", "inner-step")
    dist = relative_l2(diloco.params_of(mine), diloco.params_of(after))
    ok = dist <= STATE_CROSS_PROFILE_REL_L2
    return CheckResult(ok, dist, "" if ok else f"inner step {h}: relative L2 {dist:.3g} over tolerance", "inner-step")


def check_delta(final: Tensors, base: Tensors, blob: bytes, update: Signed, fmt: str) -> CheckResult:
    """The delta blob is exactly the encoding of (committed final state − base)."""
    if diloco.state_digest(final, len(update.body["states"])) != update.body["states"][-1]:
        return CheckResult(False, float("inf"), "the final state given is not the committed one", "delta")
    if diloco.encode_delta(diloco.delta_of(final, base), fmt) != blob:
        return CheckResult(False, float("inf"), "the delta does not match the committed final state", "delta")
    return CheckResult(True, 0.0, "", "delta")
