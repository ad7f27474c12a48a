"""A training job from a node's directory alone: its ledger and its blob store, exported to a run
directory (records.py) that replay checks like any local run.

The export writes what the coordinating gateway's feed signs: `job.wire` (the gateway-signed job
of TrainingJobAccepted), `updates.log` (the updates each finalised round accepted, by a strict
majority of its verifiers' recorded checks, rounds in order, trainers in key order),
`checkpoints.log` (the TrainingCheckpoint of each CheckpointFinalized, rounds consecutive from 0)
and `blobs/` (each accepted update's delta, read from the node's gossip blob store, where blobs are
named by their chunk Merkle root, and checked against both that name and the sha256 its signed
update commits to). The network records no checkpoint for step 0 (the spec fixes the start), so
replay of an export is told not to require one (docs/decisions.md).

Nothing here imports gossip: the store's layout (DATA_DIR/blobs/<address>, the address the RFC
6962 root over 64 KiB chunks) is the protocol's (docs/protocol.md §5), re-derived here.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil
import tempfile

from trustgen.consensus import merkle
from trustgen.errors import UsageError
from trustgen.training.job import rounds_of
from trustgen.training.ledger_replay import BlobReader, replay_rounds
from trustgen.training.ledger_view import LedgerJob, collect, job_in, read_ledger
from trustgen.training.records import BlobDir, RunError, append_line, read_bounded
from trustgen.training.replay import ReplayReport, replay

LEDGER_FILE = "ledger.db"  # a node directory's ledger (node/config.py: data_dir / "ledger.db")
BLOB_CHUNK = 64 * 1024  # gossip blob chunk size (gossip/blobs.py; a test holds the two equal)
_ADDRESS = re.compile(r"^[0-9a-f]{64}$")


def is_node_dir(path: pathlib.Path) -> bool:
    return (pathlib.Path(path) / LEDGER_FILE).is_file()


def blob_address(data: bytes) -> str:
    """A blob's address in a node's store: the Merkle root over its 64 KiB chunks, hex."""
    chunks = [data[i : i + BLOB_CHUNK] for i in range(0, max(len(data), 1), BLOB_CHUNK)]
    return merkle.root([merkle.leaf_hash(c) for c in chunks]).hex()


def read_node_blob(data_dir: pathlib.Path, address: str, sha256: bytes | None, what: str) -> bytes:
    """A blob of the node's store, checked against its address and the sha256 a signed message
    names (when it names one); RunError names the blob otherwise."""
    root = pathlib.Path(data_dir) / "blobs"
    if not _ADDRESS.match(address):
        raise RunError(f"{what}: blob address {address[:70]!r} is not 64 hex digits")
    name = f"blob {address[:16]}… ({what})"
    data = read_bounded(root / address, BlobDir.MAX_BYTES, name, root)
    if blob_address(data) != address or (sha256 is not None and hashlib.sha256(data).digest() != sha256):
        raise RunError(f"{name} in {root} is corrupted (its bytes do not match its address and signed digest)")
    return data


def _present(data_dir: pathlib.Path, address: str) -> bool:
    return not _ADDRESS.match(address) or (pathlib.Path(data_dir) / "blobs" / address).exists()


def _accepted_deltas(j: LedgerJob) -> list[str]:
    """The blob addresses of every update the finalised rounds accepted."""
    out = []
    for r in j.finalized_rounds():
        ok = {u.id for u in j.accepted_updates(r)}
        out += [blob for _, u, blob in j.rounds[r].updates if u.id in ok]
    return out


def node_blob_reader(data_dir: pathlib.Path) -> BlobReader:
    """read_node_blob, with None for a blob the store does not hold (a corrupted one still raises)."""

    def read(address: str, sha256: bytes | None, what: str) -> bytes | None:
        if not _present(data_dir, address):
            return None
        return read_node_blob(data_dir, address, sha256, what)

    return read


def load_job(data_dir: pathlib.Path, job_id: bytes) -> LedgerJob:
    network, entries = read_ledger(pathlib.Path(data_dir) / LEDGER_FILE)
    jobs, _ = collect(entries, network)  # what does not open is the audit's to report
    j = job_in(jobs, job_id)
    if j is None:
        raise RunError(f"the ledger in {data_dir} holds no job {job_id.hex()[:16]}… accepted by its author")
    return j


def export_run(data_dir: pathlib.Path, job_id: bytes, out: pathlib.Path) -> dict[str, int]:
    """Write the job's run directory to `out` (new or empty); returns what it holds."""
    j = load_job(data_dir, job_id)
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty: choose a new directory for the export")
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.wire").write_bytes(j.job.wire())
    blobs = BlobDir(out / "blobs")
    rounds = 0
    updates = 0
    inline = j.spec.algorithm["name"] == "spsa"  # SPSA updates carry their bytes: no blobs
    for r in range(rounds_of(j.spec)):
        rec = j.rounds.get(r)
        if rec is None or not rec.finalized:
            break  # replay reports a job that stops early as truncated
        blob_of = {u.id: blob for _, u, blob in rec.updates}
        for u in j.accepted_updates(r):
            what = f"round {r} update of trainer {u.signer.hex()[:16]}…"
            if not inline:
                blobs.put(read_node_blob(data_dir, blob_of[u.id], u.body["delta"], what))
            append_line(out / "updates.log", u)
            updates += 1
        append_line(out / "checkpoints.log", rec.finalized[0][1])
        rounds += 1
    return {"rounds": rounds, "updates": updates}


def replay_node(
    data_dir: pathlib.Path, job_id: bytes, threads: int | None = None, losses: bool = True, mode: str = "full"
) -> ReplayReport:
    """Export the job from a node's directory to a temporary run directory and replay it; when
    the node lacks some accepted delta, replay round by round from the ledger instead, taking a
    round's state from its finalised state blob where its deltas are missing (ledger_replay.py)."""
    j = load_job(data_dir, job_id)
    if not all(_present(data_dir, a) for a in _accepted_deltas(j)):
        return replay_rounds(j, node_blob_reader(data_dir), threads, losses)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="trustgen-replay-"))
    try:
        export_run(data_dir, job_id, tmp / "run")
        return replay(tmp / "run", threads, losses, mode, start_record=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_job_id(text: str, what: str = "--job") -> bytes:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text or ""):
        raise UsageError(f"{what} {text[:80]!r} must be a job id: 64 hex digits")
    return bytes.fromhex(text)
