"""A run directory: the signed job, the signed updates, checkpoints and blobs, on disk.

Layout (every file is either signed bytes or content-addressed, so a copy of the directory is
all a replayer needs):
    job.wire          the TrainingJob, signed by its author
    updates.log       one hex-encoded signed update per line (SpsaUpdate or DeltaUpdate), in
                      the order they were accepted
    checkpoints.log   one hex-encoded signed TrainingCheckpoint per line
    blobs/<hex>       delta blobs and kept inner states, named by sha256 of their bytes
    checkpoints/<hex>/ model directories (the final one is `final/`)
    keys/             the keys `train run` generated (mode 0600 files), never read by replay
    run.json          what the run measured (losses, times, profile): information, not evidence
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.domains import TRAIN_UPDATES as UPDATES_DOMAIN
from trustgen.consensus.encoding import EncodingError, decode, encode, parse_signing_bytes
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.errors import TrustgenError
from trustgen.training.spec import JobSpec, open_job

MAX_UPDATES = 10_000_000
MAX_JOB_BYTES = 1 << 20
MAX_NOTES = 64 << 20
MAX_LINE = 1 << 20  # a DeltaUpdate commits 32 bytes per inner step: 4,096 steps fit


class RunError(TrustgenError):
    """A run directory that cannot be used: missing, malformed or inconsistent files."""


def read_bounded(path: pathlib.Path, max_bytes: int, name: str, where: pathlib.Path) -> bytes:
    """A file's bytes, read only when it is a regular file (or a link to one) of at most
    `max_bytes`, its size checked before reading: a directory someone hands over is input like any
    other, and a FIFO, device or huge file in it must not hang or exhaust the reader."""
    try:
        st = path.stat()  # lstat would stop at a link; this sees what a link points to
        if not stat.S_ISREG(st.st_mode):
            raise RunError(f"{name} in {where} is not a regular file")
        if st.st_size > max_bytes:
            raise RunError(f"{name} is {st.st_size} bytes, more than the {max_bytes} a blob may have")
        # Non-blocking: a file swapped for a FIFO after the stat still cannot hang the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunError(f"{name} in {where} is not a regular file")
            f = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise RunError(f"{name} is missing from {where}") from None
    except OSError as e:
        raise RunError(f"{name} in {where} cannot be read ({e.strerror})") from None
    if len(data) > max_bytes:
        raise RunError(f"{name} grew past {max_bytes} bytes while it was read")
    return data


class BlobDir:
    """Content-addressed files: a blob's name is the sha256 of its bytes, checked on read."""

    MAX_BYTES = 1 << 30  # a delta or a kept inner state: the size of a model, bounded

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def put(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / digest.hex()
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    def get(self, digest: bytes, max_bytes: int = MAX_BYTES) -> bytes:
        """The blob's bytes, checked against its name. Only a regular file (or a link to one) of
        at most `max_bytes` is read, and its size is checked before reading: a run directory is
        input like any other, and a FIFO, device or huge file in blobs/ must not hang or exhaust
        the reader."""
        name = f"blob {digest.hex()[:16]}…"
        data = read_bounded(self.root / digest.hex(), max_bytes, name, self.root)
        if hashlib.sha256(data).digest() != digest:
            raise RunError(f"blob {digest.hex()[:16]}… is corrupted (its bytes do not match its name)")
        return data

    def has(self, digest: bytes) -> bool:
        return (self.root / digest.hex()).is_file()


UPDATE_TYPES = ("SpsaUpdate", "DeltaUpdate")


def update_type(wire: bytes) -> str:
    """The update type a wire's payload names, when it is one of UPDATE_TYPES (else DeltaUpdate,
    which then fails to open with a precise error)."""
    try:
        env = decode(wire)
        payload = env.get("payload") if isinstance(env, dict) else None
        kind = parse_signing_bytes(payload)[0] if isinstance(payload, bytes) else ""
    except EncodingError:
        kind = ""
    return kind if kind in UPDATE_TYPES else UPDATE_TYPES[-1]


def open_update(wire: bytes, network: str) -> Signed:
    """A signed update of either algorithm, opened and verified as the type it names; MessageError otherwise."""
    return open_wire(wire, update_type(wire), network)


def updates_digest(updates: list[Signed]) -> bytes:
    """Digest of a list of signed updates (their ids, in order): what a checkpoint commits to."""
    return ids_digest([u.id for u in updates])


def ids_digest(ids: list[bytes]) -> bytes:
    """updates_digest from the update ids alone (what ledger entries hold)."""
    return hashlib.sha256(UPDATES_DOMAIN + encode(list(ids))).digest()


@dataclass
class Run:
    """A run directory opened for reading: everything verified against the job before use."""

    root: pathlib.Path
    job: Signed
    spec: JobSpec
    updates: list[Signed]
    checkpoints: list[Signed]

    @property
    def blobs(self) -> BlobDir:
        return BlobDir(self.root / "blobs")

    def info(self) -> dict[str, Any]:
        """The run's own notes (unsigned: shown to people, indexes checked against commitments,
        never evidence). Missing, oversized or malformed notes read as none."""
        p = self.root / "run.json"
        try:
            if not stat.S_ISREG(p.lstat().st_mode) or p.stat().st_size > MAX_NOTES:
                return {}
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}


def _read_log(path: pathlib.Path, msg_type: str | tuple[str, ...], spec: JobSpec, job_id: bytes) -> list[Signed]:
    if not path.is_file():
        return []
    types = (msg_type,) if isinstance(msg_type, str) else msg_type
    out = []
    with path.open("rb") as f:
        n = 0
        while line := f.readline(MAX_LINE + 1):  # bounded: a line with no newline is never read whole
            n += 1
            if n > MAX_UPDATES or len(line) > MAX_LINE:
                raise RunError(f"{path.name}: line {n} is too long or the log has too many lines")
            line = line.strip()
            if not line:
                continue
            try:
                wire = bytes.fromhex(line.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raise RunError(f"{path.name}: line {n} is not hex") from None
            msg = None
            last: MessageError | None = None
            for t in types:
                try:
                    msg = open_wire(wire, t, spec.network)
                    break
                except MessageError as e:
                    last = e
            if msg is None:
                raise RunError(f"{path.name}: line {n}: {last}")
            if msg.body["job"] != job_id:
                raise RunError(f"{path.name}: line {n} is for another job")
            out.append(msg)
    return out


def open_run(root: str | pathlib.Path, network: str | None = None) -> Run:
    root = pathlib.Path(root)
    if not root.is_dir():
        raise RunError(f"{root} is not a run directory")
    job_file = root / "job.wire"
    try:
        st = job_file.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JOB_BYTES:
            raise RunError(f"{job_file} is not a regular file of at most {MAX_JOB_BYTES >> 10} KiB")
        wire = job_file.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{job_file} is missing") from None
    except OSError as e:
        raise RunError(f"{job_file}: {e.strerror}") from None
    try:
        msg, spec = open_job(wire, network or _network_of(wire))
    except MessageError as e:
        raise RunError(f"{job_file}: {e}") from None
    update_type = "SpsaUpdate" if spec.algorithm["name"] == "spsa" else "DeltaUpdate"
    updates = _read_log(root / "updates.log", update_type, spec, spec.id)
    allowed = set(spec.trainers)
    for n, u in enumerate(updates, 1):
        if u.signer not in allowed:
            raise RunError(f"updates.log: update {n} is signed by {u.signer.hex()[:16]}…, not a trainer of this job")
    checkpoints = _read_log(root / "checkpoints.log", "TrainingCheckpoint", spec, spec.id)
    return Run(root=root, job=msg, spec=spec, updates=updates, checkpoints=checkpoints)


def _network_of(wire: bytes) -> str:
    """The network a job names (checked again, with its signature, by open_job)."""
    try:
        env = decode(wire)
        # Decodable is not well-formed: the envelope may be any value (an int, a list, ...).
        payload = env.get("payload") if isinstance(env, dict) else None
        if not isinstance(payload, bytes):
            raise RunError("job.wire is not a signed job")
        _, net, _, _ = parse_signing_bytes(payload)
    except EncodingError:
        raise RunError("job.wire is not a signed job") from None
    if not isinstance(net, str):
        raise RunError("job.wire is not a signed job")
    return net


def append_line(path: pathlib.Path, msg: Signed) -> None:
    with path.open("ab") as f:
        f.write(msg.wire().hex().encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
