"""How many identities an attacker needs to hold a majority of a task's verifiers, under the
assignment rules (consensus/assignment.py `select_candidates`), and trials that check it.

The rules: at most one verifier on probation among a task's candidates, and at most one per
group (identities linked by a shared authority action or host) while the pool has at least k
groups. So with k verifiers per task and m = (k + 1) // 2 needed for a majority, an attacker
holds at most `max_seats` of them: one per group it controls, of which at most one may be a
group of only probationary identities. Numbers of identities do not matter; separately admitted
groups, and agreements with the majority to get them off probation, do.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from trustgen.consensus.assignment import effective_verifiers, rank, select_candidates


@dataclass(frozen=True)
class AttackerGroup:
    """Identities admitted by one authority action (or on one host)."""

    graduated: int  # off probation
    probationary: int


def max_seats(groups: list[AttackerGroup], k: int) -> int:
    """The most of a task's k verifiers the attacker can hold while the pool has >= k groups."""
    grad = sum(1 for g in groups if g.graduated)
    prob_only = sum(1 for g in groups if not g.graduated and g.probationary)
    return min(k, grad + min(1, prob_only))


def needed_for_majority(k: int) -> tuple[int, int]:
    """(separately admitted identities, of which off probation) an attacker needs to be able to
    hold a majority of k: the bound the trials check from below."""
    m = (k + 1) // 2
    return m, m - 1


@dataclass
class Trials:
    trials: int
    captured: int  # tasks where the attacker held a strict majority
    most_seats: int


def run_trials(honest: int, attacker: list[AttackerGroup], k: int, trials: int, seed: int = 0) -> Trials:
    """Assign `trials` tasks (random beacons and task ids) among `honest` genesis verifiers (each
    its own group) and the attacker's groups; count the attacker's seats among the effective k."""
    rng = random.Random(seed)

    def key(tag: str, i: int, j: int = 0) -> bytes:
        return hashlib.sha256(f"{seed}/{tag}/{i}/{j}".encode()).digest()

    honest_keys = [key("h", i) for i in range(honest)]
    groups: dict[bytes, bytes] = {h: h for h in honest_keys}
    probationary: set[bytes] = set()
    bad: set[bytes] = set()
    for gi, g in enumerate(attacker):
        gid = key("group", gi)
        for j in range(g.graduated + g.probationary):
            a = key("a", gi, j)
            groups[a] = gid
            bad.add(a)
            if j >= g.graduated:
                probationary.add(a)
    everyone = sorted(groups)
    captured = most = 0
    for _ in range(trials):
        beacon, task_id = rng.randbytes(32), rng.randbytes(32)
        cands = select_candidates(beacon, task_id, everyone, k, groups, probationary)
        chosen = effective_verifiers(rank(beacon, task_id, cands), [], k)
        seats = sum(1 for v in chosen if v in bad)
        most = max(most, seats)
        captured += seats * 2 > k
    return Trials(trials, captured, most)
