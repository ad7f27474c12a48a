"""The admission rules of an incremental audit pass (what audit_admission checks in the full audit):
the genesis the ledger runs under, its admissions and revocations, who is a member (a stranger's
feed is listed, not judged), who was ever admitted in which role, and the candidates the owner's
gateway had to record for each new task: the admitted verifiers under the probation, group and
reputation rules as of the task's beacon.

The last needs the reputation and the admitted set at the beacon, an earlier point of the log.
The state keeps a reputation replayed up to the owner's latest commitment (a running gateway takes
each beacon from a fresh commitment, so a later task's beacon is never older), with its growing
sets on disk (audit_state.StoredSet); a pass replays it forward over the entries since. A new task
whose beacon is older than that point, a genesis arriving after entries audited without one, or an
admission that turns a stranger whose entries were audited unjudged into a member change what was
already derived: the pass then starts again from log position 0 (`Rewind`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from trustgen.consensus.admission import AdmissionError, AdmissionState, Genesis
from trustgen.consensus.audit_state import AuditState, StoredSet
from trustgen.consensus.encoding import decode, encode
from trustgen.consensus.ledger import Entry, parse_entry
from trustgen.consensus.reputation import Reputation, task_candidates

ADMISSION_TYPES = ("Admitted", "Revoked")


class Unclean(Exception):
    """The new entries hold something the fast path does not vouch for: the full audit judges."""


class Rewind(Exception):
    """The new entries change what the state derived from the verified prefix: audit from 0."""


class Admitted:
    """One pass's view of admission: the state's genesis and admissions plus the new entries'."""

    def __init__(self, st: AuditState, network: str, owner: bytes | None, ledger: sqlite3.Connection) -> None:
        self.st, self.network, self.owner, self.ledger = st, network, owner, ledger
        wire = st.meta("genesis")
        try:
            self.genesis: Genesis | None = None if wire is None else Genesis.parse(wire, network)
        except AdmissionError:
            raise Rewind("the state's genesis does not parse") from None
        self.fresh_genesis = False
        self.admission = AdmissionState(self.genesis)
        self.new_rows: list[tuple[int, Entry]] = []

    def stored(self, below: int | None = None) -> Iterator[tuple[int, Entry]]:
        """The verified prefix's Admitted and Revoked entries (those below log position `below`)."""
        rows = self.st.db.execute(
            "SELECT log_index, payload, sig FROM admissions WHERE log_index < ? ORDER BY log_index",
            (2**62 if below is None else below,),
        )
        for idx, payload, sig in rows.fetchall():
            yield idx, parse_entry(payload, sig, self.network, verify_signature=False)

    def begin(self, entries: list[Entry], start: int, prefix_feeds: set[bytes]) -> None:
        """Adopt the genesis and admissions of the new entries (log positions from `start`), after
        those of the prefix, checking each as audit_admission does."""
        for e in entries:
            if e.type != "Genesis":
                continue
            try:
                g = Genesis.parse(e.body["genesis"], self.network)
            except AdmissionError:
                raise Unclean("genesis") from None
            if self.genesis is None:
                if start > 0:
                    raise Rewind("a genesis after entries audited without one")
                self.genesis, self.fresh_genesis = g, True
                self.admission = AdmissionState(g)
            elif g.id != self.genesis.id:
                raise Unclean("genesis mismatch")
        for _, e in self.stored():
            self.admission.add(e)
        strangers = {f for f in prefix_feeds if not self.admission.member(f)}
        check = AdmissionState(self.genesis)
        for i, e in enumerate(entries):
            if e.type in ADMISSION_TYPES:
                if check.add(e) is not None:
                    raise Unclean("admission")
                self.admission.add(e)
                self.new_rows.append((start + i, e))
        if any(self.admission.member(f) for f in strangers):
            raise Rewind("a stranger whose entries were audited unjudged is admitted")

    def member(self, feed: bytes) -> bool:
        return self.admission.member(feed)

    def ever(self, key: bytes, role: str) -> bool:
        return self.admission.ever_admitted(key, role)

    def strangers(self, feeds: set[bytes]) -> list[str]:
        return sorted(f.hex() for f in feeds if not self.admission.member(f))

    def check_candidates(
        self,
        tasks: list[tuple[Entry, Any]],
        joins: dict[bytes, int],
        entries: list[Entry],
        start: int,
        keep_from: int,
    ) -> None:
        """The owner's new tasks (TaskAccepted entry, task) have exactly the candidates due at their
        beacons (audit_admission.expected_candidates, replayed from the stored reputation); then
        the reputation is brought to log position `keep_from` (the owner's latest commitment)."""
        replay = self._replay(entries, start) if self.genesis is not None and self.owner is not None else None
        for acc, task in sorted(tasks, key=lambda t: t[0].body["beacon_size"]):
            size = acc.body["beacon_size"]
            joined = [f for f, i in joins.items() if i < size]
            if replay is None or size == 0:
                rep = Reputation(self.network, AdmissionState(self.genesis))  # open: no reputation steers
            else:
                replay.advance(size)
                rep = replay.rep
            want = task_candidates(rep, acc.body["beacon"], task.id, joined, task.body["verifiers"])
            if sorted(acc.body["candidates"]) != want:
                raise Unclean("candidates")
        if replay is not None:
            replay.advance(max(keep_from, replay.at))
            self.st.set_meta(reputation=encode(replay.rep.counts()), rep_at=replay.at)

    def _replay(self, entries: list[Entry], start: int) -> _Replay:
        at = int(self.st.meta("rep_at", 0))
        admission = AdmissionState(self.genesis)
        for _, e in self.stored(below=at):
            admission.add(e)
        rep = Reputation(self.network, admission, sets=lambda name: StoredSet(self.st.db, name))
        saved = self.st.meta("reputation")
        if saved is not None:
            rep.restore_counts(decode(saved))
        return _Replay(rep, at, self.ledger, self.network, entries, start)

    def save(self) -> dict[str, object]:
        self.st.db.executemany(
            "INSERT OR REPLACE INTO admissions VALUES (?, ?, ?)", [(i, e.payload, e.sig) for i, e in self.new_rows]
        )
        if self.fresh_genesis and self.genesis is not None:
            self.st.set_meta(genesis=self.genesis.wire())
        return {"genesis_id": self.genesis.id.hex() if self.genesis is not None else ""}


class _Replay:
    """A reputation at log position `at`, fed forward: the prefix's rows from the ledger (verified
    already: parsed without their signatures), then the pass's new entries."""

    def __init__(
        self, rep: Reputation, at: int, ledger: sqlite3.Connection, network: str, entries: list[Entry], start: int
    ) -> None:
        self.rep, self.at, self.ledger, self.network = rep, at, ledger, network
        self.entries, self.start = entries, start

    def advance(self, to: int) -> None:
        if to < self.at:
            raise Rewind("a beacon older than the owner's latest commitment before this pass")
        if self.at < min(to, self.start):
            rows = self.ledger.execute(
                "SELECT payload, sig FROM entries WHERE log_index >= ? AND log_index < ? ORDER BY log_index",
                (self.at, min(to, self.start)),
            ).fetchall()
            for payload, sig in rows:
                self.rep.add(parse_entry(payload, sig, self.network, verify_signature=False))
            self.at = min(to, self.start)
        while self.at < to:
            self.rep.add(self.entries[self.at - self.start])
            self.at += 1
