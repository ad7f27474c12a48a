"""Verifier assignment: deterministic, auditable, unpredictable before the beacon exists.

Candidates are ranked by H(domain ‖ beacon ‖ task_id ‖ verifier_id); the worker never verifies
its own result. The first k are assigned; the rest are standbys, called on in rank order when an
assigned verifier is recorded as skipped (it timed out or died).
"""

from __future__ import annotations

import hashlib

from trustgen.consensus.domains import ASSIGN as _DOMAIN


def rank(beacon: bytes, task_id: bytes, candidates: list[bytes], worker: bytes | None = None) -> list[bytes]:
    pool = sorted(set(candidates) - ({worker} if worker is not None else set()))
    return sorted(pool, key=lambda v: hashlib.sha256(_DOMAIN + beacon + task_id + v).digest())


def effective_verifiers(ranking: list[bytes], skipped: list[bytes], k: int) -> list[bytes]:
    """The k verifiers whose votes count: the ranking minus those skipped, first k."""
    skip = set(skipped)
    return [v for v in ranking if v not in skip][:k]
