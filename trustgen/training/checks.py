"""Spot checks: re-execute one SPSA scalar, or one local-SGD inner step, and compare.

Under the execution profile the job names, a check is exact (the same byte, the same state
digest). Under another profile (other thread count, say) float reductions differ in the last
bits, so the check compares within a tolerance measured by `bench/bench_training.py` and
documented in docs/training.md: a fraction of a quantum per SPSA sample value, a relative L2
distance for an inner state. The cheap SPSA spot check re-computes one committed sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trustgen.consensus.messages import Signed
from trustgen.training import diloco, spsa
from trustgen.training.data import select
from trustgen.training.objectives import Objective
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors

# A committed SPSA sample value re-computed alone, or under another profile, may differ from the
# trainer's by float rounding: allowed up to this fraction of one quantum (bench_training.py
# measures the honest differences; docs/training.md).
SAMPLE_TOLERANCE = 0.05
# An inner state re-executed under another profile, against the committed one: the L2 distance
# over parameters and both moments, relative to the step itself (||after - before||), so a
# targeted change cannot hide under the size of the weights. Measured: honest 1 vs 2 threads
# 1.4e-4 to 2.4e-4; the same step on another trainer's samples 0.53 to 0.98.
STATE_CROSS_PROFILE_REL_STEP = 1e-2


def step_distance(mine: Tensors, after: Tensors, before: Tensors) -> float:
    num = math.fsum(float(((mine[k].double() - after[k].double()) ** 2).sum()) for k in sorted(after))
    den = math.fsum(float(((after[k].double() - before[k].double()) ** 2).sum()) for k in sorted(after))
    return math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


@dataclass(frozen=True)
class CheckResult:
    accept: bool
    distance: float
    reason: str
    method: str

    def to_dict(self) -> dict[str, object]:
        return {"accept": self.accept, "distance": self.distance, "reason": self.reason, "method": self.method}


def honest_diffs(
    objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, step: int, trainer: bytes
) -> list[float]:
    hp = spec.algorithm
    idx = select(spec.id, step, trainer, hp["batch"], objective.split.train)
    return spsa.sample_diffs(objective, params, z, idx, hp["eps"])


def check_arithmetic(spec: JobSpec, update: Signed) -> CheckResult | None:
    """The byte is the quantised mean of the committed per-sample values (free: no forward pass).
    Returns a rejection, or None when the arithmetic holds."""
    b, hp = update.body, spec.algorithm
    why = spsa.arithmetic_error(b["q"], b["diffs"], hp["batch"], hp["scale"])
    return None if why is None else CheckResult(False, float("inf"), why, "spsa-arithmetic")


def check_sample(
    objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, update: Signed, j: int
) -> CheckResult:
    """The cheap spot check: the arithmetic, then sample j re-computed alone (a batch of one
    may round differently from the trainer's batch, hence the tolerance)."""
    bad = check_arithmetic(spec, update)
    if bad is not None:
        return bad
    b = update.body
    hp = spec.algorithm
    idx = select(spec.id, b["step"], update.signer, hp["batch"], objective.split.train)
    mine = spsa.sample_diffs(objective, params, z, [idx[j]], hp["eps"])[0]
    dist = abs(mine - b["diffs"][j])
    ok = dist <= SAMPLE_TOLERANCE * hp["scale"]
    return CheckResult(
        ok, dist, "" if ok else f"sample {j}: committed {b['diffs'][j]:.6g}, re-computed {mine:.6g}", "spsa-sample"
    )


def check_scalar(
    objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, update: Signed, same_profile: bool
) -> CheckResult:
    """The full check: every sample re-computed as the trainer did (one batch), compared exactly
    under the job's profile and within the sample tolerance under another."""
    bad = check_arithmetic(spec, update)
    if bad is not None:
        return bad
    b = update.body
    mine = honest_diffs(objective, spec, params, z, b["step"], update.signer)
    dist = max(abs(x - y) for x, y in zip(mine, b["diffs"]))
    limit = 0.0 if same_profile else SAMPLE_TOLERANCE * spec.algorithm["scale"]
    q = spsa.scalar(mine, spec.algorithm["scale"])
    ok = dist <= limit and (q == b["q"] or not same_profile)
    reason = "" if ok else f"signed byte {b['q']}, re-computed {q} (largest sample difference {dist:.3g})"
    return CheckResult(ok, dist, reason, "spsa-rescalar")


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
    dist = step_distance(mine, after, before)
    ok = dist <= STATE_CROSS_PROFILE_REL_STEP
    return CheckResult(ok, dist, "" if ok else f"inner step {h}: relative L2 {dist:.3g} over tolerance", "inner-step")


def check_delta(final: Tensors, base: Tensors, blob: bytes, update: Signed, fmt: str) -> CheckResult:
    """The delta blob is exactly the encoding of (committed final state − base)."""
    if diloco.state_digest(final, len(update.body["states"])) != update.body["states"][-1]:
        return CheckResult(False, float("inf"), "the final state given is not the committed one", "delta")
    if diloco.encode_delta(diloco.delta_of(final, base), fmt) != blob:
        return CheckResult(False, float("inf"), "the delta does not match the committed final state", "delta")
    return CheckResult(True, 0.0, "", "delta")
