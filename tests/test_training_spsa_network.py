"""SPSA on the network: real gateway, trainer and verifier nodes (gRPC servers on ephemeral loopback
ports) run a 2-block SPSA job; every step is decided by its verifiers before it is applied, a
trainer forging its samples is rejected with evidence and excluded, the finalised digest equals a
local `train run` with the same trainers (the forger included, excluded there too), the audit and
replay of the gateway's directory pass, and edited ledgers are named by the SPSA audit rules."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.helpers import LocalNodes, run_cli
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire, sign
from trustgen.node.training_client import submit_job
from trustgen.training import spec as specs
from trustgen.training import spsa_rounds
from trustgen.training.audit_training import audit_training
from trustgen.training.job import checkpoint_step, rounds_of
from trustgen.training.ledger_view import read_ledger
from trustgen.training.run import run_job

NET = "trustgen-local"


def small_spsa_job() -> specs.JobSpec:
    """The shipped SPSA job cut down: 2 blocks of 2 steps, batch 2, every update's sample re-computed."""
    raw = specs.as_table(specs.load("spsa").data)
    raw.pop("trainers")
    raw["data"]["eval_windows"] = 8
    raw["algorithm"].update({"steps": 4, "eval_every": 2, "batch": 2, "check_probability": 1.0})
    return specs.from_dict(raw)


def test_blocks_and_step_targets() -> None:
    spec = small_spsa_job()
    assert rounds_of(spec) == 2 and [checkpoint_step(spec, b) for b in range(2)] == [2, 4]
    assert list(spsa_rounds.block_steps(spec, 1)) == [2, 3] and spsa_rounds.block_of(spec, 3) == 1
    # A step's ranking target never equals a block's (own domain tag), and differs per step.
    from trustgen.training.rounds import round_target

    assert spsa_rounds.step_target(spec.id, 0) != round_target(spec.id, 0)
    assert spsa_rounds.step_target(spec.id, 0) != spsa_rounds.step_target(spec.id, 1)
    # The coin and the sample: 0 or 1 + an index below the batch, never above.
    for t in range(20):
        j = spsa_rounds.challenge(spec.id, t, b"\x01" * 32, b"\x02" * 32, 1.0, 2)
        assert 1 <= j <= 2
        assert spsa_rounds.challenge(spec.id, t, b"\x01" * 32, b"\x02" * 32, 0.0, 2) == 0


@pytest.mark.slow
def test_an_spsa_job_on_the_network_equals_the_local_run(tmp_path) -> None:
    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        gw = await nodes.start("gateway", ["gateway"], training_round_timeout_s=120.0)
        try:
            for i in range(3):
                await nodes.start(f"verifier-{i + 1}", ["verifier"], gateway=gw.address)
            for i in range(3):
                extra = {"train_adversary": "forged-samples"} if i == 2 else {}
                await nodes.start(f"trainer-{i + 1}", ["trainer"], gateway=gw.address, **extra)
            st = await submit_job(
                gw.address, small_spsa_job(), Identity.generate(), True, trainers=3, verifiers=3, wait=True
            )
            keys = {n: nodes.nodes[n].identity for n in ("trainer-1", "trainer-2", "trainer-3")}
            forger = keys["trainer-3"].public_key.hex()
            assert st["state"] == "final", st
            assert [r["steps"] for r in st["rounds_done"]] == [2, 2]
            b0, b1 = st["rounds_done"]
            # Every sample is re-computed (p = 1): the forger is rejected at step 0 and never asked again.
            assert b0["rejected"] == [forger] and forger not in b0["accepted"] and forger not in b1["delivered"]
            assert "forged_sample" in st["excluded"][forger]
            ev = [e for e in gw.ledger.iter_entries(entry_type="Evidence") if e.body["kind"] == "rejected_update"]
            assert [e.body["subject"].hex() for e in ev] == [forger]
            # The same job run locally by the same trainers (the forger included) finalises the same digest.
            spec = specs.open_job(open_wire(_accepted(gw).body["job"], "TrainingJob", NET).wire(), NET)[1]
            idx = sorted(k.public_key for k in keys.values()).index(keys["trainer-3"].public_key)
            local = await asyncio.to_thread(
                run_job,
                small_spsa_job(),
                tmp_path / "local",
                adversary_mode="forged-samples",
                adversary_trainer=idx,
                trainer_keys=list(keys.values()),
            )
            assert local["job_id"] == spec.id.hex()
            assert [e["digest"] for e in local["evals"][1:]] == [r["digest"] for r in st["rounds_done"]]
            assert [e["heldout_loss"] for e in local["evals"][1:]] == [r["heldout_loss"] for r in st["rounds_done"]]
            # From the gateway's directory alone: the audit is clean and replay recomputes every checkpoint.
            gw_dir = str(nodes.data_dir("gateway"))
            r = run_cli("audit", gw_dir, "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            r = run_cli("train", "replay", gw_dir, "--job", spec.id.hex(), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            # Edited ledgers: a check under another beacon, a proposal accepting what its steps did not.
            _, entries = read_ledger(nodes.data_dir("gateway") / "ledger.db")
            assert not audit_training(entries, NET).violations
            verifiers = {n.identity.public_key: n.identity for n in nodes.nodes.values()}
            assert _codes(_forge_check_beacon(entries, verifiers)) >= {"bad_beacon"}
            assert "bad_accepted_set" in _codes(_drop_accepted(entries))
        finally:
            await nodes.close()

    asyncio.run(main())


def _accepted(gw):
    return next(iter(gw.ledger.iter_entries(entry_type="TrainingJobAccepted")))


def _codes(entries) -> set[str]:
    return {v.code for v in audit_training(entries, NET).violations}


def _forge_check_beacon(entries, identities):
    """The first UpdateCheck re-signed by its verifier under the job's beacon (an earlier commitment,
    but not the one after its step's updates)."""
    job_beacon = next(e for e in entries if e.type == "TrainingJobAccepted").body["beacon"]
    out, done = [], False
    for e in entries:
        if e.type == "UpdateCheck" and not done:
            c = open_wire(e.body["check"], "UpdateCheck", NET)
            forged = sign(identities[c.signer], "UpdateCheck", NET, {**c.body, "beacon": job_beacon})
            e = dataclasses.replace(e, body={"check": forged.wire()})
            done = True
        out.append(e)
    return out


def _drop_accepted(entries):
    out = []
    for e in entries:
        if e.type == "CheckpointProposed":
            e = dataclasses.replace(e, body={**e.body, "accepted": list(e.body["accepted"])[1:]})
        out.append(e)
    return out


@pytest.mark.slow
def test_a_gateway_restarted_inside_a_block_fails_the_job_with_its_reason(tmp_path) -> None:
    """A block cut short is not re-run (its trainers' updates are recorded once per step): the
    rebuilt job fails with a typed reason instead of recording a second update per step."""
    from trustgen.consensus.ledger import Ledger
    from trustgen.gossip.blobs import BlobStore
    from trustgen.node.training_jobs import TrainingCoordinator
    from trustgen.training.spec import sign_job

    async def main() -> None:
        gateway, trainer = Identity.generate(), Identity.generate()
        ledger = Ledger(tmp_path / "ledger.db", NET, gateway)
        spec = small_spsa_job().with_trainers([trainer.public_key])
        c = ledger.commit()
        candidates = sorted(Identity.generate().public_key for _ in range(3))
        body = {"job": sign_job(gateway, spec).wire(), "beacon": c.body["root"], "beacon_size": c.body["size"]}
        ledger.append("TrainingJobAccepted", {**body, "candidates": candidates, "k": 3})
        u = sign(
            trainer,
            "SpsaUpdate",
            NET,
            {"trainer": trainer.public_key, "job": spec.id, "step": 0, "q": 0, "diffs": [0.0, 0.0]},
        )
        ledger.append("TrainingUpdate", {"update": u.wire(), "blob": ""})
        co = TrainingCoordinator(gateway, NET, ledger, None, BlobStore(tmp_path / "blobs"), {}, lambda: "")  # type: ignore[arg-type]
        try:
            assert await co.recover() == 0
            run = co.jobs[spec.id]
            assert run.status == "failed" and "restarted inside block 0" in run.detail
            assert run.to_dict()["state"] == "failed"
        finally:
            await co.close()

    asyncio.run(main())


def test_a_step_is_decided_by_the_verifiers_its_checks_imply() -> None:
    """A wrong byte is rejected before any forward pass; the step's verifiers are implied by who
    answered (a candidate ranked above the last checker without a check was skipped); a check
    beyond k, or under another beacon, does not decide the step."""
    from trustgen.training import spsa
    from trustgen.training.rounds import ProofError, Verdict

    trainer = Identity.generate()
    spec = small_spsa_job().with_trainers([trainer.public_key])
    diffs = [0.25, 0.75]
    honest = spsa.scalar(diffs, spec.algorithm["scale"])
    wrong = sign(
        trainer,
        "SpsaUpdate",
        NET,
        {"trainer": trainer.public_key, "job": spec.id, "step": 0, "q": -honest or 5, "diffs": diffs},
    )
    v = spsa_rounds.verdict(None, spec, {}, {}, 0, wrong, 1)  # type: ignore[arg-type]
    assert not v.accept and v.code == "wrong_scalar"
    verifiers = [Identity.generate() for _ in range(5)]
    by_key = {x.public_key: x for x in verifiers}
    candidates = sorted(by_key)
    beacon = b"\x07" * 32
    order = spsa_rounds.ranking(spec, 0, beacon, candidates)

    def check(key: bytes, b: bytes = beacon) -> object:
        body = {"verifier": key, "job": spec.id, "round": 0, "beacon": b, "verdicts": [v.to_list()]}
        return sign(by_key[key], "UpdateCheck", NET, body)

    step = spsa_rounds.decide(spec, 0, beacon, [wrong], [check(order[i]) for i in (0, 2, 3)], candidates, 3)
    assert step.verifiers == [order[0], order[2], order[3]] and step.decisions[wrong.id] == "reject"
    assert step.accepted == []
    with pytest.raises(ProofError) as e:
        spsa_rounds.decide(spec, 0, beacon, [wrong], [check(order[i]) for i in (0, 1, 2, 3)], candidates, 3)
    assert e.value.code == "foreign_check"
    with pytest.raises(ProofError) as e:
        spsa_rounds.decide(spec, 0, beacon, [wrong], [check(order[0], b"\x08" * 32)], candidates, 3)
    assert e.value.code == "foreign_check"
    assert isinstance(Verdict.from_list(v.to_list()), Verdict)
