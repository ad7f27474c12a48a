"""Incremental audit: re-auditing a ledger costs what its new entries cost.

The state (audit_state) records what the audit derived from the log prefix it verified clean.
A re-audit checks that the prefix is unchanged (a cheap re-hash of its rows), then applies to
the new entries the same per-ledger checks as the full audit (audit.py), looking up what they
refer to in the state, and re-checks the old votes a new certificate or result re-judges.

Under a genesis the same admission rules apply as in the full audit (audit_admitted: strangers'
feeds listed, not judged; every signer ever admitted in its role; the owner's candidates as due at
each beacon, from a reputation the state keeps replayed to the owner's latest commitment).

The fast path only ever vouches for a clean extension. Anything it does not vouch for (a
changed prefix, any would-be violation in the new entries, a pattern it does not handle such as
a task accepted twice or a commitment to a prefix older than the verified one) hands the ledger
to the full audit, whose report is then the verdict. So both ways give the same verdict, and
violations are always described by one implementation. New entries that change what the prefix
derived (a genesis after entries audited without one, a stranger admitted, a beacon older than the
kept reputation) make the pass start again from log position 0 instead.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from trustgen.consensus import challenge, merkle
from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.audit import AuditInputError, AuditReport, _audit, _merge, find_ledgers
from trustgen.consensus.audit_admitted import Admitted, Rewind, Unclean
from trustgen.consensus.audit_checks import accusation_problem, verify_all
from trustgen.consensus.audit_replicas import Replica
from trustgen.consensus.audit_state import (
    ROW_QUERY,
    STATE_VERSION,
    AuditState,
    prefix_matches,
    state_path_for,
    update_chunks,
)
from trustgen.consensus.encoding import decode, encode
from trustgen.consensus.ledger import ZERO, Entry, entry_hash, leaf_data, parse_entry
from trustgen.consensus.liveness import UNRESPONSIVE, failure_problem
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.tally import PENDING, tally

# How a verdict was reached: the full audit; the fast path extending the state; the fast path
# building a new state from log position 0 (no state yet, the verified prefix changed, or new
# entries change what was derived from it).
FULL, INCREMENTAL, REBUILT = "full", "incremental", "rebuilt"


@dataclass
class Outcome:
    report: AuditReport
    mode: str  # FULL, INCREMENTAL or REBUILT
    new_entries: int
    replica: Replica | None = None


def _open(data: bytes, msg_type: str, network: str) -> Signed:
    try:
        return open_wire(data, msg_type, network)
    except MessageError:
        raise Unclean(msg_type) from None


class _Pass:
    """The per-ledger checks over log positions [start, start + len(rows)), against the state."""

    def __init__(
        self, st: AuditState, network: str, owner: bytes | None, start: int, ledger: sqlite3.Connection
    ) -> None:
        self.st, self.db, self.network, self.owner, self.start = st, st.db, network, owner, start
        self.heads = {f: (s, h) for f, s, h in self.db.execute("SELECT feed, seq, hash FROM heads")}
        self.adm = Admitted(st, network, owner, ledger)
        self.joins = dict(self.db.execute("SELECT feed, log_index FROM joins").fetchall())
        # unresponsive_changed: 1 + the log position of the last change to the owner's set of
        # unresponsive verifiers (0: never), which demotes them in its candidates.
        counted = ("tasks_checked", "commitments_checked", "unresponsive_changed")
        self.counters = {k: int(st.meta(k, 0)) for k in counted}
        last = st.meta("last_commitment")
        self.last_good: tuple[int, bytes] | None = None if last is None else tuple(decode(last))
        self.new_counted: list[tuple[bytes, bytes, bytes]] = []
        self.new_results: list[tuple[bytes, bytes, bytes]] = []
        self.owner_tasks: list[tuple[Entry, Signed]] = []

    def run(self, rows: list[tuple]) -> None:
        entries = self.check_entries(rows)
        self.adm.begin(entries, self.start, set(self.heads))
        self.check_chains(entries)
        self.check_commitments(entries)
        self.record_joins(entries)
        self.pos = {(e.feed, e.seq): self.start + i for i, e in enumerate(entries)}  # log positions
        judged = [e for e in entries if self.adm.member(e.feed)]
        self.check_tasks(judged)
        self.check_evidence(judged)
        keep = self.last_good[0] if self.last_good is not None else self.start + len(entries)
        self.adm.check_candidates(self.owner_tasks, self.joins, entries, self.start, keep)

    def check_entries(self, rows: list[tuple]) -> list[Entry]:
        sig_ok = verify_all([(r[0], r[4], r[5]) for r in rows])
        out = []
        for i, (feed, seq, h, typ, payload, sig, idx) in enumerate(rows):
            if idx != self.start + i or not sig_ok[i]:
                raise Unclean("entry")
            try:
                e = parse_entry(payload, sig, self.network, verify_signature=False)
            except MessageError:
                raise Unclean("entry") from None
            if (e.feed, e.seq, e.type) != (feed, seq, typ) or entry_hash(payload, sig) != h:
                raise Unclean("entry")
            out.append(e)
        return out

    def check_chains(self, entries: list[Entry]) -> None:
        for e in entries:
            seq, h = self.heads.get(e.feed, (0, ZERO))
            if e.seq != seq + 1 or e.prev != h:
                raise Unclean("chain")
            self.heads[e.feed] = (e.seq, e.hash)

    def check_commitments(self, entries: list[Entry]) -> None:
        """The owner's new commitments against roots of the log grown from the stored peaks."""
        self.range = self.st.peaks()
        mine = [(self.start + i, e) for i, e in enumerate(entries) if e.feed == self.owner and e.type == "Commitment"]
        wanted = {e.body["size"] for _, e in mine}
        roots: dict[int, bytes] = {self.range.size: self.range.root()} if self.range.size in wanted else {}
        for e in entries:
            self.range.append(merkle.leaf_hash(leaf_data(e.feed, e.seq, e.hash)))
            if self.range.size in wanted:
                roots[self.range.size] = self.range.root()
        for idx, e in mine:
            self.counters["commitments_checked"] += 1
            size, root = e.body["size"], e.body["root"]
            if (size, root) == self.last_good:
                continue
            if not self.start <= size <= idx or roots.get(size) != root:
                raise Unclean("commitment")  # wrong, or a prefix older than the verified one
            if self.last_good is not None and size < self.last_good[0]:
                raise Unclean("commitment")
            self.last_good = (size, root)

    def record_joins(self, entries: list[Entry]) -> None:
        """Commitments (beacons) and verifier joins (candidates), of every feed, as the full audit
        indexes them."""
        for i, e in enumerate(entries):
            if e.type == "Commitment":
                self.db.execute(
                    "INSERT INTO commitments VALUES (?, ?, ?, ?)", (e.feed, e.seq, e.body["size"], e.body["root"])
                )
            elif e.type == "NodeJoined" and "verifier" in e.body["roles"]:
                self.joins.setdefault(e.feed, self.start + i)

    def check_tasks(self, entries: list[Entry]) -> None:
        """The judged (members') entries: tasks, results, votes and certificates."""
        votes: list[tuple[Entry, Signed]] = []
        for e in entries:
            if e.type == "TaskAccepted":
                self.accept(e)
            elif e.type == "ResultCommitted":
                res = _open(e.body["result"], "Result", self.network)
                key = (e.feed, res.id)
                if self.db.execute("SELECT 1 FROM results WHERE feed = ? AND result_id = ?", key).fetchone() is None:
                    self.db.execute(
                        "INSERT INTO results VALUES (?, ?, ?, ?)", (*key, res.body["task_id"], res.body["worker"])
                    )
                    # What a trajectory vote's audit needs: where the result was first committed
                    # and what it committed to (encoded as signed; None when it committed none).
                    out = res.body["output"]
                    self.db.execute(
                        "INSERT INTO committed VALUES (?, ?, ?, ?, ?)",
                        (*key, e.seq, res.body["output_digest"], encode(out.get("trajectory"))),
                    )
                    self.new_results.append((e.feed, res.body["task_id"], res.id))
            elif e.type == "VoteCast":
                votes.append((e, _open(e.body["vote"], "Vote", self.network)))
            elif e.type == "TaskFailed":
                if self.lookup("accepted", e.feed, e.body["task_id"]) is None or failure_problem(e) is not None:
                    raise Unclean("failure")
                self.end(e.feed, e.body["task_id"])
            elif e.type == "VerifierSkipped":
                acc = self.lookup("accepted", e.feed, e.body["task_id"])
                if acc is None or e.body["verifier"] not in decode(acc[3]):
                    raise Unclean("skip")
                if e.feed == self.owner and e.body["reason"] in UNRESPONSIVE:
                    self.db.execute("INSERT OR IGNORE INTO unresponsive VALUES (?)", (e.body["verifier"],))
                    self.counters["unresponsive_changed"] = self.pos[(e.feed, e.seq)] + 1
            elif e.type == "VerifierRestored" and e.feed == self.owner:
                self.db.execute("DELETE FROM unresponsive WHERE verifier = ?", (e.body["verifier"],))
                self.counters["unresponsive_changed"] = self.pos[(e.feed, e.seq)] + 1
        for e in entries:
            if e.type == "TaskFinalized":
                self.certificate(e)
        for e, vote in votes:
            b = vote.body
            self.db.execute(
                "INSERT INTO votes VALUES (?, ?, ?, ?, ?)", (e.feed, b["task_id"], b["result_id"], b["verifier"], e.seq)
            )
        # Old votes a new certificate or result re-judges, with the new ones.
        for feed, task_id, result_id in self.new_counted + self.new_results:
            allowed = self.allowed(feed, task_id, result_id)
            for (v,) in self.db.execute(
                "SELECT verifier FROM votes WHERE feed = ? AND task_id = ? AND result_id = ?",
                (feed, task_id, result_id),
            ).fetchall():
                if v not in allowed:
                    raise Unclean("vote")
        for e, vote in votes:
            if vote.body["verifier"] not in self.allowed(e.feed, vote.body["task_id"], vote.body["result_id"]):
                raise Unclean("vote")
            self.admitted(vote.body["verifier"], "verifier")
            if vote.body["method"] == challenge.METHOD:
                self.trajectory_vote(e.feed, vote.body)

    def admitted(self, key: bytes, role: str) -> None:
        if not self.adm.ever(key, role):
            raise Unclean("not admitted")

    def trajectory_vote(self, feed: bytes, vote: dict[str, Any]) -> None:
        """The full audit's check_trajectory_vote, from the state's record of the result."""
        row = self.db.execute(
            "SELECT c.seq, c.output_digest, c.trajectory, r.task_id FROM committed c JOIN results r"
            " ON r.feed = c.feed AND r.result_id = c.result_id WHERE c.feed = ? AND c.result_id = ?",
            (feed, vote["result_id"]),
        ).fetchone()
        if row is None or row[3] != vote["task_id"]:
            raise Unclean("trajectory vote")
        after, digest, commit = row[0], row[1], decode(row[2])

        def beacon_ok(root: bytes, size: int) -> bool:
            (first,) = self.db.execute(
                "SELECT MIN(seq) FROM commitments WHERE feed = ? AND size = ? AND root = ?", (feed, size, root)
            ).fetchone()
            return first is not None and first > after

        result = {"output": {} if commit is None else {"trajectory": commit}, "output_digest": digest}
        if challenge.vote_problem(vote, result, beacon_ok) is not None:
            raise Unclean("trajectory vote")

    def accept(self, e: Entry) -> None:
        task = _open(e.body["task"], "Task", self.network)
        if self.lookup("accepted", e.feed, task.id) is not None:
            raise Unclean("task accepted twice")  # it would re-judge old certificates
        self.db.execute(
            "INSERT INTO accepted VALUES (?, ?, ?, ?, ?)",
            (e.feed, task.id, e.body["beacon"], encode(e.body["candidates"]), task.body["verifiers"]),
        )
        size, beacon = e.body["beacon_size"], e.body["beacon"]
        if size == 0 and beacon != merkle.EMPTY_ROOT:
            raise Unclean("beacon")
        if size != 0:
            (first,) = self.db.execute(
                "SELECT MIN(seq) FROM commitments WHERE feed = ? AND size = ? AND root = ?", (e.feed, size, beacon)
            ).fetchone()
            if first is None or first >= e.seq:
                raise Unclean("beacon")
        for v in e.body["candidates"]:
            self.admitted(v, "verifier")
        if e.feed == self.owner:
            # Demotion (an unresponsive verifier) at the beacon, or a change to it since: the full
            # audit replays it.
            demoting = self.db.execute("SELECT 1 FROM unresponsive LIMIT 1").fetchone() is not None
            if demoting or self.counters["unresponsive_changed"] > size:
                raise Unclean("candidates under demotion")
            self.owner_tasks.append((e, task))

    def end(self, feed: bytes, task_id: bytes) -> None:
        """A task's terminal entry (TaskFailed, accepting TaskFinalized): only one, ever."""
        try:
            self.db.execute("INSERT INTO terminal VALUES (?, ?)", (feed, task_id))
        except sqlite3.IntegrityError:
            raise Unclean("second terminal state") from None

    def lookup(self, table: str, feed: bytes, key: bytes) -> tuple | None:
        column = {"accepted": "task_id", "results": "result_id"}[table]
        return self.db.execute(f"SELECT * FROM {table} WHERE feed = ? AND {column} = ?", (feed, key)).fetchone()

    def allowed(self, feed: bytes, task_id: bytes, result_id: bytes) -> list[bytes]:
        """The verifiers whose VoteCast for this result the full audit accepts (check_cast_vote)."""
        acc = self.lookup("accepted", feed, task_id)
        if acc is None:
            raise Unclean("vote for an unknown task")
        row = self.db.execute(
            "SELECT verifiers FROM counted WHERE feed = ? AND task_id = ? AND result_id = ?", (feed, task_id, result_id)
        ).fetchone()
        if row is not None:
            return decode(row[0])
        candidates = decode(acc[3])
        res = self.lookup("results", feed, result_id)
        if res is not None and res[2] == task_id:
            return rank(acc[2], task_id, candidates, res[3])
        return candidates

    def certificate(self, e: Entry) -> None:
        c = _open(e.body["certificate"], "Certificate", self.network).body
        self.counters["tasks_checked"] += 1
        acc = self.lookup("accepted", e.feed, c["task_id"]) if c["gateway"] == e.feed else None
        res = self.lookup("results", e.feed, c["result_id"])
        if acc is None or res is None or res[2] != c["task_id"] or res[3] != c["worker"]:
            raise Unclean("certificate")
        self.admitted(c["gateway"], "gateway")
        self.admitted(c["worker"], "worker")
        _, _, beacon, candidates, k = acc
        ranking = rank(beacon, c["task_id"], decode(candidates), c["worker"])
        expected = effective_verifiers(ranking, c["skipped"], k)
        if list(c["verifiers"]) != expected or c["skipped"]:
            raise Unclean("assignment")  # a skip's justification is matched by the full audit only
        if c["decision"] == "accept":
            self.end(e.feed, c["task_id"])
        key = (e.feed, c["task_id"], c["result_id"])
        try:
            self.db.execute("INSERT INTO counted VALUES (?, ?, ?, ?)", (*key, encode(expected)))
        except sqlite3.IntegrityError:
            raise Unclean("certified twice") from None  # the full audit keeps the later one
        self.new_counted.append(key)
        votes: dict[bytes, bool] = {}
        for raw in c["votes"]:
            b = _open(raw, "Vote", self.network).body
            if (b["task_id"], b["result_id"]) != key[1:] or b["verifier"] not in expected or b["verifier"] in votes:
                raise Unclean("certificate votes")
            self.admitted(b["verifier"], "verifier")
            votes[b["verifier"]] = b["accept"]
        t = tally(votes, expected, k)
        if t.decision == PENDING or t.decision != c["decision"]:
            raise Unclean("decision")

    def check_evidence(self, entries: list[Entry]) -> None:
        pos = self.db.execute("SELECT COUNT(*) FROM findings").fetchone()[0]
        for e in entries:
            if e.type != "Evidence":
                continue
            if e.body["kind"] in ("rejected_result", "minority_vote", "failed_recheck"):
                if accusation_problem(e, self.network) is not None:
                    raise Unclean("accusation")
            elif e.body["kind"] == "equivocation":
                p = e.body["proof"]
                try:
                    a = parse_entry(p["a_payload"], p["a_sig"], self.network)
                    b = parse_entry(p["b_payload"], p["b_sig"], self.network)
                except (MessageError, KeyError, TypeError):
                    raise Unclean("evidence") from None
                if a.feed != b.feed or a.seq != b.seq or a.hash == b.hash or a.feed != e.body["subject"]:
                    raise Unclean("evidence")
                self.db.execute("INSERT INTO findings VALUES (?, ?, ?, ?)", (pos, a.feed.hex(), a.seq, e.feed.hex()))
                pos += 1

    def save(self, rows: list[tuple], ledger: sqlite3.Connection) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO heads VALUES (?, ?, ?)", [(f, s, h) for f, (s, h) in self.heads.items()]
        )
        self.db.executemany("INSERT OR IGNORE INTO joins VALUES (?, ?)", list(self.joins.items()))
        end = self.start + len(rows)
        if rows:
            update_chunks(self.db, ledger, self.start, end)
        self.st.save_peaks(self.range)
        last = None if self.last_good is None else encode(list(self.last_good))
        self.st.set_meta(size=end, audited_at_ms=int(time.time() * 1000), **self.counters)
        if last is not None:
            self.st.set_meta(last_commitment=last)
        strangers = encode(self.adm.strangers(set(self.heads)))
        self.st.set_meta(strangers=strangers, **self.adm.save())


def _report(path: pathlib.Path, network: str, st: AuditState) -> AuditReport:
    r = AuditReport(path=str(path), network=network)
    r.entries = st.size
    r.feeds = st.db.execute("SELECT COUNT(*) FROM heads").fetchone()[0]
    r.tasks_checked = int(st.meta("tasks_checked", 0))
    r.commitments_checked = int(st.meta("commitments_checked", 0))
    r.genesis = st.meta("genesis_id", "")
    r.strangers = decode(st.meta("strangers", encode([])))
    r.equivocations = [
        {"feed": f, "seq": s, "reported_by": by}
        for f, s, by in st.db.execute("SELECT feed, seq, reported_by FROM findings ORDER BY pos")
    ]
    return r


def _replica(path: pathlib.Path, owner: bytes | None, db: sqlite3.Connection, st: AuditState) -> Replica:
    """What the replica cross-check needs, from the stored columns (every row verified clean)."""
    chains: dict[bytes, dict[int, tuple[bytes, str]]] = {}
    log = []
    for feed, seq, h, typ in db.execute("SELECT feed, seq, hash, type FROM entries ORDER BY log_index"):
        chains.setdefault(feed, {})[seq] = (h, typ)
        log.append((feed, seq, h))
    commitments: dict[bytes, dict[int, tuple[int, bytes]]] = {}
    for feed, seq, size, root in st.db.execute("SELECT feed, seq, size, root FROM commitments"):
        commitments.setdefault(feed, {})[seq] = (size, root)
    return Replica(str(path), owner, chains, commitments, log)


def _full(db_path: pathlib.Path, new: int, replica: bool) -> Outcome:
    a = _audit(db_path)
    return Outcome(a.r, FULL, new, Replica.of(a.r.path, a.owner, a.entries, a.log) if replica else None)


def audit_incremental(db_path: pathlib.Path, state_path: pathlib.Path | None = None, replica: bool = False) -> Outcome:
    """Audit one ledger, reusing and extending the state at `state_path` (beside the ledger by
    default). The report equals audit.audit_ledger's on the same ledger."""
    db_path = pathlib.Path(db_path)
    state_path = pathlib.Path(state_path) if state_path is not None else state_path_for(db_path)
    try:
        db = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True)
    except sqlite3.DatabaseError as e:
        raise AuditInputError(f"{db_path} is not a readable trustgen ledger: {e}") from None
    try:
        with db:
            db.execute("BEGIN")  # one read snapshot: a live node may append meanwhile
            return _incremental(db, db_path, state_path, replica)
    except sqlite3.DatabaseError as e:
        raise AuditInputError(f"{db_path} is not a readable trustgen ledger: {e}") from None
    finally:
        db.close()


def _incremental(db: sqlite3.Connection, db_path: pathlib.Path, state_path: pathlib.Path, replica: bool) -> Outcome:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if "network" not in meta:
        raise AuditInputError("ledger has no network id")
    network, owner = meta["network"].decode(), meta.get("owner")
    st = AuditState.load(state_path, network, owner)
    fresh = st is None or not prefix_matches(db, db_path, st.chunks())
    try:
        return _attempt(db, db_path, state_path, replica, st, fresh, network, owner)
    except Rewind:
        return _attempt(db, db_path, state_path, replica, None, True, network, owner)


def _attempt(
    db: sqlite3.Connection,
    db_path: pathlib.Path,
    state_path: pathlib.Path,
    replica: bool,
    st: AuditState | None,
    fresh: bool,
    network: str,
    owner: bytes | None,
) -> Outcome:
    """One pass from the state's size (from 0 when `fresh`); raises Rewind (the state left as it
    was) when the new entries change what an extended state derived."""
    tmp = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
    if fresh:
        if st is not None:
            st.close()
        try:
            st = AuditState.create(tmp)
        except sqlite3.DatabaseError:
            return _full(db_path, 0, replica)  # nowhere to keep a state: audit in full
        st.set_meta(version=STATE_VERSION, network=network, owner=owner or b"")
    assert st is not None
    start = st.size
    rows = db.execute(ROW_QUERY + " WHERE log_index >= ? ORDER BY log_index", (start,)).fetchall()
    # Every stored row is in the verified prefix or among the new ones (a row with a NULL or
    # negative log index is in neither: the full audit reports it).
    counted = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == start + len(rows)
    st.db.execute("BEGIN IMMEDIATE")
    try:
        if not counted:
            raise Unclean("rows outside the log")
        p = _Pass(st, network, owner, start, db)
        p.run(rows)
        p.save(rows, db)
        st.db.execute("COMMIT")
    except (Rewind, Unclean) as why:
        st.db.execute("ROLLBACK")
        if isinstance(why, Rewind) and not fresh:
            st.close()
            raise
        out = _full(db_path, len(rows), replica)
        # The verdict is kept even so (with the verified prefix, if any, left as it was), so a
        # reader of the state such as the explorer shows that the ledger failed its last audit.
        _last_verdict(st, out.report)
        _finish(st, fresh, tmp, state_path)
        return out
    _last_verdict(st, _report(db_path, network, st))
    out = Outcome(_report(db_path, network, st), REBUILT if fresh else INCREMENTAL, len(rows))
    if replica:
        out.replica = _replica(db_path, owner, db, st)
    _finish(st, fresh, tmp, state_path)
    return out


def _last_verdict(st: AuditState, r: AuditReport) -> None:
    st.set_meta(last_ok=int(r.ok), last_violations=len(r.violations), audited_at_ms=int(time.time() * 1000))


def _finish(st: AuditState, fresh: bool, tmp: pathlib.Path, state_path: pathlib.Path) -> None:
    st.close()
    if fresh:
        os.replace(tmp, state_path)  # a reader sees the old state or the new one, never half of one


def audit_paths_incremental(paths: list[pathlib.Path]) -> list[Outcome]:
    """audit.audit_paths, each ledger audited incrementally; the replica cross-check (which needs
    every feed's chain, read from the stored columns without parsing) runs as before."""
    found: dict[pathlib.Path, pathlib.Path] = {}
    for path in paths:
        for p in find_ledgers(path):
            found.setdefault(p.resolve(), p)
    several = len(found) > 1
    outs = [audit_incremental(p, replica=several) for p in found.values()]
    if several:
        _merge([o.report for o in outs], [o.replica for o in outs if o.replica is not None])
    return outs


def verdict(report: AuditReport) -> dict[str, Any]:
    """What two audits of one ledger must agree on (tests compare full and incremental by it)."""
    d = report.to_dict()
    return {
        k: d[k]
        for k in (
            "ok",
            "network",
            "genesis",
            "strangers",
            "feeds",
            "entries",
            "tasks_checked",
            "commitments_checked",
            "equivocations",
            "violations",
            "behind",
        )
    }
