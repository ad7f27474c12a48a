"""Reputation derived deterministically from a ledger: the same entries give the same scores
on any node, whatever order they arrived in.

Each finalised certificate credits its worker (accepted) or debits it (rejected), and credits
each verifier whose vote agreed with the decision and debits those who disagreed. Valid
equivocation evidence debits the equivocating feed heavily. The score is the Beta posterior
mean (good + 1) / (good + bad + 2): 0.5 for a stranger, towards 1 with a clean record.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from trustgen.consensus.ledger import Entry, parse_entry
from trustgen.consensus.messages import MessageError, open_wire

EQUIVOCATION_PENALTY = 10


def reputation(entries: Iterable[Entry], network: str) -> dict[bytes, float]:
    good: dict[bytes, int] = defaultdict(int)
    bad: dict[bytes, int] = defaultdict(int)
    seen_equivocations: set[tuple[bytes, int]] = set()
    for e in sorted(entries, key=lambda e: (e.feed, e.seq)):
        if e.type == "TaskFinalized":
            try:
                cert = open_wire(e.body["certificate"], "Certificate", network).body
                votes = [open_wire(v, "Vote", network).body for v in cert["votes"]]
            except MessageError:
                continue
            accepted = cert["decision"] == "accept"
            (good if accepted else bad)[cert["worker"]] += 1
            for v in votes:
                (good if v["accept"] == accepted else bad)[v["verifier"]] += 1
        elif e.type == "Evidence" and e.body["kind"] == "equivocation":
            p = e.body["proof"]
            try:
                a = parse_entry(p["a_payload"], p["a_sig"], network)
                b = parse_entry(p["b_payload"], p["b_sig"], network)
            except (MessageError, KeyError, TypeError):
                continue
            if a.feed == b.feed and a.seq == b.seq and a.hash != b.hash and (a.feed, a.seq) not in seen_equivocations:
                seen_equivocations.add((a.feed, a.seq))
                bad[a.feed] += EQUIVOCATION_PENALTY
    return {n: (good[n] + 1) / (good[n] + bad[n] + 2) for n in set(good) | set(bad)}
