"""Majority tally over the votes of the effective verifiers of a task."""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT, REJECT, PENDING = "accept", "reject", "pending"


@dataclass(frozen=True)
class Tally:
    decision: str
    accepts: int
    rejects: int
    k: int


def tally(votes: dict[bytes, bool], verifiers: list[bytes], k: int) -> Tally:
    """`votes` maps verifier -> accept; only the `verifiers` (the effective set) count.
    A strict majority of k decides; anything less is pending."""
    counted = {v: votes[v] for v in verifiers if v in votes}
    acc = sum(1 for a in counted.values() if a)
    rej = len(counted) - acc
    if acc * 2 > k:
        decision = ACCEPT
    elif rej * 2 > k:
        decision = REJECT
    else:
        decision = PENDING
    return Tally(decision, acc, rej, k)
