"""Training from a node's ledger alone: the training audit (every rule of
docs/training-network.md, each tampering named by its code) and export + replay of a job from a
node's ledger and blob store.

The ledger imitates what the coordinating gateway writes for a 2-round local-SGD job with 2
trainers and 4 verifier candidates (k = 3), made with the real training functions on a small
slice of the built-in corpus: real inner steps, delta blobs, verdicts (the challenged step
re-executed when the coin says so), aggregation, held-out losses and signatures of every party.
Round 1 skips its first-ranked verifier, and trainer 1 sends a stale-base update there, which the
verifiers reject and the gateway records as evidence. No network: the entries are appended as the
gateway would append them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed, sign
from trustgen.training import diloco
from trustgen.training import spec as specs
from trustgen.training.audit_training import audit_training, audit_training_file, cross_check_finalized
from trustgen.training.corpus import dataset_digest
from trustgen.training.job import DilocoState, by_trainer
from trustgen.training.ledger_job import blob_address, export_run, replay_node
from trustgen.training.ledger_view import read_ledger
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.records import RunError, updates_digest
from trustgen.training.rounds import (
    Verdict,
    apply_round,
    challenged_verdict,
    challenges,
    encode_state,
    round_decisions,
    round_target,
    static_verdict,
)
from trustgen.training.tensors import to_bytes

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
CORPUS = pathlib.Path(specs.__file__).parent / "data" / "stdlib-docs.txt"
K = 3


def _key(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


GATEWAY = _key(1)
VERIFIERS = [_key(10 + i) for i in range(4)]
TRAINERS = [_key(20 + i) for i in range(2)]


@dataclass
class World:
    """Everything computed once: the job, each round's updates, blobs, verdicts and checkpoints."""

    spec: specs.JobSpec
    job: Signed
    objective: object
    works: dict = field(default_factory=dict)  # (round, trainer index) -> (update, delta blob)
    verdicts: dict = field(default_factory=dict)  # update id -> Verdict
    states: dict = field(default_factory=dict)  # round -> DilocoState at its start


def _spec(tmp: pathlib.Path) -> specs.JobSpec:
    data = tmp / "corpus.txt"
    data.write_text(CORPUS.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    raw = specs.as_table(specs.load("diloco").data)
    raw.pop("trainers")
    raw["data"].update(source=str(data), digest=dataset_digest(data), eval_windows=4)
    raw["algorithm"].update(rounds=2, inner_steps=2, batch=2, check_probability=0.5)
    return specs.from_dict(raw).with_trainers([t.public_key for t in TRAINERS])


def _work(w: World, r: int, i: int) -> tuple[Signed, bytes, dict[int, bytes]]:
    """Trainer i's round r (trainer 1 computes round 1 from round 0's checkpoint: a stale base)."""
    if (r, i) not in w.works:
        t, hp = TRAINERS[i], w.spec.algorithm
        base_state = w.states[0 if (r, i) == (1, 1) else r]
        base = base_state.params
        work = diloco.run_round(w.objective, base, w.spec.id, r, t.public_key, hp)
        blob = diloco.encode_delta(diloco.delta_of(work.final, base), hp["delta_format"])
        body = {
            "trainer": t.public_key,
            "job": w.spec.id,
            "round": r,
            "base": base_state.digest,
            "delta": hashlib.sha256(blob).digest(),
            "states": work.digests,
        }
        kept = {h: to_bytes(s) for h, s in work.states.items()}
        w.works[(r, i)] = (sign(t, "DeltaUpdate", w.spec.network, body), blob, kept)
    return w.works[(r, i)]


def _verdict(w: World, r: int, u: Signed, blob: bytes, kept: dict[int, bytes], h: int) -> Verdict:
    """A verifier's verdict: the static checks, then the challenged step when the coin says so."""
    if u.id not in w.verdicts:
        state = w.states[r]
        bad, _ = static_verdict(state, u, blob)
        if bad is not None:
            w.verdicts[u.id] = bad
        elif h == 0:
            w.verdicts[u.id] = Verdict(u.id, True, "", 0, 0.0, "")
        else:
            given = {"after": kept[h], "final": kept[w.spec.algorithm["inner_steps"]]}
            if h > 1:
                given["before"] = kept[h - 1]
            w.verdicts[u.id] = challenged_verdict(w.objective, w.spec, u, blob, state.params, h, given)
    return w.verdicts[u.id]


def _wire_verdict(v: Verdict) -> list:
    """A verdict as an UpdateCheck carries it: a check that failed before measuring has no
    distance, sent as -1 (the canonical encoding has no infinity)."""
    d = v.distance if math.isfinite(v.distance) else -1.0
    return Verdict(v.update, v.accept, v.code, v.inner, d, v.reason).to_list()


def write_ledger(w: World, node: pathlib.Path, tamper: str = "") -> None:
    """The gateway's feed for the job, as the gateway appends it, with one tampering (or none)."""
    net = w.spec.network
    led = Ledger(node / "ledger.db", net, GATEWAY)
    blobs = node / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        (blobs / blob_address(data)).write_bytes(data)
        return blob_address(data)

    c = led.commit()
    cands = sorted(v.public_key for v in VERIFIERS)
    led.append(
        "TrainingJobAccepted",
        {"job": w.job.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": cands, "k": K},
    )
    accepted_all: list[Signed] = []
    for r in range(2):
        state = w.states[r]
        recorded = []
        for i in range(2):
            u, blob, kept = _work(w, r, i)
            if tamper == "drop_update" and (r, i) == (1, 0):
                recorded.append((u, blob, kept))  # verifiers saw it; the ledger lost it
                continue
            led.append("TrainingUpdate", {"update": u.wire(), "blob": put(blob)})
            recorded.append((u, blob, kept))
        ups = by_trainer([u for u, _, _ in recorded])
        ch = challenges(w.spec, r, ups)
        by_id = {u.id: (u, b, kept) for u, b, kept in recorded}
        verdicts = [_wire_verdict(_verdict(w, r, u, by_id[u.id][1], by_id[u.id][2], ch[u.id])) for u in ups]

        def attempt(skip_first: bool) -> tuple[bytes, list[bytes], list[bytes], list[Signed], dict[bytes, str]]:
            beacon = led.commit().body["root"]
            ranking = rank(beacon, round_target(w.spec.id, r), cands)
            skipped = [ranking[0]] if skip_first else []
            eff = effective_verifiers(ranking, skipped, K)
            checks = []
            for v in eff:
                who = next(x for x in VERIFIERS if x.public_key == v)
                body = {"verifier": v, "job": w.spec.id, "round": r, "beacon": beacon, "verdicts": verdicts}
                checks.append(sign(who, "UpdateCheck", net, body))
                led.append("UpdateCheck", {"check": checks[-1].wire()})
            dec = round_decisions(ups, checks, eff, K)
            for u in ups:
                if (dec[u.id] == "reject" and tamper != "no_evidence") or (tamper == "false_evidence" and r == 0):
                    proof = {"update": u.wire(), "checks": [c.wire() for c in checks]}
                    led.append("Evidence", {"kind": "rejected_update", "subject": u.signer, "proof": proof})
            return beacon, skipped, eff, checks, dec

        if tamper == "restart" and r == 1:
            attempt(False)  # cut short by a gateway restart after its checks; the round runs again
        beacon, skipped, eff, checks, dec = attempt(r == 1)
        ok = [u for u in ups if dec[u.id] == "accept"]
        deltas = {u.id: state.decode(u, by_id[u.id][1]) for u in ok}
        nxt = apply_round(state, ok, deltas)
        w.states.setdefault(r + 1, nxt)
        accepted_all.extend(ok)
        cp_body = {
            "publisher": GATEWAY.public_key,
            "job": w.spec.id,
            "step": r + 1,
            "digest": nxt.digest,
            "updates": updates_digest(accepted_all if tamper != "updates_digest" or r == 0 else accepted_all[:-1]),
            "heldout_loss": w.objective.eval_loss(nxt.params) + (1.0 if tamper == "other_final" and r == 1 else 0.0),
        }
        cp = sign(GATEWAY, "TrainingCheckpoint", net, cp_body)
        state_addr = put(encode_state(nxt))
        listed = [u.id for u in ok] if not (tamper == "accepted_set" and r == 1) else [u.id for u in ups]
        led.append("CheckpointProposed", {"checkpoint": cp.wire(), "round": r, "state": state_addr, "accepted": listed})
        voters = [x for x in VERIFIERS if x.public_key in eff]
        if tamper == "foreign_vote" and r == 1:
            voters[-1] = next(x for x in VERIFIERS if x.public_key not in eff)  # the standby, never assigned
        if tamper == "minority" and r == 1:
            voters = voters[:1]
        votes = [
            sign(
                x,
                "CheckpointVote",
                net,
                {
                    "verifier": x.public_key,
                    "job": w.spec.id,
                    "round": r,
                    "digest": nxt.digest,
                    "state": state_addr,
                    "accept": True,
                    "reason": "",
                },
            ).wire()
            for x in voters
        ]
        if tamper == "truncated" and r == 0:
            continue  # round 0 never finalised
        final = {
            "checkpoint": cp.wire(),
            "round": r,
            "state": state_addr,
            "beacon": beacon,
            "verifiers": eff,
            "skipped": skipped,
            "votes": votes,
        }
        led.append("CheckpointFinalized", final)
    led.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("world")
    spec = _spec(tmp)
    apply_profile(spec)  # trainers compute under the job's profile, as replay re-executes it
    objective = load_objective(spec)
    w = World(spec, specs.sign_job(GATEWAY, spec), objective)
    w.states[0] = DilocoState.start(spec, objective)
    write_ledger(w, tmp / "warmup")  # computes every round once; later ledgers reuse it
    return w


@pytest.fixture(scope="module")
def clean(world: World, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    node = tmp_path_factory.mktemp("clean") / "node"
    write_ledger(world, node)
    return node


def _codes(node: pathlib.Path) -> list[str]:
    return [v.code for v in audit_training_file(node / "ledger.db").violations]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trustgen.cli", *args], env=ENV, capture_output=True, text=True, timeout=300
    )


def test_the_clean_ledger_audits_clean_with_a_rejected_trainer_recorded(world: World, clean: pathlib.Path) -> None:
    a = audit_training_file(clean / "ledger.db")
    assert a.violations == [] and a.jobs == 1 and a.rounds == 2
    # round 1 rejected trainer 1's stale base (static check), with evidence; trainer 0 was accepted
    stale = world.works[(1, 1)][0]
    assert world.verdicts[stale.id].code == "stale_base"
    network, entries = read_ledger(clean / "ledger.db")
    assert [e.body["kind"] for e in entries if e.type == "Evidence"] == ["rejected_update"]


def test_a_round_run_again_after_a_restart_audits_clean(world: World, tmp_path: pathlib.Path) -> None:
    write_ledger(world, tmp_path / "node", "restart")
    network, entries = read_ledger(tmp_path / "node" / "ledger.db")
    assert sum(e.type == "UpdateCheck" for e in entries) == 9  # 3 + 3 of the attempt cut short + 3
    assert _codes(tmp_path / "node") == []
    assert export_run(tmp_path / "node", world.spec.id, tmp_path / "run") == {"rounds": 2, "updates": 3}


def test_hostile_entries_are_named_not_raised(world: World, clean: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    node = pathlib.Path(shutil.copytree(clean, tmp_path / "node"))
    led = Ledger(node / "ledger.db", world.spec.network, GATEWAY)
    _, entries = read_ledger(node / "ledger.db")
    final = next(e for e in entries if e.type == "CheckpointFinalized")
    v = VERIFIERS[0]
    body = {"verifier": v.public_key, "job": world.spec.id, "round": 0, "beacon": bytes(32), "verdicts": [[1, 2]]}
    led.append("UpdateCheck", {"check": sign(v, "UpdateCheck", world.spec.network, body).wire()})
    led.append("CheckpointFinalized", {**final.body, "skipped": [[1]], "votes": [7]})
    led.append("TrainingUpdate", {"update": b"\x00junk", "blob": "x"})
    body = {**final.body, "round": 2**62}
    led.append("CheckpointFinalized", body)
    led.close()
    codes = _codes(node)
    assert {"bad_updatecheck", "bad_checkpoint", "bad_deltaupdate", "bad_round"} <= set(codes), codes


@pytest.mark.parametrize(
    "tamper, code",
    [
        ("foreign_vote", "foreign_vote"),
        ("minority", "no_majority"),
        ("truncated", "round_gap"),
        ("drop_update", "verdicts_mismatch"),
        ("accepted_set", "bad_accepted_set"),
        ("updates_digest", "bad_updates_digest"),
        ("no_evidence", "missing_evidence"),
        ("false_evidence", "bad_evidence"),
    ],
)
def test_each_tampering_is_reported_with_its_code(world: World, tmp_path: pathlib.Path, tamper: str, code: str) -> None:
    write_ledger(world, tmp_path / "node", tamper)
    codes = _codes(tmp_path / "node")
    assert code in codes, codes


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_round_finalised_twice_differently_is_an_equivocation_within_and_across_replicas(
    world: World, clean: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    other = tmp_path / "other"
    write_ledger(world, other, "other_final")  # the gateway signed a second history
    assert _codes(other) == []  # consistent on its own
    audits = [audit_training_file(p / "ledger.db") for p in (clean, other)]
    found = cross_check_finalized(audits)
    assert [(i, v.code) for i, v in found] == [(1, "conflicting_finalized")] and "round 1" in found[0][1].where
    # one replica that holds both: the second CheckpointFinalized for round 1, appended to the feed
    _, theirs = read_ledger(other / "ledger.db")
    second = [e for e in theirs if e.type == "CheckpointFinalized"][-1]
    led = Ledger(tmp_path / "both" / "ledger.db", world.spec.network, GATEWAY)
    src = Ledger(clean / "ledger.db", world.spec.network)
    for payload, sig in src.entries(GATEWAY.public_key, 1, 10_000):
        led.ingest(payload, sig)
    src.close()
    led.append("CheckpointFinalized", second.body)
    led.close()
    assert "conflicting_finalized" in _codes(tmp_path / "both")
    # `trustgen audit` over both nodes reports it with the rest and exits 1
    r = cli("audit", str(clean), str(other), "--json")
    assert r.returncode == 1, r.stderr
    got = json.loads(r.stdout)
    assert any(v["code"] == "conflicting_finalized" for x in got["ledgers"] for v in x["violations"])


@pytest.mark.slow  # runs the CLI in a subprocess
def test_the_audit_command_includes_training(clean: pathlib.Path) -> None:
    r = cli("audit", str(clean), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)["ledgers"][0]
    assert rep["training_jobs"] == 1 and rep["training_rounds"] == 2


@pytest.mark.slow  # runs the CLI in a subprocess
def test_export_and_replay_from_a_node_directory(world: World, clean: pathlib.Path, tmp_path: pathlib.Path) -> None:
    held = export_run(clean, world.spec.id, tmp_path / "run")
    assert held == {"rounds": 2, "updates": 3}  # round 0: both trainers; round 1: trainer 0 only
    rep = replay_node(clean, world.spec.id)
    assert rep.ok and rep.checkpoints == 2 and rep.final_digest == world.states[2].digest.hex(), rep.first_bad
    r = cli("train", "replay", str(clean), "--job", world.spec.id.hex(), "--mode", "deltas", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_corrupted_blob_in_the_node_store_is_named(world: World, clean: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    node = pathlib.Path(shutil.copytree(clean, tmp_path / "node"))
    u, blob, _ = world.works[(0, 1)]
    path = node / "blobs" / blob_address(blob)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(RunError, match=blob_address(blob)[:16]):
        export_run(node, world.spec.id, tmp_path / "run")
    r = cli("train", "replay", str(node), "--job", world.spec.id.hex())
    assert r.returncode == 2 and "corrupted" in r.stderr and blob_address(blob)[:16] in r.stderr
    assert r.stderr.count("\n") == 1


def test_a_node_without_some_deltas_replays_through_the_finalised_state(
    world: World, clean: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import shutil

    node = pathlib.Path(shutil.copytree(clean, tmp_path / "node"))
    (node / "blobs" / blob_address(world.works[(0, 0)][1])).unlink()  # a node that never held it
    rep = replay_node(node, world.spec.id)
    # round 0 taken from its state blob (checked against the finalised digest and loss), round 1
    # recomputed from it
    assert rep.ok and rep.from_state == [0] and rep.checkpoints == 2, rep.first_bad
    assert rep.final_digest == world.states[2].digest.hex()
    (node / "blobs" / blob_address(encode_state(world.states[1]))).unlink()
    with pytest.raises(RunError, match="both missing"):
        replay_node(node, world.spec.id)


def test_the_blob_address_is_the_gossip_store_s() -> None:
    from trustgen.gossip.blobs import CHUNK, blob_digest
    from trustgen.training.ledger_job import BLOB_CHUNK

    assert BLOB_CHUNK == CHUNK
    for n in (0, 1, CHUNK, CHUNK + 1, 3 * CHUNK - 7):
        data = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert blob_address(data) == blob_digest(data)


def test_the_audit_is_pure_over_entries(clean: pathlib.Path) -> None:
    network, entries = read_ledger(clean / "ledger.db")
    assert audit_training(entries, network).violations == []
    # an update entry whose message does not open is named, not raised
    bad = [e for e in entries if e.type != "TrainingUpdate"]
    codes = {v.code for v in audit_training(bad, network).violations}
    assert "verdicts_mismatch" in codes


def test_the_explorer_shows_the_job_its_rounds_and_losses(world: World, clean: pathlib.Path) -> None:
    """The explorer's training pages read the real entries: the job by its id, every entry type
    of its rounds, and the finalised checkpoints' held-out losses as a plot."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from trustgen.explorer.app import create_app

    client = TestClient(create_app(clean))
    jid = world.spec.id.hex()
    assert jid in client.get("/training").text
    page = client.get(f"/training/{jid}")
    assert page.status_code == 200 and "<svg" in page.text
    for kind in ("TrainingJobAccepted", "TrainingUpdate", "UpdateCheck", "CheckpointProposed", "CheckpointFinalized"):
        assert kind in page.text
    assert client.get(f"/search?q={jid}").status_code == 200
