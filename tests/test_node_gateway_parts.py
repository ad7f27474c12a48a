"""The gateway's parts as plain functions over real signed messages and real ledgers: task checks,
worker choice, recovery from the feed, standby verifiers; and the verifier's replay index, which
follows the same feed and learns each task's kind from its TaskAccepted entry."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from tests.consensus_fixtures import NET, build, ident, make_result, make_task, make_vote
from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.finality import certify
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed, sign
from trustgen.engines.outputs import png_bytes
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node import scheduling, votes
from trustgen.node.scheduling import TaskState
from trustgen.node.verifier_role import VerifierRole


def task_with(**changes) -> Signed:
    body = dict(make_task(ident(3)).body, **changes)
    return sign(ident(3), "Task", NET, body)


def test_check_task_refuses_what_the_gateway_cannot_run():
    scheduling.check_task(task_with(), 3)
    refused = [
        (task_with(kind="video"), grpc.StatusCode.INVALID_ARGUMENT, "unknown task kind"),
        (
            task_with(params={"prompt": "hi", "steps": 3}),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown task parameter steps",
        ),
        (task_with(kind="image", params={"prompt": "a cat", "height": 30}), grpc.StatusCode.INVALID_ARGUMENT, "height"),
        (task_with(workers=2), grpc.StatusCode.INVALID_ARGUMENT, "workers: only 1"),
        (task_with(verifiers=2), grpc.StatusCode.INVALID_ARGUMENT, "odd"),
        (task_with(verifiers=11), grpc.StatusCode.INVALID_ARGUMENT, "odd"),
        (task_with(expiry=int(time.time() * 1000) - 1), grpc.StatusCode.FAILED_PRECONDITION, "expired"),
    ]
    for task, code, needle in refused:
        with pytest.raises(RpcError, match=needle) as e:
            scheduling.check_task(task, 3)
        assert e.value.code == code


def test_worker_choice_by_reputation_then_load_never_excluded_or_suspected():
    st = TaskState(task_with(), b"\x00" * 32, [])
    a, b, c, v = (ident(i).public_key for i in (20, 21, 22, 23))
    members = {k: {"address": "x", "roles": ["worker"]} for k in (a, b, c)}
    members[v] = {"address": "x", "roles": ["verifier"]}
    reputation = {a: 0.4, b: 0.9, c: 0.9}
    assert scheduling.pick_worker(st, members, {}, reputation, {b: 2, c: 1}) == c  # best, then least loaded
    assert scheduling.pick_worker(st, members, {}, reputation, {b: 1, c: 1}) in (b, c)
    st.excluded.add(c)
    assert scheduling.pick_worker(st, members, {}, reputation, {b: 2}) == b
    recently, long_ago = time.monotonic(), time.monotonic() - scheduling.SUSPECT_S - 1
    assert scheduling.pick_worker(st, members, {b: recently}, reputation, {}) == a
    assert scheduling.pick_worker(st, members, {b: long_ago}, reputation, {}) == b
    st.excluded.update((a, b))
    assert scheduling.pick_worker(st, members, {}, reputation, {}) is None  # the verifier is never picked


def test_workers_get_at_most_twice_their_announced_batch_in_flight():
    st = TaskState(task_with(), b"\x00" * 32, [])
    a, b, c = (ident(i).public_key for i in (24, 25, 26))
    members = {
        a: {"address": "x", "roles": ["worker"], "batch": 1},  # 2 slots
        b: {"address": "x", "roles": ["worker"], "batch": 8},  # 16 slots
    }
    # The smallest share of slots in use wins: 3 of b's 16 before 1 of a's 2.
    assert scheduling.pick_worker(st, members, {}, {}, {a: 1, b: 3}) == b
    assert scheduling.pick_worker(st, members, {}, {}, {a: 0, b: 15}) == a
    assert scheduling.pick_worker(st, members, {}, {}, {a: 2, b: 15}) == b  # a is full
    assert scheduling.pick_worker(st, members, {}, {}, {a: 2, b: 16}) == scheduling.BUSY  # wait at the gateway
    st.excluded.update((a, b))
    assert scheduling.pick_worker(st, members, {}, {}, {}) is None  # none may take it: not BUSY
    # The announcement is the worker's own word: bounded, and a worker that made none has no limit.
    assert scheduling.worker_slots({"batch": 10**9}) == 2 * scheduling.MAX_ANNOUNCED_BATCH
    assert scheduling.worker_slots({"batch": 0}) is None and scheduling.worker_slots({}) is None
    assert scheduling.worker_slots({"batch": True}) is None
    members[c] = {"address": "x", "roles": ["worker"]}
    assert scheduling.pick_worker(TaskState(task_with(), b"\x00" * 32, []), members, {}, {}, {a: 2, b: 16, c: 99}) == c


def finalize(led: Ledger, scen, task: Signed, result: Signed, accept: bool) -> Signed:
    """Append the result and the certificate that its assigned verifiers' votes give it."""
    accepted = next(e for e in led.iter_entries(entry_type="TaskAccepted") if e.body["task"] == task.wire())
    beacon, candidates = accepted.body["beacon"], list(accepted.body["candidates"])
    by_key = {v.public_key: v for v in scen.verifiers}
    chosen = effective_verifiers(rank(beacon, task.id, candidates, result.body["worker"]), [], 3)
    cast = [make_vote(by_key[k], result, accept) for k in chosen]
    led.append("ResultCommitted", {"result": result.wire()})
    cert = certify(scen.gateway, NET, task, beacon, candidates, result, cast)
    votes.record_decision(led, NET, cert)
    return cert


def accept_task(led: Ledger, task: Signed) -> None:
    c = led.commit()
    candidates = sorted(e.feed for e in led.iter_entries(entry_type="NodeJoined") if "verifier" in e.body["roles"])
    led.append(
        "TaskAccepted",
        {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": candidates},
    )


def image_result(worker, task: Signed, png: bytes) -> Signed:
    from trustgen.gossip.blobs import blob_digest

    body = dict(make_result(worker, task).body, output={"png_digest": blob_digest(png), "height": 8, "width": 8})
    return sign(worker, "Result", NET, body)


@pytest.fixture()
def feed(tmp_path):
    """A gateway feed: two text tasks accepted at once; a text task whose first result was
    rejected and second accepted; an accepted image task; a task still pending."""
    scen = build(tmp_path / "gw.db", n_tasks=2)
    led = scen.ledger
    retried = make_task(ident(3), nonce=b"retry")
    accept_task(led, retried)
    finalize(led, scen, retried, make_result(ident(4), retried, "sha256:" + "01" * 32), accept=False)
    finalize(led, scen, retried, make_result(ident(5), retried), accept=True)
    png = png_bytes(np.full((8, 8, 3), 200, dtype=np.uint8))
    image = task_with(kind="image", params={"prompt": "a grey square", "height": 8, "width": 8}, nonce=b"img")
    accept_task(led, image)
    finalize(led, scen, image, image_result(scen.worker, image, png), accept=True)
    pending = make_task(ident(3), nonce=b"pending")
    accept_task(led, pending)
    return scen, {"retried": retried, "image": image, "pending": pending}, png


def test_recovery_rebuilds_every_task_from_the_feed(feed, tmp_path):
    scen, tasks, png = feed
    blobs = BlobStore(tmp_path / "blobs")
    blobs.put(png)
    states = scheduling.recover_tasks(scen.ledger, scen.gateway.public_key, NET, blobs)
    assert len(states) == 5
    for t in scen.tasks:
        assert states[t.id].state == "final" and states[t.id].decision == "accept" and states[t.id].output == b""
    retried = states[tasks["retried"].id]
    assert (retried.state, retried.attempt, retried.excluded) == ("final", 2, {ident(4).public_key})
    assert states[tasks["image"].id].output == png  # the output blob, from the store
    pending = states[tasks["pending"].id]
    assert (pending.state, pending.attempt, pending.result) == ("accepted", 0, None)
    # Another gateway's feed in the same ledger is not this gateway's to resume.
    assert scheduling.recover_tasks(scen.ledger, ident(99).public_key, NET, blobs) == {}


def test_decisions_are_recorded_with_evidence_against_the_minority(tmp_path):
    scen = build(tmp_path / "gw.db", n_tasks=0)
    led, by_key = scen.ledger, {v.public_key: v for v in scen.verifiers}
    for nonce, flags in ((b"split-accept", (True, True, False)), (b"split-reject", (False, False, True))):
        task = make_task(ident(3), nonce=nonce)
        accept_task(led, task)
        (accepted,) = [e for e in led.iter_entries(entry_type="TaskAccepted") if e.body["task"] == task.wire()]
        beacon, candidates = accepted.body["beacon"], list(accepted.body["candidates"])
        result = make_result(scen.worker, task)
        chosen = effective_verifiers(rank(beacon, task.id, candidates, scen.worker.public_key), [], 3)
        cast = [make_vote(by_key[k], result, f) for k, f in zip(chosen, flags)]
        cert = certify(scen.gateway, NET, task, beacon, candidates, result, cast)
        start = led.next_index()
        counted = votes.record_decision(led, NET, cert)
        if cert.body["decision"] == "reject":
            votes.record_rejection(led, cert)
        written = [(e.type, e.body.get("kind"), e.body.get("subject")) for e in led.iter_entries(since=start)]
        assert sorted(v.body["verifier"] for v in counted) == sorted(chosen)
        expected = [("VoteCast", None, None)] * 3 + [("TaskFinalized", None, None)]
        expected.append(("Evidence", "minority_vote", chosen[2]))  # the dissenter, either way
        if not flags[0]:
            expected.append(("Evidence", "rejected_result", scen.worker.public_key))
        assert written == expected


def test_failed_verifiers_are_replaced_by_standbys_in_rank_order():
    verifiers = [ident(10 + i) for i in range(6)]
    candidates = sorted(v.public_key for v in verifiers)
    by_key = {v.public_key: v for v in verifiers}
    task = make_task(ident(3), k=3)
    result = make_result(ident(2), task)
    beacon = b"\x07" * 32
    ranking = rank(beacon, task.id, candidates, ident(2).public_key)
    silent = set(ranking[:2])  # the first two assigned verifiers never answer
    asked: list[bytes] = []

    async def ask(v: bytes) -> Signed | None:
        asked.append(v)
        return None if v in silent else make_vote(by_key[v], result, True)

    got, skipped, late = asyncio.run(votes.collect_votes(beacon, task, candidates, result, ask))
    assert skipped == ranking[:2] and late == {}
    assert sorted(v.body["verifier"] for v in got) == sorted(ranking[2:5])
    assert asked == ranking[:5]  # nobody past the standbys needed
    cert = certify(ident(1), NET, task, beacon, candidates, result, got, skipped)
    assert cert.body["decision"] == "accept" and cert.body["skipped"] == ranking[:2]

    silent.update(ranking)  # nobody answers: the loop ends when the ranking is exhausted
    asked.clear()
    got, skipped, late = asyncio.run(votes.collect_votes(beacon, task, candidates, result, ask))
    assert got == [] and skipped == ranking and asked == ranking and late == {}


def test_verifier_index_follows_accepted_outputs_by_kind(feed, tmp_path):
    scen, tasks, png = feed
    role = VerifierRole(ident(50), NET, engines=None)
    blobs = BlobStore(tmp_path / "vblobs")
    # Both first text tasks, and the retried one though its first result was rejected.
    assert role.rebuild_history(scen.ledger, blobs) == 3
    for t in (*scen.tasks, tasks["retried"]):
        assert t.id.hex() in role.history
    image_key = tasks["image"].id.hex()
    (digest,) = role.missing
    assert role.missing[digest][0] == image_key and image_key not in role.history
    assert role.index_image(image_key, png) == 1  # the node fetched it by digest
    assert image_key in role.history and len(role.history) == 4
    assert role.follow(scen.ledger, blobs) == 0  # nothing new since
