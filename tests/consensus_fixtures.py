"""Builders for small, fully valid ledgers used by the consensus tests."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from trustgen.consensus.assignment import rank
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed, sign

NET = "trustgen-test"


def ident(i: int) -> Identity:
    return Identity.from_seed(bytes([i]) * 32)


def make_task(client: Identity, nonce: bytes = b"n1", k: int = 3) -> Signed:
    return sign(
        client,
        "Task",
        NET,
        {
            "client": client.public_key,
            "kind": "text",
            "model": "sha256:" + "ab" * 32,
            "params": {"prompt": "hello", "max_new_tokens": 8, "decoding": "greedy"},
            "workers": 1,
            "verifiers": k,
            "nonce": nonce,
            "expiry": 2_000_000_000_000,
        },
    )


def make_result(worker: Identity, task: Signed, digest: str = "sha256:" + "cd" * 32) -> Signed:
    return sign(
        worker,
        "Result",
        NET,
        {
            "worker": worker.public_key,
            "task_id": task.id,
            "model_digest": task.body["model"],
            "output_digest": digest,
            "output": {"token_ids": [1, 2, 3]},
            "fingerprint": {},
            "profile": {"device": "cpu"},
        },
    )


def make_vote(verifier: Identity, result: Signed, accept: bool) -> Signed:
    return sign(
        verifier,
        "Vote",
        NET,
        {
            "verifier": verifier.public_key,
            "task_id": result.body["task_id"],
            "result_id": result.id,
            "accept": accept,
            "method": "prefill",
            "distance": 0.0,
            "margin": 1.5,
            "reason": "" if accept else "token 3 is not the argmax",
            "fingerprint": {},
            "checks": {},
        },
    )


@dataclass
class Scenario:
    ledger: Ledger
    gateway: Identity
    verifiers: list[Identity]
    worker: Identity
    tasks: list[Signed] = field(default_factory=list)


def build(path: pathlib.Path, n_tasks: int = 2, lying: set[int] | None = None) -> Scenario:
    """A gateway ledger with 4 joined verifiers, a worker, commitments, and `n_tasks` tasks
    finalised by majority. Verifiers whose index is in `lying` vote reject."""
    gw, worker = ident(1), ident(2)
    verifiers = [ident(10 + i) for i in range(4)]
    lying = lying or set()
    led = Ledger(path, NET, gw)
    led.append("NodeJoined", {"address": "127.0.0.1:1", "roles": ["gateway"]})
    for v in verifiers:
        vl = Ledger(path.parent / f"v{v.node_id[:6]}.db", NET, v)
        e = vl.append("NodeJoined", {"address": "127.0.0.1:2", "roles": ["verifier"]})
        led.ingest(e.payload, e.sig)
        vl.close()
    scen = Scenario(led, gw, verifiers, worker)
    by_key = {v.public_key: v for v in verifiers}
    for t in range(n_tasks):
        c = led.commit()
        task = make_task(ident(3), nonce=bytes([t]))
        candidates = sorted(by_key)
        led.append(
            "TaskAccepted",
            {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": candidates},
        )
        result = make_result(worker, task)
        led.append("ResultCommitted", {"result": result.wire()})
        from trustgen.consensus.assignment import effective_verifiers, rank

        chosen = effective_verifiers(rank(c.body["root"], task.id, candidates, worker.public_key), [], 3)
        votes = [make_vote(by_key[v], result, verifiers.index(by_key[v]) not in lying) for v in chosen]
        for v in votes:
            led.append("VoteCast", {"vote": v.wire()})
        cert = certify(gw, NET, task, c.body["root"], candidates, result, votes)
        led.append("TaskFinalized", {"certificate": cert.wire()})
        scen.tasks.append(task)
    led.commit()
    return scen


@dataclass
class Open:
    """A task the gateway accepted (and maybe committed a result for), not yet finalised."""

    task: Signed
    result: Signed
    beacon: bytes
    candidates: list[bytes]
    ranking: list[bytes]
    votes: list[Signed] = field(default_factory=list)  # votes cast for it so far


def open_task(scen: Scenario, nonce: bytes, worker: Identity | None = None, commit_result: bool = True) -> Open:
    """Accept a task on a fresh beacon and (unless told not to) commit its worker's result, as the
    gateway does."""
    led = scen.ledger
    c = led.commit()
    task = make_task(ident(3), nonce=nonce)
    candidates = sorted(v.public_key for v in scen.verifiers)
    led.append(
        "TaskAccepted",
        {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": candidates},
    )
    worker = worker or scen.worker
    result = make_result(worker, task)
    if commit_result:
        led.append("ResultCommitted", {"result": result.wire()})
    ranking = rank(c.body["root"], task.id, candidates, worker.public_key)
    return Open(task, result, c.body["root"], candidates, ranking)
