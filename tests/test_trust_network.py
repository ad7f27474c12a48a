"""The trust model with real nodes (gRPC servers on ephemeral loopback ports, in this process):
joins under a genesis, and the issue's collusion case (a worker that alters its output, two
verifiers that lie), first with the liars left out of the genesis, then admitted."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from typer.testing import CliRunner

from tests.helpers import LocalNodes, until
from trustgen.cli import app
from trustgen.consensus.admission import AdmissionState, Genesis, Member, make_admission, make_genesis, make_revocation
from trustgen.consensus.audit import audit_path
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.reputation import reputation
from trustgen.node.client import make_task, submit

NET = "trustgen-local"


def test_join_admits_only_admitted_roles_and_stores_nothing_before(tmp_path):
    """Why bullet 2, the join half: a stranger's join (carrying its own self-signed certificates)
    is refused with PERMISSION_DENIED and nothing of its feed is stored; an admitted key joins
    only in its roles; a key admitted later joins with the admission its feed carries."""
    authority = Identity.generate()
    keys = {}
    for name in ("gw", "member", "stranger", "later"):
        keys[name] = Identity.generate()
        keys[name].save(tmp_path / name)
    gen = make_genesis(
        authority,
        NET,
        [Member(keys["gw"].public_key, ("gateway",)), Member(keys["member"].public_key, ("verifier",))],
        probation=3,
    )
    gpath = tmp_path / "genesis.bin"
    gen.save(gpath)
    adm = tmp_path / "later.adm"
    adm.write_bytes(make_admission(authority, NET, [Member(keys["later"].public_key, ("verifier",))]).wire())

    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        try:
            gw = await nodes.start("gw", ["gateway"], genesis=str(gpath))
            # Plain nodes (no roles: they serve Info and join nobody) stand for the joiners.
            member = await nodes.start("member", [], genesis=str(gpath))
            stranger = await nodes.start("stranger", [])
            later = await nodes.start("later", [], genesis=str(gpath), admissions=[str(adm)])

            async def join(node, roles: list[str]) -> grpc.StatusCode:
                node.ledger.append("NodeJoined", {"address": node.address, "roles": roles})
                entries = [[p, s] for p, s in node.ledger.entries(node.identity.public_key, 1, 1000)]
                try:
                    await node.peers.call(gw.address, "Gateway", "Join", {"entries": entries}, timeout=10)
                except grpc.aio.AioRpcError as e:
                    return e.code()
                return grpc.StatusCode.OK

            # The stranger's feed holds a "reject" certificate it signed itself, as on main.
            stranger.ledger.append("Evidence", {"kind": "rejected_result", "subject": bytes(32), "proof": {}})
            for roles in ([], ["verifier"], ["gateway"]):
                assert await join(stranger, roles) == grpc.StatusCode.PERMISSION_DENIED
            assert gw.ledger.head(keys["stranger"].public_key)[0] == 0  # nothing of it stored
            assert await join(member, ["worker"]) == grpc.StatusCode.PERMISSION_DENIED  # not its role
            assert gw.ledger.head(keys["member"].public_key)[0] == 0
            assert await join(member, ["verifier"]) == grpc.StatusCode.OK
            assert await join(later, ["verifier"]) == grpc.StatusCode.OK
            role = gw.gateway
            assert role.admission.admitted(keys["later"].public_key, "verifier")
            assert role._rep.probationary([keys["later"].public_key, keys["member"].public_key]) == {
                keys["later"].public_key
            }
            assert set(role._admitted_members("verifier")) == {keys["member"].public_key, keys["later"].public_key}
            # A revocation reaching the gateway in another admitted feed (as gossip brings it)
            # takes the key out of assignment at once, for good.
            rev = member.ledger.append(
                "Revoked", {"revocation": make_revocation(authority, NET, [keys["later"].public_key]).wire()}
            )
            assert gw.ledger.ingest(rev.payload, rev.sig) == "stored"
            role._refresh_reputation()
            assert set(role._admitted_members("verifier")) == {keys["member"].public_key}
        finally:
            await nodes.close()

    asyncio.run(main())
    reports = audit_path(tmp_path / "gw")
    assert all(r.ok for r in reports), [r.violations for r in reports]


@pytest.mark.slow
def test_colluding_liars_cannot_finalise_unless_admitted_and_then_recheck_flags_them(tmp_path, caplog):
    """Why bullet 1 (worker-1=adversary:alter, verifier-1 and verifier-2 =adversary:lie). Left out
    of the genesis, the liars' joins are refused and the altered text is rejected by the one
    admitted verifier. Admitted (one authority action each), they win a task 2 to 1; the audit
    alone passes, `audit --recheck 1.0` flags the certificate, and the evidence it records
    against both liars and the worker drops them below the honest verifier."""
    caplog.set_level("WARNING", logger="trustgen.node")
    authority = Identity.generate()
    names = ("gateway", "worker-1", "verifier-1", "verifier-2", "verifier-3")
    keys = {}
    for name in names:
        keys[name] = Identity.generate()
        keys[name].save(tmp_path / name)
    liars = ("verifier-1", "verifier-2")
    members = [Member(keys["gateway"].public_key, ("gateway",)), Member(keys["worker-1"].public_key, ("worker",))]
    members.append(Member(keys["verifier-3"].public_key, ("verifier",)))
    gpath = tmp_path / "genesis.bin"
    make_genesis(authority, NET, members, probation=0).save(gpath)
    g = str(gpath)
    me = Identity.generate()
    params = {"prompt": "Collusion", "max_new_tokens": 12}

    async def main() -> tuple[bytes, dict]:
        nodes = LocalNodes(tmp_path)
        try:
            gw = await nodes.start("gateway", ["gateway"], genesis=g)
            a = gw.address
            await nodes.start("worker-1", ["worker"], genesis=g, gateway=a, adversary="alter")
            await nodes.start("verifier-3", ["verifier"], genesis=g, gateway=a)
            for name in liars:
                await nodes.start(name, ["verifier"], wait_joined=False, genesis=g, gateway=a, adversary="lie")
            await until(lambda: caplog.text.count("PERMISSION_DENIED") >= 2, 30, "the liars' joins to be refused")
            assert all(gw.ledger.head(keys[n].public_key)[0] == 0 for n in liars)  # nothing of them stored
            first = make_task(me, NET, "text", "tiny-text", params, 1)
            await submit(a, first, me, NET, insecure=True, wait=False)
            st = gw.gateway.tasks[first.id]
            await until(lambda: st.decision == "reject", 60, "the altered text to be rejected")
            assert st.state != "final"

            for name in liars:  # admitted, one authority action each
                adm = tmp_path / f"{name}.admission"
                adm.write_bytes(make_admission(authority, NET, [Member(keys[name].public_key, ("verifier",))]).wire())
                await nodes.stop(name)
                await nodes.start(name, ["verifier"], genesis=g, gateway=a, adversary="lie", admissions=[str(adm)])
            task = make_task(me, NET, "text", "tiny-text", params | {"prompt": "Collusion again"}, 3)
            return task.id, await submit(a, task, me, NET, insecure=True, wait=True, timeout_s=120)
        finally:
            await nodes.close()

    task_id, out = asyncio.run(main())
    assert out["decision"] == "accept"  # the liars won
    # `trustgen audit --recheck 1.0 --record gateway`, in-process (the command's own code).
    args = ["audit", str(tmp_path), "--recheck", "1.0", "--seed", "0", "--record", str(tmp_path / "gateway"), "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.stdout
    doc = json.loads(res.stdout)
    assert all(r["ok"] for r in doc["ledgers"]), "the audit alone cannot tell"
    report = doc["recheck"]
    failed = [c for c in report["checks"] if c["outcome"] == "fail"]
    assert [c["task"] for c in failed] == [task_id.hex()]
    assert sorted(failed[0]["voted_for"]) == sorted(keys[n].node_id for n in liars)
    assert report["recorded"] == 3  # the worker and both liars
    led = Ledger(tmp_path / "gateway" / "ledger.db", NET)
    entries = list(led.iter_entries())
    led.close()
    scores = reputation(entries, NET, AdmissionState.from_entries(entries, Genesis.load(gpath)))
    assert all(scores[keys[n].public_key] < scores[keys["verifier-3"].public_key] for n in liars)
    assert all(r.ok for r in audit_path(tmp_path / "gateway"))  # the evidence itself holds
