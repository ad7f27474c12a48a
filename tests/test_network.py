"""The network as users run it: every node a separate process on loopback, real sockets, real
faults (kill -9, restarts), real misbehaving workers and a lying verifier."""

import asyncio
import json
import os
import signal
import sqlite3
import urllib.request

import grpc
import pytest

from tests.helpers import run_cli, wait_for
from trustgen.consensus.audit import audit_path
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import open_wire
from trustgen.net.auth import make_request
from trustgen.node import cluster
from trustgen.node.client import make_task, submit
from trustgen.node.daemon import ready_info
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

NET = "trustgen-local"
pytestmark = pytest.mark.slow


def gateway_entries(root, entry_type=None):
    db = sqlite3.connect(f"file:{root / 'gateway' / 'ledger.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT payload, sig FROM entries ORDER BY log_index").fetchall()
    db.close()
    es = [parse_entry(p, s, NET) for p, s in rows]
    return [e for e in es if entry_type is None or e.type == entry_type]


def certificates(root, task_id: bytes):
    certs = [open_wire(e.body["certificate"], "Certificate", NET) for e in gateway_entries(root, "TaskFinalized")]
    return [c for c in certs if c.body["task_id"] == task_id]


def run_task(gw, kind, params, verifiers=3, wait=True, timeout=120):
    me = Identity.generate()
    task = make_task(me, NET, kind, f"tiny-{kind}", params, verifiers)
    return task, asyncio.run(submit(gw, task, me, NET, insecure=True, wait=wait, timeout_s=timeout))


def submit_nowait(gw, prompt, max_new_tokens=16, verifiers=3):
    """Submit a text task and return it once the gateway has accepted (persisted) it."""
    me = Identity.generate()
    task = make_task(me, NET, "text", "tiny-text", {"prompt": prompt, "max_new_tokens": max_new_tokens}, verifiers)
    asyncio.run(submit(gw, task, me, NET, insecure=True, wait=False))
    return task


def status(gw, task_id):
    me = Identity.generate()
    with grpc.insecure_channel(gw) as ch:
        return rpc.GatewayStub(ch).Status(
            make_request(me, NET, "/trustgen.v1.Gateway/Status", {"task_id": task_id}), timeout=5
        )


def assert_audits_clean(path) -> list:
    reports = audit_path(path)
    for r in reports:
        assert r.ok, (str(path), r.violations)
    return reports


def node_key(root, name):
    return bytes.fromhex(ready_info(root / name)["node_id"])


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """Gateway, two honest workers (worker-1 batching up to 4 tasks), three verifiers of which
    verifier-3 lies."""
    root = tmp_path_factory.mktemp("cluster")
    settings = {"verifier-3": {"adversary": "lie"}, "worker-1": {"worker_batch": 4}}
    ready = cluster.up(root, workers=2, verifiers=3, node_settings=settings)
    yield root, ready
    cluster.down(root)


def test_honest_text_and_image_paths_with_a_lying_verifier(net, tmp_path):
    root, ready = net
    gw = ready["gateway"]["address"]
    res = run_cli(
        "submit",
        "text",
        "Byzantine-robust",
        "--gateway",
        gw,
        "--insecure",
        "--wait",
        "--json",
        "--decoding",
        "sample",
        "--seed",
        "3",
        "--max-new-tokens",
        "32",
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["decision"] == "accept" and out["attempts"] == 1 and out["result"]["output"]["text"]
    liar = ready["verifier-3"]["node_id"]
    votes = {v["verifier"]: v["accept"] for v in out["votes"]}
    # Outvoted: the two honest votes decide; the liar's is counted if it came in first, else late.
    assert sum(votes.values()) == 2 and votes.get(liar, False) is False
    img = run_cli(
        "submit",
        "image",
        "a small green square on a black background",
        "--gateway",
        gw,
        "--insecure",
        "--wait",
        "--json",
        "--seed",
        "5",
        "-o",
        str(tmp_path / "sq.png"),
        timeout=180,
    )
    assert img.returncode == 0, img.stdout + img.stderr
    io = json.loads(img.stdout)
    assert io["decision"] == "accept" and (tmp_path / "sq.png").read_bytes()[:4] == b"\x89PNG"

    # The liar's minority votes are evidence in the gateway's ledger, and its reputation drops.
    def accused() -> set[str]:
        return {e.body["subject"].hex() for e in gateway_entries(root, "Evidence") if e.body["kind"] == "minority_vote"}

    assert wait_for(lambda: accused() == {liar}, what="the liar's (maybe late) vote to be evidence")
    from trustgen.consensus.reputation import reputation

    rep = reputation(gateway_entries(root), NET)
    assert rep[bytes.fromhex(liar)] < 0.5 < rep[bytes.fromhex(ready["verifier-1"]["node_id"])]
    assert_audits_clean(root / "gateway")


def test_events_metrics_and_bad_requests_keep_nodes_serving(net):
    root, ready = net
    gw = ready["gateway"]["address"]
    import queue
    import subprocess
    import sys
    import threading

    ev = subprocess.Popen(
        [sys.executable, "-m", "trustgen.cli", "events", "--node", gw, "--insecure", "--timeout", "300"],
        stdout=subprocess.PIPE,
        text=True,
    )
    received: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [received.put(json.loads(ln)) for ln in ev.stdout], daemon=True).start()
    seen: list[dict] = []

    def drain(pred) -> bool:
        while not received.empty():
            seen.append(received.get())
        return any(pred(e) for e in seen)

    try:
        # PUB/SUB drops what is sent before a subscription is in place: the subscriber is ready
        # once it prints an event, so keep the gateway publishing (small tasks) until it does.
        for _ in range(40):
            submit_nowait(gw, "Warm-up", 2)
            try:
                wait_for(lambda: drain(lambda e: True), timeout=3, what="the subscriber's first event")
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("the events subscriber never printed an event")
        task, out = run_task(gw, "text", {"prompt": "Gossip", "max_new_tokens": 8})
        assert out["decision"] == "accept"
        wait_for(lambda: drain(lambda e: e.get("task") == task.id.hex() and e.get("state") == "final"), 30)
        mine = [e for e in seen if e.get("task") == task.id.hex()]
        assert [e["state"] for e in mine if e["topic"] == "task"] == ["accepted", "running", "final"]
        assert [e["decision"] for e in mine if e["topic"] == "decision"] == ["accept"]
    finally:
        ev.terminate()
        ev.wait(10)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{ready['gateway']['metrics_port']}/metrics", timeout=5).read()
    assert b'trustgen_tasks_total{state="final"}' in metrics
    # A worker refuses work from anyone but its gateway, and garbage from anyone.
    worker = ready["worker-1"]["address"]
    with grpc.insecure_channel(worker) as ch:
        stub = rpc.WorkerStub(ch)
        stranger = Identity.generate()
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(make_request(stranger, NET, "/trustgen.v1.Worker/Execute", {"task": task.wire()}), timeout=10)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(pb.SignedRequest(payload=os.urandom(100), signature=os.urandom(64)), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(pb.SignedRequest(payload=b"\x00" * (9 << 20)), timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(ready["verifier-1"]["address"]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            rpc.VerifierStub(ch).Check(pb.SignedRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Everyone still serves.
    assert all(s["running"] for s in cluster.status(root))
    assert run_task(gw, "text", {"prompt": "Still", "max_new_tokens": 4})[1]["decision"] == "accept"


def test_cheating_workers_are_rejected_and_task_completes_through_honest_worker(tmp_path):
    """Workers join one at a time, cheaters first, so each cheater really gets the task."""
    root = tmp_path
    ready = cluster.up(root, workers=0, verifiers=3, node_settings={"gateway": {"max_attempts": 5}})
    gw = ready["gateway"]["address"]
    try:

        def add_worker(name, adversary=""):
            d = cluster.write_node(
                root, name, ["worker"], gateway=gw, **({"adversary": adversary} if adversary else {})
            )
            cluster.wait_ready(d, cluster.start(d))

        add_worker("worker-replay", "replay")
        t1, first = run_task(gw, "text", {"prompt": "Decentralized", "max_new_tokens": 24})
        assert first["decision"] == "accept"  # nothing to replay yet: its first output is honest
        t2 = submit_nowait(gw, "Verifiable", 24)
        wait_for(lambda: status(gw, t2.id).state == "waiting", what="the replayed result to be rejected")
        for name, mode in (("worker-alter", "alter"), ("worker-othermodel", "other-model")):
            n = len(certificates(root, t2.id))  # before the worker joins: it may be rejected at once
            add_worker(name, mode)
            wait_for(
                lambda: len(certificates(root, t2.id)) > n and status(gw, t2.id).state == "waiting",
                what=f"{mode} to be rejected",
            )
        add_worker("worker-honest")
        final = wait_for(lambda: (s := status(gw, t2.id)).state == "final" and s, what="completion")
        certs = certificates(root, t2.id)
        assert [c.body["decision"] for c in certs] == ["reject", "reject", "reject", "accept"]
        cheaters = [node_key(root, n) for n in ("worker-replay", "worker-alter", "worker-othermodel")]
        assert [c.body["worker"] for c in certs] == cheaters + [node_key(root, "worker-honest")]
        evidence = [e.body["subject"] for e in gateway_entries(root, "Evidence") if e.body["kind"] == "rejected_result"]
        assert evidence == cheaters
        assert final.decision == "accept"
        assert_audits_clean(root / "gateway")
    finally:
        cluster.down(root)


def test_worker_killed_mid_task_and_gateway_restart(tmp_path):
    root = tmp_path
    slow = {"delay_s": 2.0}
    ready = cluster.up(root, workers=2, verifiers=1, node_settings={"worker-1": slow, "worker-2": slow})
    gw = ready["gateway"]["address"]
    try:
        task = submit_nowait(gw, "Consensus", 16, verifiers=1)
        st = wait_for(lambda: (s := status(gw, task.id)).state == "running" and s, what="a worker to start")
        victim = next(n for n in ("worker-1", "worker-2") if ready[n]["node_id"][:12] in st.detail)
        os.kill(ready[victim]["pid"], signal.SIGKILL)
        final = wait_for(lambda: (s := status(gw, task.id)).state == "final" and s, timeout=90, what="reassignment")
        cert = open_wire(final.certificate, "Certificate", NET)
        survivor = "worker-2" if victim == "worker-1" else "worker-1"
        assert cert.body["worker"].hex() == ready[survivor]["node_id"] and final.decision == "accept"

        # Gateway: accept two tasks, kill -9 it while they run, restart it, and both complete.
        tasks = [submit_nowait(gw, p, 12, verifiers=1) for p in ("Gossip", "Ledger")]
        os.kill(ready["gateway"]["pid"], signal.SIGKILL)
        pid = ready["gateway"]["pid"]
        wait_for(
            lambda: any(n["name"] == "gateway" and n["pid"] == pid and not n["running"] for n in cluster.status(root)),
            what="the gateway to die",
        )
        cluster.wait_ready(root / "gateway", cluster.start(root / "gateway"))
        for t in tasks:
            s = wait_for(lambda: (x := status(gw, t.id)).state == "final" and x, timeout=90, what="resumed task")
            assert s.decision == "accept"
        assert_audits_clean(root / "gateway")
        # The worker killed at the start missed all of that; restarted, it catches up by gossip.
        behind = cluster.ledger_heads(root / victim)
        assert behind != cluster.ledger_heads(root / "gateway")
        cluster.wait_ready(root / victim, cluster.start(root / victim))
        names = [d.name for d in cluster.node_dirs(root)]
        wait_for(
            lambda: all(cluster.ledger_heads(root / n) == cluster.ledger_heads(root / "gateway") for n in names),
            timeout=60,
            what="the restarted worker to catch up",
        )
        assert_audits_clean(root / victim)
    finally:
        cluster.down(root)


def test_workers_announce_their_batch_in_info(net):
    """What the gateway reads when a worker joins, over a real channel: its worker_batch (0 from a
    node that is not a worker)."""
    _, ready = net

    async def batch(name: str) -> int:
        async with grpc.aio.insecure_channel(ready[name]["address"]) as ch:
            return (await rpc.NodeStub(ch).Info(pb.InfoRequest(), timeout=5)).worker_batch

    assert [asyncio.run(batch(n)) for n in ("worker-1", "worker-2", "verifier-1", "gateway")] == [4, 1, 0, 0]


def test_every_node_converges_to_the_same_ledger(net):
    """Gossip runs in every node process: all ledgers end up with the same feed heads, and each
    replica audits clean on its own."""
    root, ready = net
    run_task(ready["gateway"]["address"], "text", {"prompt": "Replicated", "max_new_tokens": 8})

    def heads(name):
        return cluster.ledger_heads(root / name)

    names = list(ready)
    wait_for(lambda: all(heads(n) == heads("gateway") for n in names), timeout=60, what="ledger convergence")
    assert len(heads("verifier-2")) == len(names)  # every node's feed, everywhere
    for n in names:
        for r in assert_audits_clean(root / n):
            if n != "gateway":
                assert r.tasks_checked >= 1  # certificates re-checked on a replica


def test_verifier_rebuilds_its_history_from_the_replicated_ledger(net, tmp_path):
    """A verifier's replay index is derived state: rebuilt from the certificates that gossip
    brought into its ledger, it holds the accepted text outputs."""
    import shutil

    from trustgen.consensus.ledger import Ledger
    from trustgen.gossip.blobs import BlobStore
    from trustgen.node.verifier_role import VerifierRole

    root, ready = net
    task, out = run_task(ready["gateway"]["address"], "text", {"prompt": "History", "max_new_tokens": 8})
    replica = root / "verifier-1" / "ledger.db"

    def has_certificate() -> bool:
        db = sqlite3.connect(f"file:{replica}?mode=ro", uri=True)
        try:
            es = [
                parse_entry(p, s, NET)
                for p, s in db.execute("SELECT payload, sig FROM entries WHERE type='TaskFinalized'")
            ]
        finally:
            db.close()
        return any(open_wire(e.body["certificate"], "Certificate", NET).body["task_id"] == task.id for e in es)

    wait_for(has_certificate, what="the certificate to reach verifier-1 by gossip")
    for suffix in ("", "-wal", "-shm"):  # a consistent copy: the node keeps writing its own
        src = root / "verifier-1" / f"ledger.db{suffix}"
        if src.exists():
            shutil.copy(src, tmp_path / f"ledger.db{suffix}")
    role = VerifierRole(Identity.generate(), NET, engines=None)
    n = role.rebuild_history(Ledger(tmp_path / "ledger.db", NET), BlobStore(root / "verifier-1" / "blobs"))
    fp = role.history.text_fingerprint(task.id.hex())
    assert n >= 1 and fp is not None
    replay = role.history.find_replay("another-task", fp)
    assert replay is not None and replay.earlier_task == task.id.hex()


def test_verifiers_fetch_accepted_images_they_did_not_check(net, tmp_path):
    """An image checked by one verifier: the others learn its certificate by gossip, fetch the
    PNG by digest from a node that has it (every chunk checked), and index it for replay
    detection. A user fetches the same blob by digest with `trustgen blob get`."""
    from trustgen.consensus.assignment import rank
    from trustgen.gossip.blobs import BlobStore

    root, ready = net
    gw = ready["gateway"]["address"]
    liar = bytes.fromhex(ready["verifier-3"]["node_id"])
    for seed in range(9, 30):
        # The one verifier is drawn from the gateway's beacon; a task that draws the liar is
        # rejected whatever the worker does, so draw until an honest verifier has it.
        me = Identity.generate()
        task = make_task(
            me, NET, "image", "tiny-image", {"prompt": "a red circle on a white background", "seed": seed}, 1
        )
        asyncio.run(submit(gw, task, me, NET, insecure=True, wait=False))
        accepted = next(
            e for e in gateway_entries(root, "TaskAccepted") if open_wire(e.body["task"], "Task", NET).id == task.id
        )
        if rank(accepted.body["beacon"], task.id, list(accepted.body["candidates"]))[0] != liar:
            break
    out = asyncio.run(submit(gw, task, me, NET, insecure=True, wait=True, timeout_s=120))
    assert out["decision"] == "accept"
    digest = out["result"]["output"]["png_digest"]
    checked = {v["verifier"] for v in out["votes"]}
    others = [n for n in ("verifier-1", "verifier-2", "verifier-3") if ready[n]["node_id"] not in checked]
    assert len(others) == 2

    def fetched(name: str) -> float:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ready[name]['metrics_port']}/metrics", timeout=5)
        line = [ln for ln in metrics.read().decode().splitlines() if ln.startswith("trustgen_blobs_fetched_total ")]
        return float(line[0].split()[1])

    for name in others:
        # The counter moves once the image is stored and indexed (the file appears a moment before).
        wait_for(lambda: fetched(name) >= 1, what=f"{name} to fetch and index the accepted image")
        assert BlobStore(root / name / "blobs").get(digest) is not None
    png = BlobStore(root / "gateway" / "blobs").get(digest)
    res = run_cli(
        "blob",
        "get",
        digest,
        "--peer",
        ready[others[0]]["address"],
        "--insecure",
        "--json",
        "-o",
        str(tmp_path / "got.png"),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "got.png").read_bytes() == png and json.loads(res.stdout)["bad_peers"] == []
    res = run_cli("blob", "get", "ab" * 32, "--peer", gw, "--insecure", "-o", str(tmp_path / "none"))
    assert res.returncode == 2 and "no peer has" in res.stderr and not (tmp_path / "none").exists()


def test_demo_is_the_main_job(tmp_path):
    res = run_cli("demo", "--fast", "--json", "--dir", str(tmp_path / "demo"), timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["ok"] and report["replicated_s"] is not None
    assert [t["decision"] for t in report["tasks"]] == ["accept", "accept"]
    assert len(report["audit"]) == 9 and all(a["ok"] for a in report["audit"])  # 7 nodes and 2 trainers
    assert len({a["entries"] for a in report["audit"]}) == 1  # every replica holds the same ledger
    training = report["training"]  # a short job trained on the network, every round finalised
    assert training["state"] == "final" and len(training["rounds_done"]) == 3
    assert all(a["training_rounds"] == 3 for a in report["audit"])
    assert not any(s["running"] for s in cluster.status(tmp_path / "demo"))  # and it cleaned up
