"""The network's rules for checking image results by trajectory, as the audit re-derives them.

A Result may commit (in `output.trajectory`) to the Merkle root of its denoising trajectory. The
gateway draws a fresh beacon (a Commitment of its log, made after it appended the
ResultCommitted, so the worker could not know it) and hands it to the verifiers. From that
beacon and the task id, a sampled fraction of tasks is verified by full regeneration (the audit
draw); the others by re-executing the steps the challenge picks. A trajectory Vote signs the
beacon, its log size and the steps, so anyone holding the ledger can check that the verifier
re-executed exactly what the rule says (`vote_problem`).

Lives in consensus because the audit needs it and may import nothing above; the verifier
(trustgen/verifier/trajectory.py) uses the same functions.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from typing import Any

from trustgen.consensus.domains import TRAJECTORY_CHALLENGE, VERIFY_AUDIT

METHOD = "trajectory"
SCHEME = "trustgen/trajectory/v1"
# Steps re-executed per result (the network's c). With 20-step tasks c = 2 catches a fake of half
# the steps with probability 0.76 per verifier and a fake of every step always (docs/calibration.md).
CHECKS = 2
# Fraction of trajectory-committed image tasks verified by full regeneration instead.
AUDIT_FRACTION = 0.1
# PNDM's Runge-Kutta warm-up adds steps to the requested count (params.MAX_STEPS is 200).
MAX_STEPS = 400
_HEX64 = re.compile(r"[0-9a-f]{64}")
# What a trajectory Vote's `checks` holds (docs/protocol.md §4.3).
CHECK_FIELDS = {
    "beacon": "bytes32",
    "beacon_size": "int",
    "steps": "list",
    "output_rel_l2": "list",
    "chain_rel_l2": "float",
    "pixel_distance": "float",
}


class CommitmentError(ValueError):
    """A trajectory commitment that is malformed."""


def parse_commitment(obj: Any) -> tuple[bytes, int, str]:
    """(root, steps, blob digest) from an untrusted `output.trajectory`; CommitmentError when
    malformed. The blob digest is "" in a local result file (the tensors travel by path)."""
    if not isinstance(obj, dict) or obj.get("scheme") != SCHEME:
        raise CommitmentError(f"trajectory commitment must be a map with scheme {SCHEME!r}")
    r, steps, blob = obj.get("root"), obj.get("steps"), obj.get("blob", "")
    if not isinstance(r, str) or not _HEX64.fullmatch(r):
        raise CommitmentError("trajectory root must be 64 lower-case hex digits")
    if type(steps) is not int or not 1 <= steps <= MAX_STEPS:
        raise CommitmentError(f"trajectory steps must be an integer in [1, {MAX_STEPS}]")
    if not isinstance(blob, str) or (blob and not _HEX64.fullmatch(blob)):
        raise CommitmentError("trajectory blob must be a blob digest (64 lower-case hex digits)")
    return bytes.fromhex(r), steps, blob


def challenge(beacon: bytes, commit_root: bytes, output_digest: str, steps: int, c: int) -> list[int]:
    """c distinct step indices in [0, steps), drawn by a partial Fisher-Yates shuffle keyed by the
    beacon and what the worker committed (a prefix of the draw for c + 1 is the draw for c). The
    beacon must be unknown to the worker when it commits: keyed by the result alone, a worker
    could re-roll its commitment until the challenge misses its faked steps."""
    idx = list(range(steps))
    c = min(c, steps)
    for i in range(c):
        h = hashlib.sha256(
            TRAJECTORY_CHALLENGE + beacon + commit_root + output_digest.encode() + struct.pack("<I", i)
        ).digest()
        j = i + int.from_bytes(h[:8], "little") % (steps - i)  # bias <= steps / 2^64
        idx[i], idx[j] = idx[j], idx[i]
    return sorted(idx[:c])


def audit_draw(beacon: bytes, task_id: bytes, fraction: float | None = None) -> bool:
    """True when this task is one of the sampled fraction (AUDIT_FRACTION unless given, read at
    call time) verified by full regeneration."""
    fraction = AUDIT_FRACTION if fraction is None else fraction
    h = hashlib.sha256(VERIFY_AUDIT + beacon + task_id).digest()
    return int.from_bytes(h[:8], "little") < fraction * 2**64


def choose_method(has_commitment: bool, beacon: bytes, task_id: bytes, fraction: float | None = None) -> str:
    """The method for one image task: the trajectory check, except for results without a
    commitment and for the audited fraction, which are re-generated in full."""
    if not has_commitment or audit_draw(beacon, task_id, fraction):
        return "regenerate"
    return METHOD


def _typed(v: Any, kind: str) -> bool:
    if kind == "bytes32":
        return isinstance(v, bytes) and len(v) == 32
    if kind == "int":
        return type(v) is int
    return isinstance(v, {"list": list, "float": float}[kind])


def vote_problem(
    vote: dict[str, Any],
    result: dict[str, Any],
    beacon_ok: Callable[[bytes, int], bool],
) -> str | None:
    """Why a trajectory Vote breaks the network's rule, or None. `beacon_ok(root, size)` says
    whether (root, size) is a Commitment of the task's gateway made after the Result was
    committed. A vote that rejects before re-executing (a malformed commitment, a blob it could
    not fetch) lists no steps; any steps it lists are exactly the challenge."""
    checks = vote["checks"]
    if set(checks) != set(CHECK_FIELDS) or not all(_typed(checks[k], t) for k, t in CHECK_FIELDS.items()):
        return "trajectory vote's checks are malformed"
    if not beacon_ok(checks["beacon"], checks["beacon_size"]):
        return "challenge beacon is not a commitment of the gateway made after the result"
    if audit_draw(checks["beacon"], vote["task_id"]):
        return "the audit draw picks regeneration for this task, not the trajectory check"
    steps = checks["steps"]
    if not steps and not vote["accept"]:
        return None
    try:
        root, n, _ = parse_commitment(result["output"].get("trajectory"))
    except CommitmentError:
        return "trajectory vote on a result without a valid commitment"
    if steps != challenge(checks["beacon"], root, result["output_digest"], n, CHECKS):
        return "steps checked are not the challenge the beacon draws"
    if len(checks["output_rel_l2"]) != len(steps):
        return "trajectory vote's distances do not match its steps"
    return None
