"""The gateway's scheduling, end to end with real nodes in-process (gRPC on loopback, tiny models):
an expired task is never run, workers are tried in reputation order, and a verifier that does not
answer is replaced by the next standby in rank order."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import grpc
import pytest

from tests.helpers import EventLog, LocalNodes, in_state, until
from trustgen.consensus.assignment import rank
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed, open_wire, sign
from trustgen.consensus.reputation import reputation
from trustgen.net.peers import Peers
from trustgen.node.client import make_task, submit

NET = "trustgen-local"
pytestmark = pytest.mark.slow


def text_task(me: Identity, k: int = 1, expiry_ms: int | None = None, prefer: bytes = b"", over: bytes = b"") -> Signed:
    """A small text task; with `prefer`, one whose per-task tie-break hash ranks `prefer` before
    `over` (so when the gateway picks `over` first, the tie-break was not why)."""
    while True:
        task = make_task(me, NET, "text", "tiny-text", {"prompt": "Gateway", "max_new_tokens": 8}, k)
        if expiry_ms is not None:
            task = sign(me, "Task", NET, dict(task.body, expiry=expiry_ms))
        if not prefer or hashlib.sha256(task.id + prefer).digest() < hashlib.sha256(task.id + over).digest():
            return task


def now_ms() -> int:
    return int(time.time() * 1000)


def key(node: Any) -> bytes:
    return node.identity.public_key


def of_task(node: Any, entry_type: str, task: Signed) -> list[Signed]:
    """The messages in the gateway's `entry_type` entries that concern `task`, in ledger order."""
    field, msg_type = {
        "TaskAccepted": ("task", "Task"),
        "ResultCommitted": ("result", "Result"),
        "TaskFinalized": ("certificate", "Certificate"),
    }[entry_type]
    msgs = [open_wire(e.body[field], msg_type, NET) for e in node.ledger.iter_entries(entry_type=entry_type)]
    return [m for m in msgs if (m.id if msg_type == "Task" else m.body["task_id"]) == task.id]


def counter(node: Any, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


def test_an_expired_task_is_never_run(tmp_path):
    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        peers = Peers(me, NET, insecure=True)
        try:
            gw = await nodes.start("gateway", ["gateway"])
            await nodes.start("verifier", ["verifier"], gateway=gw.address)
            # The only worker joins (its signed Serves entry tells the gateway it serves the model),
            # then goes down: a task naming no served model would be refused at submit.
            await nodes.start("worker", ["worker"], gateway=gw.address)
            await nodes.stop("worker")
            # Already expired: refused at the door, nothing recorded.
            stale = text_task(me, expiry_ms=now_ms() - 1)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await peers.call(gw.address, "Gateway", "Submit", {"task": stale.wire()}, timeout=10)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert of_task(gw, "TaskAccepted", stale) == []
            # Accepted while its only worker is down; it expires while it waits.
            task = text_task(me, expiry_ms=now_ms() + 1500)
            assert (await submit(gw.address, task, me, NET, insecure=True, wait=False))["state"] == "accepted"
            await until(in_state(peers, gw, task, "waiting"), 10, "the task to wait for a worker")
            failed = await until(in_state(peers, gw, task, "final", "failed"), 30, "the task to end")
            assert (failed.state, failed.detail) == ("failed", "expired")
            # A worker that joins afterwards is not given it, not even by the gateway restarted,
            # which resumes every unfinished task of its ledger.
            worker = await nodes.start("worker", ["worker"], gateway=gw.address)
            await nodes.stop("gateway")
            gw = await nodes.start("gateway", ["gateway"])
            resumed = await until(in_state(peers, gw, task, "final", "failed"), 30, "the resumed task to end")
            assert (resumed.state, resumed.detail) == ("failed", "expired")
            assert counter(worker, "trustgen_executions_total", kind="text") == 0
            assert of_task(gw, "ResultCommitted", task) == [] and len(of_task(gw, "TaskAccepted", task)) == 1
        finally:
            await peers.close()
            await nodes.close()

    asyncio.run(main())


def test_workers_are_tried_in_reputation_order(tmp_path):
    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        peers = Peers(me, NET, insecure=True)
        events = None
        try:
            gw = await nodes.start("gateway", ["gateway"])
            await nodes.start("verifier", ["verifier"], gateway=gw.address)
            good = await nodes.start("good", ["worker"], gateway=gw.address)
            bad = await nodes.start("bad", ["worker"], gateway=gw.address, adversary="alter")
            g, b = key(good), key(bad)
            events = EventLog(gw)
            await events.ready()

            def tried(task: Signed) -> list[bytes]:
                return [bytes.fromhex(e["worker"]) for e in events.of("task", task=task.id.hex(), state="running")]

            # Strangers both: the per-task tie-break gives the first task to the cheat, whose
            # result is rejected; the honest worker then completes it.
            t1 = text_task(me, prefer=b, over=g)
            out = await submit(gw.address, t1, me, NET, insecure=True, timeout_s=120)
            assert out["decision"] == "accept" and out["worker"] == g.hex()
            assert [(c.body["worker"], c.body["decision"]) for c in of_task(gw, "TaskFinalized", t1)] == [
                (b, "reject"),
                (g, "accept"),
            ]
            rep = reputation(gw.ledger.iter_entries(), NET)
            assert rep[b] < 0.5 < rep[g]
            # The tie-break still prefers the cheat, but reputation comes first: it never sees the task.
            t2 = text_task(me, prefer=b, over=g)
            out = await submit(gw.address, t2, me, NET, insecure=True, timeout_s=120)
            assert out["worker"] == g.hex() and out["attempts"] == 1
            await until(lambda: events.of("task", task=t2.id.hex(), state="final"), 10, "t2's final event")
            assert tried(t2) == [g]
            # The better worker is gone: it is still tried first, and the worse one after it.
            await nodes.stop("good")
            t3 = text_task(me, prefer=b, over=g)
            await submit(gw.address, t3, me, NET, insecure=True, wait=False)
            await until(lambda: len(tried(t3)) == 2 and events.of("decision", task=t3.id.hex()), 60, "both tries")
            assert tried(t3) == [g, b]
            assert [e["code"] for e in events.of("worker_failed", task=t3.id.hex())] == ["UNAVAILABLE"]
            assert [(c.body["worker"], c.body["decision"]) for c in of_task(gw, "TaskFinalized", t3)] == [(b, "reject")]
            waiting = await until(in_state(peers, gw, t3, "waiting"), 10, "t3 to wait for another worker")
            assert waiting.detail == "no worker available"
        finally:
            if events is not None:
                await events.close()
            await peers.close()
            await nodes.close()

    asyncio.run(main())


def test_a_silent_verifier_is_replaced_by_the_next_standby(tmp_path):
    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        try:
            gw = await nodes.start("gateway", ["gateway"])
            # The worker's added latency leaves time to silence a verifier once the assignment is known.
            worker = await nodes.start("worker", ["worker"], gateway=gw.address, delay_s=3.0)
            verifiers = {}
            for i in range(5):
                v = await nodes.start(f"verifier-{i}", ["verifier"], gateway=gw.address)
                verifiers[key(v)] = v
            task = text_task(me, k=3)
            await submit(gw.address, task, me, NET, insecure=True, wait=False)
            accepted = next(
                e
                for e in gw.ledger.iter_entries(entry_type="TaskAccepted")
                if open_wire(e.body["task"], "Task", NET).id == task.id
            )
            assert sorted(accepted.body["candidates"]) == sorted(verifiers)
            ranking = rank(accepted.body["beacon"], task.id, accepted.body["candidates"], key(worker))
            silent = ranking[1]
            await nodes.stop(verifiers[silent].cfg.name)  # assigned, and now gone
            # Submitting again is idempotent: this follows the task and checks its certificate.
            out = await submit(gw.address, task, me, NET, insecure=True, timeout_s=120)
            assert out["decision"] == "accept" and out["skipped"] == [silent.hex()]
            expected = [ranking[0], ranking[2], ranking[3]]  # the first standby steps in
            # Decided on the first strict majority of them; the rest vote late, recorded after.
            counted = {bytes.fromhex(v["verifier"]) for v in out["votes"]}
            assert len(counted) >= 2 and counted <= set(expected)
            (cert,) = of_task(gw, "TaskFinalized", task)
            assert cert.body["verifiers"] == expected and cert.body["skipped"] == [silent]

            def cast() -> set[bytes]:
                return {
                    open_wire(e.body["vote"], "Vote", NET).signer for e in gw.ledger.iter_entries(entry_type="VoteCast")
                }

            await until(lambda: cast() == set(expected), 30, "the late vote to be recorded")
            for k in expected:
                assert counter(verifiers[k], "trustgen_votes_total", verdict="accept") == 1
            (miss,) = list(gw.ledger.iter_entries(entry_type="VerifierSkipped"))
            assert (miss.body["verifier"], miss.body["reason"]) == (silent, "unavailable")
            assert counter(verifiers[ranking[4]], "trustgen_votes_total", verdict="accept") == 0  # never asked
            report = audit_ledger(gw.cfg.ledger_path)
            assert report.ok, report.violations
        finally:
            await nodes.close()

    asyncio.run(main())
