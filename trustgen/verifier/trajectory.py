"""Trajectory commitments: check an image result at a fraction of the cost of re-generating it.

A worker commits, in its result, the Merkle root (RFC 6962) over the leaf digests of its denoising
trajectory (engines/trajectory.py) and keeps the tensors. A verifier, given the tensors:

1. recomputes the root: the tensors are the ones committed before any challenge was known;
2. checks the initial latent against the task's seed, exactly (the noise is drawn on the CPU);
3. replays every scheduler step from the committed model output and latent (cheap arithmetic,
   no model), which pins the sampler, its multistep history and its stochastic noise;
4. re-runs the model at c steps drawn from a beacon the worker could not know when it committed,
   and compares with the committed model outputs: exactly under the same execution profile,
   within a calibrated relative L2 across profiles;
5. decodes the committed final latent and compares with the claimed image (exact, or pHash
   under the calibrated threshold across profiles).

Steps 1-3 and 5 catch any fake that changes the sampler, the seed, the step count or the image;
a fake model output at f of N steps survives step 4 with probability C(N-f, c) / C(N, c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trustgen.consensus.challenge import (
    METHOD,
    SCHEME,
    CommitmentError,
    audit_draw,
    challenge,
    choose_method,
    parse_commitment,
)
from trustgen.consensus.merkle import leaf_hash, root
from trustgen.engines.params import ImageParams
from trustgen.engines.trajectory import Replay, Trajectory, TrajectoryError, replay
from trustgen.verifier import policy
from trustgen.verifier.compare import distance
from trustgen.verifier.fingerprints import image_fingerprint
from trustgen.verifier.vote import VoteValue, reject

__all__ = ["METHOD", "SCHEME", "audit_draw", "challenge", "choose_method", "check_trajectory", "commitment"]


def merkle_root(traj: Trajectory) -> bytes:
    return root([leaf_hash(leaf) for leaf in traj.leaves()])


def commitment(traj: Trajectory, blob: str = "") -> dict[str, Any]:
    """What a result carries: the scheme, the Merkle root (hex), the number of steps and, on the
    network, the digest of the blob the worker serves the tensors as."""
    out: dict[str, Any] = {"scheme": SCHEME, "root": merkle_root(traj).hex(), "steps": traj.steps}
    return out | {"blob": blob} if blob else out


def detection_probability(steps: int, faked: int, c: int) -> float:
    """P(at least one of c distinct uniformly chosen steps is among `faked` faked ones)."""
    c = min(c, steps)
    if faked <= 0:
        return 0.0
    return 1.0 - math.comb(steps - faked, c) / math.comb(steps, c)


def checks_for(steps: int, faked_fraction: float, target: float) -> int:
    """Smallest c that detects a fake at `faked_fraction` of the steps with probability >= target."""
    faked = max(1, math.ceil(faked_fraction * steps))
    return next(c for c in range(1, steps + 1) if detection_probability(steps, faked, c) >= target)


def same_numerics(claimed: Any, own: Any) -> bool:
    """Whether a claimed profile (untrusted dict) has the verifier's numerics (bit-equal expected)."""
    if not isinstance(claimed, dict):
        return False
    mine = own.to_dict()
    return all(claimed.get(k) == mine[k] for k in ("device_name", "dtype", "threads", "deterministic", "versions"))


@dataclass(frozen=True)
class Tolerances:
    """Across execution profiles: model outputs within `output_rel_l2`, recomputed scheduler
    steps within `chain_rel_l2`, decoded images within `phash_bits`. Same profile: all exact."""

    output_rel_l2: float
    chain_rel_l2: float = policy.TRAJ_CHAIN_REL_L2
    phash_bits: float = policy.PHASH_THRESHOLD

    @classmethod
    def for_profiles(cls, claimed: Any, verifier_dtype: str) -> Tolerances:
        dtype = claimed.get("dtype") if isinstance(claimed, dict) else None
        return cls(policy.trajectory_tolerance(dtype if isinstance(dtype, str) else None, verifier_dtype))


def _pixel_distance(own: np.ndarray, claimed: np.ndarray) -> float:
    if own.shape != claimed.shape:
        return -1.0
    return distance(image_fingerprint(own), image_fingerprint(claimed))


def _finite(x: float) -> float:
    """A distance the canonical encoding can carry: a non-finite one (a NaN or zero-norm output)
    is recorded as -1, as rejections without a measured distance are."""
    return float(x) if math.isfinite(x) else -1.0


def signed_checks(beacon: bytes, beacon_size: int, rep: Replay | None = None, d_pix: float = -1.0) -> dict[str, Any]:
    """What a trajectory Vote signs of its check (consensus/challenge.py CHECK_FIELDS); without a
    replay, a rejection before any step was re-executed."""
    return {
        "beacon": beacon,
        "beacon_size": beacon_size,
        "steps": [s.step for s in rep.steps] if rep else [],
        "output_rel_l2": [_finite(s.rel_l2) for s in rep.steps] if rep else [],
        "chain_rel_l2": _finite(rep.chain_max_rel_l2) if rep else -1.0,
        "pixel_distance": _finite(d_pix),
    }


def early_reject(why: str, beacon: bytes, beacon_size: int) -> VoteValue:
    """A trajectory vote that rejects before re-executing anything (it still signs its beacon)."""
    return replace(reject(METHOD, why), checks=signed_checks(beacon, beacon_size))


def judge(
    rep: Replay, claimed_pixels: np.ndarray, exact: bool, tol: Tolerances, beacon: bytes, beacon_size: int = 0
) -> VoteValue:
    """The vote for a replayed trajectory. distance = the largest relative L2 between a re-executed
    and a committed model output; margin = tolerance - distance (0 - distance when exact)."""
    d_out = _finite(max((s.rel_l2 for s in rep.steps), default=0.0))
    limit = 0.0 if exact else tol.output_rel_l2
    pixels_exact = bool(rep.pixels.shape == claimed_pixels.shape and np.array_equal(rep.pixels, claimed_pixels))
    d_pix = 0.0 if pixels_exact else _pixel_distance(rep.pixels, claimed_pixels)
    detail = {
        "steps_checked": [s.step for s in rep.steps],
        "output_rel_l2": [s.rel_l2 for s in rep.steps],
        "chain_max_rel_l2": rep.chain_max_rel_l2,
        "pixel_distance": d_pix,
        "same_profile": exact,
        "beacon": beacon.hex(),
    }
    checked = ",".join(str(s.step) for s in rep.steps)
    fp = image_fingerprint(claimed_pixels)
    signed = signed_checks(beacon, beacon_size, rep, d_pix)

    def no(why: str) -> VoteValue:
        return VoteValue(False, METHOD, d_out, limit - d_out, why, None, fp, detail, signed)

    if not rep.noise_exact:
        return no("initial noise does not match the task seed")
    if not (rep.chain_exact if exact else rep.chain_max_rel_l2 <= tol.chain_rel_l2):
        return no(f"scheduler step {rep.first_chain_break} does not follow from the committed model output")
    bad = [s for s in rep.steps if not (s.exact if exact else s.rel_l2 <= tol.output_rel_l2)]
    if bad:
        return no(f"model output at step {bad[0].step} differs from re-execution (relative L2 {bad[0].rel_l2:.3g})")
    if not pixels_exact and (exact or not 0 <= d_pix <= tol.phash_bits):
        return no(f"decoded final latent is not the claimed image (distance {d_pix:g})")
    how = "bit-identical" if exact else f"max relative L2 {d_out:.3g} within {limit:g}"
    return VoteValue(
        True, METHOD, d_out, limit - d_out, f"steps {checked} re-executed: {how}", None, fp, detail, signed
    )


def check_trajectory(
    engine: Any,
    p: ImageParams,
    pixels: np.ndarray,
    output_digest: str,
    commit: Any,
    traj: Trajectory,
    claimed_profile: Any,
    beacon: bytes,
    checks: int = policy.TRAJ_CHECKS,
    tol: Tolerances | None = None,
    beacon_size: int = 0,
) -> VoteValue:
    """Verify an image result by its committed trajectory (see the module docstring).
    `beacon_size`: on the network, the log size of the gateway Commitment the beacon is."""
    try:
        commit_root, steps, _ = parse_commitment(commit)
    except CommitmentError as e:
        return early_reject(str(e), beacon, beacon_size)
    if steps != traj.steps:
        return early_reject(f"trajectory has {traj.steps} steps, its commitment {steps}", beacon, beacon_size)
    if merkle_root(traj) != commit_root:
        return early_reject("trajectory does not match its commitment", beacon, beacon_size)
    chosen = challenge(beacon, commit_root, output_digest, steps, checks)
    try:
        rep = replay(engine, p, traj, set(chosen))
    except TrajectoryError as e:
        return early_reject(str(e), beacon, beacon_size)
    tol = tol or Tolerances.for_profiles(claimed_profile, engine.profile.dtype)
    return judge(rep, pixels, same_numerics(claimed_profile, engine.profile), tol, beacon, beacon_size)
