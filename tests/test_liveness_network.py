"""Liveness with real faults (issue 15, items 3 and 4): every node a separate process, a verifier
frozen with SIGSTOP, a worker frozen while a task expires, the gateway killed with SIGKILL and
restarted. A task finalises on the majority without waiting for the stopped verifier, which is
then demoted until a health probe finds it answering; a failed task is a ledger fact that a
restart does not undo; two stalled verifiers are a transient fault, retried with backoff instead
of failing the task; the audit passes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.helpers import wait_for
from tests.test_network import NET, assert_audits_clean, gateway_entries, run_task, status
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire, sign
from trustgen.node import cluster
from trustgen.node.client import make_task, submit

pytestmark = pytest.mark.slow
PARAMS = {"prompt": "Liveness", "max_new_tokens": 4}


def key_of(ready: dict, name: str) -> bytes:
    return bytes.fromhex(ready[name]["node_id"])


def feed(root, entry_type: str) -> list:
    """The gateway ledger's entries of a type (only the gateway writes these), in log order."""
    return gateway_entries(root, entry_type)


def candidates_of(root, task_id: bytes) -> list[bytes]:
    for e in gateway_entries(root, "TaskAccepted"):
        if open_wire(e.body["task"], "Task", NET).id == task_id:
            return list(e.body["candidates"])
    raise AssertionError("task not accepted")


def misses(root, verifier: bytes) -> list:
    return [e for e in gateway_entries(root, "VerifierSkipped") if e.body["verifier"] == verifier]


def final_certificate(root, task_id: bytes):
    for e in feed(root, "TaskFinalized"):
        cert = open_wire(e.body["certificate"], "Certificate", NET)
        if cert.body["task_id"] == task_id and cert.body["decision"] == "accept":
            return e.seq, cert
    raise AssertionError("no accepting certificate")


def signal_node(ready: dict, name: str, sig: signal.Signals) -> None:
    os.kill(ready[name]["pid"], sig)


def test_stopped_verifiers_early_finality_demotion_retry_and_failure_across_restart(tmp_path):
    root = tmp_path
    gw_settings = {"verifier_timeout_s": 6.0, "worker_timeout_s": 5.0}
    ready = cluster.up(root, workers=1, verifiers=3, node_settings={"gateway": gw_settings})
    gw = ready["gateway"]["address"]
    v1, v2, v3 = (key_of(ready, f"verifier-{i}") for i in (1, 2, 3))
    signal_node(ready, "verifier-1", signal.SIGSTOP)
    try:
        # k = 3 of 3: the stopped verifier is assigned, and the two others' matching votes decide.
        # Nobody is skipped, and the certificate precedes any record of the stopped one's miss: the
        # gateway did not wait for it.
        task, out = run_task(gw, "text", PARAMS, verifiers=3, timeout=90)
        assert out["decision"] == "accept"
        finalized_seq, cert = final_certificate(root, task.id)
        assert v1 in cert.body["verifiers"] and cert.body["skipped"] == []
        assert {open_wire(v, "Vote", NET).signer for v in cert.body["votes"]} == {v2, v3}
        assert all(m.seq > finalized_seq for m in misses(root, v1))

        # Its deadline passes: the miss is recorded after the fact, and demotes it: a k = 1 task
        # (two others to choose from) no longer lists it as a candidate.
        (miss,) = wait_for(lambda: misses(root, v1), timeout=60, what="the missed deadline to be recorded")
        assert miss.body["reason"] == "deadline" and miss.body["task_id"] == task.id
        demoted, out = run_task(gw, "text", PARAMS, verifiers=1, timeout=90)
        assert out["decision"] == "accept" and sorted(candidates_of(root, demoted.id)) == sorted([v2, v3])

        # It answers again (SIGCONT): a health probe restores it, and it is a candidate again.
        signal_node(ready, "verifier-1", signal.SIGCONT)
        wait_for(
            lambda: [e for e in feed(root, "VerifierRestored") if e.body["verifier"] == v1],
            timeout=60,
            what="the probe to restore the verifier",
        )
        back, out = run_task(gw, "text", PARAMS, verifiers=1, timeout=90)
        assert out["decision"] == "accept" and v1 in candidates_of(root, back.id)

        # Two of three verifiers stall: no majority is possible, a transient fault. The task is
        # retried (not failed) and finalises once they answer again, with no restart.
        for name in ("verifier-2", "verifier-3"):
            signal_node(ready, name, signal.SIGSTOP)
        me = Identity.generate()
        stalled = make_task(me, NET, "text", "tiny-text", PARAMS, 3)
        asyncio.run(submit(gw, stalled, me, NET, insecure=True, wait=False))
        wait_for(
            lambda: (
                {m.body["verifier"] for m in gateway_entries(root, "VerifierSkipped")} >= {v2, v3}
                and status(gw, stalled.id).state == "verifying"
            ),
            timeout=60,
            what="both stalled verifiers to miss",
        )
        for name in ("verifier-2", "verifier-3"):
            signal_node(ready, name, signal.SIGCONT)
        done = wait_for(lambda: (s := status(gw, stalled.id)).state in ("final", "failed") and s, 90, "the retry")
        assert (done.state, done.decision) == ("final", "accept")

        # A task that cannot finish before its expiry (the only worker frozen) fails, in the ledger.
        signal_node(ready, "worker-1", signal.SIGSTOP)
        doomed = make_task(me, NET, "text", "tiny-text", PARAMS, 1)
        doomed = sign(me, "Task", NET, dict(doomed.body, expiry=int(time.time() * 1000) + 2000))
        asyncio.run(submit(gw, doomed, me, NET, insecure=True, wait=False))
        failed = wait_for(lambda: (s := status(gw, doomed.id)).state == "failed" and s, 60, "the task to fail")
        signal_node(ready, "worker-1", signal.SIGCONT)
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
        assert status(gw, stalled.id).state == "final"
        assert len([e for e in feed(root, "TaskFailed") if e.body["task_id"] == doomed.id]) == 1
        assert_audits_clean(root / "gateway")
    finally:
        for name in ("verifier-1", "verifier-2", "verifier-3", "worker-1"):
            try:
                signal_node(ready, name, signal.SIGCONT)
            except ProcessLookupError:
                pass
        cluster.down(root)
