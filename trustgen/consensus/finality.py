"""Finality: turn a task's assignment and its verifiers' votes into a signed certificate."""

from __future__ import annotations

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, sign
from trustgen.consensus.tally import PENDING, tally


def certify(
    gateway: Identity,
    network: str,
    task: Signed,
    beacon: bytes,
    candidates: list[bytes],
    result: Signed,
    votes: list[Signed],
    skipped: list[bytes] | None = None,
) -> Signed:
    """Sign a certificate for `result`, or raise MessageError while no strict majority exists.
    Only votes of the effective verifiers for this very result are used."""
    skipped = list(skipped or [])
    worker = result.body["worker"]
    verifiers = effective_verifiers(rank(beacon, task.id, candidates, worker), skipped, task.body["verifiers"])
    counted: dict[bytes, Signed] = {}
    for v in votes:
        b = v.body
        if b["task_id"] == task.id and b["result_id"] == result.id and b["verifier"] in verifiers:
            counted.setdefault(b["verifier"], v)
    t = tally({k: v.body["accept"] for k, v in counted.items()}, verifiers, task.body["verifiers"])
    if t.decision == PENDING:
        raise MessageError(f"no majority yet ({t.accepts} accept, {t.rejects} reject of {t.k})")
    return sign(
        gateway,
        "Certificate",
        network,
        {
            "gateway": gateway.public_key,
            "task_id": task.id,
            "result_id": result.id,
            "worker": worker,
            "decision": t.decision,
            "beacon": beacon,
            "verifiers": verifiers,
            "skipped": skipped,
            "votes": [counted[v].wire() for v in verifiers if v in counted],
        },
    )
