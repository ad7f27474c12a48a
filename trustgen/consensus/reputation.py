"""Reputation derived deterministically from a ledger: the same entries give the same scores
on any node, whatever order they arrived in.

Certificates count only when an admitted gateway signed them, for tasks the same gateway's feed
accepted (a TaskAccepted before or after: order does not matter). Each such certificate credits
its worker (accepted) or debits it (rejected), and credits each verifier whose vote agreed with
the decision and debits those who disagreed. Valid equivocation evidence debits the
equivocating feed heavily, and a failed re-check recorded by an admitted gateway debits the
worker and the verifiers that accepted the output. Marks are kept per certifying gateway and summed over the gateways
admitted when scores are asked for, so a stranger's self-signed certificates never count, and
a gateway revoked later stops counting. Only admitted keys get a score. The score is the Beta
posterior mean (good + 1) / (good + bad + 2): 0.5 for a stranger, towards 1 with a clean record.

Probation: a verifier admitted after the genesis is on probation until as many of its votes as
the genesis says agreed with the majority (consensus/assignment.py assigns at most one per task).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, MutableSet
from typing import Any

from trustgen.consensus.admission import AdmissionState
from trustgen.consensus.assignment import select_candidates
from trustgen.consensus.ledger import Entry, parse_entry
from trustgen.consensus.liveness import Unresponsive
from trustgen.consensus.messages import MessageError, open_wire

EQUIVOCATION_PENALTY = 10
# A verifier scoring below this (say no agreement against 2 bad marks) is a candidate only when
# the pool cannot fill k without it: assignment weighs reputation, without letting a smear
# campaign empty a small pool.
DEMOTE_BELOW = 0.3
RECHECK_PENALTY = 5  # a failed re-check outweighs the agreement that certificate credited
ROLES_SCORED = ("worker", "verifier", "gateway", "trainer")

# (worker, accepted, [(verifier, agreed)]) of one certificate
_Marks = tuple[bytes, bool, list[tuple[bytes, bool]]]


class Reputation:
    """Accumulates marks entry by entry. The marks are counts, so the scores do not depend on the
    order entries arrive in: a node can feed new entries as they come."""

    def __init__(
        self,
        network: str,
        admission: AdmissionState | None = None,
        sets: Callable[[str], MutableSet[Any]] = lambda _name: set(),
    ) -> None:
        """`sets` makes the sets that grow with the ledger (one per name): a store such as the
        incremental audit's keeps them on disk, the rest goes through `counts`."""
        self.network = network
        self.admission = admission if admission is not None else AdmissionState(None)
        # gateway -> node -> count
        self._good: dict[bytes, dict[bytes, int]] = defaultdict(lambda: defaultdict(int))
        self._bad: dict[bytes, dict[bytes, int]] = defaultdict(lambda: defaultdict(int))
        self._agree: dict[bytes, dict[bytes, int]] = defaultdict(lambda: defaultdict(int))
        self._accepted: MutableSet[tuple[bytes, bytes]] = sets("accepted")  # (gateway, task id)
        self._waiting: dict[tuple[bytes, bytes], list[_Marks]] = defaultdict(list)  # certified, not yet accepted
        self._certs: MutableSet[bytes] = sets("certs")
        self._equivocations: MutableSet[tuple[bytes, int]] = sets("equivocations")
        self._penalty: dict[bytes, int] = defaultdict(int)
        self._rechecked: MutableSet[tuple[bytes, bytes]] = sets("rechecked")  # (certificate id, subject)
        # (certificate id, verifier) of late minority votes
        self._late: MutableSet[tuple[bytes, bytes]] = sets("late")
        self.unresponsive = Unresponsive()

    def counts(self) -> dict[str, Any]:
        """The marks, penalties and waiting certificates as plain values (every number this
        holds beside the `sets`), for a store to persist; `restore_counts` takes them back."""
        table = {"good": self._good, "bad": self._bad, "agree": self._agree}
        out: dict[str, Any] = {
            name: [[gw, node, n] for gw, counts in t.items() for node, n in counts.items()] for name, t in table.items()
        }
        out["penalty"] = [[node, n] for node, n in self._penalty.items()]
        out["waiting"] = [
            [gw, task, [[w, ok, [[v, agreed] for v, agreed in votes]] for w, ok, votes in marks]]
            for (gw, task), marks in self._waiting.items()
        ]
        return out

    def restore_counts(self, data: dict[str, Any]) -> None:
        for name, t in (("good", self._good), ("bad", self._bad), ("agree", self._agree)):
            for gw, node, n in data[name]:
                t[gw][node] = n
        for node, n in data["penalty"]:
            self._penalty[node] = n
        for gw, task, marks in data["waiting"]:
            self._waiting[(gw, task)] = [(w, ok, [(v, agreed) for v, agreed in votes]) for w, ok, votes in marks]

    # Every entry type `add` reads (its own, admission's and liveness's): a follower may skip the
    # others unparsed (the gateway does, on every task). A test keeps this list complete.
    FED_TYPES = (
        "Admitted",
        "Revoked",
        "TaskAccepted",
        "TaskFinalized",
        "Evidence",
        "VerifierSkipped",
        "VerifierRestored",
    )

    def add(self, e: Entry) -> None:
        self.unresponsive.add(e)
        if e.type in ("Admitted", "Revoked"):
            self.admission.add(e)
        elif e.type == "TaskAccepted":
            try:
                task = open_wire(e.body["task"], "Task", self.network)
            except MessageError:
                return
            key = (e.feed, task.id)
            self._accepted.add(key)
            for marks in self._waiting.pop(key, []):
                self._apply(e.feed, marks)
        elif e.type == "TaskFinalized":
            self._add_certificate(e)
        elif e.type == "Evidence" and e.body["kind"] == "failed_recheck":
            self._add_recheck(e)
        elif e.type == "Evidence" and e.body["kind"] == "minority_vote":
            self._add_late_minority(e)
        elif e.type == "Evidence" and e.body["kind"] == "equivocation":
            p = e.body["proof"]
            try:
                a = parse_entry(p["a_payload"], p["a_sig"], self.network)
                b = parse_entry(p["b_payload"], p["b_sig"], self.network)
            except (MessageError, KeyError, TypeError):
                return
            if a.feed == b.feed and a.seq == b.seq and a.hash != b.hash and (a.feed, a.seq) not in self._equivocations:
                self._equivocations.add((a.feed, a.seq))
                self._penalty[a.feed] += EQUIVOCATION_PENALTY

    def _add_certificate(self, e: Entry) -> None:
        try:
            cert = open_wire(e.body["certificate"], "Certificate", self.network)
            votes = [open_wire(v, "Vote", self.network).body for v in cert.body["votes"]]
        except MessageError:
            return
        c = cert.body
        if c["gateway"] != e.feed or cert.id in self._certs:
            return  # a gateway vouches only for its own certificates, each once
        self._certs.add(cert.id)
        accepted = c["decision"] == "accept"
        marks: _Marks = (c["worker"], accepted, [(v["verifier"], v["accept"] == accepted) for v in votes])
        key = (e.feed, c["task_id"])
        if key in self._accepted:
            self._apply(e.feed, marks)
        else:
            self._waiting[key].append(marks)

    def _add_recheck(self, e: Entry) -> None:
        """A failed re-check debits its subject, once per certificate, when a gateway recorded it
        (and so only while that gateway is admitted)."""
        try:
            cert = open_wire(e.body["proof"]["certificate"], "Certificate", self.network)
        except (MessageError, KeyError, TypeError):
            return
        key = (cert.id, e.body["subject"])
        if cert.body["decision"] == "accept" and key not in self._rechecked:
            self._rechecked.add(key)
            self._bad[e.feed][e.body["subject"]] += RECHECK_PENALTY

    def _add_late_minority(self, e: Entry) -> None:
        """A vote against the decision that arrived after the certificate (so it is not among the
        certificate's votes) debits its verifier as a counted one would have, once."""
        try:
            cert = open_wire(e.body["proof"]["certificate"], "Certificate", self.network)
            vote = open_wire(e.body["proof"]["vote"], "Vote", self.network)
        except (MessageError, KeyError, TypeError):
            return
        c, v = cert.body, vote.body
        late = vote.wire() not in c["votes"] and v["verifier"] in c["verifiers"]
        key = (cert.id, v["verifier"])
        if (
            late
            and c["gateway"] == e.feed
            and (v["task_id"], v["result_id"]) == (c["task_id"], c["result_id"])
            and v["accept"] != (c["decision"] == "accept")
            and key not in self._late
        ):
            self._late.add(key)
            self._bad[e.feed][v["verifier"]] += 1

    def _apply(self, gateway: bytes, marks: _Marks) -> None:
        worker, accepted, votes = marks
        (self._good if accepted else self._bad)[gateway][worker] += 1
        for verifier, agreed in votes:
            (self._good if agreed else self._bad)[gateway][verifier] += 1
            if agreed:
                self._agree[gateway][verifier] += 1

    def _sum(self, table: dict[bytes, dict[bytes, int]]) -> dict[bytes, int]:
        out: dict[bytes, int] = defaultdict(int)
        for gw, counts in table.items():
            if self.admission.admitted(gw, "gateway"):
                for node, n in counts.items():
                    out[node] += n
        return out

    def _scored(self, node: bytes) -> bool:
        return any(self.admission.admitted(node, r) for r in ROLES_SCORED)

    def scores(self) -> dict[bytes, float]:
        good, bad = self._sum(self._good), self._sum(self._bad)
        for node, n in self._penalty.items():
            bad[node] += n
        return {n: (good[n] + 1) / (good[n] + bad[n] + 2) for n in set(good) | set(bad) if self._scored(n)}

    def agreements(self) -> dict[bytes, int]:
        """Votes each verifier cast with the majority, in certificates that count."""
        return dict(self._sum(self._agree))

    def probationary(self, verifiers: Iterable[bytes]) -> set[bytes]:
        """Those of `verifiers` still on probation: admitted after the genesis, with fewer
        agreements with the majority than the genesis asks for."""
        genesis = self.admission.genesis
        if genesis is None:
            return set()
        needed = genesis.probation
        agree = self.agreements()
        return {v for v in verifiers if not self.admission.initial(v) and agree.get(v, 0) < needed}


def reputation(entries: Iterable[Entry], network: str, admission: AdmissionState | None = None) -> dict[bytes, float]:
    r = Reputation(network, admission)
    for e in entries:
        r.add(e)
    return r.scores()


def task_candidates(
    rep: Reputation, beacon: bytes, task_id: bytes, joined: Iterable[bytes], k: int, gateway: bytes | None = None
) -> list[bytes]:
    """The candidate verifiers of a task at the ledger state `rep` was fed: the joined verifiers
    that are admitted, under the probation, group and reputation rules of `select_candidates`;
    those `gateway` last recorded as unresponsive are demoted like a poor reputation."""
    admitted = sorted(v for v in set(joined) if rep.admission.admitted(v, "verifier"))
    # In an open network anyone's certificates count, so reputation must not steer assignment.
    scores = {} if rep.admission.open else rep.scores()
    demoted = {v for v in admitted if scores.get(v, 0.5) < DEMOTE_BELOW} | rep.unresponsive.of(gateway)
    groups, probation = rep.admission.groups(admitted), rep.probationary(admitted)
    return select_candidates(beacon, task_id, admitted, k, groups, probation, demoted)
