"""A training job as a node's ledger records it: the coordinating gateway's training entries
(docs/training-network.md) opened and grouped by job and round.

Both readers of a node's ledger use this one view: the training audit (audit_training.py), which
checks every rule, and the export to a run directory (ledger_job.py), which replay then checks.
Reading is read-only (SQLite `mode=ro`) and touches only the entry types training needs; every
message is opened (signature and schema) before it is used, and what does not open is a problem
the audit reports, never an exception.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.ledger import Entry, parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.errors import TrustgenError
from trustgen.training import spsa_rounds
from trustgen.training.job import rounds_of
from trustgen.training.records import open_update, update_type
from trustgen.training.rounds import ProofError, round_decisions, round_target, verdicts_of
from trustgen.training.spec import JobSpec, open_job

TRAINING_ENTRIES = (
    "TrainingJobAccepted",
    "TrainingUpdate",
    "UpdateCheck",
    "CheckpointProposed",
    "CheckpointFinalized",
)
# What the view reads: the training entries, the commitments their beacons name, the evidence.
READ_TYPES = (*TRAINING_ENTRIES, "Commitment", "Evidence")
MAX_CANDIDATES = 4096  # verifier candidates of one job: far above any network this runs on

Problem = tuple[str, str, str]  # (where, code, detail)


class LedgerReadError(TrustgenError):
    """A path that holds no readable trustgen ledger."""


def where(e: Entry) -> str:
    return f"feed {e.feed.hex()[:16]} seq {e.seq}"


def read_ledger(db_path: pathlib.Path, types: tuple[str, ...] = READ_TYPES) -> tuple[str, list[Entry]]:
    """(network, entries of `types` in log order) of a ledger file, opened read-only. Entries that
    do not verify are left out: the ledger audit reports them."""
    path = pathlib.Path(db_path)
    if not path.is_file():
        raise LedgerReadError(f"no ledger at {path}")
    try:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "network" not in meta:
                raise LedgerReadError(f"{path} has no network id")
            network = bytes(meta["network"]).decode("utf-8", "replace")
            marks = ",".join("?" * len(types))
            rows = db.execute(
                f"SELECT payload, sig FROM entries WHERE type IN ({marks}) ORDER BY log_index", types
            ).fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise LedgerReadError(f"{path} is not a readable trustgen ledger: {e}") from None
    out = []
    for payload, sig in rows:
        try:
            out.append(parse_entry(payload, sig, network))
        except MessageError:
            continue
    return network, out


@dataclass
class RoundRecord:
    """One round's entries in the gateway's feed, in feed order."""

    # (entry, DeltaUpdate or SpsaUpdate, blob digest; "" for SPSA); an SPSA block holds its steps'
    # updates and UpdateChecks (whose `round` is the global step)
    updates: list[tuple[Entry, Signed, str]] = field(default_factory=list)
    checks: list[tuple[Entry, Signed]] = field(default_factory=list)
    proposed: list[tuple[Entry, Signed]] = field(default_factory=list)  # (entry, TrainingCheckpoint)
    finalized: list[tuple[Entry, Signed]] = field(default_factory=list)

    def update_msgs(self) -> list[Signed]:
        """Canonical order: by step (SPSA), then trainer key."""
        return sorted((u for _, u, _ in self.updates), key=lambda u: (u.body.get("step", 0), u.signer))


@dataclass
class LedgerJob:
    """A job accepted in one feed, with every training entry of that feed for it."""

    feed: bytes
    accepted: Entry
    job: Signed
    spec: JobSpec
    candidates: list[bytes]
    k: int
    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    evidence: list[Entry] = field(default_factory=list)

    @property
    def id(self) -> bytes:
        return self.spec.id

    def round(self, r: int) -> RoundRecord:
        return self.rounds.setdefault(r, RoundRecord())

    def ranking(self, beacon: bytes, r: int) -> list[bytes]:
        return rank(beacon, round_target(self.id, r), self.candidates)

    def effective(self, r: int) -> list[bytes] | None:
        """The round's effective verifiers, recomputed from its (first) CheckpointFinalized; None
        while the round is not finalised."""
        rec = self.rounds.get(r)
        if rec is None or not rec.finalized:
            return None
        e = rec.finalized[0][0]
        return effective_verifiers(self.ranking(e.body["beacon"], r), e.body["skipped"], self.k)

    def final_checks(self, r: int) -> list[tuple[Entry, Signed]]:
        """The checks of the round's finalised attempt: those naming its beacon (a round run again
        after a gateway restart has a new beacon; the checks of the attempt before do not count)."""
        rec = self.rounds.get(r)
        if rec is None or not rec.finalized:
            return []
        beacon = rec.finalized[0][0].body["beacon"]
        return [(e, c) for e, c in rec.checks if c.body["beacon"] == beacon]

    def decisions(self, r: int) -> dict[bytes, str] | None:
        """Per update id of a finalised round: accept, reject or pending, from the checks of its
        finalised attempt (SPSA: of each step, under the step's beacon)."""
        eff = self.effective(r)
        if eff is None:
            return None
        rec = self.rounds[r]
        if self.spec.algorithm["name"] == "spsa":
            out: dict[bytes, str] = {}
            for s in self.steps(r).values():
                out.update(s.decisions)
            return out
        return round_decisions(rec.update_msgs(), [c for _, c in self.final_checks(r)], eff, self.k)

    def steps(self, r: int) -> dict[int, spsa_rounds.Step]:
        """An SPSA block's decided steps (a step whose checks do not decide it is left out: the
        audit names it; its updates stay pending)."""
        rec = self.rounds.get(r) or RoundRecord()
        out = {}
        for t in spsa_rounds.block_steps(self.spec, r):
            ups = [u for _, u, _ in rec.updates if u.body["step"] == t]
            checks = [c for _, c in rec.checks if c.body["round"] == t]
            beacon = checks[0].body["beacon"] if checks else b""
            try:
                out[t] = spsa_rounds.decide(self.spec, t, beacon, ups, checks, self.candidates, self.k)
            except ProofError:
                continue
        return out

    def accepted_updates(self, r: int) -> list[Signed]:
        """The updates a finalised round accepted (a strict majority of its verifiers), trainer order."""
        dec = self.decisions(r) or {}
        return [u for u in self.rounds[r].update_msgs() if dec.get(u.id) == "accept"]

    def finalized_rounds(self) -> list[int]:
        return sorted(r for r, rec in self.rounds.items() if rec.finalized)


UPDATE_TYPE = {"spsa": "SpsaUpdate", "diloco": "DeltaUpdate"}


def _opener(network: str, problems: list[Problem]) -> Callable[[Entry, bytes, str], Signed | None]:
    def open_msg(e: Entry, data: bytes, msg_type: str) -> Signed | None:
        try:
            return open_wire(data, msg_type, network)
        except MessageError as err:
            problems.append((where(e), f"bad_{msg_type.lower()}", str(err)))
            return None

    return open_msg


def _accept_job(e: Entry, network: str, problems: list[Problem]) -> LedgerJob | None:
    b = e.body
    try:
        msg, spec = open_job(b["job"], network)
    except MessageError as err:
        problems.append((where(e), "bad_training_job", str(err)))
        return None
    cands = b["candidates"]
    if len(cands) > MAX_CANDIDATES or not all(isinstance(c, bytes) and len(c) == 32 for c in cands):
        problems.append((where(e), "bad_training_job", f"candidates must be at most {MAX_CANDIDATES} 32-byte keys"))
        return None
    if not 1 <= b["k"] <= len(cands):
        problems.append((where(e), "bad_training_job", f"k = {b['k']} verifiers of {len(cands)} candidates"))
        return None
    return LedgerJob(e.feed, e, msg, spec, list(cands), b["k"])


def collect(entries: list[Entry], network: str) -> tuple[dict[tuple[bytes, bytes], LedgerJob], list[Problem]]:
    """Every job of every feed, keyed by (feed, job id), with its entries grouped by round; and the
    problems met opening them (messages that do not open, entries naming an unknown job or a round
    outside the job)."""
    problems: list[Problem] = []
    open_msg = _opener(network, problems)
    jobs: dict[tuple[bytes, bytes], LedgerJob] = {}

    def job_of(e: Entry, job_id: bytes, rnd: int, step: bool = False) -> LedgerJob | None:
        """The job an entry names, with `rnd` in range; step=True: `rnd` is an SPSA step (or a
        local-SGD round) and the entry is filed under its block."""
        j = jobs.get((e.feed, job_id))
        if j is None:
            problems.append((where(e), "unknown_job", f"job {job_id.hex()[:16]} was never accepted in this feed"))
            return None
        spsa = j.spec.algorithm["name"] == "spsa"
        n = j.spec.algorithm["steps"] if spsa and step else rounds_of(j.spec)
        if not 0 <= rnd < n:
            problems.append((where(e), "bad_round", f"round {rnd} is outside the job's 0..{n - 1}"))
            return None
        return j

    def index(j: LedgerJob, n: int) -> int:
        return spsa_rounds.block_of(j.spec, n) if j.spec.algorithm["name"] == "spsa" else n

    for e in entries:
        b = e.body
        if e.type == "TrainingJobAccepted":
            j = _accept_job(e, network, problems)
            if j is None:
                continue
            if (e.feed, j.id) in jobs:
                problems.append((where(e), "duplicate_job", f"job {j.id.hex()[:16]} accepted twice in one feed"))
                continue
            jobs[(e.feed, j.id)] = j
        elif e.type == "TrainingUpdate":
            u = open_msg(e, b["update"], update_type(b["update"]))
            n = (u.body["step"] if "step" in u.body else u.body["round"]) if u is not None else 0
            if u is not None and (j := job_of(e, u.body["job"], n, True)) is not None:
                if u.type != UPDATE_TYPE[j.spec.algorithm["name"]]:
                    problems.append(
                        (where(e), "bad_training_update", f"a {u.type} in a {j.spec.algorithm['name']} job")
                    )
                    continue
                j.round(index(j, n)).updates.append((e, u, b["blob"]))
        elif e.type == "UpdateCheck":
            c = open_msg(e, b["check"], "UpdateCheck")
            if c is not None and not _verdicts_parse(c):
                problems.append(
                    (where(e), "bad_updatecheck", "a verdict is not [update id, accept, code, inner, distance, reason]")
                )
            elif c is not None and (j := job_of(e, c.body["job"], c.body["round"], True)) is not None:
                j.round(index(j, c.body["round"])).checks.append((e, c))
        elif e.type in ("CheckpointProposed", "CheckpointFinalized"):
            cp = open_msg(e, b["checkpoint"], "TrainingCheckpoint")
            keys = [b["accepted"]] if e.type == "CheckpointProposed" else [b["verifiers"], b["skipped"]]
            if not all(_keys(x) for x in keys):
                problems.append((where(e), "bad_checkpoint", "a key list holds something else than 32-byte values"))
            elif cp is not None and (j := job_of(e, cp.body["job"], b["round"])) is not None:
                rec = j.round(b["round"])
                (rec.proposed if e.type == "CheckpointProposed" else rec.finalized).append((e, cp))
        elif e.type == "Evidence" and b["kind"] == "rejected_update":
            u = _proof_update(b["proof"], network)
            j = jobs.get((e.feed, u.body["job"])) if u is not None else None
            if j is not None:
                j.evidence.append(e)
            else:
                problems.append(
                    (where(e), "bad_evidence", "rejected_update: the proof names no update of a job of this feed")
                )
    return jobs, problems


def _keys(v: list) -> bool:
    return all(isinstance(x, bytes) and len(x) == 32 for x in v)


def _verdicts_parse(c: Signed) -> bool:
    try:
        verdicts_of(c)
    except ValueError:
        return False
    return True


def _proof_update(proof: dict, network: str) -> Signed | None:
    try:
        return open_update(proof["update"], network)
    except (MessageError, KeyError, TypeError):
        return None


def job_in(jobs: dict[tuple[bytes, bytes], LedgerJob], job_id: bytes) -> LedgerJob | None:
    """The job as its coordinating gateway recorded it: the feed whose author signed the job."""
    for (feed, jid), j in jobs.items():
        if jid == job_id and feed == j.job.signer:
            return j
    return None
