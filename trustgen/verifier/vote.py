"""The outcome of one verification: a plain value that consensus signs into a Vote."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class VoteValue:
    accept: bool
    method: str  # "prefill", "regenerate", "phash", "trajectory"
    distance: float
    margin: float
    reason: str
    position: int | None = None  # first inconsistent token, for text rejections
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # How the check went, for reports and `verify --json` (trajectory: steps checked, distances,
    # beacon); the signed Vote carries method, distance, margin, the reason and `checks`.
    detail: dict[str, Any] = field(default_factory=dict)
    # What the signed Vote records of the check, so the audit can re-derive it: {} for prefill,
    # regenerate and phash; for a trajectory check the challenge beacon, the steps re-executed and
    # the distances (consensus/challenge.py CHECK_FIELDS).
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the signed checks' beacon in hex)."""
        d = asdict(self)
        d["checks"] = {k: v.hex() if isinstance(v, bytes) else v for k, v in self.checks.items()}
        return d

    def vote_body(self, verifier: bytes, task_id: bytes, result_id: bytes) -> dict[str, Any]:
        """The body of a consensus `Vote` message for this outcome."""
        reason = self.reason if self.position is None else f"{self.reason} (position {self.position})"
        return {
            "verifier": verifier,
            "task_id": task_id,
            "result_id": result_id,
            "accept": self.accept,
            "method": self.method,
            "distance": float(self.distance),
            "margin": float(self.margin),
            "reason": reason,
            "fingerprint": self.fingerprint,
            "checks": self.checks,
        }


def reject(
    method: str,
    reason: str,
    position: int | None = None,
    distance: float = float("inf"),
    fingerprint: dict[str, Any] | None = None,
) -> VoteValue:
    # An unbounded distance is not encodable; rejections without a measured distance use -1.
    d = -1.0 if distance == float("inf") else distance
    return VoteValue(False, method, d, -1.0, reason, position, fingerprint or {})
