"""The incremental audit's persisted state: a separate SQLite file beside the ledger, written only
by the auditor, holding what the audit derived from the log prefix it verified clean (per-feed
heads, the Merkle peaks, commitments, acceptances, results, certificates' assignments, votes,
findings and counters; under a genesis also its admissions and revocations, and the reputation
replayed up to the owner's latest commitment: what the candidate check needs, audit_admitted).

An attacker with the ledger file can rewrite old rows, so the state also keeps a digest of every
chunk of 4,096 log positions of the verified prefix: the next audit re-hashes the prefix's rows (a
read, no signature work, in parallel for big ledgers) and starts again from position 0 when any
chunk differs; an append re-hashes only the last, partial chunk. The
state file itself is trusted as the auditor's own; keep it where the audited node cannot write
(`--state`) when that matters.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pathlib
import sqlite3
import struct
from collections.abc import Iterable, Iterator, MutableSet
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from trustgen.consensus import merkle
from trustgen.consensus.encoding import decode, encode

STATE_VERSION = 4  # 2: admission and reputation; 3: terminal and unresponsive tables; 4: trajectory commitments (older states are rebuilt)
STATE_FILE = "audit-state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(lo INTEGER PRIMARY KEY, hi INTEGER NOT NULL, digest BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS heads(feed BLOB PRIMARY KEY, seq INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peaks(pos INTEGER PRIMARY KEY, height INTEGER NOT NULL, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS commitments(
    feed BLOB NOT NULL, seq INTEGER NOT NULL, size INTEGER NOT NULL, root BLOB NOT NULL, PRIMARY KEY (feed, seq));
CREATE INDEX IF NOT EXISTS commitments_by_root ON commitments(feed, size, root, seq);
CREATE TABLE IF NOT EXISTS joins(feed BLOB PRIMARY KEY, log_index INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accepted(
    feed BLOB NOT NULL, task_id BLOB NOT NULL, beacon BLOB NOT NULL, candidates BLOB NOT NULL, k INTEGER NOT NULL,
    PRIMARY KEY (feed, task_id));
CREATE TABLE IF NOT EXISTS results(
    feed BLOB NOT NULL, result_id BLOB NOT NULL, task_id BLOB NOT NULL, worker BLOB NOT NULL,
    PRIMARY KEY (feed, result_id));
CREATE TABLE IF NOT EXISTS committed(
    feed BLOB NOT NULL, result_id BLOB NOT NULL, seq INTEGER NOT NULL, output_digest TEXT NOT NULL,
    trajectory BLOB NOT NULL, PRIMARY KEY (feed, result_id));
CREATE TABLE IF NOT EXISTS counted(
    feed BLOB NOT NULL, task_id BLOB NOT NULL, result_id BLOB NOT NULL, verifiers BLOB NOT NULL,
    PRIMARY KEY (feed, task_id, result_id));
CREATE TABLE IF NOT EXISTS votes(
    feed BLOB NOT NULL, task_id BLOB NOT NULL, result_id BLOB NOT NULL, verifier BLOB NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS votes_by_result ON votes(feed, task_id, result_id);
CREATE TABLE IF NOT EXISTS terminal(feed BLOB NOT NULL, task_id BLOB NOT NULL, PRIMARY KEY (feed, task_id));
CREATE TABLE IF NOT EXISTS unresponsive(verifier BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS findings(pos INTEGER PRIMARY KEY, feed TEXT NOT NULL, seq INTEGER NOT NULL,
    reported_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS admissions(log_index INTEGER PRIMARY KEY, payload BLOB NOT NULL, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rep_sets(name TEXT NOT NULL, key BLOB NOT NULL, PRIMARY KEY (name, key));
"""

ROW_QUERY = "SELECT feed, seq, hash, type, payload, sig, log_index FROM entries"


def state_path_for(ledger: pathlib.Path) -> pathlib.Path:
    """`audit-state.sqlite` beside a `ledger.db`; `<name>.audit-state.sqlite` beside any other file
    (so two ledger files in one directory keep separate states)."""
    ledger = pathlib.Path(ledger)
    name = STATE_FILE if ledger.name == "ledger.db" else f"{ledger.name}.{STATE_FILE}"
    return ledger.parent / name


_HEADER = struct.Struct(">qqIIIII")
CHUNK_ROWS = 4096  # log positions per prefix digest: appending re-hashes at most one chunk
PARALLEL_FROM = 16384  # rows; below this a process pool costs more than it saves


def rows_digest(rows: Iterable[tuple]) -> bytes:
    """sha256 over every column of each row (a fixed header of the row's numbers and lengths,
    then its bytes): any edit of a row changes it. One join and update per row: this loop is
    the incremental audit's O(n) part."""
    h = hashlib.sha256(b"trustgen/audit-prefix/v1")
    update, header = h.update, _HEADER.pack
    for feed, seq, eh, typ, payload, sig, idx in rows:
        t = str(typ).encode()
        update(
            b"".join((header(idx, seq, len(feed), len(eh), len(t), len(payload), len(sig)), feed, eh, t, payload, sig))
        )
    return h.digest()


def range_digest(db: sqlite3.Connection, lo: int, hi: int) -> bytes:
    return rows_digest(db.execute(ROW_QUERY + " WHERE log_index >= ? AND log_index < ? ORDER BY log_index", (lo, hi)))


def _digest_in_child(args: tuple[str, int, int]) -> bytes | None:
    path, lo, hi = args
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return range_digest(db, lo, hi)
    except (TypeError, ValueError, struct.error):
        return None
    finally:
        db.close()


def prefix_matches(db: sqlite3.Connection, path: pathlib.Path, chunks: list[tuple[int, int, bytes]]) -> bool:
    """Whether each chunk of the verified prefix (log positions lo..hi-1) still hashes to its
    recorded digest: a deleted, inserted, reordered or edited row changes one. Rows outside every
    chunk (a negative or NULL log index) are the caller's count check. Big prefixes are hashed
    by several processes, each on its own read-only connection (honest rows below the head never
    change, so their snapshots agree)."""
    size = chunks[-1][1] if chunks else 0
    workers = min(os.cpu_count() or 1, 8)
    try:
        got: list[bytes | None]
        if size < PARALLEL_FROM or workers < 2:
            got = [range_digest(db, lo, hi) for lo, hi, _ in chunks]
        else:
            jobs = [(str(pathlib.Path(path).resolve()), lo, hi) for lo, hi, _ in chunks]
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                got = list(pool.map(_digest_in_child, jobs))
    except (TypeError, ValueError, struct.error):
        return False  # a column holding what no ledger writes (text where bytes belong, NULL)
    return got == [d for _, _, d in chunks]


def update_chunks(st_db: sqlite3.Connection, db: sqlite3.Connection, start: int, end: int) -> None:
    """Record the digests of the chunks that log positions start..end-1 touch (the last chunk
    before `start` is partial at most, and is re-hashed whole)."""
    lo = (start // CHUNK_ROWS) * CHUNK_ROWS
    while lo < end:
        hi = min(lo + CHUNK_ROWS, end)
        st_db.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?)", (lo, hi, range_digest(db, lo, hi)))
        lo += CHUNK_ROWS


class AuditState:
    """A connection to the state file; `load` answers None when it is missing or unusable."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def create(cls, path: pathlib.Path) -> AuditState:
        path = pathlib.Path(path)
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path, isolation_level=None)
        db.executescript(_SCHEMA)
        return cls(db)

    @classmethod
    def load(cls, path: pathlib.Path, network: str, owner: bytes | None) -> AuditState | None:
        path = pathlib.Path(path)
        if not path.is_file():
            return None
        try:
            db = sqlite3.connect(path, isolation_level=None)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            return None
        state = cls(db)
        if (
            meta.get("version") != STATE_VERSION
            or meta.get("network") != network
            or meta.get("owner", b"") != (owner or b"")
        ):
            db.close()
            return None
        return state

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, **values: object) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    @property
    def size(self) -> int:
        return int(self.meta("size", 0))

    def chunks(self) -> list[tuple[int, int, bytes]]:
        return self.db.execute("SELECT lo, hi, digest FROM chunks ORDER BY lo").fetchall()

    def peaks(self) -> merkle.CompactRange:
        r = merkle.CompactRange()
        r.peaks = [(h, x) for h, x in self.db.execute("SELECT height, hash FROM peaks ORDER BY pos")]
        r.size = self.size
        return r

    def save_peaks(self, r: merkle.CompactRange) -> None:
        self.db.execute("DELETE FROM peaks")
        self.db.executemany("INSERT INTO peaks VALUES (?, ?, ?)", [(i, h, x) for i, (h, x) in enumerate(r.peaks)])


class StoredSet(MutableSet[Any]):
    """One named set of the state (a reputation set such as the certificates seen), on disk: it
    grows with the ledger, so a re-audit reads only the members it asks about."""

    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db, self.name = db, name

    def __contains__(self, x: object) -> bool:
        key = encode(x)
        return (
            self.db.execute("SELECT 1 FROM rep_sets WHERE name = ? AND key = ?", (self.name, key)).fetchone()
            is not None
        )

    def add(self, x: Any) -> None:
        self.db.execute("INSERT OR IGNORE INTO rep_sets VALUES (?, ?)", (self.name, encode(x)))

    def discard(self, x: Any) -> None:
        self.db.execute("DELETE FROM rep_sets WHERE name = ? AND key = ?", (self.name, encode(x)))

    def __iter__(self) -> Iterator[Any]:
        for (key,) in self.db.execute("SELECT key FROM rep_sets WHERE name = ?", (self.name,)).fetchall():
            v = decode(key)
            yield tuple(v) if isinstance(v, list) else v

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM rep_sets WHERE name = ?", (self.name,)).fetchone()[0])


def read_state_summary(ledger: pathlib.Path) -> dict[str, object] | None:
    """What the explorer shows of the last audit: how far it verified and its counters (read-only;
    None when no audit state exists)."""
    path = state_path_for(ledger)
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            findings = db.execute("SELECT COUNT(*) FROM findings").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    keys = ("size", "tasks_checked", "commitments_checked", "audited_at_ms", "last_ok", "last_violations")
    return {**{k: meta.get(k, 0) for k in keys}, "equivocations": findings}
