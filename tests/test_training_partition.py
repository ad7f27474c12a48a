"""A partition between the coordinating gateway and a majority of the verifiers: the job stalls
rather than fails or finalises anything, the round is retried under fresh beacons while the
link is down, and when it heals every round is finalised exactly once and the ledger audits
clean. The cut is real: the gateway reaches two verifiers only through TCP proxies that close
their listeners and reset every open connection (tests/netproxy.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import LocalNodes, run_cli, small_network_job, until
from tests.netproxy import Proxy
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire
from trustgen.node.training_client import job_status, submit_job
from trustgen.training import rounds
from trustgen.training import spec as specs

NET = "trustgen-local"


@pytest.mark.slow
def test_a_partition_from_the_verifier_majority_stalls_the_job_and_heals_without_a_second_checkpoint(
    tmp_path,
) -> None:
    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        proxies: list[Proxy] = []
        try:
            gw = await nodes.start("gateway", ["gateway"], training_round_timeout_s=120.0)
            for i in range(3):
                await nodes.start(f"verifier-{i + 1}", ["verifier"], gateway=gw.address)
            await nodes.start("trainer-1", ["trainer"], gateway=gw.address)
            members = gw.coordinator.members
            for name in ("verifier-2", "verifier-3"):  # the gateway reaches these two only through a proxy
                node = nodes.nodes[name]
                p = await Proxy(int(node.address.rsplit(":", 1)[1])).start()
                proxies.append(p)
                members[node.identity.public_key]["address"] = p.address
            for p in proxies:
                await p.cut()
            st = await submit_job(gw.address, small_network_job(), Identity.generate(), True, trainers=1, verifiers=3)
            job_id = bytes.fromhex(st["job_id"])

            async def retried() -> bool:
                s = await job_status(gw.address, job_id, NET, True)
                assert s["state"] == "running", s
                return s["retries"] >= 2

            await until(retried, 120, "the round to be retried while the verifiers are cut off")
            assert not list(gw.ledger.iter_entries(entry_type="CheckpointFinalized"))
            attempts = {e.body["check"] for e in gw.ledger.iter_entries(entry_type="UpdateCheck")}
            assert len(attempts) >= 2  # verifier-1 checked each attempt; nobody else could
            for p in proxies:
                await p.heal()

            async def final() -> dict:
                s = await job_status(gw.address, job_id, NET, True)
                assert s["state"] in ("running", "final"), s
                return s if s["state"] == "final" else {}

            st = await until(final, 180, "the job to finish once the partition healed")
            assert [r["round"] for r in st["rounds_done"]] == [0, 1]
            fins = list(gw.ledger.iter_entries(entry_type="CheckpointFinalized"))
            assert sorted(f.body["round"] for f in fins) == [0, 1]  # one checkpoint per round, ever
            acc = next(gw.ledger.iter_entries(entry_type="TrainingJobAccepted"))
            spec = specs.open_job(open_wire(acc.body["job"], "TrainingJob", NET).wire(), NET)[1]
            for f in fins:
                cp = rounds.check_finalized(spec, gw.identity.public_key, acc.body["candidates"], acc.body["k"], f.body)
                assert cp.body["digest"].hex() == st["rounds_done"][f.body["round"]]["digest"]
            # The superseded attempts' checks stay in the ledger and the audit accepts them; replay
            # recomputes the checkpoints the healed rounds finalised.
            r = run_cli("audit", str(nodes.data_dir("gateway")), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
            r = run_cli("train", "replay", str(nodes.data_dir("gateway")), "--job", job_id.hex(), "--json")
            assert r.returncode == 0, r.stdout + r.stderr
        finally:
            for p in proxies:
                await p.cut()
            await nodes.close()

    asyncio.run(main())
