"""`trustgen audit --recheck FRACTION`: re-verify a sample of finalised results by running the
verifier itself (prefill for text, the image check for images), so a colluding majority that
certified a bad output is caught after the fact.

Only accepting certificates of admitted gateways are sampled (what the network vouched for);
each is checked against its task and committed result, with the output blob from any audited
node's blob store. A failed re-check names the certificate, its worker and every verifier that
voted for it; `record` appends `failed_recheck` evidence against each of them to a node's own
feed, which counts in reputation when that node is an admitted gateway.
"""

from __future__ import annotations

import pathlib
import random
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from trustgen.consensus.admission import AdmissionState, Genesis
from trustgen.consensus.audit import find_ledgers
from trustgen.consensus.audit_admission import find_genesis
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Entry, Ledger, parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.engines.kinds import engine_kind
from trustgen.errors import TrustgenError, UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.node.kinds import check_result

FAILED_RECHECK = "failed_recheck"


@dataclass
class Recheck:
    certificate: str  # certificate id, hex
    task: str
    gateway: str
    worker: str
    outcome: str  # "pass", "fail", or "unchecked" (model or output not available here)
    reason: str = ""
    voted_for: list[str] = field(default_factory=list)  # verifiers whose votes accepted it


@dataclass
class RecheckReport:
    fraction: float
    finalised: int = 0  # accepting certificates of admitted gateways found
    sampled: int = 0
    checks: list[Recheck] = field(default_factory=list)

    @property
    def failures(self) -> list[Recheck]:
        return [c for c in self.checks if c.outcome == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = len(self.failures)
        d["ok"] = self.ok
        return d


@dataclass
class _Finalised:
    cert: Signed
    task: Signed
    result: Signed
    votes: list[Signed]


def _entries(db_path: pathlib.Path) -> tuple[str, list[Entry]]:
    try:
        db = sqlite3.connect(f"file:{db_path.resolve()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            rows = db.execute("SELECT payload, sig FROM entries ORDER BY log_index").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise UsageError(f"{db_path} is not a readable trustgen ledger: {e}") from None
    network = meta.get("network", b"").decode()
    out = []
    for payload, sig in rows:
        try:
            out.append(parse_entry(payload, sig, network))
        except MessageError:
            continue  # the audit reports it; a re-check uses only what verifies
    return network, out


def finalised(entries: list[Entry], network: str, admission: AdmissionState) -> list[_Finalised]:
    """Accepting certificates in admitted gateways' feeds, with their task and committed result."""
    tasks: dict[tuple[bytes, bytes], Signed] = {}
    results: dict[tuple[bytes, bytes], Signed] = {}
    certs: list[tuple[Entry, Signed]] = []
    out: dict[bytes, _Finalised] = {}
    for e in entries:
        try:  # a malformed message is the audit's to report; a re-check uses what verifies
            if e.type == "TaskAccepted":
                t = open_wire(e.body["task"], "Task", network)
                tasks[(e.feed, t.id)] = t
            elif e.type == "ResultCommitted":
                r = open_wire(e.body["result"], "Result", network)
                results[(e.feed, r.id)] = r
            elif e.type == "TaskFinalized" and admission.ever_admitted(e.feed, "gateway"):
                certs.append((e, open_wire(e.body["certificate"], "Certificate", network)))
        except MessageError:
            continue
    for e, cert in certs:
        c = cert.body
        task, result = tasks.get((e.feed, c["task_id"])), results.get((e.feed, c["result_id"]))
        if c["decision"] != "accept" or c["gateway"] != e.feed or task is None or result is None:
            continue
        if result.body["task_id"] != task.id:
            continue
        try:
            votes = [open_wire(v, "Vote", network) for v in c["votes"]]
        except MessageError:
            continue
        out.setdefault(cert.id, _Finalised(cert, task, result, votes))
    return list(out.values())


class _Engines:
    """One engine per task kind, loaded on first use, from the models the auditor names."""

    def __init__(self, models: dict[str, str]) -> None:
        self.models = models
        self.loaded: dict[str, Any] = {}

    def get(self, kind: str, digest: str) -> Any | None:
        from trustgen.engines.generate import load_engine

        if kind not in self.loaded:
            self.loaded[kind] = load_engine(self.models.get(kind) or engine_kind(kind).default_model, kind, threads=1)
        engine = self.loaded[kind]
        return engine if engine.ref.digest == digest else None


def _blob(stores: list[BlobStore], digest: str) -> bytes | None:
    for s in stores:
        data = s.get(digest)
        if data is not None:
            return data
    return None


def recheck(
    paths: list[pathlib.Path],
    fraction: float,
    seed: int | None = None,
    models: dict[str, str] | None = None,
    genesis: Genesis | None = None,
) -> RecheckReport:
    """Re-verify `fraction` of the finalised results in the ledgers under `paths` (each
    certificate once, whichever ledgers hold it)."""
    if not 0.0 < fraction <= 1.0:
        raise UsageError("--recheck wants a fraction in (0, 1]")
    ledgers = sorted({p.resolve() for path in paths for p in find_ledgers(path)})
    stores = [BlobStore(p.parent / "blobs") for p in ledgers if (p.parent / "blobs").is_dir()]
    found: dict[bytes, _Finalised] = {}
    for db in ledgers:
        network, entries = _entries(db)
        g, _ = find_genesis(entries, network, genesis)
        for f in finalised(entries, network, AdmissionState.from_entries(entries, g)):
            found.setdefault(f.cert.id, f)
    report = RecheckReport(fraction, finalised=len(found))
    rng = random.Random(seed)
    sample = [f for _, f in sorted(found.items()) if rng.random() < fraction]
    report.sampled = len(sample)
    engines = _Engines(models or {})
    for f in sample:
        report.checks.append(_check(f, engines, stores))
    return report


def _check(f: _Finalised, engines: _Engines, stores: list[BlobStore]) -> Recheck:
    t, r = f.task.body, f.result.body
    rc = Recheck(
        f.cert.id.hex(),
        f.task.id.hex(),
        f.cert.body["gateway"].hex(),
        r["worker"].hex(),
        "unchecked",
        voted_for=[v.body["verifier"].hex() for v in f.votes if v.body["accept"]],
    )
    try:
        kind = engine_kind(t["kind"])
    except UsageError as e:
        rc.reason = str(e)
        return rc
    engine = engines.get(kind.name, t["model"])
    if engine is None:
        rc.reason = f"model {t['model'][:24]} is not the one loaded for {kind.name} here"
        return rc
    blob = b""
    if kind.blob_field:
        digest = r["output"].get(kind.blob_field, "")
        got = _blob(stores, digest) if isinstance(digest, str) else None
        if got is None:
            rc.reason = "output blob not held by any audited node"
            return rc
        blob = got
    try:
        vote, _ = check_result(engine, t, r, blob)
    except TrustgenError as e:
        vote_ok, rc.reason = False, f"result does not hold: {e}"
    else:
        vote_ok, rc.reason = vote.accept, vote.reason
    rc.outcome = "pass" if vote_ok else "fail"
    return rc


def record(node_dir: pathlib.Path, report: RecheckReport, paths: list[pathlib.Path], network: str) -> int:
    """Append failed_recheck evidence against the worker and every verifier that voted for each
    failed certificate to the feed of the node in `node_dir` (stop the node first). Returns how
    many entries were appended."""
    failed = {c.certificate for c in report.failures}
    if not failed:
        return 0
    node_dir = pathlib.Path(node_dir)
    certs: dict[str, _Finalised] = {}
    for db in sorted({p.resolve() for path in paths for p in find_ledgers(path)}):
        net, entries = _entries(db)
        g, _ = find_genesis(entries, net, None)
        for f in finalised(entries, net, AdmissionState.from_entries(entries, g)):
            certs.setdefault(f.cert.id.hex(), f)
    ledger = Ledger(node_dir / "ledger.db", network, Identity.load(node_dir))
    n = 0
    try:
        with ledger.batch():
            for cid in sorted(failed):
                f = certs[cid]
                reason = next(c.reason for c in report.failures if c.certificate == cid)
                accused = [(f.result.body["worker"], b"")]
                accused += [(v.body["verifier"], v.wire()) for v in f.votes if v.body["accept"]]
                for subject, vote in accused:
                    proof = {"certificate": f.cert.wire(), "vote": vote, "reason": reason[:500]}
                    ledger.append("Evidence", {"kind": FAILED_RECHECK, "subject": subject, "proof": proof})
                    n += 1
    finally:
        ledger.close()
    return n
