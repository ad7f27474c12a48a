"""Image training objectives: deterministic denoising losses, training that moves only the
trainable tensors, and checkpoints that load as normal image models."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trustgen.engines.image_engine import ImageEngine
from trustgen.engines.params import ImageParams
from trustgen.engines.registry import resolve
from trustgen.errors import ModelError, UsageError
from trustgen.training import diloco, spsa
from trustgen.training.data import select
from trustgen.training.image_objectives import TOKEN_PARAM, load_image
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.spec import from_dict, load
from trustgen.training.tensors import Tensors, clone, tensor_digest

TRAINER = b"\x07" * 32

_CHILD = """
import json, sys
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.spec import load
spec = load(sys.argv[1])
apply_profile(spec)
objective = load_objective(spec)
indices = json.loads(sys.argv[2])
print(float(objective.loss(objective.initial(), indices)).hex())
"""


@pytest.fixture(scope="module")
def inversion():
    spec = load("textual-inversion")
    apply_profile(spec)
    return load_objective(spec)


@pytest.fixture(scope="module")
def denoise():
    spec = load("unet-denoise")
    apply_profile(spec)
    return load_objective(spec)


@pytest.fixture(autouse=True)
def job_profile():
    apply_profile(load("textual-inversion"))  # both shipped jobs: float32, one thread, deterministic


def _local_sgd(objective, steps: int, lr: float) -> Tensors:  # noqa: ANN001
    """`steps` inner AdamW steps from the objective's start, on the batches trainer TRAINER draws."""
    spec = objective.spec
    hp = {**spec.algorithm, "inner_lr": lr}
    state = diloco.initial_state(objective.initial())
    for h in range(steps):
        idx = select(spec.id, h, TRAINER, hp["batch"], objective.split.train)
        state = diloco.inner_step(objective, state, h + 1, idx, hp)
    return diloco.params_of(state)


def _frozen(objective) -> bytes:  # noqa: ANN001
    pipe = objective.pipe
    return tensor_digest(
        {**pipe.unet.state_dict(), **{"te." + k: v for k, v in pipe.text_encoder.state_dict().items()}}
    )


def test_losses_are_deterministic_in_and_across_processes(inversion, denoise):
    idx = list(inversion.split.train[:6])
    first = inversion.loss(inversion.initial(), idx)
    assert torch.equal(first, inversion.loss(inversion.initial(), idx))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, "textual-inversion", json.dumps(idx)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert float.fromhex(child.stdout.strip().splitlines()[-1]) == float(first)
    params = denoise.initial()
    assert torch.equal(denoise.loss(params, idx), denoise.loss(params, idx))
    assert denoise.eval_loss(params) == denoise.eval_loss(params)
    # Every sample has its own noise and timestep: two samples of one image differ.
    assert not torch.equal(inversion.noisy[0], inversion.noisy[1])
    assert set(inversion.split.train).isdisjoint(inversion.split.heldout)


def test_textual_inversion_learns_only_the_new_row_and_saves_a_model_that_uses_it(inversion, tmp_path):
    start = inversion.initial()
    assert list(start) == [TOKEN_PARAM]
    cross = inversion.pipe.tokenizer.convert_tokens_to_ids("cross")
    assert torch.equal(start[TOKEN_PARAM], inversion.pipe.text_encoder.get_input_embeddings().weight[cross])
    frozen = _frozen(inversion)
    # One SPSA step: the shared direction spans the one row, and the step moves only it.
    spec = inversion.spec
    z = spsa.direction(spec.id, 0, start)
    idx = select(spec.id, 0, TRAINER, 8, inversion.split.train)
    diffs = spsa.sample_diffs(inversion, start, z, idx, 3e-3)
    assert diffs == spsa.sample_diffs(inversion, start, z, idx, 3e-3)
    g = sum(diffs) / len(diffs)
    assert g != 0.0
    stepped = clone(start)
    spsa.apply(stepped, z, [spsa.quantise(g, abs(g) / 10)], 1.0, abs(g) / 10)
    assert list(stepped) == [TOKEN_PARAM] and not torch.equal(stepped[TOKEN_PARAM], start[TOKEN_PARAM])
    before = inversion.eval_loss(start)
    learned = _local_sgd(inversion, steps=8, lr=0.01)
    assert inversion.eval_loss(learned) < before
    assert _frozen(inversion) == frozen  # the loss never wrote into the pipeline

    out = tmp_path / "inverted"
    inversion.save(learned, out)
    ref = resolve(str(out))
    assert ref.kind == "image" and ref.digest != inversion.ref.digest
    again = tmp_path / "again"
    inversion.save(clone(learned), again)
    assert resolve(str(again)).digest == ref.digest  # a checkpoint is a pure function of the tensors

    table = load_file(out / "text_encoder" / "model.safetensors")
    (name,) = [k for k, v in table.items() if v.shape[0] == inversion.token_id + 1]
    assert torch.equal(table[name][inversion.token_id], learned[TOKEN_PARAM])
    assert torch.equal(table[name][: inversion.token_id], inversion.table)
    # UNet and scheduler are the base model's, byte for byte.
    for rel in ("unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (out / rel).read_bytes() == (inversion.ref.path / rel).read_bytes()

    engine = ImageEngine(ref, threads=1)
    assert engine.pipe.tokenizer("a <purple-cross>").input_ids[:2] == [int(inversion.ids[0, 0]), inversion.token_id]
    task = ImageParams(prompt="a <purple-cross>", seed=4, steps=6)
    first, second = engine.generate(task), engine.generate(task)
    assert first.output_digest == second.output_digest
    # The learned row is what the prompt reads: the start word draws something else.
    assert engine.generate(ImageParams(prompt="a cross", seed=4, steps=6)).output_digest != first.output_digest


def test_unet_denoise_trains_every_unet_parameter_and_saves_a_loadable_unet(denoise, tmp_path):
    start = denoise.initial()
    assert set(start) == {n for n, _ in denoise.pipe.unet.named_parameters()}
    frozen = _frozen(denoise)
    before = denoise.eval_loss(start)
    learned = _local_sgd(denoise, steps=4, lr=1e-4)
    assert denoise.eval_loss(learned) < before
    assert _frozen(denoise) == frozen
    assert all(learned[n].shape == start[n].shape for n in start)

    out = tmp_path / "tuned"
    denoise.save(learned, out)
    ref = resolve(str(out))
    assert ref.digest != denoise.ref.digest
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert tensor_digest(saved) == tensor_digest(learned)
    for rel in ("text_encoder/model.safetensors", "tokenizer/tokenizer.json"):
        assert (out / rel).read_bytes() == (denoise.ref.path / rel).read_bytes()
    task = ImageParams(prompt="a large purple cross on a yellow background", seed=2, steps=4)
    tuned = ImageEngine(ref, threads=1).generate(task)
    assert tuned.model_digest == ref.digest
    assert tuned.output_digest != ImageEngine(denoise.ref, threads=1).generate(task).output_digest


def _spec(**model: str) -> dict:
    job = load("textual-inversion")
    raw = {k: dict(v) for k, v in job.data.items() if isinstance(v, dict)}
    raw["model"].update(model)
    return raw


def test_bad_image_jobs_are_refused_with_the_reason():
    with pytest.raises(UsageError, match="init_token 'shape'"):
        load_objective(from_dict(_spec(init_token="shape")))
    with pytest.raises(UsageError, match="already in"):
        load_objective(from_dict(_spec(token="cross")))
    raw = _spec(objective="unet-denoise")
    raw["data"]["captions"] = "a {token}"
    with pytest.raises(UsageError, match="does not know"):
        load_objective(from_dict(raw))
    text = load("spsa").section("model")
    with pytest.raises(ModelError, match="needs an image model"):
        load_objective(from_dict(_spec(base=text["base"], digest=text["digest"])))


def test_images_are_composited_and_box_resampled_exactly(tmp_path: pathlib.Path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (8, 12, 4), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgba, "RGBA").save(path)
    a = rgba[..., 3:].astype(np.float64) / 255.0
    rgb = rgba[..., :3] * a + 255.0 * (1.0 - a)
    want = rgb.reshape(4, 2, 4, 3, 3).mean(axis=(1, 3)) / 127.5 - 1.0
    got = load_image(path, (4, 4))
    assert got.shape == (4, 4, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.array_equal(load_image(path, (8, 12)), rgb / 127.5 - 1.0)
    up = load_image(path, (16, 24))  # upsampling by two repeats each pixel
    np.testing.assert_allclose(up[::2, ::2], rgb / 127.5 - 1.0, rtol=0, atol=1e-12)
