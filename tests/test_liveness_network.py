"""Liveness with real faults (issue 15, items 3 and 4): every node a separate process, a verifier
frozen with SIGSTOP, a worker frozen while a task expires, the gateway killed with SIGKILL and
restarted. A task finalises on the majority without waiting for the stopped verifier, which is
then demoted until a health probe finds it answering; a failed task is a ledger fact that a
restart does not undo; the audit passes throughout. One in-process case shows a transient fault
(the only verifier gone) retried with backoff instead of failing the task."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.helpers import LocalNodes, in_state, until, wait_for
from tests.test_network import NET, assert_audits_clean, gateway_entries, run_task, status
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire, sign
from trustgen.net.peers import Peers
from trustgen.node import cluster
from trustgen.node.client import make_task, submit

pytestmark = pytest.mark.slow
PARAMS = {"prompt": "Liveness", "max_new_tokens": 4}


def key_of(ready: dict, name: str) -> bytes:
    return bytes.fromhex(ready[name]["node_id"])


def feed(root, entry_type: str) -> list:
    """The gateway's own entries of a type, in feed order."""
    return [e for e in gateway_entries(root, entry_type)]


def candidates_of(root, task_id: bytes) -> list[bytes]:
    for e in gateway_entries(root, "TaskAccepted"):
        if open_wire(e.body["task"], "Task", NET).id == task_id:
            return list(e.body["candidates"])
    raise AssertionError("task not accepted")


def misses(root, verifier: bytes) -> list:
    return [e for e in gateway_entries(root, "VerifierSkipped") if e.body["verifier"] == verifier]


def test_stopped_verifier_early_finality_demotion_and_failure_across_restart(tmp_path):
    root = tmp_path
    gw_settings = {"verifier_timeout_s": 12.0, "worker_timeout_s": 8.0}
    ready = cluster.up(root, workers=1, verifiers=4, node_settings={"gateway": gw_settings})
    gw = ready["gateway"]["address"]
    stopped = key_of(ready, "verifier-1")
    os.kill(ready["verifier-1"]["pid"], signal.SIGSTOP)
    try:
        # Tasks until one assigns the stopped verifier (3 of 4 are assigned each time).
        for _ in range(8):
            task, out = run_task(gw, "text", PARAMS, verifiers=3, timeout=90)
            cert = next(
                open_wire(e.body["certificate"], "Certificate", NET)
                for e in feed(root, "TaskFinalized")
                if open_wire(e.body["certificate"], "Certificate", NET).body["task_id"] == task.id
            )
            if stopped in cert.body["verifiers"]:
                break
        else:
            pytest.fail("the stopped verifier was never assigned")
        # Decided by the two matching votes: nobody skipped, no vote of the stopped verifier, and
        # the certificate was written before any record of its miss (so it did not wait for it).
        assert out["decision"] == "accept" and cert.body["skipped"] == []
        assert len(cert.body["votes"]) == 2
        assert stopped not in {open_wire(v, "Vote", NET).signer for v in cert.body["votes"]}
        finalized_seq = next(
            e.seq for e in feed(root, "TaskFinalized") if e.body["certificate"] == cert.wire()
        )
        assert all(m.seq > finalized_seq for m in misses(root, stopped))

        # Its deadline passes: the miss is recorded, and the next task's candidates leave it out.
        (miss,) = wait_for(lambda: misses(root, stopped), timeout=60, what="the missed deadline to be recorded")
        assert miss.body["reason"] == "deadline" and miss.body["task_id"] == task.id
        demoted_task, out = run_task(gw, "text", PARAMS, verifiers=3, timeout=90)
        assert out["decision"] == "accept"
        assert stopped not in candidates_of(root, demoted_task.id)

        # It answers again (SIGCONT): a health probe restores it, and it is a candidate again.
        os.kill(ready["verifier-1"]["pid"], signal.SIGCONT)
        wait_for(
            lambda: [e for e in feed(root, "VerifierRestored") if e.body["verifier"] == stopped],
            timeout=60,
            what="the probe to restore the verifier",
        )
        back, out = run_task(gw, "text", PARAMS, verifiers=3, timeout=90)
        assert out["decision"] == "accept" and stopped in candidates_of(root, back.id)

        # A task that cannot finish before its expiry (the only worker frozen) fails, in the ledger.
        os.kill(ready["worker-1"]["pid"], signal.SIGSTOP)
        me = Identity.generate()
        doomed = make_task(me, NET, "text", "tiny-text", PARAMS, 3)
        doomed = sign(me, "Task", NET, dict(doomed.body, expiry=int(time.time() * 1000) + 3000))
        asyncio.run(submit(gw, doomed, me, NET, insecure=True, wait=False))
        failed = wait_for(lambda: (s := status(gw, doomed.id)).state == "failed" and s, 60, "the task to fail")
        os.kill(ready["worker-1"]["pid"], signal.SIGCONT)
        assert failed.detail == "expired"
        (record,) = [e for e in feed(root, "TaskFailed") if e.body["task_id"] == doomed.id]
        assert record.body["reason"] == "expired"

        # SIGKILL the gateway and restart it: the failed task stays failed, the others final.
        pid = ready["gateway"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: any(n["name"] == "gateway" and n["pid"] == pid and not n["running"] for n in cluster.status(root)),
            what="the gateway to die",
        )
        cluster.wait_ready(root / "gateway", cluster.start(root / "gateway"))
        again = status(gw, doomed.id)
        assert (again.state, again.detail) == ("failed", "expired")
        assert status(gw, back.id).state == "final"
        assert len([e for e in feed(root, "TaskFailed") if e.body["task_id"] == doomed.id]) == 1
        assert_audits_clean(root / "gateway")
    finally:
        for name in ("verifier-1", "worker-1"):
            try:
                os.kill(ready[name]["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
        cluster.down(root)


def test_a_transient_verifier_outage_is_retried_not_failed(tmp_path):
    """The only verifier is gone when the result is ready: no majority is possible, which is a
    transient fault; the task waits (retrying with backoff) and finalises once the verifier is
    back, with no gateway restart. Before, it failed at once and stayed failed."""

    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        peers = Peers(me, NET, insecure=True)
        try:
            gw = await nodes.start("gateway", ["gateway"], verifier_timeout_s=5.0)
            await nodes.start("worker", ["worker"], gateway=gw.address, delay_s=1.0)
            await nodes.start("verifier", ["verifier"], gateway=gw.address)
            task = make_task(me, NET, "text", "tiny-text", PARAMS, 1)
            await submit(gw.address, task, me, NET, insecure=True, wait=False)
            await nodes.stop("verifier")
            st = await until(in_state(peers, gw, task, "verifying", "failed"), 60, "verification to start")
            await until(lambda: list(gw.ledger.iter_entries(entry_type="VerifierSkipped")), 30, "the miss record")
            st = await until(in_state(peers, gw, task, "verifying", "final", "failed"), 10, "a state")
            assert st.state == "verifying"  # not failed: retrying
            await nodes.start("verifier", ["verifier"], gateway=gw.address)
            final = await until(in_state(peers, gw, task, "final", "failed"), 90, "the task to end")
            assert final.state == "final" and final.decision == "accept"
            assert list(gw.ledger.iter_entries(entry_type="TaskFailed")) == []
        finally:
            await peers.close()
            await nodes.close()

    asyncio.run(main())
