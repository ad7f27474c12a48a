"""Trajectory commitments: a worker records and commits its denoising trajectory, a verifier
re-executes a few steps chosen after the commitment. Real engines, real fakes."""

from __future__ import annotations

import json
import math
import os
import pathlib
import random

import numpy as np
import pytest
import torch

from tests.helpers import run_cli
from trustgen.consensus import challenge as netchallenge
from trustgen.engines.generate import load_engine
from trustgen.engines.params import SCHEDULERS, ImageParams
from trustgen.engines.trajectory import Trajectory, TrajectoryError
from trustgen.verifier.calibrate import _quantised
from trustgen.verifier.calibrate_traj import _wilson, sample_faking
from trustgen.verifier.trajectory import (
    audit_draw,
    challenge,
    check_trajectory,
    checks_for,
    choose_method,
    commitment,
    detection_probability,
)

P = ImageParams(prompt="a small red circle on a blue background", seed=5, steps=6)
BEACON = bytes(32)


def _claim(engine, p=P):
    out = engine.generate(p, record=True)
    return out.pixels, out.trajectory, commitment(out.trajectory), out.output_digest


def _check(engine, pixels, traj, commit, digest, p=P, checks=None, profile=None, beacon=BEACON):
    profile = engine.profile.to_dict() if profile is None else profile
    n = traj.steps if checks is None else checks
    return check_trajectory(engine, p, pixels, digest, commit, traj, profile, beacon, n)


def _beacon_for(steps: int, commit_root: bytes, digest: str, want: int, include: bool) -> bytes:
    """A beacon whose 2-step challenge does (or does not) include step `want`."""
    for i in range(10_000):
        b = i.to_bytes(32, "little")
        if (want in challenge(b, commit_root, digest, steps, 2)) == include:
            return b
    raise AssertionError("no such beacon")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_replays_bit_exactly(image_engine, scheduler):
    p = ImageParams(**{**P.to_dict(), "scheduler": scheduler, "steps": 4})
    pixels, traj, commit, digest = _claim(image_engine, p)
    assert np.array_equal(pixels, image_engine.generate(p).pixels)  # recording changes nothing
    assert commitment(image_engine.generate(p, record=True).trajectory) == commit  # deterministic
    vote = _check(image_engine, pixels, traj, commit, digest, p)
    assert vote.accept and vote.method == "trajectory" and vote.distance == 0.0, vote.reason
    assert vote.detail["steps_checked"] == list(range(traj.steps)) and vote.detail["same_profile"]


def test_cheating_worker_without_fakes_is_the_engine(image_engine):
    """The adversary's sampling loop, faking nothing, reproduces the pipeline bit for bit (so
    what the fake tests catch is the fake, not a difference of loops)."""
    pixels, traj = sample_faking(image_engine, P, set())
    honest = image_engine.generate(P, record=True)
    assert np.array_equal(pixels, honest.pixels) and traj.leaves() == honest.trajectory.leaves()


def test_adversaries_are_rejected(image_engine):
    pixels, traj, commit, digest = _claim(image_engine)

    def variant(**kw):
        return ImageParams(**{**P.to_dict(), **kw})

    def verdict(claim) -> str:
        vote = _check(image_engine, claim[0], claim[1], claim[2], digest)
        assert not vote.accept
        return vote.reason

    assert "initial noise" in verdict(_claim(image_engine, variant(seed=P.seed + 1)))
    assert "does not follow" in verdict(_claim(image_engine, variant(scheduler="dpmsolver")))
    assert "steps" in verdict(_claim(image_engine, variant(steps=3)))
    assert "model output at step" in verdict(_claim(image_engine, variant(prompt=P.prompt.replace("red", "green"))))
    quant = load_engine("tiny-image", "image")
    quant.pipe.unet = _quantised(image_engine.pipe.unet)
    assert "model output at step" in verdict(_claim(quant))
    # A replayed output: another task's result, committed and served whole.
    assert "initial noise" in verdict(_claim(image_engine, variant(seed=77, prompt="a large cross")))
    # An honest trajectory with another picture claimed: the decoded final latent gives it away.
    other = image_engine.generate(variant(seed=9)).pixels
    assert "decoded final latent" in verdict((other, traj, commit))


def test_one_faked_step_is_caught_exactly_when_challenged(image_engine):
    m = P.steps // 2
    pixels, traj = sample_faking(image_engine, P, {m})
    commit = commitment(traj)
    root, digest = bytes.fromhex(commit["root"]), "sha256:any"
    hit = _beacon_for(traj.steps, root, digest, m, include=True)
    miss = _beacon_for(traj.steps, root, digest, m, include=False)
    caught = _check(image_engine, pixels, traj, commit, digest, checks=2, beacon=hit)
    assert not caught.accept and f"step {m}" in caught.reason
    # Unchallenged, the fake passes: that is the C(N-f, c) / C(N, c) the policy documents.
    assert _check(image_engine, pixels, traj, commit, digest, checks=2, beacon=miss).accept


def test_tampered_or_malformed_trajectories(image_engine, tmp_path):
    pixels, traj, commit, digest = _claim(image_engine)
    bad = Trajectory([t.clone() for t in traj.latents], [t.clone() for t in traj.outputs])
    bad.latents[3].view(-1).view(torch.uint8)[7] ^= 1  # one bit of one committed latent
    v = _check(image_engine, pixels, bad, commit, digest)
    assert not v.accept and "commitment" in v.reason
    assert "steps" in _check(image_engine, pixels, traj, {**commit, "steps": 5}, digest).reason
    for broken in ({**commit, "root": "zz"}, {**commit, "steps": True}, {**commit, "scheme": "x"}, "root"):
        assert not _check(image_engine, pixels, traj, broken, digest).accept
    # Files: non-finite values, missing tensors and garbage bytes are refused on load.
    nan = Trajectory([t.clone() for t in traj.latents], [t.clone() for t in traj.outputs])
    nan.outputs[1][0, 0, 0, 0] = float("nan")
    nan.save(tmp_path / "nan.safetensors")
    short = Trajectory(traj.latents[:-1], traj.outputs)
    short.save(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(os.urandom(64))
    for name in ("nan", "short", "junk", "absent"):
        with pytest.raises(TrajectoryError):
            Trajectory.load(tmp_path / f"{name}.safetensors")
    traj.save(tmp_path / "ok.safetensors")
    assert Trajectory.load(tmp_path / "ok.safetensors").leaves() == traj.leaves()


def test_cross_profile_tolerance(image_engine):
    """A bfloat16 worker is accepted by a float32 verifier within the calibrated tolerance; an
    int8 model claiming another float32 device is not (its outputs exceed the float32 one)."""
    bf16 = load_engine("tiny-image", "image", dtype="bfloat16")
    pixels, traj, commit, digest = _claim(bf16)
    vote = _check(image_engine, pixels, traj, commit, digest, profile=bf16.profile.to_dict())
    assert vote.accept and not vote.detail["same_profile"] and 0 < vote.distance < vote.distance + vote.margin
    quant = load_engine("tiny-image", "image")
    quant.pipe.unet = _quantised(image_engine.pipe.unet)
    elsewhere = dict(image_engine.profile.to_dict(), device_name="cuda:another")
    pixels, traj, commit, digest = _claim(quant)
    vote = _check(image_engine, pixels, traj, commit, digest, profile=elsewhere)
    assert not vote.accept and "model output" in vote.reason


def test_challenge_and_detection_probability():
    root, digest = bytes(range(32)), "sha256:00"
    steps = challenge(b"beacon", root, digest, 20, 4)
    assert steps == sorted(set(steps)) and len(steps) == 4 and all(0 <= s < 20 for s in steps)
    assert steps == challenge(b"beacon", root, digest, 20, 4)
    assert len({tuple(challenge(bytes([i]), root, digest, 20, 2)) for i in range(50)}) > 25
    assert challenge(b"b", root, digest, 3, 10) == [0, 1, 2]
    assert detection_probability(20, 1, 2) == pytest.approx(0.1)
    assert detection_probability(20, 10, 2) == pytest.approx(1 - 45 / 190)
    assert detection_probability(20, 20, 1) == 1.0 and detection_probability(20, 0, 4) == 0.0
    assert checks_for(20, 0.5, 0.99) == 6
    # Measured over many beacons, a 3-of-20 fake with c = 2 is caught at the formula's rate.
    faked = {4, 11, 17}
    n = 20_000
    hits = sum(bool(faked & set(challenge(i.to_bytes(8, "little"), root, digest, 20, 2))) for i in range(n))
    lo, hi = _wilson(hits, n, z=4.0)
    assert lo <= detection_probability(20, 3, 2) <= hi
    # The audit draw picks its fraction of tasks.
    rng = random.Random(1)
    drawn = sum(audit_draw(b"beacon", rng.randbytes(32), 0.1) for _ in range(5000))
    lo, hi = _wilson(drawn, 5000, z=4.0)
    assert lo <= 0.1 <= hi and not audit_draw(b"b", b"t", 0.0) and audit_draw(b"b", b"t", 1.0)
    assert choose_method(False, b"b", b"t") == "regenerate" and choose_method(True, b"b", b"t", 0.0) == "trajectory"
    assert choose_method(True, b"b", b"t", 1.0) == "regenerate"
    assert math.isclose(sum(detection_probability(20, 20, c) for c in (1, 2)), 2.0)


@pytest.mark.slow
def test_stable_diffusion_pipeline_with_vae(tmp_path):
    """The latent-space path: a small StableDiffusionPipeline (VAE decoder) built from configs."""
    from scripts.build_tiny_sd import build

    engine = load_engine(str(build(tmp_path / "sd")), "image")
    for scheduler in ("ddim", "euler_ancestral", "dpmsolver"):
        p = ImageParams(prompt="a red circle", seed=3, height=32, width=32, steps=3, scheduler=scheduler)
        pixels, traj, commit, digest = _claim(engine, p)
        assert traj.latents[0].shape == (1, 4, 8, 8)
        vote = _check(engine, pixels, traj, commit, digest, p)
        assert vote.accept, vote.reason
        other = engine.generate(ImageParams(**{**p.to_dict(), "seed": 4})).pixels
        assert "decoded final latent" in _check(engine, other, traj, commit, digest, p).reason


@pytest.mark.slow
def test_verify_cli_trajectory(tmp_path):
    gen = run_cli(
        "generate", "image", "a red circle", "--steps", "5", "-o", "a.png", "--trajectory", "--json", cwd=tmp_path
    )
    assert gen.returncode == 0, gen.stderr
    result = json.loads(gen.stdout)
    assert result["trajectory"]["steps"] == 5 and (tmp_path / result["trajectory"]["path"]).is_file()
    (tmp_path / "r.json").write_text(gen.stdout)
    ok = run_cli("verify", str(tmp_path / "r.json"), "--method", "trajectory", "--checks", "2", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(json.loads(ok.stdout)["detail"]["steps_checked"]) == 2
    traj_file = tmp_path / result["trajectory"]["path"]
    data = bytearray(traj_file.read_bytes())
    data[-5] ^= 0xFF  # a byte of the last tensor
    traj_file.write_bytes(bytes(data))
    bad = run_cli("verify", str(tmp_path / "r.json"), "--method", "trajectory", "--json")
    assert bad.returncode == 1 and "commitment" in json.loads(bad.stdout)["reason"]


def test_calibration_fits_on_one_split_and_judges_the_other():
    """The report's arithmetic on pairs with known distances: tolerances come from the fit split
    only, held-out rates are counted from votes, and partial fakes match the formula."""
    from trustgen.verifier.calibrate_traj import MARGIN, Pair, report

    rng = random.Random(0)

    def pair(kind, split, per_step, faked=0, structural=""):
        return Pair(kind, split, structural, not structural, per_step, 0.0, rng.randbytes(32), faked)

    pairs = []
    for i in range(40):
        split = "fit" if i % 2 == 0 else "heldout"
        noise = 1e-4 if split == "fit" else 3e-4  # held-out honest errors larger than any fitted
        pairs += [
            pair("same_profile", split, [0.0] * 20),
            pair("weight_noise_1e-4", split, [noise] * 20),
            pair("bfloat16", split, [0.02] * 20),
            pair("other_seed", split, [], structural="noise"),
            pair("quantised_model", split, [0.01] * 20),
            pair("faked_middle_step", split, [0.0] * 10 + [0.05] + [0.0] * 9, faked=1),
        ]
    rep = report(pairs, checks=2, steps=20)
    assert rep["fitted_tolerance"]["same_dtype"] == pytest.approx((1 + MARGIN) * 1e-4)
    assert rep["fitted_tolerance"]["cross_dtype"] == pytest.approx((1 + MARGIN) * 0.02)
    held = rep["heldout"]["trajectory"]
    assert held["weight_noise_1e-4"]["accept_rate"] == 0.0  # 3e-4 > 2e-4: the margin was too thin
    assert held["bfloat16"]["accept_rate"] == 1.0 and held["same_profile"]["accept_rate"] == 1.0
    assert held["quantised_model"]["accept_rate"] == 0.0 and held["other_seed"]["accept_rate"] == 0.0
    assert rep["heldout"]["trajectory_claiming_bfloat16"]["quantised_model"]["accept_rate"] == 1.0
    assert rep["heldout_step_false_reject"]["k"] == 20 * 20
    d = rep["detection"]["faked_middle_step"]
    # The beacons are random draws: the 95 % interval misses the formula one run in twenty, so
    # the test allows five standard errors (a false failure about once in two million runs).
    f, n = d["formula"], d["draws"]
    assert f == pytest.approx(0.1) and abs(d["measured"] - f) <= 5 * math.sqrt(f * (1 - f) / n), d


@pytest.mark.slow
def test_calibration_end_to_end(tmp_path):
    from trustgen.verifier.calibrate_traj import calibrate_trajectory, write_report

    rep = calibrate_trajectory(2, steps=3)
    exact = rep["heldout"]["trajectory_exact"]
    assert exact["same_profile"]["accept_rate"] == 1.0
    full_fakes = ("other_seed", "other_sampler", "other_model", "fewer_steps", "quantised_model", "colour_only_prompt")
    assert all(exact[k]["accept_rate"] == 0.0 for k in full_fakes)
    assert all(rep["heldout"]["trajectory"][k]["accept_rate"] == 1.0 for k in ("threads", "bfloat16"))
    files = write_report(rep, tmp_path)
    assert all(pathlib.Path(f).stat().st_size > 0 for f in files.values())


def test_trajectory_blob_round_trips_and_refuses_garbage():
    t = Trajectory([torch.randn(1, 3, 4, 4) for _ in range(3)], [torch.randn(1, 3, 4, 4) for _ in range(2)])
    t.outputs[1] = t.outputs[0]  # one object reused (a faked step): still serialisable
    assert Trajectory.from_bytes(t.to_bytes()).leaves() == t.leaves()
    for junk in (b"", b"garbage", t.to_bytes()[:60]):
        with pytest.raises(TrajectoryError):
            Trajectory.from_bytes(junk)


def _net_vote(steps, accept=True, beacon=BEACON, **checks):
    """A trajectory Vote body and its Result body as the network signs them."""
    root, digest, task_id = bytes(range(32)), "sha256:" + "ab" * 32, bytes(32)
    result = {
        "output": {"trajectory": {"scheme": netchallenge.SCHEME, "root": root.hex(), "steps": 20, "blob": "cd" * 32}},
        "output_digest": digest,
    }
    body = {"beacon": beacon, "beacon_size": 9, "steps": steps, "output_rel_l2": [0.0] * len(steps)}
    body |= {"chain_rel_l2": 0.0, "pixel_distance": 0.0} | checks
    return {"task_id": task_id, "accept": accept, "checks": body}, result, (root, digest)


def test_the_audit_rule_for_trajectory_votes(monkeypatch):
    monkeypatch.setattr(netchallenge, "AUDIT_FRACTION", 0.0)
    ok = lambda root, size: size == 9  # noqa: E731 - the gateway's commitment after the result
    vote, result, (root, digest) = _net_vote([])
    want = netchallenge.challenge(BEACON, root, digest, 20, netchallenge.CHECKS)
    vote["checks"]["steps"], vote["checks"]["output_rel_l2"] = want, [0.0, 0.0]
    assert netchallenge.vote_problem(vote, result, ok) is None
    forged = {**vote, "checks": {**vote["checks"], "steps": [s + 1 for s in want]}}
    assert "not the challenge" in netchallenge.vote_problem(forged, result, ok)
    assert "beacon" in netchallenge.vote_problem(vote, result, lambda root, size: False)
    assert "malformed" in netchallenge.vote_problem({**vote, "checks": {"steps": want}}, result, ok)
    # A rejection before any re-execution lists no steps; an acceptance must.
    assert netchallenge.vote_problem(_net_vote([], accept=False)[0], result, ok) is None
    assert "not the challenge" in netchallenge.vote_problem(_net_vote([], accept=True)[0], result, ok)
    monkeypatch.setattr(netchallenge, "AUDIT_FRACTION", 1.0)  # every task drawn for regeneration
    assert "audit draw" in netchallenge.vote_problem(vote, result, ok)
