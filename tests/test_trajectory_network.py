"""Image tasks verified by trajectory on a real network: real nodes in-process (gRPC on loopback,
the tiny image model), workers that commit their trajectory in the signed Result and serve it as
a blob, verifiers that fetch it, re-execute the steps the post-commitment beacon picks, and sign
what they checked; the audit re-derives those steps from the ledger."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.helpers import LocalNodes
from trustgen.consensus import challenge
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.audit_incremental import FULL, REBUILT, audit_incremental
from trustgen.consensus.audit_state import state_path_for
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed, open_wire, sign
from trustgen.node.client import make_task, submit

NET = "trustgen-local"
pytestmark = pytest.mark.slow
# Two denoising steps: the network's c = 2 re-executes both, so a faked step is always caught.
PARAMS = {"prompt": "a small red circle on a blue background", "steps": 2}


def image_task(me: Identity, seed: int) -> Signed:
    return make_task(me, NET, "image", "tiny-image", {**PARAMS, "seed": seed}, 3)


def entries(node, entry_type: str, field: str, msg_type: str) -> list[Signed]:
    return [open_wire(e.body[field], msg_type, NET) for e in node.ledger.iter_entries(entry_type=entry_type)]


def certificates(gw, task: Signed) -> list[dict]:
    return [c.body for c in entries(gw, "TaskFinalized", "certificate", "Certificate") if c.body["task_id"] == task.id]


async def wait_certificate(gw, task: Signed, decision: str, n: int = 1, timeout: float = 120.0) -> dict:
    """The n-th certificate of `task` with `decision` in the gateway's ledger, once it is there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        found = [c for c in certificates(gw, task) if c["decision"] == decision]
        if len(found) >= n:
            return found[n - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {decision} certificate #{n} for the task within {timeout} s")


def votes_of(cert: dict) -> list[dict]:
    return [open_wire(v, "Vote", NET).body for v in cert["votes"]]


def test_image_tasks_are_verified_by_trajectory_and_cheats_are_rejected(tmp_path, monkeypatch):
    # Every task by trajectory here (the audited fraction is another test's business); the
    # nodes run in this process, so verifiers and the audit read the same rule.
    monkeypatch.setattr(challenge, "AUDIT_FRACTION", 0.0)

    async def main():
        nodes = LocalNodes(tmp_path)
        me = Identity.generate()
        try:
            gw = await nodes.start("gateway", ["gateway"])
            for i in range(3):
                await nodes.start(f"v{i}", ["verifier"], gateway=gw.address)
            honest = await nodes.start("honest", ["worker"], gateway=gw.address)

            # 1. An honest image task finalises with three trajectory votes.
            t1 = image_task(me, 1)
            out = await submit(gw.address, t1, me, NET, insecure=True, timeout_s=180)
            assert out["decision"] == "accept" and out["worker"] == honest.identity.public_key.hex()
            cert = certificates(gw, t1)[0]
            result = next(r for r in entries(gw, "ResultCommitted", "result", "Result") if r.id == cert["result_id"])
            commit = result.body["output"]["trajectory"]
            assert commit["scheme"] == challenge.SCHEME and commit["steps"] == 2
            assert honest.blobs.has(commit["blob"])  # the worker keeps and serves the tensors
            commitments = {(e.body["root"], e.body["size"]) for e in gw.ledger.iter_entries(entry_type="Commitment")}
            for v in votes_of(cert):
                assert v["accept"] and v["method"] == "trajectory", v["reason"]
                assert v["checks"]["steps"] == [0, 1] and v["checks"]["output_rel_l2"] == [0.0, 0.0]
                assert (v["checks"]["beacon"], v["checks"]["beacon_size"]) in commitments
            await nodes.stop("honest")

            # 2. A worker that fakes the middle step, and one whose committed trajectory does not
            # produce the image it claims: each rejected, the reason in every vote.
            faker = await nodes.start("faker", ["worker"], gateway=gw.address, adversary="fake-step")
            forger = await nodes.start("forger", ["worker"], gateway=gw.address, adversary="forge-trajectory")
            t2 = image_task(me, 2)
            await submit(gw.address, t2, me, NET, insecure=True, wait=False)
            await wait_certificate(gw, t2, "reject", n=2)
            why = {
                faker.identity.public_key: "model output at step 1 differs from re-execution",
                forger.identity.public_key: "decoded final latent is not the claimed image",
            }
            rejected = [c for c in certificates(gw, t2) if c["decision"] == "reject"]
            assert {c["worker"] for c in rejected} == set(why)
            for c in rejected:
                for v in votes_of(c):
                    assert not v["accept"] and v["method"] == "trajectory" and why[c["worker"]] in v["reason"]
            evidence = [e.body["kind"] for e in gw.ledger.iter_entries(entry_type="Evidence")]
            assert evidence.count("rejected_result") == 2
        finally:
            await nodes.close()
        return cert

    cert = asyncio.run(main())

    # 4. The audit re-derives every vote's steps from the ledger: clean as recorded ...
    db = tmp_path / "gateway" / "ledger.db"
    report = audit_ledger(db)
    assert report.ok, report.violations
    fast = audit_incremental(db)  # the incremental audit's own check of the same votes
    assert fast.report.ok and fast.mode == REBUILT, fast.report.violations
    # ... and a vote whose step list was forged (signed by its real verifier, recorded by the
    # real gateway) is flagged.
    forged_db = tmp_path / "forged" / "ledger.db"
    forged_db.parent.mkdir()
    shutil.copy(db, forged_db)
    shutil.copy(state_path_for(db), state_path_for(forged_db))
    vote = votes_of(cert)[0]
    keys = {Identity.load(tmp_path / f"v{i}").public_key: Identity.load(tmp_path / f"v{i}") for i in range(3)}
    bad = sign(keys[vote["verifier"]], "Vote", NET, {**vote, "checks": {**vote["checks"], "steps": [1]}})
    ledger = Ledger(forged_db, NET, Identity.load(tmp_path / "gateway"))
    ledger.append("VoteCast", {"vote": bad.wire()})
    ledger.close()
    codes = {v.code for v in audit_ledger(forged_db).violations}
    assert "bad_challenge" in codes
    again = audit_incremental(forged_db)  # the fast path does not vouch for it: the full audit judges
    assert again.mode == FULL and "bad_challenge" in {v.code for v in again.report.violations}
