"""Gateway vote collection: ask the verifiers a task's beacon assigns, replace those that fail by
the next standbys in rank order, certify the majority, and record the decision with its evidence.

Everything is written to the gateway's feed before it is acted on: each counted vote, then the
certificate, then evidence against every verifier that voted against the majority (and, by the
caller, against a worker whose result was rejected).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.net.peers import Peers

log = logging.getLogger("trustgen.node")


async def ask_verifier(
    peers: Peers,
    network: str,
    address: str,
    verifier: bytes,
    task: Signed,
    result: Signed,
    blob: bytes,
    timeout_s: float,
    challenge: tuple[bytes, int],
    sources: list[str],
) -> Signed | None:
    """One verifier's signed vote on `result`, or None when it gave none that counts.
    `challenge`: the root and size of the gateway Commitment made after the result was committed;
    `sources`: addresses that hold the result's blobs (the worker's), a hint for fetching them."""
    args: dict[str, Any] = {"task": task.wire(), "result": result.wire(), "output": blob}
    args |= {"beacon": challenge[0], "beacon_size": challenge[1], "sources": sources}
    try:
        reply = await peers.call(address, "Verifier", "Check", args, timeout=timeout_s)
        vote = open_wire(reply.vote, "Vote", network)
    except (grpc.aio.AioRpcError, MessageError) as e:
        log.warning("verifier %s gave no vote: %s", verifier.hex()[:12], e)
        return None
    b = vote.body
    if b["verifier"] != verifier or b["task_id"] != task.id or b["result_id"] != result.id:
        return None
    return vote


async def collect_votes(
    beacon: bytes,
    task: Signed,
    candidates: list[bytes],
    result: Signed,
    ask: Callable[[bytes], Awaitable[Signed | None]],
) -> tuple[list[Signed], list[bytes]]:
    """Votes of the verifiers the beacon assigns to the task (the worker is never one); a verifier
    that fails is skipped and the next standby in rank order is asked instead, until the task's
    number of verifiers voted or the candidates are exhausted. Returns the votes and the skipped
    verifiers, in the order they were skipped."""
    k = task.body["verifiers"]
    ranking = rank(beacon, task.id, candidates, result.body["worker"])
    votes: dict[bytes, Signed] = {}
    skipped: list[bytes] = []
    while True:
        chosen = effective_verifiers(ranking, skipped, k)
        todo = [v for v in chosen if v not in votes]
        if not todo:
            break
        answers = await asyncio.gather(*(ask(v) for v in todo))
        for v, a in zip(todo, answers):
            if a is None:
                skipped.append(v)
            else:
                votes[v] = a
        if len(chosen) < k and all(v in votes or v in skipped for v in ranking):
            break
    return list(votes.values()), skipped


def record_decision(ledger: Ledger, network: str, cert: Signed) -> list[Signed]:
    """Append the counted votes, the certificate and minority-vote evidence; return the votes."""
    counted = [open_wire(v, "Vote", network) for v in cert.body["votes"]]
    for v in counted:
        ledger.append("VoteCast", {"vote": v.wire()})
    ledger.append("TaskFinalized", {"certificate": cert.wire()})
    accepted = cert.body["decision"] == "accept"
    for v in counted:
        if v.body["accept"] != accepted:
            ledger.append(
                "Evidence",
                {
                    "kind": "minority_vote",
                    "subject": v.body["verifier"],
                    "proof": {"certificate": cert.wire(), "vote": v.wire()},
                },
            )
    return counted


def record_rejection(ledger: Ledger, cert: Signed) -> None:
    """Evidence against the worker whose result the certificate rejects."""
    ledger.append(
        "Evidence", {"kind": "rejected_result", "subject": cert.body["worker"], "proof": {"certificate": cert.wire()}}
    )
