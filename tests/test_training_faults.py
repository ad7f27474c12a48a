"""Network training under real faults, every node a separate process: a trainer killed with
SIGKILL mid-round is left out of that round and rejoins by catching up from the finalised
checkpoint; a verifier killed mid-job costs nothing while a strict majority remains; the gateway
killed mid-job resumes the job from its ledger; every node ends with the same finalised
checkpoints, and each node's directory audits clean."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3

import pytest

from tests.helpers import EventTap, run_cli, small_network_job, wait_for
from trustgen.consensus.audit import audit_paths
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import parse_entry
from trustgen.node import cluster
from trustgen.node.training_client import TrainingClientError, job_status, submit_job
from trustgen.training.audit_training import add_training_violations

NET = "trustgen-local"
pytestmark = pytest.mark.slow


def status(gw: str, job_id: bytes) -> dict | None:
    try:
        return asyncio.run(job_status(gw, job_id, NET, True))
    except TrainingClientError:
        return None  # a restarted gateway rebuilds its jobs in the background


def finalized(node_dir) -> dict[int, bytes]:
    db = sqlite3.connect(f"file:{node_dir / 'ledger.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT payload, sig FROM entries WHERE type = 'CheckpointFinalized'").fetchall()
    db.close()
    out = {}
    for p, s in rows:
        e = parse_entry(p, s, NET)
        out[e.body["round"]] = e.hash
    return out


def kill(pid: int, root, name: str) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(n["name"] == name and n["running"] for n in cluster.status(root)), 30, f"{name} to die")


def test_trainer_verifier_and_gateway_killed_mid_job(tmp_path) -> None:
    root = tmp_path
    ready = cluster.up(root, workers=0, verifiers=3, trainers=3)
    gw = ready["gateway"]["address"]
    taps = {n: EventTap(ready[n]["events_port"]) for n in ("trainer-1", "trainer-3")}
    victim = ready["trainer-3"]["node_id"]
    try:
        spec = small_network_job(rounds=5, inner_steps=6)
        st = asyncio.run(submit_job(gw, spec, Identity.generate(), True, trainers=3, verifiers=3))
        job, jid = bytes.fromhex(st["job_id"]), st["job_id"]
        # Round 1: trainer-3 is killed while it computes its update, and started again at once.
        taps["trainer-3"].wait("training_work", job=jid, round=1, state="started")
        kill(ready["trainer-3"]["pid"], root, "trainer-3")
        procs = {"trainer-3": cluster.start(root / "trainer-3")}
        # The next round trainer-1 starts: a verifier dies; the round after: the gateway dies.
        k = taps["trainer-1"].wait("training_work", job=jid, state="started", timeout=120)["round"]
        while k < 2:
            k = taps["trainer-1"].wait("training_work", job=jid, state="started", timeout=120)["round"]
        kill(ready["verifier-1"]["pid"], root, "verifier-1")
        taps["trainer-1"].wait("training_work", job=jid, round=k + 1, state="started", timeout=120)
        kill(ready["gateway"]["pid"], root, "gateway")
        procs.update({n: cluster.start(root / n) for n in ("gateway", "verifier-1")})
        for n, proc in procs.items():
            cluster.wait_ready(root / n, proc)
        st = wait_for(lambda: (s := status(gw, job)) and s["state"] != "running" and s, timeout=240, what="the job")
        assert st["state"] == "final", st
        rounds_done = st["rounds_done"]
        assert [r["round"] for r in rounds_done] == list(range(5))
        r1 = rounds_done[1]
        assert victim not in r1["delivered"] and len(r1["accepted"]) == 2 and victim not in st["excluded"]
        assert len(rounds_done[k]["verifiers"]) == 2  # decided by the two verifiers left
        assert victim in rounds_done[-1]["accepted"]  # back, caught up from the finalised checkpoint
        # Every node ends with the same finalised checkpoints; each directory audits clean.
        names = [d.name for d in cluster.node_dirs(root)]
        want = finalized(root / "gateway")
        assert sorted(want) == list(range(5))
        wait_for(lambda: all(finalized(root / n) == want for n in names), 60, "every node to hold the checkpoints")
        reports = audit_paths([root / n for n in names])
        add_training_violations(reports)
        for report in reports:
            assert report.ok and report.training_rounds == 5, (report.path, report.violations)
        # Replay from the gateway's directory alone recomputes every finalised checkpoint.
        r = run_cli("train", "replay", str(root / "gateway"), "--job", jid, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        # An operator restarts one node by name; a name the cluster lacks is one line, exit 2.
        r = run_cli("cluster", "restart", "trainer-2", "--dir", str(root), "--json")
        assert r.returncode == 0, r.stderr
        back = json.loads(r.stdout)
        assert back["pid"] != ready["trainer-2"]["pid"] and back["address"] == ready["trainer-2"]["address"]
        r = run_cli("cluster", "restart", "trainer-9", "--dir", str(root))
        assert r.returncode == 2 and "no node 'trainer-9'" in r.stderr and "Traceback" not in r.stderr
    finally:
        for t in taps.values():
            t.close()
        cluster.down(root)
