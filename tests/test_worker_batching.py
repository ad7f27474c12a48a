"""A worker with `worker_batch` > 1 runs tasks that arrive together as one engine batch; every
Result is the one it signs running the tasks one by one, and a bad task fails alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.test_node_adversary import NET, PARAMS, request
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.client import make_task
from trustgen.node.config import NodeConfig
from trustgen.node.engine_pool import Engines
from trustgen.node.verifier_role import VerifierRole
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


@pytest.mark.parametrize("field", ["worker_batch", "verifier_batch"])
@pytest.mark.parametrize("value", [0, 65, 2.0, True])
def test_batch_settings_are_bounded(tmp_path, field, value):
    with pytest.raises(UsageError, match=field):
        NodeConfig(
            name="n", data_dir=tmp_path, roles=["worker"], gateway="127.0.0.1:1", insecure=True, **{field: value}
        )


def test_a_task_arriving_mid_run_joins_it_and_results_return_as_each_finishes(engines, tmp_path):
    """Continuous batching across requests: a task sent while others decode joins the running
    batch (one run, not a second one after it), and a short task's Result comes back before a long
    task sent with it finishes."""
    me, gateway, client = Identity.generate(), Identity.generate(), Identity.generate()
    worker = WorkerRole(me, NET, engines, BlobStore(tmp_path / "w"), batch=8)
    long_task = make_task(client, NET, "text", "tiny-text", {"prompt": "Long", "max_new_tokens": 200}, 1)
    short_task = make_task(client, NET, "text", "tiny-text", {"prompt": "Short", "max_new_tokens": 2}, 1)
    late_task = make_task(client, NET, "text", "tiny-text", {"prompt": "Late", "max_new_tokens": 3}, 1)
    finished: list[str] = []

    async def run(name: str, task) -> tuple[bytes, bytes]:
        out = await worker.execute(request(gateway, "Worker", "Execute", {"task": task.wire()}))
        finished.append(name)
        return out

    async def go() -> list:
        first = [asyncio.create_task(run("long", long_task)), asyncio.create_task(run("short", short_task))]
        await first[1]  # the short one is back while the long one still decodes
        late = await run("late", late_task)  # sent now: it joins the running batch
        return [await first[0], first[1].result(), late]

    got = asyncio.run(go())
    assert finished == ["short", "late", "long"]
    assert worker.batcher is not None and worker.batcher.batches == [2]  # one run, at most 2 at once
    alone = WorkerRole(me, NET, engines, BlobStore(tmp_path / "a"))
    for task, (wire, _) in zip([long_task, short_task, late_task], got):
        want, _ = asyncio.run(alone.execute(request(gateway, "Worker", "Execute", {"task": task.wire()})))
        assert open_wire(wire, "Result", NET).body == open_wire(want, "Result", NET).body


def test_verifier_checks_arriving_together_share_a_pass_and_votes_do_not_change(engines, tmp_path):
    """Concurrent checks (honest results, altered ones, one for another task) are batched; every
    signed vote is the one the verifier gives checking them one at a time."""
    gateway, client = Identity.generate(), Identity.generate()
    honest = WorkerRole(Identity.generate(), NET, engines, BlobStore(tmp_path / "h"))
    cheat = WorkerRole(Identity.generate(), NET, engines, BlobStore(tmp_path / "c"), "alter")
    tasks = [make_task(client, NET, "text", "tiny-text", p, 1) for p in TEXT]
    checks = []
    for i, t in enumerate(tasks):
        for w in (honest, cheat) if i % 2 == 0 else (honest,):
            wire, blob = asyncio.run(w.execute(request(gateway, "Worker", "Execute", {"task": t.wire()})))
            checks.append({"task": t.wire(), "result": wire, "output": blob, "beacon": bytes(32), "beacon_size": 0})
    checks.append({**checks[0], "task": tasks[1].wire()})  # a result for another task
    key = Identity.generate()

    def votes(batch: int) -> tuple[list, VerifierRole]:
        verifier = VerifierRole(key, NET, engines, batch=batch)

        async def go() -> list:
            calls = [verifier.check(request(gateway, "Verifier", "Check", c)) for c in checks]
            return await asyncio.gather(*calls, return_exceptions=True)

        return asyncio.run(go()), verifier

    together, batched = votes(8)
    alone, _ = votes(1)
    assert max(batched._checks.batches) > 1
    for g, w in zip(together, alone):
        if isinstance(w, RpcError):
            assert isinstance(g, RpcError) and g.code == w.code
        else:
            assert open_wire(g, "Vote", NET).body == open_wire(w, "Vote", NET).body
    accepts = [open_wire(v, "Vote", NET).body["accept"] for v in together if not isinstance(v, RpcError)]
    assert True in accepts and False in accepts and isinstance(together[-1], RpcError)


def test_text_and_image_tasks_on_one_batched_worker_all_complete_in_turn(engines, tmp_path):
    """Text tasks share the batcher's run; an image task takes its turn on the same engine thread
    (as an image batch of its own, its trajectory recorded); every one completes with the Result it
    gets alone (no kind waits on another forever, and a batching worker's image still commits its
    trajectory)."""
    me, gateway, client = Identity.generate(), Identity.generate(), Identity.generate()
    worker = WorkerRole(me, NET, engines, BlobStore(tmp_path / "w"), batch=4)
    tasks = [
        make_task(client, NET, "text", "tiny-text", TEXT[0], 1),
        make_task(client, NET, "image", "tiny-image", PARAMS["image"], 1),
        make_task(client, NET, "text", "tiny-text", TEXT[1], 1),
    ]

    async def go() -> list:
        calls = [worker.execute(request(gateway, "Worker", "Execute", {"task": t.wire()})) for t in tasks]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=120)

    got = asyncio.run(go())
    alone = WorkerRole(me, NET, engines, BlobStore(tmp_path / "a"))
    for task, (wire, blob) in zip(tasks, got):
        want, want_blob = asyncio.run(alone.execute(request(gateway, "Worker", "Execute", {"task": task.wire()})))
        assert open_wire(wire, "Result", NET).body == open_wire(want, "Result", NET).body and blob == want_blob


def test_a_beam_result_is_checked_by_regeneration(engines, tmp_path):
    """Beam outputs are checked by re-generation (verifier/policy.py): the prefill rank test is only
    a necessary condition, and an honest beam output whose last token is swapped for the runner-up
    passes it, but not a node's check."""
    import torch

    from trustgen.engines.outputs import text_digest
    from trustgen.engines.params import TextParams
    from trustgen.node.kinds import TASK_KINDS, _claimed, check_result, check_results
    from trustgen.verifier.verify import verify_text

    gateway, client = Identity.generate(), Identity.generate()
    worker = WorkerRole(Identity.generate(), NET, engines, BlobStore(tmp_path / "w"))
    task = make_task(client, NET, "text", "tiny-text", TEXT[2], 1)
    wire, _ = asyncio.run(worker.execute(request(gateway, "Worker", "Execute", {"task": task.wire()})))
    honest = open_wire(wire, "Result", NET).body
    engine = engines.engines["text"]
    vote, _ = check_result(engine, task.body, honest, b"")
    assert vote.accept and vote.method == "regenerate"
    tokens = honest["output"]["token_ids"]
    ids = engine.task_prompt(TextParams(**TEXT[2])) + tokens[:-1]
    with torch.no_grad():
        top = torch.topk(engine.model(torch.tensor([ids])).logits[0, -1], 2).indices.tolist()
    swapped = tokens[:-1] + [next(t for t in top if t != tokens[-1])]
    fake = {**honest, "output": {**honest["output"], "token_ids": swapped}, "output_digest": text_digest(swapped)}
    claim = {**_claimed(TASK_KINDS["text"], task.body, fake), "token_ids": swapped}
    assert verify_text(claim, "prefill", engine=engine).accept  # the hole re-generation closes
    vote, _ = check_result(engine, task.body, fake, b"")
    assert not vote.accept and vote.method == "regenerate"
    # In a shared batch with prefill-checked claims, the beam one is still re-generated.
    greedy = make_task(client, NET, "text", "tiny-text", TEXT[0], 1)
    gwire, _ = asyncio.run(worker.execute(request(gateway, "Worker", "Execute", {"task": greedy.wire()})))
    got = check_results(engine, [(greedy.body, open_wire(gwire, "Result", NET).body, b""), (task.body, fake, b"")])
    assert [(v.accept, v.method) for v, _ in got] == [(True, "prefill"), (False, "regenerate")]
