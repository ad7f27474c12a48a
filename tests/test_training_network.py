"""Training on the network: real gateway, trainer and verifier nodes (gRPC servers on ephemeral
loopback ports) run a local-SGD job; checkpoints are finalised by verifier majority, a cheating
trainer is rejected with evidence, and the job replays from the gateway's ledger alone."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import LocalNodes, run_cli, small_network_job, until
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire, sign
from trustgen.node import training_compute
from trustgen.node.training_client import TrainingClientError, job_status, submit_job
from trustgen.node.training_fetch import fetch_checkpoint
from trustgen.training import rounds
from trustgen.training import spec as specs

NET = "trustgen-local"


async def _cluster(tmp_path, trainers: int, verifiers: int, **trainer_settings) -> tuple[LocalNodes, str]:
    nodes = LocalNodes(tmp_path)
    gw = await nodes.start("gateway", ["gateway"], training_round_timeout_s=120.0)
    for i in range(verifiers):
        await nodes.start(f"verifier-{i + 1}", ["verifier"], gateway=gw.address)
    for i in range(trainers):
        extra = trainer_settings.get(f"trainer-{i + 1}", {})
        await nodes.start(f"trainer-{i + 1}", ["trainer"], gateway=gw.address, **extra)
    return nodes, gw.address


def _all(node, kind: str) -> list:
    return list(node.ledger.iter_entries(entry_type=kind))


def _entries(node, kind: str) -> list:
    return [e for e in node.ledger.iter_entries(entry_type=kind) if e.feed == node.identity.public_key]


@pytest.mark.slow
def test_a_job_runs_on_the_network_and_a_cheating_trainer_is_rejected(tmp_path) -> None:
    async def main() -> None:
        cheats = {
            "trainer-2": "scaled",
            "trainer-3": "sign-flip",
            "trainer-4": "stale-base",
            "trainer-5": "withhold-blob",
        }
        settings = {name: {"train_adversary": mode} for name, mode in cheats.items()}
        nodes, gw_addr = await _cluster(tmp_path, 5, 3, **settings)
        try:
            gw = nodes.nodes["gateway"]
            st = await submit_job(
                gw_addr, small_network_job(), Identity.generate(), True, trainers=5, verifiers=3, wait=True
            )
            assert st["state"] == "final", st
            assert len(st["rounds_done"]) == 2
            key = {n: nodes.nodes[n].identity.public_key.hex() for n in ("trainer-1", *cheats)}
            r0, r1 = st["rounds_done"]
            # check_probability 1.0: a scaled or flipped delta fails the delta check in round 0; a
            # stale base is only stale from round 1 on; a withheld blob never arrives, so that
            # trainer is absent from every round without being blamed.
            assert set(r0["rejected"]) == {key["trainer-2"], key["trainer-3"]}
            assert set(r0["accepted"]) == {key["trainer-1"], key["trainer-4"]}
            assert r1["rejected"] == [key["trainer-4"]] and r1["accepted"] == [key["trainer-1"]]
            assert key["trainer-5"] not in r0["delivered"] + r1["delivered"]
            assert key["trainer-5"] not in st["excluded"]
            for n in ("trainer-2", "trainer-3"):
                assert "failed_check" in st["excluded"][key[n]]
            assert "stale_base" in st["excluded"][key["trainer-4"]]
            ev = [e for e in _entries(gw, "Evidence") if e.body["kind"] == "rejected_update"]
            assert sorted(e.body["subject"].hex() for e in ev) == sorted(key[n] for n in cheats if n != "trainer-5")
            # Every round finalised with a strict majority of the assigned verifiers' votes,
            # checkable from the TrainingJobAccepted entry alone.
            acc = _entries(gw, "TrainingJobAccepted")[0]
            job = open_wire(acc.body["job"], "TrainingJob", NET)
            spec = specs.open_job(job.wire(), NET)[1]
            fins = _entries(gw, "CheckpointFinalized")
            assert [f.body["round"] for f in fins] == [0, 1]
            for f in fins:
                cp = rounds.check_finalized(spec, gw.identity.public_key, acc.body["candidates"], acc.body["k"], f.body)
                assert cp.body["digest"].hex() == st["rounds_done"][f.body["round"]]["digest"]
            # The finalised state blob decodes to the finalised digest.
            last = fins[-1]
            blob = gw.blobs.get(last.body["state"])
            assert blob == gw.coordinator.jobs[spec.id].state
            assert training_compute.restore(job.wire(), NET, blob, 2).hex() == st["rounds_done"][1]["digest"]
            again = await job_status(gw_addr, spec.id, NET, True)
            assert again["state"] == "final" and again["best"]["digest"] in {r["digest"] for r in st["rounds_done"]}
            # A proof with fewer votes than a majority, or a vote from a key not assigned, is refused.
            body = dict(fins[0].body)
            with pytest.raises(rounds.ProofError) as e:
                rounds.check_finalized(
                    spec, gw.identity.public_key, acc.body["candidates"], 3, {**body, "votes": body["votes"][:1]}
                )
            assert e.value.code == "no_majority"
            outsider = Identity.generate()
            forged = {**open_wire(body["votes"][0], "CheckpointVote", NET).body, "verifier": outsider.public_key}
            stranger = sign(outsider, "CheckpointVote", NET, forged)
            with pytest.raises(rounds.ProofError):
                rounds.check_finalized(
                    spec,
                    gw.identity.public_key,
                    acc.body["candidates"],
                    3,
                    {**body, "votes": [stranger.wire(), *body["votes"][1:]]},
                )
            # A joiner: a plain replica learns the ledger by gossip, then fetches the latest
            # checkpoint from peers, proven by the votes, as a model directory that generates.
            joiner = await nodes.start("joiner", [], bootstrap=[gw_addr], gossip_interval_s=0.2)
            await until(lambda: len(_all(joiner, "CheckpointFinalized")) == 2, 60, "the joiner to sync")
            out = tmp_path / "fetched"
            got = await fetch_checkpoint(nodes.data_dir("joiner"), NET, spec.id, out, [], True)
            assert got["digest"] == st["rounds_done"][1]["digest"] and got["rounds_proven"] == 2
            r = run_cli("generate", "text", "Return the", "--model", str(out), "--max-new-tokens", "4", "--json")
            assert r.returncode == 0, r.stderr
            # The gateway's directory alone: the audit (training entries included) is clean and
            # replay recomputes every finalised checkpoint.
            r = run_cli("audit", str(nodes.data_dir("gateway")), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            r = run_cli("train", "replay", str(nodes.data_dir("gateway")), "--job", spec.id.hex(), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
        finally:
            await nodes.close()

    asyncio.run(main())


def test_submit_refuses_what_the_network_cannot_run(tmp_path) -> None:
    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        gw = await nodes.start("gateway", ["gateway"])
        try:
            with pytest.raises(TrainingClientError, match="FAILED_PRECONDITION.*no trainer"):
                await submit_job(gw.address, small_network_job(), Identity.generate(), True)
            spsa = specs.load("spsa")
            raw = specs.as_table(spsa.data)
            raw.pop("trainers")
            raw["algorithm"]["eval_every"] = 101  # every step request carries its block: bounded
            with pytest.raises(TrainingClientError, match="INVALID_ARGUMENT.*at most every 100 steps"):
                await submit_job(gw.address, specs.from_dict(raw), Identity.generate(), True)
            with pytest.raises(TrainingClientError, match="NOT_FOUND"):
                await job_status(gw.address, b"\x01" * 32, NET, True)
        finally:
            await nodes.close()

    asyncio.run(main())
