"""Strict input at the edge, with real nodes in-process (gRPC on loopback, tiny models): a hostile
task is refused at submit, naming the field, with nothing stored; a task a worker refuses as invalid
fails with the worker's reason and never makes that worker look failed, so the next honest task
runs on it at once."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.helpers import EventLog, LocalNodes, in_state, until
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed
from trustgen.net.peers import Peers
from trustgen.node.client import make_task

NET = "trustgen-local"
pytestmark = pytest.mark.slow


def text_task(me: Identity, params: dict[str, Any], verifiers: int = 1, model: str = "tiny-text") -> Signed:
    return make_task(me, NET, "text", model, params, verifiers)


async def submit_code(peers: Peers, gw: Any, task: Signed) -> tuple[grpc.StatusCode, str]:
    try:
        await peers.call(gw.address, "Gateway", "Submit", {"task": task.wire()}, timeout=10)
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def test_hostile_tasks_are_refused_at_submit_and_never_mark_the_worker(tmp_path):
    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        peers = Peers(me, NET, insecure=True)
        events = None
        try:
            gw = await nodes.start("gateway", ["gateway"])
            worker = await nodes.start("worker", ["worker"], gateway=gw.address)
            await nodes.start("verifier", ["verifier"], gateway=gw.address)
            events = EventLog(gw)
            await events.ready()
            wkey = worker.identity.public_key
            size = gw.ledger.size()

            invalid = grpc.StatusCode.INVALID_ARGUMENT
            refused = [
                (text_task(me, {"prompt": "x", "max_new_tokens": 8.0}), invalid, "max_new_tokens"),
                (text_task(me, {"prompt": "x", "max_new_tokens": True}), invalid, "max_new_tokens"),
                (text_task(me, {"prompt": "x", "seed": 1.0}), invalid, "seed"),
                (text_task(me, {"prompt": "x", "temperature": "hot"}), invalid, "temperature"),
                (text_task(me, {"prompt": "x", "gpu": 0}), invalid, "gpu"),
                (text_task(me, {"max_new_tokens": 4}), invalid, "prompt"),
                # One verifier is registered: three cannot be assigned.
                (text_task(me, {"prompt": "x"}, verifiers=3), grpc.StatusCode.FAILED_PRECONDITION, "verifiers"),
                # No admitted worker serves the model (the worker's signed Serves entry says what it does).
                (text_task(me, {"prompt": "x"}, model="tiny-image"), grpc.StatusCode.FAILED_PRECONDITION, "model"),
                # Over every serving worker's budget: the error names the parameters of the cost.
                (
                    text_task(me, {"prompt": "x" * 2000, "max_new_tokens": 1024, "decoding": "beam", "num_beams": 16}),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "max_new_tokens",
                ),
            ]
            for task, code, field in refused:
                got, details = await submit_code(peers, gw, task)
                assert got == code, (task.body["params"], got, details)
                assert field in details, details
            assert gw.ledger.size() == size, "a refused task stored nothing"

            # Valid at the edge, refused by the worker: too long for the model's context. It fails
            # with the worker's reason.
            too_long = text_task(me, {"prompt": "word " * 200, "max_new_tokens": 200})
            for task, reason in ((too_long, "context"),):
                assert (await submit_code(peers, gw, task))[0] == grpc.StatusCode.OK
                st = await until(in_state(peers, gw, task, "final", "failed"), 120, "the refused task to settle")
                assert st.state == "failed" and reason in st.detail, st.detail
            assert events.of("task_refused", worker=wkey.hex())

            honest = text_task(me, {"prompt": "Admission", "max_new_tokens": 4})
            assert (await submit_code(peers, gw, honest))[0] == grpc.StatusCode.OK
            # Accepted and stored before the reply; submitting again is idempotent.
            reply = await peers.call(gw.address, "Gateway", "Submit", {"task": honest.wire()}, timeout=10)
            assert reply.task_id == honest.id
            accepted = [e for e in gw.ledger.iter_entries(entry_type="TaskAccepted")]
            assert sum(1 for e in accepted if e.body["task"] == honest.wire()) == 1
            st = await until(in_state(peers, gw, honest, "final", "failed"), 120, "the honest task to settle")
            assert st.state == "final", st.detail
            assert wkey not in gw.gateway.suspects
            assert events.of("worker_failed") == []

            # A task the gateway abandons (its worker deadline passes) is cancelled on the worker:
            # the engine thread stops at its next checkpoint instead of running on for minutes.
            gw.gateway.worker_timeout_s = 2.0
            at_budget = {"prompt": "a long one", "height": 128, "width": 128, "steps": 80}  # 128 x 128 x 80
            long = make_task(me, NET, "image", "tiny-image", at_budget, 1)
            assert (await submit_code(peers, gw, long))[0] == grpc.StatusCode.OK
            await until(lambda: events.of("worker_failed", task=long.id.hex()), 60, "the gateway to give up")
            await until(lambda: worker.worker.cancelled == 1, 30, "the worker to cancel the abandoned task")
            # The engine thread is free long before the 80 steps (minutes here) would have ended.
            assert await asyncio.wait_for(worker.engines.run(lambda: True), 30)
        finally:
            if events is not None:
                await events.close()
            await peers.close()
            await nodes.close()

    asyncio.run(main())
