"""Gateway vote collection: ask the verifiers a task's beacon assigns, replace those that miss by
the next standbys in rank order, certify as soon as a strict majority agrees, and record the
decision with its evidence.

Everything is written to the gateway's feed before it is acted on: why each skipped verifier was
skipped, each counted vote, then the certificate, then evidence against every verifier that voted
against the majority (and, by the caller, against a worker whose result was rejected). Votes that
arrive after the certificate are recorded after it, judged the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.liveness import BAD_VOTE, DEADLINE, UNAVAILABLE
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.tally import PENDING, tally
from trustgen.net.peers import Peers

log = logging.getLogger("trustgen.node")


@dataclass(frozen=True)
class Miss:
    """A verifier gave no vote that counts: why (a liveness.SKIP_REASONS code), and when it was
    asked (ms since the epoch, the clock ledger entries are stamped with)."""

    reason: str
    asked_ms: int


Answer = Signed | Miss


def now_ms() -> int:
    return int(time.time() * 1000)


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
) -> Answer:
    """One verifier's signed vote on `result`, or a Miss saying why there is none.
    `challenge`: the root and size of the gateway Commitment made after the result was committed;
    `sources`: addresses that hold the result's blobs (the worker's), a hint for fetching them."""
    asked = now_ms()
    args: dict[str, Any] = {"task": task.wire(), "result": result.wire(), "output": blob}
    args |= {"beacon": challenge[0], "beacon_size": challenge[1], "sources": sources}
    try:
        reply = await peers.call(address, "Verifier", "Check", args, timeout=timeout_s)
        vote = open_wire(reply.vote, "Vote", network)
    except grpc.aio.AioRpcError as e:
        log.warning("verifier %s gave no vote: %s", verifier.hex()[:12], e.code().name)
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            return Miss(UNAVAILABLE, asked)
        # A miss is recorded no earlier than the deadline (the audit holds the entry time to it).
        late_by = asked + int(timeout_s * 1000) - now_ms()
        if late_by > 0:
            await asyncio.sleep(late_by / 1000)
        return Miss(DEADLINE, asked)
    except MessageError as e:
        log.warning("verifier %s sent a bad vote: %s", verifier.hex()[:12], e)
        return Miss(BAD_VOTE, asked)
    b = vote.body
    if b["verifier"] != verifier or b["task_id"] != task.id or b["result_id"] != result.id:
        return Miss(BAD_VOTE, asked)
    return vote


async def collect_votes(
    beacon: bytes,
    task: Signed,
    candidates: list[bytes],
    result: Signed,
    ask: Callable[[bytes], Awaitable[Answer | None]],
    on_skip: Callable[[bytes, Miss], None] | None = None,
) -> tuple[list[Signed], list[bytes], dict[bytes, asyncio.Task]]:
    """Votes of the verifiers the beacon assigns to the task (the worker is never one), asked at
    once; a verifier that misses (`on_skip` is told, before anything depends on it) is replaced by
    the next standby in rank order. Returns as soon as a strict majority of the effective
    verifiers' votes agree, or when the candidates are exhausted: the votes, the skipped verifiers
    in the order they were skipped, and the asks still running (their late answers are the
    caller's to record)."""
    k = task.body["verifiers"]
    ranking = rank(beacon, task.id, candidates, result.body["worker"])
    votes: dict[bytes, Signed] = {}
    skipped: list[bytes] = []
    running: dict[asyncio.Task, bytes] = {}

    def decided() -> bool:
        effective = effective_verifiers(ranking, skipped, k)
        return tally({v: a.body["accept"] for v, a in votes.items()}, effective, k).decision != PENDING

    while not decided():
        asking = set(running.values())
        for v in effective_verifiers(ranking, skipped, k):
            if v not in votes and v not in asking:
                running[asyncio.ensure_future(ask(v))] = v
        if not running:
            break  # every candidate voted or was skipped
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for t in sorted(done, key=lambda t: ranking.index(running[t])):  # rank order, not arrival order
            v = running.pop(t)
            a = t.result()
            if isinstance(a, Signed):
                votes[v] = a
                continue
            skipped.append(v)
            if on_skip is not None:
                on_skip(v, a if a is not None else Miss(UNAVAILABLE, now_ms()))
    return list(votes.values()), skipped, {v: t for t, v in running.items()}


def record_decision(ledger: Ledger, network: str, cert: Signed) -> list[Signed]:
    """Append the counted votes, the certificate and minority-vote evidence, in one durable
    transaction (one fsync for the lot, and no votes stored without their certificate); return
    the votes."""
    counted = [open_wire(v, "Vote", network) for v in cert.body["votes"]]
    accepted = cert.body["decision"] == "accept"
    with ledger.batch():
        for v in counted:
            ledger.append("VoteCast", {"vote": v.wire()})
        ledger.append("TaskFinalized", {"certificate": cert.wire()})
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


def record_skip(ledger: Ledger, task: Signed, result: Signed, verifier: bytes, miss: Miss, deadline_ms: int) -> None:
    """Why `verifier` was passed over, written before any certificate that names it skipped."""
    ledger.append(
        "VerifierSkipped",
        {
            "task_id": task.id,
            "result_id": result.id,
            "verifier": verifier,
            "reason": miss.reason,
            "asked": miss.asked_ms,
            "deadline_ms": deadline_ms,
        },
    )


def record_late_vote(ledger: Ledger, cert: Signed, vote: Signed) -> bool:
    """A vote of an effective verifier that arrived after the certificate: recorded as cast and,
    when it disagrees with the decision, as evidence exactly like a counted minority vote (it
    never changes the decision). False when it is not such a vote (nothing is written)."""
    c, b = cert.body, vote.body
    if b["verifier"] not in c["verifiers"] or (b["task_id"], b["result_id"]) != (c["task_id"], c["result_id"]):
        return False
    ledger.append("VoteCast", {"vote": vote.wire()})
    if b["accept"] != (c["decision"] == "accept"):
        ledger.append(
            "Evidence",
            {
                "kind": "minority_vote",
                "subject": b["verifier"],
                "proof": {"certificate": cert.wire(), "vote": vote.wire()},
            },
        )
    return True
