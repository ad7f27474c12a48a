"""A worker with `worker_batch` > 1 runs tasks that arrive together as one engine batch; every
Result is the one it signs running the tasks one by one, and a bad task fails alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.test_node_adversary import NET, request
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.client import make_task
from trustgen.node.config import NodeConfig
from trustgen.node.engine_pool import Engines
from trustgen.node.worker import WorkerRole

TEXT = [
    {"prompt": "Verifiable generation", "max_new_tokens": 12},
    {"prompt": "We propose a gossip protocol", "max_new_tokens": 5, "decoding": "sample", "seed": 4},
    {"prompt": "Byzantine", "max_new_tokens": 9, "decoding": "beam", "num_beams": 3},
    {"prompt": "Consensus", "max_new_tokens": 7, "decoding": "sample", "seed": 9, "top_p": 0.9},
    {"prompt": "The ledger", "max_new_tokens": 3},
]
TOO_LONG = {"prompt": "Verifiable generation", "max_new_tokens": 600}  # past tiny-text's 512 context


@pytest.fixture(scope="module")
def engines():
    e = Engines({"text": "tiny-text", "image": "tiny-image"}, threads=1)
    yield e
    e.close()


def run_all(worker: WorkerRole, gateway: Identity, params: list[dict]) -> list:
    client = Identity.generate()
    tasks = [make_task(client, NET, "text", "tiny-text", p, 1) for p in params]

    async def go() -> list:
        calls = [worker.execute(request(gateway, "Worker", "Execute", {"task": t.wire()})) for t in tasks]
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(go())


def test_concurrent_tasks_share_a_batch_and_results_do_not_change(engines, tmp_path):
    me, gateway = Identity.generate(), Identity.generate()
    batched = WorkerRole(me, NET, engines, BlobStore(tmp_path / "b"), batch=4)
    single = WorkerRole(me, NET, engines, BlobStore(tmp_path / "s"))
    params = TEXT + [TOO_LONG] + TEXT[:2]
    got, want = run_all(batched, gateway, params), run_all(single, gateway, params)
    assert batched.batcher is not None and single.batcher is None
    assert max(batched.batcher.batches) > 1  # tasks really ran together
    for g, w in zip(got, want):
        if isinstance(w, RpcError):  # the bad task fails alone, with the same status
            assert isinstance(g, RpcError) and g.code == w.code == grpc.StatusCode.INVALID_ARGUMENT
            continue
        gb, wb = open_wire(g[0], "Result", NET).body, open_wire(w[0], "Result", NET).body
        assert (gb["output_digest"], gb["output"], gb["profile"]) == (wb["output_digest"], wb["output"], wb["profile"])
    assert sum(isinstance(g, RpcError) for g in got) == 1


def test_a_cheating_worker_is_never_batched(engines, tmp_path):
    worker = WorkerRole(Identity.generate(), NET, engines, BlobStore(tmp_path / "w"), "alter", batch=8)
    assert worker.batcher is None


@pytest.mark.parametrize("value", [0, 65, 2.0, True])
def test_worker_batch_setting_is_bounded(tmp_path, value):
    with pytest.raises(UsageError, match="worker_batch"):
        NodeConfig(
            name="n", data_dir=tmp_path, roles=["worker"], gateway="127.0.0.1:1", insecure=True, worker_batch=value
        )
