"""Verifiable training, part 1: specs, data selection, the algorithms' arithmetic, and real runs
with trainer processes that replay bit for bit, pass spot checks, and catch every cheat."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from trustgen.consensus.identity import Identity
from trustgen.errors import UsageError
from trustgen.training import aggregate, data, diloco, spsa
from trustgen.training import spec as specs
from trustgen.training.records import RunError, open_run
from trustgen.training.run import run_job
from trustgen.training.tensors import TensorError, tensor_digest

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def small(name: str, **algo: object) -> specs.JobSpec:
    raw = specs.as_table(specs.load(name).data)
    raw.pop("trainers")
    raw["data"]["eval_windows"] = 16
    raw["algorithm"].update(algo)
    return specs.from_dict(raw)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trustgen.cli", "train", *args], env=ENV, capture_output=True, text=True, timeout=600
    )


# -- specs and data ------------------------------------------------------------------------------


def test_spec_is_canonical_and_its_digest_is_the_job_id() -> None:
    a = specs.load("spsa")
    raw = specs.as_table(a.data)
    raw["algorithm"] = {k: v for k, v in raw["algorithm"].items() if k not in ("eps", "lr")}  # defaults fill in
    b = specs.from_dict(raw)
    assert a.data["algorithm"]["eps"] == b.data["algorithm"]["eps"]
    assert specs.from_dict(specs.as_table(a.data)).id == a.id
    raw["algorithm"]["steps"] = 201
    assert specs.from_dict(raw).id != a.id
    assert len(a.id) == 32


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["algorithm"].update(steps=0), "algorithm.steps = 0 is outside"),
        (lambda r: r["algorithm"].update(lr="fast"), "algorithm.lr must be float"),
        (lambda r: r["algorithm"].update(surprise=1), "unknown fields: surprise"),
        (lambda r: r["profile"].update(dtype="float16"), "profile.dtype"),
        (lambda r: r.update(extra={}), "unknown sections: extra"),
        (lambda r: r["model"].update(digest="md5:x"), "sha256"),
        (lambda r: r.update(trainers={"keys": ["ab" * 31]}), "not 64 hex digits"),
        (lambda r: r.update(trainers={"keys": ["ab" * 32, "ab" * 32]}), "listed twice"),
        (lambda r: r.update(trainers={"keys": ["00" * 32] * 65}), "at most 64"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(edit, message: str) -> None:  # noqa: ANN001
    raw = specs.as_table(specs.load("spsa").data)
    edit(raw)
    with pytest.raises(UsageError, match=message):
        specs.from_dict(raw)


def test_a_signed_job_round_trips_and_a_foreign_edit_is_refused() -> None:
    author = Identity.generate()
    spec = specs.load("diloco").with_trainers([Identity.generate().public_key])
    msg = specs.sign_job(author, spec)
    _, again = specs.open_job(msg.wire(), spec.network)
    assert again.id == spec.id
    bad = bytearray(msg.wire())
    at = bytes(bad).find(b"tiny-text-stdlib")
    bad[at] ^= 1
    with pytest.raises(Exception, match="signature|malformed"):
        specs.open_job(bytes(bad), spec.network)


def test_data_selection_is_a_pure_function_of_job_step_trainer_and_index() -> None:
    train = tuple(range(0, 1000, 3))
    a = data.select(b"j" * 32, 7, b"t" * 32, 8, train)
    assert a == data.select(b"j" * 32, 7, b"t" * 32, 8, train)
    assert a != data.select(b"j" * 32, 8, b"t" * 32, 8, train)
    assert a != data.select(b"j" * 32, 7, b"u" * 32, 8, train)
    assert all(i in train for i in a)
    s = data.split("sha256:" + "0" * 64, 2000, 100, 50)
    assert 150 < len(s.heldout) < 250 and not set(s.heldout) & set(s.train) and s.eval == s.heldout[:50]


# -- arithmetic ----------------------------------------------------------------------------------


def test_spsa_bytes_saturate_and_the_update_ignores_arrival_order() -> None:
    assert spsa.quantise(1e9, 0.5) == 127 and spsa.quantise(-1e9, 0.5) == -127
    assert spsa.quantise(float("nan"), 1.0) == 0 and spsa.quantise(0.74, 0.5) == 1
    p = {"w": torch.randn(50, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(3)}
    z = spsa.direction(b"j" * 32, 3, p)
    assert tensor_digest(z) == tensor_digest(spsa.direction(b"j" * 32, 3, p))
    a, b = {k: v.clone() for k, v in p.items()}, {k: v.clone() for k, v in p.items()}
    spsa.apply(a, z, [5, -3, 127, 9], 1e-3, 0.5)
    spsa.apply(b, z, [127, 9, 5, -3], 1e-3, 0.5)
    assert tensor_digest(a) == tensor_digest(b) != tensor_digest(p)


def test_robust_rules_against_a_reference_and_an_outlier() -> None:
    g = torch.Generator().manual_seed(1)
    honest = [{"w": torch.randn(200, generator=g) * 0.01 + 1.0} for _ in range(4)]
    bad = {"w": honest[0]["w"] * -10.0}
    deltas = honest + [bad]
    stack = torch.stack([d["w"] for d in deltas])
    # references computed directly: sort, drop one each side (trim 0.2 of 5), average
    ref_trim = torch.sort(stack, dim=0).values[1:4].mean(dim=0)
    assert torch.equal(aggregate.aggregate("trimmed-mean", deltas, {"trim": 0.2, "clip": 1.0})["w"], ref_trim)
    assert torch.allclose(
        aggregate.aggregate("median", deltas, {"trim": 0, "clip": 1})["w"], stack.median(dim=0).values
    )
    honest_mean = torch.stack([d["w"] for d in honest]).mean(dim=0)
    for rule in ("trimmed-mean", "median", "centred-clip"):
        out = aggregate.aggregate(rule, deltas, {"trim": 0.2, "clip": 1.0})["w"]
        assert (out - honest_mean).norm() < 0.1 * honest_mean.norm(), rule
    plain = aggregate.aggregate("mean", deltas, {"trim": 0.2, "clip": 1.0})["w"]
    assert (plain - honest_mean).norm() > 1.0 * honest_mean.norm()


def test_int8_deltas_round_trip_within_half_a_step_and_bad_blobs_are_refused() -> None:
    like = {"a": torch.zeros(4, 5), "b": torch.zeros(7)}
    d = {"a": torch.randn(4, 5), "b": torch.zeros(7)}
    blob = diloco.encode_delta(d, "int8")
    back = diloco.decode_delta(blob, like, "int8", "t")
    step = float(d["a"].abs().max()) / 127
    assert float((back["a"] - d["a"]).abs().max()) <= step / 2 + 1e-7 and torch.equal(back["b"], d["b"])
    big = {"w": torch.randn(256, 256)}
    assert len(diloco.encode_delta(big, "int8")) * 3.5 <= len(diloco.encode_delta(big, "float32"))
    with pytest.raises(TensorError, match="not a safetensors blob"):
        diloco.decode_delta(b"\x80\x04garbage", like, "int8", "t")
    with pytest.raises(TensorError, match="expected"):
        diloco.decode_delta(blob, {"a": torch.zeros(5, 4), "b": torch.zeros(7)}, "int8", "t")
    nan = diloco.encode_delta({"a": torch.full((4, 5), float("nan")), "b": torch.zeros(7)}, "float32")
    with pytest.raises(TensorError, match="non-finite"):
        diloco.decode_delta(nan, like, "float32", "t")


# -- real runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spsa_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("spsa") / "run"
    run_job(small("spsa", steps=6, eval_every=3, check_probability=1.0), out, trainers=2)
    return out


@pytest.fixture(scope="module")
def diloco_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("diloco") / "run"
    run_job(small("diloco", rounds=2, inner_steps=3, check_probability=1.0), out, trainers=3, keep_states=True)
    return out


@pytest.mark.slow
def test_spsa_run_replays_bit_for_bit_in_other_processes_at_one_and_two_threads(spsa_run: pathlib.Path) -> None:
    info = json.loads((spsa_run / "run.json").read_text())
    assert info["rejected"] == [] and info["checks"]["count"] == 12 and info["updates"] == 12
    assert [e["step"] for e in info["evals"]] == [0, 3, 6]
    for threads in ("1", "2"):
        r = cli("replay", str(spsa_run), "--threads", threads, "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["final_digest"] == info["evals"][-1]["digest"] and rep["checkpoints"] == 3
        assert rep["same_profile"] == (threads == "1")
    r = cli("check-step", str(spsa_run), "--step", "4", "--trainer", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["accept"], r.stdout + r.stderr
    # the final checkpoint is a model directory the engines load
    from trustgen.engines.registry import resolve

    assert resolve(str(spsa_run / "final")).digest == info["final_model_digest"]


@pytest.mark.slow
def test_replay_names_what_is_wrong_with_a_damaged_run(spsa_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    def copy(name: str) -> pathlib.Path:
        return pathlib.Path(shutil.copytree(spsa_run, tmp_path / name))

    # truncated update list: the checkpoint at step 6 commits to updates that are gone
    d = copy("truncated")
    lines = (d / "updates.log").read_text().splitlines()
    (d / "updates.log").write_text("\n".join(lines[:-1]) + "\n")
    r = cli("replay", str(d), "--json", "--no-losses")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"] == {
        "step": 6,
        "what": "updates",
        "detail": "the update list differs from the one the checkpoint commits to (missing, extra or reordered updates)",
    }
    # an update signed by a key outside the trainer set
    d = copy("stranger")
    from trustgen.consensus.messages import sign

    job = open_run(d).spec
    stranger = Identity.generate()
    body = {"trainer": stranger.public_key, "job": job.id, "step": 5, "q": 0, "diffs": [0.0] * 8}
    u = sign(stranger, "SpsaUpdate", job.network, body)
    with (d / "updates.log").open("a") as f:
        f.write(u.wire().hex() + "\n")
    r = cli("replay", str(d))
    assert r.returncode == 2 and "not a trainer of this job" in r.stderr and r.stderr.count("\n") == 1
    # the spec edited after the start: the author's signature no longer holds
    d = copy("edited")
    wire = bytearray((d / "job.wire").read_bytes())
    at = bytes(wire).find(b"stdlib-docs")
    wire[at : at + 6] = b"STDLIB"
    (d / "job.wire").write_bytes(bytes(wire))
    r = cli("replay", str(d))
    assert r.returncode == 2 and "job.wire" in r.stderr and "signature" in r.stderr
    # one flipped byte in a recorded update
    d = copy("flipped")
    lines = (d / "updates.log").read_text().splitlines()
    raw = bytearray(bytes.fromhex(lines[2]))
    raw[-5] ^= 0x01
    lines[2] = raw.hex()
    (d / "updates.log").write_text("\n".join(lines) + "\n")
    r = cli("replay", str(d))
    assert r.returncode == 2 and "updates.log: line 3" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, p, code, reason",
    [
        ("wrong-scalar", 0.0, "wrong_scalar", "its samples give"),  # the free arithmetic check, every update
        ("forged-samples", 1.0, "forged_sample", "re-computed"),  # the sampled re-computation
    ],
)
def test_a_trainer_sending_wrong_scalars_is_caught_at_its_first_checked_step(
    tmp_path: pathlib.Path, mode: str, p: float, code: str, reason: str
) -> None:
    out = tmp_path / "run"
    s = run_job(small("spsa", steps=3, eval_every=3, check_probability=p), out, 2, mode, 1)
    assert [(r["index"], r["step"], r["code"]) for r in s["rejected"]] == [(1, 0, code)]
    assert reason in s["rejected"][0]["reason"]
    assert s["updates"] == 3  # the honest trainer's three bytes; none of the cheater's
    assert cli("replay", str(out), "--no-losses").returncode == 0


@pytest.mark.slow
def test_local_sgd_run_replays_and_inner_steps_check_within_tolerance(diloco_run: pathlib.Path) -> None:
    info = json.loads((diloco_run / "run.json").read_text())
    assert info["rejected"] == [] and info["updates"] == 6 and info["checks"]["count"] == 6
    assert info["final_heldout_loss"] < info["base_heldout_loss"]
    r = cli("replay", str(diloco_run), "--json", "--no-losses")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr
    for inner, threads in (("2", "1"), ("3", "2")):
        r = cli(
            "check-step",
            str(diloco_run),
            "--step",
            "1",
            "--trainer",
            "0",
            "--inner",
            inner,
            "--threads",
            threads,
            "--json",
        )
        res = json.loads(r.stdout)
        assert r.returncode == 0 and res["accept"], r.stdout + r.stderr
        assert res["same_profile"] == (threads == "1") and res["distance"] < 1e-2
    r = cli("show", str(diloco_run), "--json")
    shown = json.loads(r.stdout)
    assert [c["step"] for c in shown["checkpoints"]] == [0, 1, 2] and pathlib.Path(shown["plot"]).stat().st_size > 1000


@pytest.mark.slow
def test_a_corrupted_delta_blob_is_named(diloco_run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    import shutil

    d = pathlib.Path(shutil.copytree(diloco_run, tmp_path / "run"))
    u = open_run(d).updates[0]
    blob = d / "blobs" / u.body["delta"].hex()
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 0xFF
    blob.write_bytes(bytes(raw))
    r = cli("replay", str(d), "--mode", "deltas")
    assert r.returncode == 2 and "is corrupted" in r.stderr and u.body["delta"].hex()[:16] in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, code", [("scaled", "failed_check"), ("sign-flip", "failed_check"), ("stale-base", "stale_base")]
)
def test_cheating_trainers_are_rejected_with_the_reason(tmp_path: pathlib.Path, mode: str, code: str) -> None:
    s = run_job(small("diloco", rounds=2, inner_steps=2, check_probability=1.0), tmp_path / "run", 2, mode, 1)
    bad = [(r["index"], r["code"]) for r in s["rejected"]]
    assert bad == [(1, code)], s["rejected"]
    # stale base shows only from round 1 (round 0's base is the job's start for everyone)
    assert s["rejected"][0]["step"] == (1 if mode == "stale-base" else 0)


def test_bad_commands_fail_in_one_line(tmp_path: pathlib.Path) -> None:
    r = cli("replay", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    r = cli("run", "no-such-job", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "shipped jobs" in r.stderr
    with pytest.raises(RunError, match="job.wire is missing"):
        open_run(tmp_path)


# -- what a hostile run directory or peer can try -----------------------------------------------


def test_trimming_always_cuts_at_least_one_value_from_three_up() -> None:
    assert [aggregate.trimmed_k(n, 0.2) for n in (1, 2, 3, 4, 5, 10, 11)] == [0, 0, 1, 1, 1, 2, 2]
    assert aggregate.trimmed_k(4, 0.0) == 0 and aggregate.trimmed_k(3, 0.49) == 1


def test_delta_blobs_with_a_negative_or_huge_scale_are_refused() -> None:
    from trustgen.training.tensors import to_bytes

    like = {"w": torch.zeros(3)}
    for scale in (-1.0, 1e30):
        blob = to_bytes({"q/w": torch.ones(3, dtype=torch.int8), "s/w": torch.tensor(scale)})
        with pytest.raises(TensorError, match="scale"):
            diloco.decode_delta(blob, like, "int8", "t")


def test_a_job_signed_with_a_non_canonical_spec_is_refused() -> None:
    from trustgen.consensus.messages import MessageError, sign

    author = Identity.generate()
    spec = specs.load("spsa")
    data = {**spec.data, "algorithm": {**spec.data["algorithm"], "lr": 1}}  # an int where a float belongs
    msg = sign(author, "TrainingJob", spec.network, {"author": author.public_key, "spec": data})
    with pytest.raises(MessageError, match="canonical"):
        specs.open_job(msg.wire(), spec.network)


@pytest.mark.slow
def test_replay_refuses_forged_checkpoints_and_names_forged_updates(
    spsa_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import shutil

    from trustgen.consensus.messages import sign

    job = open_run(spsa_run).spec
    # a checkpoint record from someone who is not the job's author, far in the future
    d = pathlib.Path(shutil.copytree(spsa_run, tmp_path / "forged-checkpoint"))
    other = Identity.generate()
    body = {
        "publisher": other.public_key,
        "job": job.id,
        "step": 2**62,
        "digest": b"\0" * 32,
        "updates": b"\0" * 32,
        "heldout_loss": 1.0,
    }
    with (d / "checkpoints.log").open("a") as f:
        f.write(sign(other, "TrainingCheckpoint", job.network, body).wire().hex() + "\n")
    r = cli("replay", str(d))
    assert r.returncode == 2 and "not signed by the job's author" in r.stderr
    # a trainer's update whose byte contradicts its committed samples, re-signed by that trainer
    d = pathlib.Path(shutil.copytree(spsa_run, tmp_path / "forged-byte"))
    lines = (d / "updates.log").read_text().splitlines()
    trainer = Identity.load(d / "keys" / "trainer-0")
    run = open_run(d)
    n = next(i for i, u in enumerate(run.updates) if u.signer == trainer.public_key and u.body["step"] == 1)
    b = dict(run.updates[n].body)
    b["q"] = 127 if b["q"] != 127 else -127
    lines[n] = sign(trainer, "SpsaUpdate", job.network, b).wire().hex()
    (d / "updates.log").write_text("\n".join(lines) + "\n")
    r = cli("replay", str(d), "--json", "--no-losses")
    bad = json.loads(r.stdout)["first_bad"]
    assert r.returncode == 1 and bad["step"] == 1 and bad["what"] == "wrong_scalar", r.stdout


@pytest.mark.slow
def test_a_duplicated_delta_is_named_and_cross_profile_replay_re_executes(
    diloco_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import shutil

    r = cli("replay", str(diloco_run), "--threads", "2", "--no-losses", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"] and not rep["same_profile"], r.stdout + r.stderr
    d = pathlib.Path(shutil.copytree(diloco_run, tmp_path / "dup"))
    lines = (d / "updates.log").read_text().splitlines()
    (d / "updates.log").write_text("\n".join([lines[0], *lines]) + "\n")
    r = cli("replay", str(d), "--json", "--mode", "deltas", "--no-losses")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"]["what"] == "duplicate", r.stdout


@pytest.mark.slow
def test_replay_checks_the_final_model_and_every_evaluation_point(
    spsa_run: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import shutil

    rep = json.loads(cli("replay", str(spsa_run), "--json", "--no-losses").stdout)
    info = json.loads((spsa_run / "run.json").read_text())
    assert rep["ok"] and rep["final_step"] == info["final_step"]
    # a final model that is not the best checkpoint: one weight file byte changed
    d = pathlib.Path(shutil.copytree(spsa_run, tmp_path / "final"))
    weights = d / "final" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    r = cli("replay", str(d), "--json", "--no-losses")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"]["what"] == "final"
    # an evaluation point whose record was dropped
    d = pathlib.Path(shutil.copytree(spsa_run, tmp_path / "gap"))
    lines = (d / "checkpoints.log").read_text().splitlines()
    (d / "checkpoints.log").write_text("\n".join([lines[0], lines[2]]) + "\n")
    r = cli("replay", str(d), "--json", "--no-losses")
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad"] == {
        "step": 3,
        "what": "missing_checkpoint",
        "detail": "no record at this evaluation point",
    }
