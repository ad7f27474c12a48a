"""Batched image generation: every task's pixels, fingerprint and trajectory bytes are the ones it
gets alone, whatever else shares its UNet calls; a batching worker commits the same Results."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import torch
from diffusers.models.attention_processor import Attention

from tests.test_node_adversary import NET, request
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire
from trustgen.engines.cancel import Cancelled, cancellable
from trustgen.engines.generate import load_engine
from trustgen.engines.image_groups import MODES, row_groups
from trustgen.engines.params import ImageParams
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.node.client import make_task
from trustgen.node.engine_pool import Engines
from trustgen.node.worker import WorkerRole
from trustgen.verifier.fingerprints import image_fingerprint

COLOURS = "red blue green yellow white black orange".split()
SHAPES = "circle square triangle cross".split()
SCHEDULERS = ["ddim", "euler", "euler_ancestral", "dpmsolver", "pndm", "ddpm"]


def mixed_tasks(n: int, seed: int) -> list[ImageParams]:
    """Mixed prompts, seeds, guidance (1.0: one UNet row per image; above: two), step counts,
    sizes and all six samplers (PNDM takes 4+ steps)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sched = SCHEDULERS[i % len(SCHEDULERS)]
        prompt = f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
        out.append(
            ImageParams(
                prompt=prompt + (f" on a {rng.choice(COLOURS)} background" if rng.random() < 0.5 else ""),
                seed=rng.randrange(2**31),
                steps=rng.randint(4, 5) if sched == "pndm" else rng.randint(1, 3),
                guidance=rng.choice([1.0, 2.0, 3.0, 7.5]),
                height=rng.choice([16, 16, 32]),
                width=16,
                scheduler=sched,
            )
        )
    return out


@pytest.fixture(scope="module")
def cuda_image():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return load_engine("tiny-image", "image", device="cuda")


def pick(which: str, request) -> object:
    return request.getfixturevalue({"cpu": "image_engine", "cuda": "cuda_image"}[which])


def same(a, b) -> bool:
    return (
        a.output_digest == b.output_digest
        and (a.pixels == b.pixels).all()
        and image_fingerprint(a.pixels) == image_fingerprint(b.pixels)
        and a.trajectory.to_bytes() == b.trajectory.to_bytes()
        and a.profile == b.profile
    )


@pytest.mark.parametrize("which", ["cpu", "cuda"])
def test_every_op_of_a_shared_unet_call_is_each_images_call_alone(which, request):
    """The rules' claim, op by op: inside a call shared by images of 1 and 2 rows at three sizes,
    every conv, linear, norm, activation and attention block gives each image's rows the bits that
    op gives them in a call of that image alone."""
    unet = pick(which, request).pipe.unet
    dev = unet.device
    mods = [m for m in unet.modules() if not list(m.children()) or isinstance(m, Attention)]
    for side, sizes in ((8, [2, 1, 2, 2, 1, 2, 2, 2]), (16, [1, 1, 2]), (32, [2, 2, 1])):
        rows, calls = sum(sizes), []
        hooks = [m.register_forward_hook(lambda m, a, k, o: calls.append((m, a, k, o)), with_kwargs=True) for m in mods]
        gen = torch.Generator().manual_seed(side)
        x = torch.randn(rows, 3, side, side, generator=gen).to(dev)
        ctx = torch.randn(rows, 77, 64, generator=gen).to(dev)
        t = torch.tensor([500] * rows, device=dev)
        try:
            with torch.inference_mode(), row_groups(sizes):
                unet(x, t, encoder_hidden_states=ctx)
        finally:
            for h in hooks:
                h.remove()
        checked = 0
        with torch.inference_mode():
            for m, args, kwargs, out in calls:
                if not isinstance(out, torch.Tensor) or out.shape[0] != rows:
                    continue  # a call inside a per-image call: checked by its parent
                at = 0
                for n in sizes:
                    cut = [
                        a[at : at + n].clone() if isinstance(a, torch.Tensor) and a.shape[0] == rows else a
                        for a in args
                    ]
                    kw = {k: v[at : at + n].clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                    assert torch.equal(m(*cut, **kw), out[at : at + n]), (type(m).__name__, side, n)
                    at += n
                    checked += 1
        assert checked > 100


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cpu", "cuda"])
def test_batched_images_are_bit_identical_to_a_batch_of_one(which, request):
    """12 mixed tasks at 1, 2, 3 and 8 images per UNet call: pixels, digest, fingerprint,
    trajectory bytes and profile all equal to each task run alone."""
    engine = pick(which, request)
    assert engine.profile.flags["batching"] == MODES[engine.profile.device]
    tasks = mixed_tasks(12, seed=5)
    alone = [engine.generate(p, record=True) for p in tasks]
    for size in (1, 2, 3, 8):
        together = engine.generate_batch(tasks, record=True, batch_size=size)
        bad = [i for i, (a, b) in enumerate(zip(alone, together)) if not same(a, b)]
        assert not bad, (size, [tasks[i] for i in bad])


def test_a_bad_task_fails_alone_and_a_cancelled_batch_stops(image_engine):
    good = ImageParams(prompt="a red circle", steps=2, height=16, width=16)
    with pytest.raises(UsageError, match="cannot take 2 steps"):
        image_engine.generate_batch([good, ImageParams(prompt="x", steps=2, scheduler="pndm")])
    stop = threading.Event()
    stop.set()
    with cancellable(stop), pytest.raises(Cancelled):
        image_engine.generate_batch([good, good])


@pytest.fixture(scope="module")
def engines():
    e = Engines({"text": "tiny-text", "image": "tiny-image"}, threads=1)
    yield e
    e.close()


def test_a_batching_worker_signs_the_results_and_trajectories_it_signs_alone(engines, tmp_path):
    me, gateway, client = Identity.generate(), Identity.generate(), Identity.generate()
    params = [p.to_dict() for p in mixed_tasks(5, seed=9)]
    tasks = [make_task(client, NET, "image", "tiny-image", p, 1) for p in params]
    batched = WorkerRole(me, NET, engines, BlobStore(tmp_path / "b"), batch=4)

    async def go() -> list:
        calls = [batched.execute(request(gateway, "Worker", "Execute", {"task": t.wire()})) for t in tasks]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=120)

    got = asyncio.run(go())
    assert batched.batcher is not None and max(batched.batcher.batches) > 1  # they really shared calls
    alone = WorkerRole(me, NET, engines, BlobStore(tmp_path / "a"))
    for task, (wire, png) in zip(tasks, got):
        want, want_png = asyncio.run(alone.execute(request(gateway, "Worker", "Execute", {"task": task.wire()})))
        body, want_body = open_wire(wire, "Result", NET).body, open_wire(want, "Result", NET).body
        assert body == want_body and png == want_png
        blob = body["output"]["trajectory"]["blob"]
        assert batched.blobs.get(blob) == alone.blobs.get(blob)  # the same trajectory tensors, served


@pytest.mark.slow
def test_concurrent_image_tasks_on_a_batching_worker_are_accepted_by_trajectory(tmp_path, monkeypatch):
    """Real nodes on loopback gRPC: a gateway, three verifiers and a worker with worker_batch = 4.
    Concurrent image tasks share the worker's UNet calls, and each Result's trajectory is checked
    and accepted by all three verifiers (every step re-executed bit-exact)."""
    from tests.helpers import LocalNodes, until
    from tests.test_trajectory_network import NET as LOCAL
    from tests.test_trajectory_network import certificates
    from trustgen.consensus import challenge
    from trustgen.node.client import submit

    monkeypatch.setattr(challenge, "AUDIT_FRACTION", 0.0)  # every task by trajectory
    params = [{"prompt": f"a small {c} circle", "steps": 2, "seed": i} for i, c in enumerate(COLOURS[:4])]
    params[1]["guidance"] = 1.0  # one UNet row for this one, two for the others

    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        try:
            gw = await nodes.start("gateway", ["gateway"])
            for i in range(3):
                await nodes.start(f"v{i}", ["verifier"], gateway=gw.address)
            worker = await nodes.start("worker", ["worker"], gateway=gw.address, worker_batch=4)
            tasks = [make_task(me, LOCAL, "image", "tiny-image", p, 3) for p in params]
            calls = (submit(gw.address, t, me, LOCAL, insecure=True, timeout_s=180) for t in tasks)
            outs = await asyncio.gather(*calls)
            assert all(o["decision"] == "accept" for o in outs), outs
            assert max(worker.worker.batcher.batches) > 1  # the tasks really shared the worker's calls

            def votes(t) -> list[dict]:
                cast = [
                    open_wire(e.body["vote"], "Vote", LOCAL).body for e in gw.ledger.iter_entries(entry_type="VoteCast")
                ]
                return [v for v in cast if v["task_id"] == t.id]

            for t in tasks:
                assert len(certificates(gw, t)) == 1
                # The third verifier's vote may land after the majority finalised the task.
                await until(lambda t=t: len(votes(t)) == 3, 60, "three votes per task")
                for v in votes(t):
                    assert v["accept"] and v["method"] == "trajectory", v["reason"]
                    assert v["checks"]["output_rel_l2"] == [0.0] * len(v["checks"]["steps"])
        finally:
            await nodes.close()

    asyncio.run(main())
