"""What each explorer page shows, gathered from the index and the ledger's stored entries (never
from a node's memory). Every function takes validated arguments and returns a template context,
or None when the thing asked for is not in the ledger."""

from __future__ import annotations

import datetime
from typing import Any

from trustgen.consensus.audit_state import read_state_summary
from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import MessageError
from trustgen.engines.kinds import ENGINE_KINDS
from trustgen.explorer.index import LedgerIndex, peek
from trustgen.explorer.plots import line_plot

PAGE = 50
WIRE_FIELDS = {
    "task": "Task",
    "result": "Result",
    "vote": "Vote",
    "certificate": "Certificate",
    "job": "TrainingJob",
    "update": "DeltaUpdate",
    "check": "UpdateCheck",
    "checkpoint": "TrainingCheckpoint",
}


def when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def audit_status(ix: LedgerIndex) -> dict[str, Any]:
    """The last `trustgen audit` of this ledger, as its audit state records it."""
    s = read_state_summary(ix.path)
    if s is None:
        return {"known": False}
    return {
        "known": True,
        "ok": bool(s["last_ok"]) if s.get("last_ok") is not None else True,
        "violations": s.get("last_violations") or 0,
        "verified": s["size"],
        "at": when(s["audited_at_ms"]),  # type: ignore[arg-type]
        "tasks_checked": s["tasks_checked"],
        "equivocations": s["equivocations"],
    }


def verdict_for(audit: dict[str, Any], log_index: int | None) -> str:
    """What the last audit says about the entry at `log_index`."""
    if not audit["known"] or log_index is None:
        return "not audited yet (run `trustgen audit`)"
    if log_index < audit["verified"]:
        suffix = "" if audit["ok"] else f"; the latest audit found {audit['violations']} violations elsewhere"
        return f"verified clean by the audit of {audit['at']}{suffix}"
    if not audit["ok"]:
        return f"not verified: the latest audit found {audit['violations']} violations"
    return "appended after the latest audit: not verified yet"


def pretty(v: Any, depth: int = 0) -> Any:
    """A decoded body for display: bytes as hex (long ones shortened), signed messages opened."""
    if isinstance(v, dict):
        return {k: pretty(x, depth + 1) for k, x in v.items()}
    if isinstance(v, list):
        return [pretty(x, depth + 1) for x in v[:50]] + ([f"... {len(v) - 50} more"] if len(v) > 50 else [])
    if isinstance(v, bytes):
        return v.hex() if len(v) <= 64 else f"{v[:32].hex()}... ({len(v)} bytes)"
    return v


def open_fields(body: dict[str, Any], network: str) -> dict[str, Any]:
    """An entry body with its embedded signed messages decoded (unverified: the audit verifies)."""
    out: dict[str, Any] = {}
    for k, v in body.items():
        msg = peek(v, WIRE_FIELDS[k], network) if k in WIRE_FIELDS and isinstance(v, bytes) else None
        out[k] = {"signed by": msg.signer.hex(), "id": msg.id.hex(), **pretty(msg.body)} if msg else pretty(v)
    return out


def overview(ix: LedgerIndex) -> dict[str, Any]:
    feeds = ix.query(
        "SELECT e.feed, e.seq, e.hash, e.type, e.time, n.roles FROM entries_meta e "
        "JOIN (SELECT feed, MAX(seq) m FROM entries_meta WHERE feed IS NOT NULL GROUP BY feed) h "
        "ON e.feed = h.feed AND e.seq = h.m LEFT JOIN nodes n ON n.node = e.feed ORDER BY e.seq DESC LIMIT 100"
    )
    commits = ix.query(
        "SELECT log_index, feed, seq, hash, time FROM entries_meta WHERE type = 'Commitment' ORDER BY log_index DESC LIMIT 8"
    )
    decisions = dict(ix.query("SELECT decision, COUNT(*) FROM certs GROUP BY decision"))
    counters = {
        "entries": ix.next,
        "feeds": ix.one("SELECT COUNT(DISTINCT feed) FROM entries_meta")[0],  # type: ignore[index]
        "nodes": ix.one("SELECT COUNT(*) FROM nodes")[0],  # type: ignore[index]
        "tasks": ix.one("SELECT COUNT(*) FROM tasks")[0],  # type: ignore[index]
        "results accepted": decisions.get("accept", 0),
        "results rejected": decisions.get("reject", 0),
        "tasks failed": ix.one("SELECT COUNT(DISTINCT task_id) FROM failures")[0],  # type: ignore[index]
        "evidence": ix.one("SELECT COUNT(*) FROM evidence")[0],  # type: ignore[index]
        "training jobs": ix.one("SELECT COUNT(DISTINCT job) FROM training")[0],  # type: ignore[index]
    }
    latest = []
    for idx, feed, seq, h, t in commits:
        raw = ix.raw(idx)
        body = _entry(ix, raw).body if raw else {}
        latest.append({"feed": feed.hex(), "seq": seq, "hash": h.hex(), "time": when(t), **body})
    return {
        "network": ix.network,
        "owner": ix.owner.hex() if ix.owner else "",
        "counters": counters,
        "feeds": [
            {"feed": f.hex(), "seq": s, "hash": h.hex(), "type": t, "time": when(tm), "roles": r or ""}
            for f, s, h, t, tm, r in feeds
        ],
        "commitments": [{**c, "root": c.get("root", b"").hex()} for c in latest],
        "tasks": task_rows(ix, 0, 10),
        "audit": audit_status(ix),
    }


def _entry(ix: LedgerIndex, raw: Any) -> Any:
    return parse_entry(raw[4], raw[5], ix.network, verify_signature=False)


def task_rows(ix: LedgerIndex, offset: int, limit: int) -> list[dict[str, Any]]:
    """One row per task: its latest certificate's decision and worker, and how many results were
    certified (a rejected result is followed by another worker's)."""
    rows = ix.query(
        "SELECT t.task_id, t.kind, t.log_index, "
        "(SELECT decision FROM certs c WHERE c.task_id = t.task_id AND c.feed = t.feed ORDER BY log_index DESC LIMIT 1), "
        "(SELECT worker FROM certs c WHERE c.task_id = t.task_id AND c.feed = t.feed ORDER BY log_index DESC LIMIT 1), "
        "(SELECT COUNT(*) FROM certs c WHERE c.task_id = t.task_id AND c.feed = t.feed), "
        "(SELECT reason FROM failures f WHERE f.task_id = t.task_id AND f.feed = t.feed ORDER BY log_index LIMIT 1) "
        "FROM tasks t ORDER BY t.log_index DESC LIMIT ? OFFSET ?",
        (limit, offset),
    )
    return [
        {
            "id": tid.hex(),
            "kind": kind,
            "log_index": idx,
            # A failed task's last certificate (if any) rejected a result; its terminal state is the failure.
            "decision": "failed" if failed and d != "accept" else (d or "pending"),
            "failure": failed or "",
            "worker": w.hex() if w else "",
            "attempts": n,
        }
        for tid, kind, idx, d, w, n, failed in rows
    ]


def tasks_page(ix: LedgerIndex, page: int) -> dict[str, Any]:
    total = ix.one("SELECT COUNT(*) FROM tasks")[0]  # type: ignore[index]
    return {"tasks": task_rows(ix, (page - 1) * PAGE, PAGE), **pager(page, total)}


def pager(page: int, total: int) -> dict[str, Any]:
    pages = max(1, -(-total // PAGE))
    return {"page": page, "pages": pages, "total": total}


def task(ix: LedgerIndex, task_id: bytes) -> dict[str, Any] | None:
    row = ix.one("SELECT feed, log_index FROM tasks WHERE task_id = ? ORDER BY log_index LIMIT 1", (task_id,))
    if row is None:
        return None
    audit = audit_status(ix)
    acc = _entry(ix, ix.raw(row[1]))
    t = peek(acc.body["task"], "Task", ix.network)
    assert t is not None  # indexed only when it parsed
    kind = ENGINE_KINDS.get(t.body["kind"])
    results = []
    for rid, ridx, worker in ix.query(
        "SELECT result_id, log_index, worker FROM results WHERE task_id = ? ORDER BY log_index", (task_id,)
    ):
        r = peek(_entry(ix, ix.raw(ridx)).body["result"], "Result", ix.network)
        if r is None:
            continue
        out = r.body["output"]
        blob = out.get(kind.blob_field) if kind is not None and kind.blob_field else None
        votes = [
            {
                "verifier": v.hex(),
                "accept": bool(a),
                "method": m,
                "distance": d,
                "margin": mg,
                "reason": rs,
                "log_index": i,
                "hash": _hash_at(ix, i),
            }
            for v, a, m, d, mg, rs, i in ix.query(
                "SELECT verifier, accept, method, distance, margin, reason, log_index FROM votes "
                "WHERE task_id = ? AND result_id = ? ORDER BY log_index",
                (task_id, rid),
            )
        ]
        results.append(
            {
                "id": rid.hex(),
                "worker": worker.hex(),
                "log_index": ridx,
                "hash": _hash_at(ix, ridx),
                "output_digest": r.body["output_digest"],
                "text": out.get("text") if isinstance(out.get("text"), str) else None,
                "blob": blob if isinstance(blob, str) and len(blob) == 64 else None,
                "output": pretty(out),
                "votes": votes,
            }
        )
    certs = []
    for cidx, decision in ix.query(
        "SELECT log_index, decision FROM certs WHERE task_id = ? ORDER BY log_index", (task_id,)
    ):
        c = peek(_entry(ix, ix.raw(cidx)).body["certificate"], "Certificate", ix.network)
        if c is None:
            continue
        cb = c.body
        counted = [peek(v, "Vote", ix.network) for v in cb["votes"] if isinstance(v, bytes)]
        certs.append(
            {
                "decision": decision,
                "log_index": cidx,
                "hash": _hash_at(ix, cidx),
                "gateway": cb["gateway"].hex(),
                "result_id": cb["result_id"].hex(),
                "worker": cb["worker"].hex(),
                "beacon": cb["beacon"].hex(),
                "verifiers": [v.hex() for v in cb["verifiers"]],
                "skipped": [v.hex() for v in cb["skipped"]],
                "votes": [
                    {
                        "verifier": v.body["verifier"].hex(),
                        "accept": v.body["accept"],
                        "method": v.body["method"],
                        "distance": v.body["distance"],
                        "reason": v.body["reason"],
                    }
                    for v in counted
                    if v is not None
                ],
                "verdict": verdict_for(audit, cidx),
            }
        )
    return {
        "id": task_id.hex(),
        "kind": t.body["kind"],
        "model": t.body["model"],
        "client": t.body["client"].hex(),
        "params": pretty(t.body["params"]),
        "k": t.body["verifiers"],
        "gateway": acc.feed.hex(),
        "accepted": {
            "log_index": row[1],
            "hash": acc.hash.hex(),
            "time": when(acc.time),
            "beacon_size": acc.body["beacon_size"],
        },
        "results": results,
        "certificates": certs,
        "failures": [
            {"reason": r, "detail": d, "log_index": i, "hash": _hash_at(ix, i)}
            for r, d, i in ix.query(
                "SELECT reason, detail, log_index FROM failures WHERE task_id = ? AND feed = ? ORDER BY log_index",
                (task_id, acc.feed),
            )
        ],
        "skips": [
            {
                "verifier": v.hex(),
                "result_id": r.hex(),
                "reason": why,
                "asked": when(asked),
                "deadline_s": dl / 1000,
                "log_index": i,
                "hash": _hash_at(ix, i),
            }
            for v, r, why, asked, dl, i in ix.query(
                "SELECT verifier, result_id, reason, asked, deadline_ms, log_index FROM skips "
                "WHERE task_id = ? AND feed = ? ORDER BY log_index",
                (task_id, acc.feed),
            )
        ],
        "verdict": verdict_for(audit, certs[-1]["log_index"] if certs else row[1]),
        "audit": audit,
    }


def _hash_at(ix: LedgerIndex, log_index: int) -> str:
    row = ix.one("SELECT hash FROM entries_meta WHERE log_index = ?", (log_index,))
    return row[0].hex() if row and row[0] else ""


def node(ix: LedgerIndex, key: bytes, page: int) -> dict[str, Any] | None:
    joined = ix.one("SELECT roles, address, log_index FROM nodes WHERE node = ?", (key,))
    in_feed = ix.one("SELECT COUNT(*), MAX(seq) FROM entries_meta WHERE feed = ?", (key,))
    marks = ix.query("SELECT log_index, good, bad FROM marks WHERE node = ? ORDER BY log_index", (key,))
    if joined is None and not in_feed[0] and not marks:  # type: ignore[index]
        return None
    good = bad = 0
    start = joined[2] if joined else (marks[0][0] if marks else 0)
    series = [(float(start), 0.5)]  # a stranger's score, from its admission on
    for idx, g, b in marks:
        good, bad = good + g, bad + b
        series.append((float(idx), (good + 1) / (good + bad + 2)))
    evidence = [
        {"kind": k, "by": f.hex(), "log_index": i, "hash": _hash_at(ix, i)}
        for k, f, i in ix.query(
            "SELECT kind, feed, log_index FROM evidence WHERE subject = ? ORDER BY log_index DESC LIMIT 100", (key,)
        )
    ]
    offset = (page - 1) * PAGE
    votes = [
        {"task": t.hex(), "accept": bool(a), "method": m, "distance": d, "reason": r, "log_index": i}
        for t, a, m, d, r, i in ix.query(
            "SELECT task_id, accept, method, distance, reason, log_index FROM votes WHERE verifier = ? "
            "ORDER BY log_index DESC LIMIT ? OFFSET ?",
            (key, PAGE, offset),
        )
    ]
    results = [
        {"task": t.hex(), "result": r.hex(), "log_index": i}
        for t, r, i in ix.query(
            "SELECT task_id, result_id, log_index FROM results WHERE worker = ? ORDER BY log_index DESC LIMIT ? OFFSET ?",
            (key, PAGE, offset),
        )
    ]
    return {
        "id": key.hex(),
        "roles": joined[0] if joined else "",
        "address": joined[1] if joined else "",
        "joined": {"log_index": joined[2], "hash": _hash_at(ix, joined[2])} if joined else None,
        "feed_entries": in_feed[0],  # type: ignore[index]
        "head": in_feed[1],  # type: ignore[index]
        "reputation": series[-1][1],
        "good": good,
        "bad": bad,
        "plot": line_plot(series, "reputation after each certificate or evidence", "log position", "score", (0.0, 1.0)),
        "evidence": evidence,
        "votes": votes,
        "results": results,
        "page": page,
    }


def feed(ix: LedgerIndex, key: bytes, page: int) -> dict[str, Any] | None:
    total = ix.one("SELECT COUNT(*) FROM entries_meta WHERE feed = ?", (key,))[0]  # type: ignore[index]
    if not total:
        return None
    rows = ix.query(
        "SELECT seq, hash, type, time, log_index FROM entries_meta WHERE feed = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
        (key, PAGE, (page - 1) * PAGE),
    )
    return {
        "id": key.hex(),
        "entries": [
            {"seq": s, "hash": h.hex(), "type": t, "time": when(tm), "log_index": i} for s, h, t, tm, i in rows
        ],
        **pager(page, total),
    }


def entry(ix: LedgerIndex, h: bytes) -> dict[str, Any] | None:
    row = ix.one("SELECT log_index FROM entries_meta WHERE hash = ?", (h,))
    if row is None:
        return None
    raw = ix.raw(row[0])
    if raw is None:
        return None
    feed, seq, stored_hash, typ, payload, sig, idx = raw
    try:
        e = _entry(ix, raw)
        body: Any = open_fields(e.body, ix.network)
        header = {"feed": e.feed.hex(), "seq": e.seq, "prev": e.prev.hex(), "time": when(e.time), "type": e.type}
    except MessageError as err:
        body, header = {"unreadable": str(err)}, {}
    return {
        "hash": stored_hash.hex(),
        "log_index": idx,
        "header": header,
        "body": body,
        "payload_hex": payload.hex(),
        "sig_hex": sig.hex(),
        "verdict": verdict_for(audit_status(ix), idx),
        "prev_link": header.get("prev") if header and seq and seq > 1 else None,
    }


def search(ix: LedgerIndex, q: str) -> list[dict[str, str]]:
    """Ids (tasks, results, entries, nodes, jobs) whose hex starts with `q` (already validated)."""
    rows = ix.query("SELECT idhex, what, ref FROM ids WHERE idhex >= ? AND idhex < ? LIMIT 51", (q, q + "g"))
    rows += ix.query(
        "SELECT DISTINCT output_digest, 'output', task_id FROM results WHERE output_digest = ? OR output_digest = ? LIMIT 20",
        ("sha256:" + q, q),
    )
    return [{"id": i, "what": w, "ref": r.hex() if isinstance(r, bytes) else r} for i, w, r in rows]
