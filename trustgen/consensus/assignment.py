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
    demoted: set[bytes] | frozenset[bytes] = frozenset(),
) -> list[bytes]:
    """The candidate verifiers a gateway records for a task (sorted), from the admitted verifiers,
    in rank order: at most one on probation, never two of one group (same authority action or
    host) and none of the `demoted` (a poor reputation), as far as the pool allows. Short of k,
    demoted verifiers of unused groups come next, then just enough of the rest to reach k. Every
    subset of the result obeys the same rules, so standbys replacing skipped verifiers never
    break them."""
    groups = groups or {}
    ranked = rank(beacon, task_id, verifiers)
    taken: list[bytes] = []
    used: set[bytes] = set()
    on_probation = False

    def take(v: bytes, diverse: bool) -> None:
        nonlocal on_probation
        if len(taken) >= k and not diverse:
            return
        if v in taken or (v in probationary and (on_probation or not diverse)):
            return  # a probationary verifier never fills a gap
        g = groups.get(v, v)
        if diverse and g in used:
            return
        used.add(g)
        on_probation = on_probation or v in probationary
        taken.append(v)

    for v in ranked:
        if v not in demoted:
            take(v, diverse=True)
    if len(taken) < k:
        for v in ranked:
            if v in demoted and len(taken) < k:
                take(v, diverse=True)
        for v in ranked:
            if v not in demoted:
                take(v, diverse=False)
        for v in ranked:
            take(v, diverse=False)
    return sorted(taken)
