"""The training job pages: the job's spec as accepted, then round by round the trainers' updates
(and whether the round's checkpoint took them), the verifiers' checks, the proposed and finalised
checkpoints with their digests and held-out loss, and the lineage (the checkpoint each round's
updates were trained from). Read from the ledger's entries, signed messages opened unverified (the
audit verifies them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trustgen.explorer.index import LedgerIndex, peek
from trustgen.explorer.plots import line_plot
from trustgen.explorer.views import _entry, _hash_at, open_fields, pretty

MAX_ENTRIES = 500  # entries listed (and read) per job page
# Entry field -> the signed message it carries.
_INNER = {"update": "DeltaUpdate", "check": "UpdateCheck", "checkpoint": "TrainingCheckpoint"}


@dataclass
class Round:
    round: int
    updates: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    base: str = ""  # the checkpoint digest the updates were trained from
    proposed: str = ""
    digest: str = ""  # the finalised checkpoint's digest
    loss: float | None = None
    votes: int = 0
    entry: str = ""  # hash of the CheckpointFinalized entry


def _flat(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, ", ".join(map(str, v)) if isinstance(v, list) else v))
    return out


def training(ix: LedgerIndex, job: bytes) -> dict[str, Any] | None:
    rows = ix.query("SELECT type, log_index, loss FROM training WHERE job = ? ORDER BY log_index", (job,))
    if not rows:
        return None
    entries, spec = [], []
    rounds: dict[int, Round] = {}
    for typ, idx, loss in rows[:MAX_ENTRIES]:
        raw = ix.raw(idx)
        if raw is None:
            continue
        e = _entry(ix, raw)
        entries.append(
            {
                "type": typ,
                "log_index": idx,
                "hash": _hash_at(ix, idx),
                "loss": loss,
                "body": open_fields(e.body, ix.network),
            }
        )
        if typ == "TrainingJobAccepted":
            msg = peek(e.body.get("job", b""), "TrainingJob", ix.network)
            if msg is not None and isinstance(msg.body.get("spec"), dict):
                spec = _flat(pretty(msg.body["spec"])) + [("verifiers per round (k)", e.body.get("k"))]
            continue
        _add(rounds, typ, e.body, ix.network, _hash_at(ix, idx))
    table = sorted(rounds.values(), key=lambda r: r.round)
    for r in table:
        for u in r.updates:
            u["taken"] = u["id"] in r.accepted
    losses = [(float(r.round), r.loss) for r in table if r.loss is not None and r.digest]
    return {
        "id": job.hex(),
        "counts": dict(ix.query("SELECT type, COUNT(*) FROM training WHERE job = ? GROUP BY type", (job,))),
        "spec": spec,
        "rounds": table,
        "entries": entries,
        "plot": line_plot(losses, "held-out loss of each finalised checkpoint", "round", "loss"),
    }


def _add(rounds: dict[int, Round], typ: str, body: dict[str, Any], network: str, entry_hash: str) -> None:
    """Fold one training entry into its round."""
    key = "checkpoint" if typ.startswith("Checkpoint") else {"TrainingUpdate": "update", "UpdateCheck": "check"}[typ]
    msg = peek(body.get(key, b""), _INNER[key], network)
    if msg is None:
        return
    b = msg.body
    n = body.get("round") if key == "checkpoint" else b.get("round")
    if not isinstance(n, int):
        return
    r = rounds.setdefault(n, Round(n))
    if key == "update":
        r.updates.append({"trainer": msg.signer.hex(), "id": msg.id.hex(), "delta": pretty(b.get("delta"))})
        r.base = r.base or pretty(b.get("base", b""))
    elif key == "check":
        verdicts = [v for v in b.get("verdicts", []) if isinstance(v, list) and len(v) > 1]
        ok = sum(1 for v in verdicts if v[1] is True)
        r.checks.append({"verifier": msg.signer.hex(), "accepted": ok, "rejected": len(verdicts) - ok})
    elif typ == "CheckpointProposed":
        r.proposed = pretty(b.get("digest", b""))
        r.accepted = {x.hex() for x in body.get("accepted", []) if isinstance(x, bytes)}
    else:
        r.digest, r.entry = pretty(b.get("digest", b"")), entry_hash
        loss = b.get("heldout_loss")
        r.loss = float(loss) if isinstance(loss, float) else None
        r.votes = len(body.get("votes", []))


def trainings(ix: LedgerIndex) -> list[dict[str, Any]]:
    return [
        {"id": j.hex(), "entries": n, "first": i}
        for j, n, i in ix.query(
            "SELECT job, COUNT(*), MIN(log_index) FROM training GROUP BY job ORDER BY 3 DESC LIMIT 200"
        )
    ]
