"""Audit checks that need no ledger state: every signature of a ledger (in parallel), and whether
an accusation's proof holds."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from trustgen.consensus.identity import verify
from trustgen.consensus.ledger import Entry
from trustgen.consensus.messages import MessageError, Signed, open_wire

PARALLEL_FROM = 4000  # entries; below this a process pool costs more than it saves


def accusation_problem(e: Entry, network: str) -> str | None:
    """Why a rejected-result, minority-vote or failed-recheck accusation does not hold, or None
    when it does: it must carry a certificate (signed by the accuser, except for a re-check, which
    anyone may run) whose votes name the subject."""
    p = e.body["proof"]
    try:
        cert = open_wire(p["certificate"], "Certificate", network)
    except (MessageError, KeyError, TypeError) as err:
        return f"certificate in the proof is invalid: {err}"
    c = cert.body
    if e.body["kind"] == "failed_recheck":
        return _recheck_problem(e, cert, network)
    if c["gateway"] != e.feed:
        return "certificate in the proof is not the accuser's"
    if e.body["kind"] == "rejected_result":
        if c["decision"] != "reject" or c["worker"] != e.body["subject"]:
            return "certificate does not reject the accused worker's result"
        return None
    try:
        vote = open_wire(p["vote"], "Vote", network)
    except (MessageError, KeyError, TypeError) as err:
        return f"vote in the proof is invalid: {err}"
    v = vote.body
    # A late vote (an effective verifier's, in after the majority decided) is not among the
    # certificate's votes, and is evidence all the same.
    late = v["verifier"] in c["verifiers"] and (v["task_id"], v["result_id"]) == (c["task_id"], c["result_id"])
    if (vote.wire() not in c["votes"] and not late) or v["verifier"] != e.body["subject"]:
        return "vote is not the accused verifier's vote on this certificate's result"
    if vote.body["accept"] == (c["decision"] == "accept"):
        return "the accused vote agrees with the decision"
    return None


def _recheck_problem(e: Entry, cert: Signed, network: str) -> str | None:
    """A failed re-check accuses the worker of an accepted certificate, or a verifier whose vote
    in it accepted; whether the output really fails is the accuser's claim (re-run to confirm)."""
    c, p = cert.body, e.body["proof"]
    if c["decision"] != "accept":
        return "a re-check accuses only an accepted result"
    if e.body["subject"] == c["worker"] and p.get("vote") == b"":
        return None
    try:
        vote = open_wire(p["vote"], "Vote", network)
    except (MessageError, KeyError, TypeError) as err:
        return f"vote in the proof is invalid: {err}"
    if vote.wire() not in c["votes"] or vote.body["verifier"] != e.body["subject"] or not vote.body["accept"]:
        return "vote is not the accused verifier's accepting vote in this certificate"
    return None


def _verify_chunk(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify(k, p, s) for k, p, s in items]


def verify_all(items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """Ed25519 checks of (key, message, signature), spread over processes for big ledgers
    (PyNaCl has no batch verification; it is the audit's floor)."""
    workers = min(os.cpu_count() or 1, 8)
    if len(items) < PARALLEL_FROM or workers < 2:
        return _verify_chunk(items)
    size = -(-len(items) // (workers * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return [ok for part in pool.map(_verify_chunk, chunks) for ok in part]
