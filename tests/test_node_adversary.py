"""The cheating modes of trustgen.node.adversary, run through the real worker and verifier roles
on the embedded models: each mode really misbehaves, and an honest verifier catches it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed, open_wire
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RequestGuard, make_request
from trustgen.node import adversary
from trustgen.node.client import make_task
from trustgen.node.config import NodeConfig
from trustgen.node.engine_pool import Engines
from trustgen.node.verifier_role import VerifierRole
from trustgen.node.worker import WorkerRole

NET = "trustgen-test"
PARAMS = {
    "text": {"prompt": "Verifiable generation", "max_new_tokens": 12},
    "image": {"prompt": "a red circle", "steps": 4},
}


@pytest.fixture(scope="module")
def engines():
    e = Engines({"text": "tiny-text", "image": "tiny-image"}, threads=1)
    yield e
    e.close()


@pytest.fixture()
def gateway() -> Identity:
    return Identity.generate()


def request(sender: Identity, service: str, method: str, args: dict[str, Any]) -> Signed:
    """A signed request as a servicer hands it to a role, opened by a real guard."""
    full = f"/trustgen.v1.{service}/{method}"
    return RequestGuard(NET).open(make_request(sender, NET, full, args), full)


def execute(worker: WorkerRole, gateway: Identity, task: Signed) -> tuple[Signed, bytes]:
    wire, blob = asyncio.run(worker.execute(request(gateway, "Worker", "Execute", {"task": task.wire()})))
    return open_wire(wire, "Result", NET), blob


def check(verifier: VerifierRole, gateway: Identity, task: Signed, result: Signed, blob: bytes) -> dict[str, Any]:
    args = {"task": task.wire(), "result": result.wire(), "output": blob, "beacon": bytes(32), "beacon_size": 0}
    return open_wire(asyncio.run(verifier.check(request(gateway, "Verifier", "Check", args))), "Vote", NET).body


def new_task(kind: str, prompt: str | None = None) -> Signed:
    params = dict(PARAMS[kind], **({"prompt": prompt} if prompt else {}))
    return make_task(Identity.generate(), NET, kind, f"tiny-{kind}", params, 1)


def roles(engines: Engines, tmp_path, worker_mode: str = "", verifier_mode: str = ""):
    worker = WorkerRole(Identity.generate(), NET, engines, BlobStore(tmp_path / "w"), worker_mode)
    verifier = VerifierRole(Identity.generate(), NET, engines, verifier_mode)
    return worker, verifier


def test_the_registry_names_each_mode_and_its_role():
    assert {m: mode.role for m, mode in adversary.MODES.items()} == {
        "other-model": "worker",
        "alter": "worker",
        "replay": "worker",
        "fake-step": "worker",
        "forge-trajectory": "worker",
        "lie": "verifier",
    }
    # A mode gives its own role a fresh misbehaviour and leaves the node's other roles honest.
    assert adversary.worker_cheat("replay") is not adversary.worker_cheat("replay")
    assert adversary.worker_cheat("lie") is None and adversary.verifier_cheat("alter") is None
    assert adversary.worker_cheat("") is None and adversary.verifier_cheat("") is None
    with pytest.raises(UsageError, match="unknown adversary"):
        adversary.worker_cheat("bribe")


def test_config_validation_reads_the_registry(tmp_path):
    for mode in adversary.MODES:
        assert (
            NodeConfig(
                name="n", data_dir=tmp_path, roles=["worker"], gateway="127.0.0.1:1", insecure=True, adversary=mode
            ).adversary
            == mode
        )
    with pytest.raises(UsageError, match="unknown adversary 'bribe'"):
        NodeConfig(
            name="n", data_dir=tmp_path, roles=["worker"], gateway="127.0.0.1:1", insecure=True, adversary="bribe"
        )


@pytest.mark.parametrize("kind", ["text", "image"])
def test_honest_roles_accept_each_other(engines, gateway, tmp_path, kind):
    worker, verifier = roles(engines, tmp_path)
    task = new_task(kind)
    result, blob = execute(worker, gateway, task)
    assert bool(blob) == (kind == "image")
    assert result.body["model_digest"] == task.body["model"]
    vote = check(verifier, gateway, task, result, blob)
    assert vote["accept"], vote["reason"]


@pytest.mark.parametrize("mode", ["alter", "other-model"])
@pytest.mark.parametrize("kind", ["text", "image"])
def test_cheating_workers_claim_the_task_model_and_are_rejected(engines, gateway, tmp_path, mode, kind):
    honest, verifier = roles(engines, tmp_path)
    cheat, _ = roles(engines, tmp_path, worker_mode=mode)
    task = new_task(kind)
    good, _ = execute(honest, gateway, task)
    bad, blob = execute(cheat, gateway, task)
    assert bad.body["model_digest"] == task.body["model"]  # it claims the task's model...
    assert bad.body["output_digest"] != good.body["output_digest"]  # ...but its output is another
    if mode == "alter" and kind == "text":
        a, b = good.body["output"]["token_ids"], bad.body["output"]["token_ids"]
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    vote = check(verifier, gateway, task, bad, blob)
    assert not vote["accept"], vote


def test_other_model_leaves_the_served_engine_untouched(engines, gateway, tmp_path):
    honest, _ = roles(engines, tmp_path)
    cheat, _ = roles(engines, tmp_path, worker_mode="other-model")
    task = new_task("image")
    before, _ = execute(honest, gateway, task)
    execute(cheat, gateway, task)
    after, _ = execute(honest, gateway, task)
    assert after.body["output_digest"] == before.body["output_digest"]


def test_replaying_worker_returns_its_previous_output_and_is_named(engines, gateway, tmp_path):
    worker, verifier = roles(engines, tmp_path, worker_mode="replay")
    first = new_task("text", "Decentralized")
    r1, _ = execute(worker, gateway, first)
    assert check(verifier, gateway, first, r1, b"")["accept"]  # nothing to replay yet: honest
    second = new_task("text", "Verifiable")
    r2, _ = execute(worker, gateway, second)
    assert r2.body["output"] == r1.body["output"] and r2.body["task_id"] == second.id
    vote = check(verifier, gateway, second, r2, b"")
    assert not vote["accept"] and f"replays the output of task {first.id.hex()[:16]}" in vote["reason"]


def test_lying_verifier_signs_the_opposite_of_its_check(engines, gateway, tmp_path):
    honest, liar = roles(engines, tmp_path, verifier_mode="lie")
    cheat, _ = roles(engines, tmp_path, worker_mode="alter")
    task = new_task("text")
    good, _ = execute(honest, gateway, task)
    bad, _ = execute(cheat, gateway, task)
    on_good = check(liar, gateway, task, good, b"")
    on_bad = check(liar, gateway, task, bad, b"")
    assert (on_good["accept"], on_good["reason"]) == (False, "looks wrong")
    assert (on_bad["accept"], on_bad["reason"]) == (True, "looks fine")
    assert on_good["verifier"] == liar.identity.public_key  # signed by the liar itself


def test_verifier_checks_images_by_the_trajectory_it_fetches(engines, gateway, tmp_path, monkeypatch):
    """The verifier role with a real fetch (the worker's blob store, read by digest and size-bound):
    an honest result passes by trajectory; a trajectory nobody serves, or one served with a
    flipped byte, is rejected with the beacon still signed; a Check without a beacon is refused."""
    from trustgen.consensus import challenge
    from trustgen.gossip.blobfetch import BlobFetchError
    from trustgen.net.auth import RpcError

    monkeypatch.setattr(challenge, "AUDIT_FRACTION", 0.0)
    worker, _ = roles(engines, tmp_path)
    served: dict[str, bytes] = {}

    async def fetch(digest: str, holders: list[bytes], hints: list[str], max_size: int) -> bytes:
        data = served.get(digest, worker.blobs.get(digest))
        if data is None or len(data) > max_size:
            raise BlobFetchError(f"no peer serves {digest}")
        return data

    verifier = VerifierRole(Identity.generate(), NET, engines, fetch=fetch)
    task = new_task("image")
    result, blob = execute(worker, gateway, task)
    commit = result.body["output"]["trajectory"]
    vote = check(verifier, gateway, task, result, blob)
    assert vote["accept"] and vote["method"] == "trajectory", vote["reason"]
    assert vote["checks"]["beacon"] == bytes(32) and len(vote["checks"]["steps"]) == challenge.CHECKS
    corrupt = bytearray(worker.blobs.get(commit["blob"]))
    corrupt[-5] ^= 1
    served[commit["blob"]] = bytes(corrupt)
    vote = check(verifier, gateway, task, result, blob)
    assert not vote["accept"] and "does not match its commitment" in vote["reason"]
    del served[commit["blob"]]
    (worker.blobs.root / commit["blob"]).unlink()
    vote = check(verifier, gateway, task, result, blob)
    assert not vote["accept"] and "could not be fetched" in vote["reason"] and vote["checks"]["steps"] == []
    args = {"task": task.wire(), "result": result.wire(), "output": blob}
    with pytest.raises(RpcError) as e:
        asyncio.run(verifier.check(request(gateway, "Verifier", "Check", args)))
    assert e.value.code.name == "INVALID_ARGUMENT"
