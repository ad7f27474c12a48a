"""The ledger: every node's append-only, hash-chained, signed feed, plus replicas of other
nodes' feeds, in one SQLite file (WAL, synchronous=FULL).

An entry is a signed `LedgerEntry` message; its hash is sha256 over payload and signature, and
each entry names its predecessor's hash. The payload and signature are stored as received;
the other columns are an index that the audit checks against them. Entries also get a local
`log_index` in the order this node stored them: that append-only log is what the node's
Merkle commitments cover (see docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import pathlib
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trustgen.consensus import merkle
from trustgen.consensus.domains import ENTRY_HASH
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, check_fields, open_payload, parse_payload, sign
from trustgen.errors import TrustgenError

ZERO = bytes(32)
DEFAULT_NETWORK = "trustgen-local"

# Entry types and the schema of their bodies (same conventions as messages.SCHEMAS).
ENTRY_SCHEMAS: dict[str, dict[str, str]] = {
    "NodeJoined": {"address": "str", "roles": "list"},
    # What a worker serves: [kind, digest, name] per model, and its largest task cost per kind.
    "Serves": {"models": "list", "limits": "dict"},
    "TaskAccepted": {"task": "bytes", "beacon": "bytes32", "beacon_size": "int", "candidates": "list"},
    "ResultCommitted": {"result": "bytes"},
    "VoteCast": {"vote": "bytes"},
    "TaskFinalized": {"certificate": "bytes"},
    # Liveness (consensus/liveness.py): a task's failure, a verifier passed over for a standby,
    # and a passed-over verifier answering again.
    "TaskFailed": {"task_id": "bytes32", "reason": "str", "detail": "str"},
    "VerifierSkipped": {
        "task_id": "bytes32",
        "result_id": "bytes32",
        "verifier": "bytes32",
        "reason": "str",
        "asked": "int",
        "deadline_ms": "int",
    },
    "VerifierRestored": {"verifier": "bytes32"},
    "Evidence": {"kind": "str", "subject": "bytes32", "proof": "dict"},
    "Commitment": {"size": "int", "root": "bytes32"},
    # Training on the network (docs/training-network.md), all in the coordinating gateway's feed.
    "TrainingJobAccepted": {
        "job": "bytes",
        "beacon": "bytes32",
        "beacon_size": "int",
        "candidates": "list",
        "k": "int",
    },
    "TrainingUpdate": {"update": "bytes", "blob": "str"},
    "UpdateCheck": {"check": "bytes"},
    "CheckpointProposed": {"checkpoint": "bytes", "round": "int", "state": "str", "accepted": "list"},
    "CheckpointFinalized": {
        "checkpoint": "bytes",
        "round": "int",
        "state": "str",
        "beacon": "bytes32",
        "verifiers": "list",
        "skipped": "list",
        "votes": "list",
    },
    # Admission (consensus/admission.py): the genesis a node runs under (once, in its own feed),
    # and authority-signed admissions and revocations, carried by any feed.
    "Genesis": {"genesis": "bytes"},
    "Admitted": {"admission": "bytes"},
    "Revoked": {"revocation": "bytes"},
}

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
    feed BLOB NOT NULL, seq INTEGER NOT NULL, hash BLOB NOT NULL, type TEXT NOT NULL,
    payload BLOB NOT NULL, sig BLOB NOT NULL, log_index INTEGER NOT NULL UNIQUE,
    PRIMARY KEY (feed, seq));
CREATE TABLE IF NOT EXISTS equivocations(
    feed BLOB NOT NULL, seq INTEGER NOT NULL, other_hash BLOB NOT NULL,
    PRIMARY KEY (feed, seq, other_hash));
"""


class IngestError(TrustgenError):
    """A foreign entry refused; `code` says why (for RPC status mapping and tests)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Entry:
    feed: bytes
    seq: int
    prev: bytes
    time: int
    type: str
    body: dict[str, Any]
    payload: bytes
    sig: bytes
    hash: bytes


def entry_hash(payload: bytes, sig: bytes) -> bytes:
    return hashlib.sha256(ENTRY_HASH + payload + sig).digest()


def leaf_data(feed: bytes, seq: int, h: bytes) -> bytes:
    return feed + struct.pack(">Q", seq) + h


def check_entry_body(entry_type: str, body: dict[str, Any]) -> None:
    schema = ENTRY_SCHEMAS.get(entry_type)
    if schema is None:
        raise MessageError(f"unknown entry type {entry_type!r}")
    check_fields(entry_type, schema, body)


def parse_entry(payload: bytes, sig: bytes, network: str, verify_signature: bool = True) -> Entry:
    """Verify a stored or received entry fully (header, schema, signature, body schema).
    verify_signature=False is for the audit, which checks signatures in parallel itself."""
    msg = (open_payload if verify_signature else parse_payload)(payload, sig, "LedgerEntry", network)
    b = msg.body
    if b["seq"] < 1:
        raise MessageError("sequence numbers start at 1")
    check_entry_body(b["type"], b["body"])
    return Entry(
        b["feed"], b["seq"], b["prev"], b["time"], b["type"], b["body"], payload, sig, entry_hash(payload, sig)
    )


class Ledger:
    """One node's ledger store. Thread-safe; one writer at a time."""

    def __init__(self, path: pathlib.Path, network: str = DEFAULT_NETWORK, identity: Identity | None = None) -> None:
        self.path = pathlib.Path(path)
        self.network = network
        self.identity = identity
        self._lock = threading.RLock()
        self._range = merkle.CompactRange()  # over the log, extended lazily by commit()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA_SQL)
        stored = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "network" in stored and stored["network"].decode() != network:
            raise TrustgenError(f"{path} belongs to network {stored['network'].decode()!r}")
        if identity is not None and "owner" in stored and stored["owner"] != identity.public_key:
            raise TrustgenError(f"{path} belongs to another node")
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('network', ?)", (network.encode(),))
            if identity is not None:
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('owner', ?)", (identity.public_key,))

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> _Tx:
        return _Tx(self.db, self._lock, self._forget_range)

    def _forget_range(self) -> None:
        # A rolled-back transaction may have fed the range rows that no longer exist.
        self._range = merkle.CompactRange()

    def batch(self) -> _Tx:
        """One durable transaction around many appends/ingests (all or nothing)."""
        return self._tx()

    # -- reads -------------------------------------------------------------------------------

    def head(self, feed: bytes) -> tuple[int, bytes]:
        row = self.db.execute(
            "SELECT seq, hash FROM entries WHERE feed=? ORDER BY seq DESC LIMIT 1", (feed,)
        ).fetchone()
        return (row[0], row[1]) if row else (0, ZERO)

    def heads(self) -> dict[bytes, tuple[int, bytes]]:
        rows = self.db.execute(
            "SELECT e.feed, e.seq, e.hash FROM entries e JOIN (SELECT feed, MAX(seq) m FROM entries "
            "GROUP BY feed) h ON e.feed = h.feed AND e.seq = h.m"
        ).fetchall()
        return {f: (s, h) for f, s, h in rows}

    def entries(self, feed: bytes, from_seq: int = 1, limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """(payload, sig) of a feed's entries from `from_seq`, in order."""
        return self.db.execute(
            "SELECT payload, sig FROM entries WHERE feed=? AND seq>=? ORDER BY seq LIMIT ?", (feed, from_seq, limit)
        ).fetchall()

    def get(self, feed: bytes, seq: int) -> Entry | None:
        row = self.db.execute("SELECT payload, sig FROM entries WHERE feed=? AND seq=?", (feed, seq)).fetchone()
        return parse_entry(row[0], row[1], self.network) if row else None

    def hash_at(self, feed: bytes, seq: int) -> bytes | None:
        """The stored entry hash at (feed, seq), without parsing the entry (checked when stored):
        what gossip compares an announcement against."""
        row = self.db.execute("SELECT hash FROM entries WHERE feed=? AND seq=?", (feed, seq)).fetchone()
        return row[0] if row else None

    def iter_entries(
        self, since: int = 0, entry_type: str | None = None, types: tuple[str, ...] = ()
    ) -> Iterator[Entry]:
        """Stored entries from log index `since` on (optionally of one type, or of `types`), in
        log order, parsed and verified. Filtering here spares a follower parsing entries it skips."""
        q = "SELECT payload, sig FROM entries WHERE log_index >= ?"
        args: tuple = (since,)
        if entry_type is not None:
            types = (entry_type,)
        if types:
            q, args = q + f" AND type IN ({','.join('?' * len(types))})", (since, *types)
        for payload, sig in self.db.execute(q + " ORDER BY log_index", args).fetchall():
            yield parse_entry(payload, sig, self.network)

    def positions(self, since: int, limit: int) -> list[tuple[bytes, int, bytes, int]]:
        """(feed, seq, hash, log index) of stored entries from log index `since` on, in log order,
        without parsing them (what gossip announces)."""
        return self.db.execute(
            "SELECT feed, seq, hash, log_index FROM entries WHERE log_index >= ? ORDER BY log_index LIMIT ?",
            (since, limit),
        ).fetchall()

    def size(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def next_index(self) -> int:
        """The log index the next stored entry gets (an indexed lookup, unlike COUNT)."""
        return self.db.execute("SELECT COALESCE(MAX(log_index) + 1, 0) FROM entries").fetchone()[0]

    # -- writes ------------------------------------------------------------------------------

    def _store(self, e: Entry) -> None:
        idx = self.next_index()
        self.db.execute(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?)", (e.feed, e.seq, e.hash, e.type, e.payload, e.sig, idx)
        )

    def append(self, entry_type: str, body: dict[str, Any], time_ms: int | None = None) -> Entry:
        """Sign and append an entry to this node's own feed."""
        if self.identity is None:
            raise TrustgenError("this ledger has no identity to sign with")
        check_entry_body(entry_type, body)
        with self._tx():
            seq, prev = self.head(self.identity.public_key)
            msg = sign(
                self.identity,
                "LedgerEntry",
                self.network,
                {
                    "feed": self.identity.public_key,
                    "seq": seq + 1,
                    "prev": prev,
                    "time": int(time.time() * 1000) if time_ms is None else time_ms,
                    "type": entry_type,
                    "body": body,
                },
            )
            e = Entry(
                msg.body["feed"],
                seq + 1,
                prev,
                msg.body["time"],
                entry_type,
                body,
                msg.payload,
                msg.sig,
                entry_hash(msg.payload, msg.sig),
            )
            self._store(e)
        return e

    def ingest(self, payload: bytes, sig: bytes) -> str:
        """Validate and store a foreign entry. Returns "stored", "duplicate" or "equivocation";
        raises IngestError with nothing changed when the entry is bad or does not link."""
        try:
            e = parse_entry(payload, sig, self.network)
        except MessageError as err:
            # Ingest codes for these cases are the message codes; anything else is malformed.
            code = err.code if err.code in MessageError.AUTH_CODES else MessageError.MALFORMED
            raise IngestError(code, str(err)) from None
        with self._tx():
            row = self.db.execute(
                "SELECT hash, payload, sig FROM entries WHERE feed=? AND seq=?", (e.feed, e.seq)
            ).fetchone()
            if row is not None:
                if row[0] == e.hash:
                    return "duplicate"
                self._record_equivocation(e, row[1], row[2])
                return "equivocation"
            seq, prev = self.head(e.feed)
            if e.seq != seq + 1:
                raise IngestError("gap", f"entry {e.seq} of feed {e.feed.hex()[:16]} does not follow its head {seq}")
            if e.prev != prev:
                raise IngestError(
                    "bad_link", f"entry {e.seq} of feed {e.feed.hex()[:16]} does not link to the stored predecessor"
                )
            self._store(e)
            return "stored"

    def _record_equivocation(self, e: Entry, other_payload: bytes, other_sig: bytes) -> None:
        cur = self.db.execute("INSERT OR IGNORE INTO equivocations VALUES (?,?,?)", (e.feed, e.seq, e.hash))
        if cur.rowcount and self.identity is not None:
            self.append(
                "Evidence",
                {
                    "kind": "equivocation",
                    "subject": e.feed,
                    "proof": {"a_payload": other_payload, "a_sig": other_sig, "b_payload": e.payload, "b_sig": e.sig},
                },
            )

    def commit(self) -> Entry:
        """Append a Commitment: the Merkle root over this node's log of entries so far. Only
        the entries stored since the last commitment are hashed."""
        with self._tx():
            for f, seq, h in self.db.execute(
                "SELECT feed, seq, hash FROM entries WHERE log_index >= ? ORDER BY log_index", (self._range.size,)
            ).fetchall():
                self._range.append(merkle.leaf_hash(leaf_data(f, seq, h)))
            return self.append("Commitment", {"size": self._range.size, "root": self._range.root()})


class _Tx:
    """Re-entrant transaction: BEGIN IMMEDIATE on the outermost level, commit or roll back."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, on_rollback=lambda: None) -> None:
        self.db, self.lock, self.on_rollback = db, lock, on_rollback

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.outer:
                if exc_type is None:
                    self.db.execute("COMMIT")
                else:
                    # SQLite may have rolled back already (SQLITE_FULL does): a second ROLLBACK
                    # would fail and hide the error that caused it.
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    self.on_rollback()
        finally:
            self.lock.release()
