"""SPSA direction kinds (training/directions.py): a job that names none keeps its bytes and id;
`tensor-power` is a pure function of job and step, replays in another process, and the spot
check accepts an honest sample and rejects a forged one under it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, sign
from trustgen.errors import UsageError
from trustgen.training import directions, spsa
from trustgen.training import spec as specs
from trustgen.training.checks import check_sample, honest_diffs
from trustgen.training.job import SpsaState
from trustgen.training.objectives import load_objective
from trustgen.training.records import open_run
from trustgen.training.run import run_job
from trustgen.training.tensors import tensor_digest

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def small(**algo: object) -> specs.JobSpec:
    raw = specs.as_table(specs.load("spsa").data)
    raw.pop("trainers")
    raw["data"]["eval_windows"] = 16
    raw["algorithm"].update(algo)
    return specs.from_dict(raw)


def test_a_job_naming_no_direction_keeps_its_bytes_and_id() -> None:
    base = small()
    assert "direction" not in base.algorithm and "direction_power" not in base.algorithm
    assert small(direction="full", direction_power=0.0).id == base.id  # the defaults are left out
    power = small(direction="tensor-power", direction_power=0.25)
    assert power.id != base.id and power.algorithm["direction"] == "tensor-power"
    assert specs.from_dict(specs.as_table(power.data)).id == power.id
    assert set(directions.DIRECTIONS) == set(specs.SPSA_DIRECTIONS)
    with pytest.raises(UsageError, match="algorithm.direction = 'sideways'"):
        small(direction="sideways")
    with pytest.raises(UsageError, match="algorithm.direction_power = 2.0 is outside"):
        small(direction="tensor-power", direction_power=2.0)
    # a signed job that predates the field opens as it was signed
    author = Identity.generate()
    signed = base.with_trainers([Identity.generate().public_key])
    assert specs.open_job(specs.sign_job(author, signed).wire(), base.network)[1].id == signed.id
    # a signed spec that carries a default-valued direction is not the canonical spec: refused
    padded = specs.JobSpec({**signed.data, "algorithm": {**signed.algorithm, "direction": "full"}})
    with pytest.raises(MessageError, match="not in canonical form"):
        specs.open_job(specs.sign_job(author, padded).wire(), base.network)


def test_tensor_power_is_seeded_renormalised_and_full_at_power_zero() -> None:
    g = torch.Generator().manual_seed(0)
    p = {"w": torch.randn(40, 25, generator=g), "b": torch.zeros(10)}
    w = directions.tensor_weights(p, 0.5)
    assert abs(sum(p[n].numel() * w[n] ** 2 for n in p) - 1010) < 1e-9 and w["b"] > w["w"]
    hp = {"direction_power": 0.5}
    z = directions.draw("tensor-power", b"j" * 32, 3, p, hp)
    assert tensor_digest(z) == tensor_digest(directions.draw("tensor-power", b"j" * 32, 3, p, hp))
    assert tensor_digest(z) != tensor_digest(directions.draw("tensor-power", b"j" * 32, 4, p, hp))
    full = spsa.direction(b"j" * 32, 3, p)
    assert torch.equal(z["b"], full["b"] * w["b"]) and torch.equal(z["w"], full["w"] * w["w"])
    zero = directions.draw("tensor-power", b"j" * 32, 3, p, {"direction_power": 0.0})
    assert tensor_digest(zero) == tensor_digest(full)
    with pytest.raises(UsageError, match="not available"):
        directions.draw("sideways", b"j" * 32, 3, p, hp)


@pytest.mark.slow  # loads tiny-text and runs forward passes
def test_the_spot_check_accepts_an_honest_sample_and_rejects_a_forged_one_under_tensor_power() -> None:
    spec = small(direction="tensor-power", direction_power=0.25, batch=4)
    trainer = Identity.generate()
    spec = spec.with_trainers([trainer.public_key])
    obj = load_objective(spec)
    state = SpsaState.start(spec, obj)
    z = state.direction()
    assert tensor_digest(z) != tensor_digest(spsa.direction(spec.id, 0, state.params))
    hp = spec.algorithm
    diffs = honest_diffs(obj, spec, state.params, z, 0, trainer.public_key)
    q = spsa.scalar(diffs, hp["scale"])
    assert -spsa.QMAX <= q <= spsa.QMAX

    def update(ds: list[float]) -> Signed:
        body = {
            "trainer": trainer.public_key,
            "job": spec.id,
            "step": 0,
            "q": spsa.scalar(ds, hp["scale"]),
            "diffs": ds,
        }
        return sign(trainer, "SpsaUpdate", spec.network, body)

    honest = update(diffs)
    assert all(check_sample(obj, spec, state.params, z, honest, j).accept for j in range(4))
    # a forger shifts every sample by 3 quanta: its byte is their mean (the free check passes),
    # the re-computed sample is not
    forged = update([d + 3 * hp["scale"] for d in diffs])
    res = check_sample(obj, spec, state.params, z, forged, 2)
    assert not res.accept and "re-computed" in res.reason
    # the same sample values under the full direction are another trainer's work: rejected
    full_z = spsa.direction(spec.id, 0, state.params)
    assert not check_sample(obj, spec, state.params, full_z, honest, 0).accept


@pytest.mark.slow
def test_a_tensor_power_run_replays_bit_for_bit_in_another_process(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "run"
    spec = small(direction="tensor-power", direction_power=0.25, steps=4, eval_every=2, check_probability=1.0)
    info = run_job(spec, out, trainers=2)
    assert info["rejected"] == [] and info["updates"] == 8 and info["checks"]["count"] == 8
    assert open_run(out).spec.algorithm["direction"] == "tensor-power"
    wire = bytes.fromhex((out / "updates.log").read_text().splitlines()[0])
    assert len(wire) <= 400  # the signed record does not depend on the direction kind
    r = subprocess.run(
        [sys.executable, "-m", "trustgen.cli", "train", "replay", str(out), "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["final_digest"] == info["evals"][-1]["digest"]
