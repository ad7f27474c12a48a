"""Audit a node's ledger from its bytes alone: every feed, link and signature, every verifier
assignment, recorded vote and majority decision, the node's own Merkle commitments, and
equivocation evidence. Several ledgers (a cluster directory, or several paths) are then
cross-checked replica against replica (audit_replicas).

Violations are things the ledger must not contain (a broken chain, a forged signature, a
certificate that contradicts its votes). Equivocations backed by valid evidence are findings:
the ledger did its job by recording them.

A little over 400 lines on purpose: the per-ledger checks share one pass and its indexes; the
signature work and accusation proofs (audit_checks) and the replica comparison (audit_replicas)
are already their own modules.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from trustgen.consensus import challenge, merkle
from trustgen.consensus.admission import AdmissionState, Genesis
from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.audit_admission import admission_findings, candidate_findings, find_genesis
from trustgen.consensus.audit_checks import accusation_problem, verify_all
from trustgen.consensus.audit_replicas import Replica, cross_check
from trustgen.consensus.ledger import ZERO, Entry, entry_hash, leaf_data, parse_entry
from trustgen.consensus.liveness import failure_problem, skip_problem, terminal_task
from trustgen.consensus.messages import MessageError, open_wire
from trustgen.consensus.tally import PENDING, tally
from trustgen.errors import TrustgenError

LEDGER_FILE = "ledger.db"
MAX_INCLUSION_CHECKS = 256


class AuditInputError(TrustgenError):
    """The path holds no usable ledger."""


@dataclass
class Violation:
    where: str
    code: str
    detail: str


@dataclass
class AuditReport:
    path: str
    network: str = ""
    genesis: str = ""  # id of the genesis the ledger runs under; "" for an open network
    feeds: int = 0
    entries: int = 0
    tasks_checked: int = 0
    commitments_checked: int = 0
    # Filled in by the training audit (trustgen/training/audit_training.py), which the CLI runs.
    training_jobs: int = 0
    training_rounds: int = 0
    equivocations: list[dict[str, Any]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    # Feeds this replica holds fewer entries of than another audited replica (not a violation).
    behind: list[dict[str, Any]] = field(default_factory=list)
    # Feeds (hex) of keys never admitted: their chains are checked, their contents not judged
    # (a stranger's gossip must not fail an honest node's audit), and nothing of them counts.
    strangers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def _short(b: bytes) -> str:
    return b.hex()[:16]


def _where(feed: bytes, seq: int) -> str:
    return f"feed {_short(feed)} seq {seq}"


class _Auditor:
    def __init__(self, db: sqlite3.Connection, report: AuditReport, genesis: Genesis | None = None) -> None:
        self.db, self.r = db, report
        self.pinned = genesis
        self.admission = AdmissionState(genesis)
        self._judged: list[Entry] = []  # valid entries of admitted feeds
        self.owner: bytes | None = None
        self.entries: list[Entry] = []  # valid entries, log order
        self.log: list[tuple[bytes, int, bytes]] = []  # (feed, seq, hash) by log index, as stored

    def bad(self, where: str, code: str, detail: str) -> None:
        self.r.violations.append(Violation(where, code, detail))

    def run(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "network" not in meta:
            raise AuditInputError("ledger has no network id")
        self.r.network = meta["network"].decode()
        self.owner = meta.get("owner")
        self.check_entries()
        self.check_admission()
        self.check_chains()
        self.check_commitments()
        self.check_tasks()
        self.check_evidence()

    def check_entries(self) -> None:
        rows = self.db.execute(
            "SELECT feed, seq, hash, type, payload, sig, log_index FROM entries ORDER BY log_index"
        ).fetchall()
        self.r.entries = len(rows)
        # Signatures are checked against the stored feed column, in parallel; a tampered column
        # fails here or in the index comparison below.
        sig_ok = verify_all([(f, p, s) for f, _, _, _, p, s, _ in rows])
        for i, (feed, seq, h, typ, payload, sig, idx) in enumerate(rows):
            where = f"log index {idx} ({_where(feed, seq)})"
            if idx != i:
                self.bad(where, "log_gap", f"log index {idx} where {i} was expected")
            self.log.append((feed, seq, h))
            try:
                e = parse_entry(payload, sig, self.r.network, verify_signature=False)
            except MessageError as err:
                self.bad(where, "bad_entry", str(err))
                continue
            if not sig_ok[i]:
                self.bad(where, "bad_entry", "LedgerEntry signature is invalid")
                continue
            if (e.feed, e.seq, e.type) != (feed, seq, typ):
                self.bad(where, "index_mismatch", "stored columns differ from the signed entry")
                continue
            if entry_hash(payload, sig) != h:
                self.bad(where, "hash_mismatch", "stored hash differs from the entry's hash")
                continue
            self.entries.append(e)
        self.r.feeds = len({f for f, _, _ in self.log})

    def check_admission(self) -> None:
        """Which genesis the ledger runs under, and whether its admissions hold."""
        genesis, found = find_genesis(self.entries, self.r.network, self.pinned)
        self.r.genesis = genesis.id.hex() if genesis is not None else ""
        self.admission = AdmissionState.from_entries(self.entries, genesis)
        found += list(admission_findings(self.entries, self.admission))
        for e, code, detail in found:
            self.bad(_where(e.feed, e.seq), code, detail)
        feeds = {e.feed for e in self.entries}
        self.r.strangers = sorted(f.hex() for f in feeds if not self.admission.member(f))
        self._judged = [e for e in self.entries if self.admission.member(e.feed)]

    def not_admitted(self, where: str, key: bytes, role: str, what: str) -> bool:
        """Report (and say True) when `key` was never admitted for `role`."""
        if self.admission.ever_admitted(key, role):
            return False
        self.bad(where, "not_admitted", f"{what} {_short(key)} was never admitted as {role}")
        return True

    def check_chains(self) -> None:
        by_feed: dict[bytes, list[Entry]] = defaultdict(list)
        for e in self.entries:
            by_feed[e.feed].append(e)
        for feed, es in by_feed.items():
            es.sort(key=lambda e: e.seq)
            prev_seq, prev_hash = 0, ZERO
            for e in es:
                if e.seq == prev_seq:  # only a store without its (feed, seq) key can hold this
                    what = "the entry is stored twice" if e.hash == prev_hash else "two different entries at one seq"
                    self.bad(_where(feed, e.seq), "duplicate_entry", what)
                    continue
                if e.seq != prev_seq + 1:
                    self.bad(_where(feed, e.seq), "missing_entry", f"entries {prev_seq + 1}..{e.seq - 1} are missing")
                elif e.prev != prev_hash:
                    self.bad(_where(feed, e.seq), "bad_link", "does not link to its predecessor")
                prev_seq, prev_hash = e.seq, e.hash

    def check_commitments(self) -> None:
        """The owner's commitments must be Merkle roots over prefixes of its own log, each
        consistent with the one before (roots of all prefixes come from one pass)."""
        if self.owner is None:
            return
        commits = [e for e in self.entries if e.feed == self.owner and e.type == "Commitment"]
        if not commits:
            return
        leaves = [merkle.leaf_hash(leaf_data(f, s, h)) for f, s, h in self.log]
        index_of = {(f, s): i for i, (f, s, _) in enumerate(self.log)}
        roots = merkle.roots_at(leaves, [c.body["size"] for c in commits])
        good: list[tuple[int, bytes]] = []
        for e in commits:
            self.r.commitments_checked += 1
            size, root = e.body["size"], e.body["root"]
            where = _where(e.feed, e.seq)
            if not 0 <= size <= index_of.get((e.feed, e.seq), -1):
                self.bad(where, "bad_commitment", f"size {size} covers entries not yet stored")
            elif roots.get(size) != root:
                self.bad(where, "bad_commitment", f"root does not match the log's first {size} entries")
            elif good and size < good[-1][0]:
                self.bad(where, "inconsistent_commitment", f"size {size} shrinks from {good[-1][0]}")
            else:
                good.append((size, root))
        if not good or good[-1][0] == 0:
            return
        # Proofs against the latest commitment: inclusion of sampled leaves, and consistency
        # with the one before it (every earlier root was recomputed above).
        size, root = good[-1]
        tree = merkle.Tree(leaves[:size])
        step = max(1, size // MAX_INCLUSION_CHECKS)
        for i in range(0, size, step):
            if not merkle.verify_inclusion(i, size, leaves[i], tree.inclusion_proof(i), root):
                self.bad(_where(self.owner, 0), "bad_inclusion", f"inclusion proof of leaf {i} fails")
                break
        if len(good) > 1 and 0 < good[-2][0] < size:
            old_size, old_root = good[-2]
            if not merkle.verify_consistency(
                old_size, size, old_root, root, merkle.consistency_proof(old_size, leaves[:size])
            ):
                self.bad(_where(self.owner, 0), "inconsistent_commitment", f"{size} does not extend {old_size}")

    def _open(self, where: str, data: bytes, msg_type: str) -> Any:
        try:
            return open_wire(data, msg_type, self.r.network)
        except MessageError as err:
            self.bad(where, f"bad_{msg_type.lower()}", str(err))
            return None

    def _index_beacons(self) -> None:
        """Built once, so each task's beacon check is a lookup, not a scan of the ledger."""
        self._commitments: dict[tuple[bytes, int, bytes], int] = {}
        for c in self.entries:
            if c.type == "Commitment":
                key = (c.feed, c.body["size"], c.body["root"])
                self._commitments[key] = min(c.seq, self._commitments.get(key, c.seq))

    def check_tasks(self) -> None:
        """Tasks, results, votes and certificates, each matched within its own feed (the feed of
        the gateway that accepted the task)."""
        self._index_beacons()
        self._result_seq: dict[tuple[bytes, bytes], int] = {}  # (feed, result id) -> first seq
        accepted: dict[tuple[bytes, bytes], tuple[Entry, Any]] = {}  # (feed, task id)
        results: dict[tuple[bytes, bytes], Any] = {}  # (feed, result id)
        self._result_times: dict[tuple[bytes, bytes], int] = {}  # (feed, result id) -> entry time
        self._skips: dict[tuple[bytes, bytes, bytes, bytes], Entry] = {}  # (feed, task, result, verifier)
        cast: list[tuple[Entry, Any]] = []
        opened: list[tuple[Entry, Any]] = []
        for e in self._judged:
            where = _where(e.feed, e.seq)
            if e.type == "TaskAccepted":
                task = self._open(where, e.body["task"], "Task")
                if task is not None:
                    accepted[(e.feed, task.id)] = (e, task)
                    self.check_beacon(e)
                    opened.append((e, task))
            elif e.type == "ResultCommitted":
                res = self._open(where, e.body["result"], "Result")
                if res is not None:
                    results[(e.feed, res.id)] = res
                    self._result_times.setdefault((e.feed, res.id), e.time)
                    self._result_seq.setdefault((e.feed, res.id), e.seq)
            elif e.type == "VerifierSkipped":
                b = e.body
                self._skips.setdefault((e.feed, b["task_id"], b["result_id"], b["verifier"]), e)
            elif e.type == "VoteCast":
                vote = self._open(where, e.body["vote"], "Vote")
                if vote is not None:
                    cast.append((e, vote))
        self.check_candidates(opened)
        counted: dict[tuple[bytes, bytes, bytes], list[bytes]] = {}  # (feed, task, result) -> effective verifiers
        for e in self._judged:
            if e.type == "TaskFinalized":
                self.check_certificate(e, accepted, results, counted)
        for e, vote in cast:
            self.check_cast_vote(e, vote, accepted, results, counted)
        self.check_terminal(accepted)

    def check_terminal(self, accepted: dict) -> None:
        """Each TaskFailed is a known failure of a task its feed accepted, and every task has at
        most one terminal entry (a TaskFailed or an accepting TaskFinalized), in any feed order;
        every VerifierSkipped names a candidate of a task its feed accepted."""
        ended: dict[tuple[bytes, bytes], Entry] = {}
        for e in sorted(self._judged, key=lambda x: (x.feed, x.seq)):
            where = _where(e.feed, e.seq)
            if e.type == "VerifierSkipped":
                got = accepted.get((e.feed, e.body["task_id"]))
                if got is None:
                    self.bad(where, "unknown_task", f"skip for task {_short(e.body['task_id'])} never accepted")
                elif e.body["verifier"] not in got[0].body["candidates"]:
                    self.bad(where, "unjustified_skip", "the skipped verifier was never a candidate")
                continue
            cert = None
            if e.type == "TaskFinalized":
                try:
                    cert = open_wire(e.body["certificate"], "Certificate", self.r.network).body
                except MessageError:
                    continue  # reported by check_certificate
            task_id = terminal_task(e, cert)
            if task_id is None:
                continue
            if e.type == "TaskFailed":
                if (e.feed, task_id) not in accepted:
                    self.bad(where, "unknown_task", f"failure of task {_short(task_id)} that was never accepted")
                    continue
                problem = failure_problem(e)
                if problem is not None:
                    self.bad(where, "bad_failure", problem)
            first = ended.setdefault((e.feed, task_id), e)
            if first is not e:
                self.bad(
                    where,
                    "second_terminal_state",
                    f"task {_short(task_id)} already ended by the {first.type} at seq {first.seq}",
                )

    def check_beacon(self, e: Entry) -> None:
        where = _where(e.feed, e.seq)
        size, beacon = e.body["beacon_size"], e.body["beacon"]
        if size == 0:
            if beacon != merkle.EMPTY_ROOT:
                self.bad(where, "bad_beacon", "empty beacon must be the empty root")
            return
        if self._commitments.get((e.feed, size, beacon), e.seq) >= e.seq:
            self.bad(where, "bad_beacon", "beacon is not an earlier commitment of the gateway")

    def check_candidates(self, tasks: list[tuple[Entry, Any]]) -> None:
        """Every candidate was admitted as a verifier; the owner's tasks have exactly the candidates
        it had to choose at the beacon (audit_admission.candidate_findings)."""
        for e, _ in tasks:
            for v in e.body["candidates"]:
                self.not_admitted(_where(e.feed, e.seq), v, "verifier", "candidate")
        if self.owner is not None:
            args = (self.entries, self.log, self.owner, self.admission.genesis, self.r.network, tasks)
            for e, code, detail in candidate_findings(*args):
                self.bad(_where(e.feed, e.seq), code, detail)

    def check_certificate(self, e: Entry, accepted: dict, results: dict, counted: dict) -> None:
        where = _where(e.feed, e.seq)
        cert = self._open(where, e.body["certificate"], "Certificate")
        if cert is None:
            return
        self.r.tasks_checked += 1
        c = cert.body
        if c["gateway"] != e.feed:
            self.bad(where, "bad_certificate", "certificate signed by another node than the feed")
            return
        self.not_admitted(where, c["gateway"], "gateway", "certifying gateway")
        self.not_admitted(where, c["worker"], "worker", "certified worker")
        if (e.feed, c["task_id"]) not in accepted:
            self.bad(where, "unknown_task", f"task {_short(c['task_id'])} was never accepted")
            return
        acc_entry, task = accepted[(e.feed, c["task_id"])]
        res = results.get((e.feed, c["result_id"]))
        if res is None or res.body["task_id"] != c["task_id"] or res.body["worker"] != c["worker"]:
            self.bad(where, "unknown_result", "certified result is not a committed result of this task")
        k = task.body["verifiers"]
        ranking = rank(acc_entry.body["beacon"], c["task_id"], acc_entry.body["candidates"], c["worker"])
        expected = effective_verifiers(ranking, c["skipped"], k)
        if list(c["verifiers"]) != expected:
            self.bad(where, "bad_assignment", "verifiers differ from the recomputed assignment")
            return
        counted[(e.feed, c["task_id"], c["result_id"])] = expected
        if not set(c["skipped"]) <= set(ranking):
            self.bad(where, "bad_assignment", "skipped verifiers were never candidates")
        for v in [x for x in c["skipped"] if x in ranking]:  # a non-candidate is reported above
            skip = self._skips.get((e.feed, c["task_id"], c["result_id"], v))
            skip = skip if skip is not None and skip.seq < e.seq else None
            problem = skip_problem(skip, self._result_times.get((e.feed, c["result_id"])))
            if problem is not None:
                self.bad(where, "unjustified_skip", f"verifier {_short(v)} skipped: {problem}")
        votes: dict[bytes, bool] = {}
        for raw in c["votes"]:
            v = self._open(where, raw, "Vote")
            if v is None:
                return
            b = v.body
            if b["task_id"] != c["task_id"] or b["result_id"] != c["result_id"]:
                self.bad(where, "foreign_vote", "a vote is for another task or result")
                return
            if b["verifier"] not in expected:
                self.bad(where, "foreign_vote", "a vote is from a verifier not assigned")
                return
            self.not_admitted(where, b["verifier"], "verifier", "voter")
            if b["verifier"] in votes:
                self.bad(where, "duplicate_vote", "two votes by one verifier")
                return
            votes[b["verifier"]] = b["accept"]
        t = tally(votes, expected, k)
        if t.decision == PENDING or t.decision != c["decision"]:
            self.bad(
                where,
                "bad_decision",
                f"recorded {c['decision']!r} but the votes give {t.decision!r} "
                f"({t.accepts} accept, {t.rejects} reject of {k})",
            )

    def check_cast_vote(self, e: Entry, vote: Any, accepted: dict, results: dict, counted: dict) -> None:
        """A VoteCast records a vote the gateway counted, so it must be from a verifier the task
        assigned: one of the certificate's effective verifiers; before a certificate (a gateway
        stopped between the votes and it), one of the task's ranking; before a committed result,
        one of its candidates."""
        b = vote.body
        where = _where(e.feed, e.seq)
        got = accepted.get((e.feed, b["task_id"]))
        if got is None:
            self.bad(where, "unknown_task", f"vote for task {_short(b['task_id'])} that this feed never accepted")
            return
        acc, _ = got
        allowed = counted.get((e.feed, b["task_id"], b["result_id"]))
        if allowed is None:
            res = results.get((e.feed, b["result_id"]))
            allowed = acc.body["candidates"]
            if res is not None and res.body["task_id"] == b["task_id"]:
                allowed = rank(acc.body["beacon"], b["task_id"], allowed, res.body["worker"])
        if b["verifier"] not in allowed:
            self.bad(where, "foreign_vote", f"vote of {_short(b['verifier'])}, a verifier not assigned to the task")
        else:
            self.not_admitted(where, b["verifier"], "verifier", "voter")
        if b["method"] == challenge.METHOD:
            self.check_trajectory_vote(where, e.feed, b, results.get((e.feed, b["result_id"])))

    def check_trajectory_vote(self, where: str, feed: bytes, vote: dict, res: Any) -> None:
        """The steps a trajectory vote re-executed are the challenge of a beacon the gateway drew
        after committing the result (consensus/challenge.py)."""
        if res is None or res.body["task_id"] != vote["task_id"]:
            self.bad(where, "bad_challenge", "trajectory vote on a result this feed never committed")
            return
        after = self._result_seq[(feed, res.id)]

        def beacon_ok(root: bytes, size: int) -> bool:
            return self._commitments.get((feed, size, root), -1) > after

        problem = challenge.vote_problem(vote, res.body, beacon_ok)
        if problem is not None:
            self.bad(where, "bad_challenge", problem)

    def check_evidence(self) -> None:
        for e in self._judged:
            if e.type != "Evidence":
                continue
            if e.body["kind"] in ("rejected_result", "minority_vote", "failed_recheck"):
                self.check_accusation(e)
                continue
            if e.body["kind"] != "equivocation":
                continue
            where = _where(e.feed, e.seq)
            p = e.body["proof"]
            try:
                a = parse_entry(p["a_payload"], p["a_sig"], self.r.network)
                b = parse_entry(p["b_payload"], p["b_sig"], self.r.network)
            except (MessageError, KeyError, TypeError) as err:
                self.bad(where, "bad_evidence", f"equivocation proof invalid: {err}")
                continue
            if a.feed != b.feed or a.seq != b.seq or a.hash == b.hash or a.feed != e.body["subject"]:
                self.bad(where, "bad_evidence", "proof is not two entries at one (feed, seq)")
                continue
            self.r.equivocations.append({"feed": a.feed.hex(), "seq": a.seq, "reported_by": e.feed.hex()})

    def check_accusation(self, e: Entry) -> None:
        problem = accusation_problem(e, self.r.network)
        if problem is not None:
            self.bad(_where(e.feed, e.seq), "bad_evidence", f"{e.body['kind']}: {problem}")


def find_ledgers(path: pathlib.Path) -> list[pathlib.Path]:
    path = pathlib.Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.rglob(LEDGER_FILE))
        if found:
            return found
    raise AuditInputError(f"no ledger at {path} (expected a {LEDGER_FILE} file or a directory holding one)")


def _audit(db_path: pathlib.Path, genesis: Genesis | None = None) -> _Auditor:
    report = AuditReport(path=str(db_path))
    try:
        db = sqlite3.connect(f"file:{pathlib.Path(db_path).resolve()}?mode=ro", uri=True)
        try:
            auditor = _Auditor(db, report, genesis)
            auditor.run()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise AuditInputError(f"{db_path} is not a readable trustgen ledger: {e}") from None
    return auditor


def audit_ledger(db_path: pathlib.Path, genesis: Genesis | None = None) -> AuditReport:
    return _audit(db_path, genesis).r


def audit_paths(paths: list[pathlib.Path], genesis: Genesis | None = None) -> list[AuditReport]:
    """Audit every ledger under `paths`, each file once; with several, cross-check every replica
    of every feed between them (what one ledger alone cannot show: the end cut off a feed).
    `genesis` pins the genesis every ledger must run under (else each ledger's own)."""
    found: dict[pathlib.Path, pathlib.Path] = {}
    for path in paths:
        for p in find_ledgers(path):
            found.setdefault(p.resolve(), p)
    if len(found) == 1:
        return [audit_ledger(p, genesis) for p in found.values()]
    return _cross_check([_audit(p, genesis) for p in found.values()])


def _cross_check(auditors: list[_Auditor]) -> list[AuditReport]:
    reports = [a.r for a in auditors]
    return _merge(reports, [Replica.of(a.r.path, a.owner, a.entries, a.log) for a in auditors])


def _merge(reports: list[AuditReport], replicas: list[Replica]) -> list[AuditReport]:
    """Cross-check the replicas and add the findings to the reports (same order)."""
    cross = cross_check(replicas)
    for i, where, code, detail in cross.violations:
        reports[i].violations.append(Violation(where, code, detail))
    for i, fork in cross.forks:
        if not any((x["feed"], x["seq"]) == (fork["feed"], fork["seq"]) for x in reports[i].equivocations):
            reports[i].equivocations.append(fork)  # unless the ledger's own evidence records it already
    for i, lag in cross.behind:
        reports[i].behind.append(lag)
    return reports


def audit_path(path: pathlib.Path) -> list[AuditReport]:
    return audit_paths([path])
