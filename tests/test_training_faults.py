"""Network training under real faults, every node a separate process: a trainer killed with
SIGKILL mid-round is left out of that round and rejoins by catching up from the finalised
checkpoint; a verifier killed mid-job costs nothing while a strict majority remains; the gateway
killed mid-job resumes the job from its ledger; every node ends with the same finalised
checkpoints, and each node's directory audits clean."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import pytest

from tests.helpers import EventTap, run_cli, small_network_job
from trustgen.consensus.audit import audit_paths
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import parse_entry
from trustgen.node import cluster
from trustgen.node.training_client import TrainingClientError, job_status, submit_job
from trustgen.training.audit_training import add_training_violations

NET = "trustgen-local"
pytestmark = pytest.mark.slow


def wait_for(pred, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


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
    t0 = time.monotonic()
    ready = cluster.up(root, workers=0, verifiers=3, trainers=3)
    print(f"cluster up {time.monotonic() - t0:.1f}s")
    gw = ready["gateway"]["address"]
    tap = EventTap(ready["trainer-3"]["events_port"])
    try:
        spec = small_network_job(rounds=4, inner_steps=6)
        st = asyncio.run(submit_job(gw, spec, Identity.generate(), True, trainers=3, verifiers=3))
        job = bytes.fromhex(st["job_id"])
        # Round 1: trainer-3 is killed while it computes its update.
        tap.wait("training_work", job=st["job_id"], round=1, state="started")
        kill(ready["trainer-3"]["pid"], root, "trainer-3")
        print(f"killed trainer-3 {time.monotonic() - t0:.1f}s")
        st = wait_for(lambda: (s := status(gw, job)) and len(s["rounds_done"]) >= 2 and s, what="round 1")
        print(f"round 1 {time.monotonic() - t0:.1f}s", [r["wall_s"] for r in st["rounds_done"]])
        r1 = st["rounds_done"][1]
        victim = ready["trainer-3"]["node_id"]
        assert victim not in r1["delivered"] and len(r1["accepted"]) == 2 and victim not in st["excluded"]
        # It comes back; a verifier dies; round 2 finalises on the two verifiers left.
        cluster.wait_ready(root / "trainer-3", cluster.start(root / "trainer-3"))
        kill(ready["verifier-1"]["pid"], root, "verifier-1")
        st = wait_for(lambda: (s := status(gw, job)) and len(s["rounds_done"]) >= 3 and s, what="round 2")
        print(f"round 2 {time.monotonic() - t0:.1f}s")
        cluster.wait_ready(root / "verifier-1", cluster.start(root / "verifier-1"))
        print(f"verifier back {time.monotonic() - t0:.1f}s")
        # The gateway dies between rounds (or inside round 3) and resumes the job from its ledger.
        kill(ready["gateway"]["pid"], root, "gateway")
        cluster.wait_ready(root / "gateway", cluster.start(root / "gateway"))
        st = wait_for(lambda: (s := status(gw, job)) and s["state"] != "running" and s, timeout=240, what="the job")
        print(f"final {time.monotonic() - t0:.1f}s", [r["wall_s"] for r in st["rounds_done"]])
        assert st["state"] == "final", st
        last = st["rounds_done"][-1]
        assert last["round"] == 3 and victim in last["accepted"], last  # caught up from the checkpoint
        # Every node ends with the same finalised checkpoints; each directory audits clean.
        names = [d.name for d in cluster.node_dirs(root)]
        want = finalized(root / "gateway")
        assert sorted(want) == [0, 1, 2, 3]
        wait_for(lambda: all(finalized(root / n) == want for n in names), 60, "every node to hold the checkpoints")
        reports = audit_paths([root / n for n in names])
        add_training_violations(reports)
        for report in reports:
            assert report.ok and report.training_rounds == 4, (report.path, report.violations)
        # Replay from the gateway's directory alone recomputes every finalised checkpoint.
        r = run_cli("train", "replay", str(root / "gateway"), "--job", st["job_id"], "--json")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        tap.close()
        cluster.down(root)
