"""Reputation derived deterministically from a ledger: the same entries give the same scores
on any node, whatever order they arrived in.

Each finalised certificate credits its worker (accepted) or debits it (rejected), and credits
each verifier whose vote agreed with the decision and debits those who disagreed. Valid
equivocation evidence debits the equivocating feed heavily. The score is the Beta posterior
mean (good + 1) / (good + bad + 2): 0.5 for a stranger, towards 1 with a clean record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from trustgen.consensus.ledger import Entry, parse_entry
from trustgen.consensus.messages import MessageError, open_wire

EQUIVOCATION_PENALTY = 10


class Reputation:
    """Accumulates good and bad marks entry by entry. The marks are counts, so the scores do
    not depend on the order entries arrive in: a node can feed new entries as they come."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.good: dict[bytes, int] = defaultdict(int)
        self.bad: dict[bytes, int] = defaultdict(int)
        self._equivocations: set[tuple[bytes, int]] = set()

    def add(self, e: Entry) -> None:
        if e.type == "TaskFinalized":
            try:
                cert = open_wire(e.body["certificate"], "Certificate", self.network).body
                votes = [open_wire(v, "Vote", self.network).body for v in cert["votes"]]
            except MessageError:
                return
            accepted = cert["decision"] == "accept"
            (self.good if accepted else self.bad)[cert["worker"]] += 1
            for v in votes:
                (self.good if v["accept"] == accepted else self.bad)[v["verifier"]] += 1
        elif e.type == "Evidence" and e.body["kind"] == "equivocation":
            p = e.body["proof"]
            try:
                a = parse_entry(p["a_payload"], p["a_sig"], self.network)
                b = parse_entry(p["b_payload"], p["b_sig"], self.network)
            except (MessageError, KeyError, TypeError):
                return
            if a.feed == b.feed and a.seq == b.seq and a.hash != b.hash and (a.feed, a.seq) not in self._equivocations:
                self._equivocations.add((a.feed, a.seq))
                self.bad[a.feed] += EQUIVOCATION_PENALTY

    def scores(self) -> dict[bytes, float]:
        return {n: (self.good[n] + 1) / (self.good[n] + self.bad[n] + 2) for n in set(self.good) | set(self.bad)}


def reputation(entries: Iterable[Entry], network: str) -> dict[bytes, float]:
    r = Reputation(network)
    for e in entries:
        r.add(e)
    return r.scores()
