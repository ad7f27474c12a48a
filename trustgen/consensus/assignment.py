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


def select_candidates(
    beacon: bytes,
    task_id: bytes,
    verifiers: list[bytes],
    k: int,
    groups: dict[bytes, bytes] | None = None,
    probationary: set[bytes] | frozenset[bytes] = frozenset(),
) -> list[bytes]:
    """The candidate verifiers a gateway records for a task (sorted), from the admitted verifiers:
    at most one on probation (the best ranked), and at most one per group (same authority action
    or host) where the pool allows; when it does not, just enough of the rest, in rank order, to
    reach k. Every subset of the result obeys the same rules, so standbys replacing skipped
    verifiers never break them."""
    groups = groups or {}
    taken: list[bytes] = []
    deferred: list[bytes] = []
    used: set[bytes] = set()
    on_probation = False
    for v in rank(beacon, task_id, verifiers):
        if v in probationary and on_probation:
            continue
        g = groups.get(v, v)
        if g in used:
            if v not in probationary:  # a probationary verifier never fills a gap
                deferred.append(v)
            continue
        on_probation = on_probation or v in probationary
        used.add(g)
        taken.append(v)
    if len(taken) < k:
        taken += deferred[: k - len(taken)]
    return sorted(taken)
