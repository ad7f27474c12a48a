"""Verification thresholds. The values come from `trustgen calibrate` runs on the embedded
models (see docs/calibration.md for the measured distributions and error rates)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from trustgen.consensus import challenge

# Text prefill: how far (in logit units, after temperature) a claimed token may fall below the
# best one. Same dtype: incremental (KV-cache) vs one-pass logits differ by ~1e-5 in float32.
PREFILL_TOL_SAME_DTYPE = 1e-3
# Images: maximum Hamming distance between the per-channel pHashes (3 x 64 bits, "phash_rgb")
# of the claimed and the re-generated image.
PHASH_THRESHOLD = 8  # largest honest distance seen (6, bfloat16) + margin; docs/calibration.md


# The check a verifier node runs on a text result, by the task's decoding. Beam search is checked
# by re-generation: the prefill rank test (every token within the top num_beams + 1) is only a
# necessary condition, and on SmolLM2 beam outputs written for another prompt passed it (2 of 208
# dishonest pairs; docs/calibration.md). Greedy and sampled outputs are decided exactly by prefill.
TEXT_METHOD_BY_DECODING = {"greedy": "prefill", "sample": "prefill", "beam": "regenerate"}


def text_method(task: object) -> str:
    """The method for a text task's parameters (an unknown decoding is refused by the check itself)."""
    decoding = task.get("decoding", "greedy") if isinstance(task, dict) else "greedy"
    return TEXT_METHOD_BY_DECODING.get(decoding, "prefill") if isinstance(decoding, str) else "prefill"


@dataclass(frozen=True)
class DtypeRule:
    """How greedy and sampled claims computed in one dtype are checked (under that dtype)."""

    method: str  # "prefill" (one teacher-forced pass) or "replay" (generation's own calls)
    tolerance: float  # logits a claimed token may fall below the decoding rule's pick


# The dtypes a text claim may name; each is checked in an engine of its own dtype (a float32
# verifier keeps a bfloat16 copy of the model: engines/variants.py). bfloat16 one-pass logits
# drift from the incremental ones by up to 1.76 logits on SmolLM2 while another prompt's output
# came within 0.35 (docs/calibration.md), so no tolerance separates them: bfloat16 claims are
# checked by replaying generation's calls, bit-identical for an honest worker of the same
# profile, under the same-dtype tolerance. float16 the same way (it rounds like bfloat16, finer).
TEXT_DTYPES: dict[str, DtypeRule] = {
    "float32": DtypeRule("prefill", PREFILL_TOL_SAME_DTYPE),
    "bfloat16": DtypeRule("replay", PREFILL_TOL_SAME_DTYPE),
    "float16": DtypeRule("replay", PREFILL_TOL_SAME_DTYPE),
}


class Refusal(StrEnum):
    """Why a claim is refused before any model runs (typed: callers never read the message)."""

    UNSUPPORTED_DTYPE = "unsupported_dtype"


@dataclass(frozen=True)
class TextCheck:
    """The check one text claim gets: its method, the dtype it runs in, the tolerance."""

    method: str  # "prefill", "replay" or "regenerate"
    dtype: str
    tolerance: float


@dataclass(frozen=True)
class Refused:
    code: Refusal
    reason: str


def text_check(task: dict, claimed_dtype: object, verifier_dtype: str) -> TextCheck | Refused:
    """The one place a text claim's check is chosen (verifier nodes and `audit --recheck`): in
    the dtype the claim names (none named: the verifier's own), by its decoding and that dtype's
    rule; a dtype outside TEXT_DTYPES is refused."""
    dtype = verifier_dtype if claimed_dtype is None else claimed_dtype
    rule = TEXT_DTYPES.get(dtype) if isinstance(dtype, str) else None
    if rule is None:
        shown = repr(dtype)[:40]
        return Refused(
            Refusal.UNSUPPORTED_DTYPE, f"claimed dtype {shown} is not checked here; supported: {', '.join(TEXT_DTYPES)}"
        )
    assert isinstance(dtype, str)  # a registry key
    if text_method(task) == "regenerate":
        return TextCheck("regenerate", dtype, 0.0)
    return TextCheck(rule.method, dtype, rule.tolerance)


# Trajectory checks (verifier/trajectory.py). Steps re-executed per result: with 20-step tasks, c = 2
# catches a fake of half the steps with probability 0.76 per verifier (a strict majority of three
# with independent beacons: 0.86), and a fake of every step always (docs/calibration.md: table).
TRAJ_CHECKS = challenge.CHECKS  # the network's rule: the audit checks votes against it
# Across execution profiles: the largest relative L2 between a re-executed and a committed model
# output, by whether the claimed dtype is the verifier's, and between a recomputed and a committed
# scheduler step (docs/calibration.md: fitted on one split, judged on another).
# Fitted on 47 tasks, twice the largest honest value: float32 elsewhere 1.5e-3 (held-out max 9.2e-4),
# bfloat16 0.054 (held-out max 0.059); int8-quantised models start at 9.6e-3.
TRAJ_OUTPUT_REL_L2_SAME_DTYPE = 3e-3
TRAJ_OUTPUT_REL_L2_CROSS_DTYPE = 0.11
TRAJ_CHAIN_REL_L2 = 1e-3
# Fraction of image tasks verified by full regeneration instead (audits of the cheap path).
AUDIT_FRACTION = challenge.AUDIT_FRACTION


def trajectory_tolerance(claimed_dtype: str | None, verifier_dtype: str) -> float:
    if claimed_dtype is None or claimed_dtype == verifier_dtype:
        return TRAJ_OUTPUT_REL_L2_SAME_DTYPE
    return TRAJ_OUTPUT_REL_L2_CROSS_DTYPE
