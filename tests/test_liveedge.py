"""Liveness at the edge: the cost model and what a worker offers (its signed Serves entry, hostile
bodies refused), budgets, cancellation (in an engine, and in a real worker process whose caller
gives up on a long image task), per-peer rate-limited log lines and log files that rotate at a cap."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import signal
import subprocess
import sys
import threading

import grpc
import pytest

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.engines.cancel import AllOf, Cancelled, cancellable
from trustgen.engines.kinds import ENGINE_KINDS
from trustgen.engines.params import ImageParams, TextParams
from trustgen.errors import UsageError
from trustgen.logs import PeerLog
from trustgen.net.auth import RpcError
from trustgen.node.client import make_task
from trustgen.node.config import NodeConfig
from trustgen.node.offers import Offer, check_offered, offer_body, parse_offer

NET = "trustgen-local"


def test_cost_model_counts_tokens_beams_and_pixel_steps():
    text, image = ENGINE_KINDS["text"], ENGINE_KINDS["image"]
    assert text.cost(TextParams(prompt="héllo", max_new_tokens=10, decoding="greedy")) == 6 + 10
    assert text.cost(TextParams(prompt="hello", max_new_tokens=10, decoding="beam", num_beams=4)) == 4 * 15
    assert image.cost(ImageParams(prompt="x", height=64, width=32, steps=5)) == 64 * 32 * 5
    assert "max_new_tokens" in text.cost_terms and "steps" in image.cost_terms


def test_offers_are_bounded_and_checked_against_tasks():
    me = Identity.generate()
    body = offer_body({"text": ("sha256:aa", "tiny-text")}, {"text": 100, "image": 0})
    offer = parse_offer(body)
    assert offer.serves("text", "sha256:aa") and not offer.serves("image", "sha256:aa")
    hostile = [
        None,
        {"models": []},
        {"models": "x", "limits": {}},
        {"models": [["text", "d"]], "limits": {}},
        {"models": [["video", "d", "n"]], "limits": {}},
        {"models": [["text", "d" * 300, "n"]], "limits": {}},
        {"models": [["text", "d", "n"]] * 17, "limits": {}},
        {"models": [], "limits": {"text": 1.5}},
        {"models": [], "limits": {"text": True}},
        {"models": [], "limits": {"text": -1}},
        {"models": [], "limits": {"text": 2**63}},
    ]
    for bad in hostile:
        with pytest.raises(UsageError):
            parse_offer(bad)

    def task(params: dict, model: str = "sha256:aa"):
        return make_task(me, NET, "text", model, params, 1)

    check_offered(task({"prompt": "hi", "max_new_tokens": 8}), [offer])
    with pytest.raises(RpcError) as e:
        check_offered(task({"prompt": "hi"}, model="sha256:bb"), [offer])
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "sha256:bb" in str(e.value)
    with pytest.raises(RpcError) as e:
        check_offered(task({"prompt": "hi", "max_new_tokens": 99}), [offer])
    assert "max_new_tokens" in str(e.value) and "101" in str(e.value)
    bigger = Offer({("text", "sha256:aa"): "t"}, {"text": 1000})
    check_offered(task({"prompt": "hi", "max_new_tokens": 99}), [offer, bigger])  # one worker can take it


def test_gateway_reloads_worker_offers_from_its_ledger(tmp_path):
    """After a restart the gateway knows what each worker serves from the signed entries alone; a
    malformed Serves body (it could come by gossip) counts as serving nothing."""
    from trustgen.gossip.blobs import BlobStore
    from trustgen.net.peers import Peers
    from trustgen.node.gateway import GatewayRole

    gw, good, bad = Identity.generate(), Identity.generate(), Identity.generate()
    led = Ledger(tmp_path / "gw.db", NET, gw)
    for who, body in (
        (good, offer_body({"text": ("sha256:aa", "t")}, {"text": 50})),
        (bad, {"models": [["video"]], "limits": {}}),
    ):
        own = Ledger(tmp_path / f"{who.node_id[:8]}.db", NET, who)
        for kind, b in (("Serves", body), ("NodeJoined", {"address": "127.0.0.1:9", "roles": ["worker"]})):
            e = own.append(kind, b)
            assert led.ingest(e.payload, e.sig) == "stored"
        own.close()
    role = GatewayRole(gw, NET, led, Peers(gw, NET, insecure=True), BlobStore(tmp_path / "blobs"))
    role._load_members()
    assert role.members[good.public_key]["offer"].takes("text", 50)
    assert role.members[bad.public_key]["offer"] is None
    led.close()


@pytest.mark.slow  # loads an engine
def test_a_cancelled_generation_stops_at_its_next_step():
    from trustgen.engines.generate import load_engine

    engine = load_engine("tiny-text", "text", threads=1)
    params = TextParams(prompt="Once upon a time", max_new_tokens=16)
    flag = threading.Event()
    flag.set()
    with cancellable(flag), pytest.raises(Cancelled):
        engine.generate(params)
    with cancellable(AllOf([flag, threading.Event()])):  # a batch runs while any task still waits
        assert engine.generate(params).output_digest == engine.generate(params).output_digest


def test_peer_log_writes_one_line_per_peer_per_interval(caplog):
    caplog.set_level(logging.WARNING, logger="test.peerlog")
    plog = PeerLog(logging.getLogger("test.peerlog"), every_s=3600)
    for i in range(1000):
        plog.warning("peer-a", "bad thing %d", i)
        plog.warning("peer-b", "bad thing %d", i)
    assert len(caplog.records) == 2
    plog.every_s = 0
    plog.warning("peer-a", "again")
    assert "999 more from this peer" in caplog.records[-1].getMessage()


def test_log_file_rotates_at_its_cap(tmp_path):
    code = (
        "import logging, pathlib, sys\n"
        "from trustgen.logs import setup\n"
        "setup('INFO', pathlib.Path(sys.argv[1]), 4096, 2)\n"
        "for i in range(2000): logging.getLogger('trustgen.node').warning('line %d of a flood', i)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "node.log")], check=True, timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["node.log", "node.log.1", "node.log.2"]
    assert all((tmp_path / f).stat().st_size <= 4096 for f in files)
    assert "line 1999 of a flood" in (tmp_path / "node.log").read_text()


def test_config_refuses_bad_budgets_and_log_caps(tmp_path):
    base = dict(name="w", data_dir=tmp_path, roles=["worker"], gateway="127.0.0.1:1", insecure=True)
    for bad in ({"max_text_cost": 8.0}, {"max_image_cost": -1}, {"log_max_bytes": 10}, {"log_backups": 0}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            NodeConfig(**base, **bad)
    cfg = NodeConfig(**base, log_file="node.log", max_image_cost=7)
    assert cfg.log_path == tmp_path / "node.log" and cfg.budgets == {"text": 32_768, "image": 7}


@pytest.mark.slow
def test_cancelled_image_task_frees_a_worker_process_for_the_next_text_task(tmp_path):
    """A real worker process: a long image task (minutes) whose caller gives up after 3 s is
    cancelled; meanwhile the worker answers health and info, and the next 8-token text task
    finishes well inside a deadline the image task would have blown."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from trustgen.net.peers import Peers
    from trustgen.node.cluster import start, wait_ready, write_node

    d = write_node(tmp_path, "worker", ["worker"], gateway="127.0.0.1:9", max_image_cost=10**9)
    proc = start(d)
    try:
        info = wait_ready(d, proc, joined=False)

        async def main() -> None:
            me = Identity.generate()
            peers = Peers(me, NET, insecure=True)
            try:
                long = make_task(me, NET, "image", "tiny-image", {"prompt": "a long one", "height": 128, "width": 128, "steps": 200}, 1)  # fmt: skip
                call = asyncio.ensure_future(
                    peers.call(info["address"], "Worker", "Execute", {"task": long.wire()}, timeout=3)
                )
                async with grpc.aio.insecure_channel(info["address"]) as ch:
                    h = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert h.status == health_pb2.HealthCheckResponse.SERVING
                assert (await peers.info(info["address"], timeout=5)).roles == ["worker"]
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                short = make_task(me, NET, "text", "tiny-text", {"prompt": "Next", "max_new_tokens": 8}, 1)
                reply = await peers.call(info["address"], "Worker", "Execute", {"task": short.wire()}, timeout=60)
                assert reply.result
                # Over this worker's text budget: refused before it runs, naming the cost's terms.
                huge = make_task(me, NET, "text", "tiny-text", {"prompt": "x" * 4000, "max_new_tokens": 1024, "decoding": "beam", "num_beams": 16}, 1)  # fmt: skip
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await peers.call(info["address"], "Worker", "Execute", {"task": huge.wire()}, timeout=30)
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "max_new_tokens" in (e.value.details() or "")
            finally:
                await peers.close()

        asyncio.run(main())
        assert proc.poll() is None
        log = pathlib.Path(d / "node.log").read_text()
        assert "cancelled by its caller" in log and "Traceback" not in log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
