"""The explorer's read path: an in-memory SQLite index over a ledger, brought up to date from the
ledger's log on every request (only rows past the last indexed log position are read).

The ledger is opened read-only and never changed (its schema has no index by hash or by task;
these live here). Entries are parsed without checking signatures: the explorer shows what the
ledger holds, and the audit verdict (audit-state.sqlite, written by `trustgen audit`) says how
far it has been verified.
"""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3
import threading
from typing import Any

from trustgen.consensus.audit import find_ledgers
from trustgen.consensus.domains import TRAINING_JOB
from trustgen.consensus.encoding import EncodingError, decode, encode
from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import MessageError, Signed, parse_payload
from trustgen.errors import TrustgenError
from trustgen.training.records import update_type

# Network training entries (built elsewhere): shown generically by job id when present.
TRAINING_TYPES = ("TrainingJobAccepted", "TrainingUpdate", "UpdateCheck", "CheckpointProposed", "CheckpointFinalized")
BATCH = 5000

_SCHEMA = """
CREATE TABLE entries_meta(log_index INTEGER PRIMARY KEY, feed BLOB, seq INTEGER, hash BLOB, type TEXT, time INTEGER);
CREATE INDEX entries_by_hash ON entries_meta(hash);
CREATE INDEX entries_by_feed ON entries_meta(feed, seq);
CREATE INDEX entries_by_type ON entries_meta(type, log_index);
CREATE TABLE tasks(task_id BLOB, feed BLOB, log_index INTEGER, kind TEXT, client BLOB, k INTEGER);
CREATE INDEX tasks_by_id ON tasks(task_id);
CREATE INDEX tasks_by_position ON tasks(log_index);
CREATE TABLE results(result_id BLOB, task_id BLOB, feed BLOB, log_index INTEGER, worker BLOB, output_digest TEXT);
CREATE INDEX results_by_task ON results(task_id);
CREATE INDEX results_by_id ON results(result_id);
CREATE INDEX results_by_worker ON results(worker, log_index);
CREATE TABLE votes(task_id BLOB, result_id BLOB, verifier BLOB, accept INTEGER, method TEXT, distance REAL,
    margin REAL, reason TEXT, log_index INTEGER);
CREATE INDEX votes_by_task ON votes(task_id);
CREATE INDEX votes_by_verifier ON votes(verifier, log_index);
CREATE TABLE certs(task_id BLOB, result_id BLOB, feed BLOB, log_index INTEGER, decision TEXT, worker BLOB);
CREATE INDEX certs_by_task ON certs(task_id);
CREATE TABLE failures(task_id BLOB, feed BLOB, log_index INTEGER, reason TEXT, detail TEXT);
CREATE INDEX failures_by_task ON failures(task_id);
CREATE TABLE skips(task_id BLOB, result_id BLOB, verifier BLOB, reason TEXT, asked INTEGER, deadline_ms INTEGER,
    feed BLOB, log_index INTEGER);
CREATE INDEX skips_by_task ON skips(task_id);
CREATE TABLE nodes(node BLOB PRIMARY KEY, roles TEXT, address TEXT, log_index INTEGER);
CREATE TABLE evidence(subject BLOB, kind TEXT, feed BLOB, log_index INTEGER);
CREATE INDEX evidence_by_subject ON evidence(subject, log_index);
CREATE TABLE marks(node BLOB, log_index INTEGER, good INTEGER, bad INTEGER);
CREATE INDEX marks_by_node ON marks(node, log_index);
CREATE TABLE training(job BLOB, type TEXT, log_index INTEGER, loss REAL);
CREATE INDEX training_by_job ON training(job, log_index);
CREATE TABLE ids(idhex TEXT, what TEXT, ref TEXT);
CREATE INDEX ids_by_hex ON ids(idhex);
"""


def peek(data: bytes, msg_type: str, network: str) -> Signed | None:
    """A wire message parsed without checking its signature (None when malformed)."""
    try:
        env = decode(data)
        if (
            not isinstance(env, dict)
            or not isinstance(env.get("payload"), bytes)
            or not isinstance(env.get("sig"), bytes)
        ):
            return None
        return parse_payload(env["payload"], env["sig"], msg_type, network)
    except (EncodingError, MessageError):
        return None


# Where each training entry keeps its job id and held-out loss: (field, message type inside it).
_TRAINING_WIRES = {
    "TrainingUpdate": ("update", "DeltaUpdate"),
    "UpdateCheck": ("check", "UpdateCheck"),
    "CheckpointProposed": ("checkpoint", "TrainingCheckpoint"),
    "CheckpointFinalized": ("checkpoint", "TrainingCheckpoint"),
}


def training_ref(entry_type: str, body: dict[str, Any], network: str) -> tuple[bytes | None, float | None]:
    """The job a training entry belongs to and the held-out loss it records (None when it records
    none, or the entry does not parse). A TrainingJobAccepted names its job by the signed spec."""
    if entry_type == "TrainingJobAccepted":
        job = peek(body.get("job", b""), "TrainingJob", network)
        if job is None or not isinstance(job.body.get("spec"), dict):
            return None, None
        try:
            return hashlib.sha256(TRAINING_JOB + encode(job.body["spec"])).digest(), None
        except (EncodingError, TypeError, ValueError):
            return None, None
    field, msg_type = _TRAINING_WIRES[entry_type]
    if entry_type == "TrainingUpdate":  # an SPSA job's updates are SpsaUpdates
        msg_type = update_type(body.get(field, b"")) if isinstance(body.get(field), bytes) else msg_type
    inner = peek(body.get(field, b""), msg_type, network)
    if inner is None or not isinstance(inner.body.get("job"), bytes):
        return None, None
    loss = inner.body.get("heldout_loss")
    return inner.body["job"], float(loss) if isinstance(loss, float) else None


class LedgerIndex:
    """Thread-safe: one lock around refresh and every query (SQLite in memory, one connection)."""

    def __init__(self, ledger_dir: pathlib.Path) -> None:
        ledger_dir = pathlib.Path(ledger_dir)
        found = find_ledgers(ledger_dir)
        if len(found) != 1:
            raise TrustgenError(f"{ledger_dir} holds {len(found)} ledgers; give one node's directory or ledger.db")
        self.path = found[0]
        self.dir = self.path.parent
        try:
            self.ledger = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, check_same_thread=False)
            meta = dict(self.ledger.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise TrustgenError(f"{self.path} is not a readable trustgen ledger: {e}") from None
        if "network" not in meta:
            raise TrustgenError(f"{self.path} has no network id")
        self.network: str = meta["network"].decode()
        self.owner: bytes | None = meta.get("owner")
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.lock = threading.RLock()
        self.next = 0
        self.refresh()

    def __enter__(self) -> LedgerIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ledger.close()
        self.db.close()

    def refresh(self) -> int:
        """Index the entries stored since the last call; returns how many."""
        with self.lock:
            added = 0
            while True:
                rows = self.ledger.execute(
                    "SELECT log_index, payload, sig FROM entries WHERE log_index >= ? ORDER BY log_index LIMIT ?",
                    (self.next, BATCH),
                ).fetchall()
                if not rows:
                    return added
                with self.db:
                    for idx, payload, sig in rows:
                        self._add(idx, payload, sig)
                self.next = rows[-1][0] + 1
                added += len(rows)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self.lock:
            return self.db.execute(sql, args).fetchone()

    def raw(self, log_index: int) -> tuple | None:
        with self.lock:
            return self.ledger.execute(
                "SELECT feed, seq, hash, type, payload, sig, log_index FROM entries WHERE log_index = ?", (log_index,)
            ).fetchone()

    # -- indexing one entry ----------------------------------------------------------------------

    def _id(self, raw: bytes, what: str, ref: str) -> None:
        self.db.execute("INSERT INTO ids VALUES (?, ?, ?)", (raw.hex(), what, ref))

    def _add(self, idx: int, payload: bytes, sig: bytes) -> None:
        try:
            e = parse_entry(payload, sig, self.network, verify_signature=False)
        except MessageError:
            self.db.execute("INSERT INTO entries_meta VALUES (?, NULL, NULL, NULL, 'unreadable', NULL)", (idx,))
            return
        self.db.execute(
            "INSERT INTO entries_meta VALUES (?, ?, ?, ?, ?, ?)", (idx, e.feed, e.seq, e.hash, e.type, e.time)
        )
        self._id(e.hash, "entry", e.hash.hex())
        b, net = e.body, self.network
        if e.type == "NodeJoined":
            cur = self.db.execute(
                "INSERT OR IGNORE INTO nodes VALUES (?, ?, ?, ?)",
                (e.feed, ",".join(map(str, b["roles"])), b["address"], idx),
            )
            if cur.rowcount:
                self._id(e.feed, "node", e.feed.hex())
        elif e.type == "TaskAccepted":
            t = peek(b["task"], "Task", net)
            if t is not None:
                tb = t.body
                self.db.execute(
                    "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                    (t.id, e.feed, idx, tb["kind"], tb["client"], tb["verifiers"]),
                )
                self._id(t.id, "task", t.id.hex())
        elif e.type == "ResultCommitted":
            r = peek(b["result"], "Result", net)
            if r is not None:
                rb = r.body
                self.db.execute(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?)",
                    (r.id, rb["task_id"], e.feed, idx, rb["worker"], rb["output_digest"]),
                )
                self._id(r.id, "result", rb["task_id"].hex())
        elif e.type == "VoteCast":
            v = peek(b["vote"], "Vote", net)
            if v is not None:
                self._vote(v.body, idx)
        elif e.type == "TaskFinalized":
            self._certificate(e.feed, b["certificate"], idx)
        elif e.type == "TaskFailed":
            self.db.execute(
                "INSERT INTO failures VALUES (?, ?, ?, ?, ?)", (b["task_id"], e.feed, idx, b["reason"], b["detail"])
            )
        elif e.type == "VerifierSkipped":
            self.db.execute(
                "INSERT INTO skips VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (b["task_id"], b["result_id"], b["verifier"], b["reason"], b["asked"], b["deadline_ms"], e.feed, idx),
            )
        elif e.type == "Evidence":
            self.db.execute("INSERT INTO evidence VALUES (?, ?, ?, ?)", (b["subject"], b["kind"], e.feed, idx))
            if b["kind"] == "equivocation":
                self.db.execute("INSERT INTO marks VALUES (?, ?, 0, 10)", (b["subject"], idx))
        elif e.type in TRAINING_TYPES:
            job, loss = training_ref(e.type, b, net)
            if job is not None:
                self.db.execute("INSERT INTO training VALUES (?, ?, ?, ?)", (job, e.type, idx, loss))
                self._id(job, "job", job.hex())

    def _vote(self, vb: dict[str, Any], idx: int) -> None:
        self.db.execute(
            "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                vb["task_id"],
                vb["result_id"],
                vb["verifier"],
                int(vb["accept"]),
                vb["method"],
                vb["distance"],
                vb["margin"],
                vb["reason"],
                idx,
            ),
        )

    def _certificate(self, feed: bytes, data: bytes, idx: int) -> None:
        c = peek(data, "Certificate", self.network)
        if c is None:
            return
        cb = c.body
        self.db.execute(
            "INSERT INTO certs VALUES (?, ?, ?, ?, ?, ?)",
            (cb["task_id"], cb["result_id"], feed, idx, cb["decision"], cb["worker"]),
        )
        accepted = cb["decision"] == "accept"
        # The marks reputation.py counts, kept per entry so a node page can plot them over time.
        self.db.execute("INSERT INTO marks VALUES (?, ?, ?, ?)", (cb["worker"], idx, int(accepted), int(not accepted)))
        for raw in cb["votes"]:
            v = peek(raw, "Vote", self.network) if isinstance(raw, bytes) else None
            if v is not None:
                agree = v.body["accept"] == accepted
                self.db.execute(
                    "INSERT INTO marks VALUES (?, ?, ?, ?)", (v.body["verifier"], idx, int(agree), int(not agree))
                )
