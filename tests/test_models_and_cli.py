import json
import pathlib
import shutil

import pytest

from tests.helpers import run_cli
from trustgen.engines.registry import MODELS_DIR, embedded_models, model_digest, resolve
from trustgen.errors import ModelError


def test_embedded_models_match_their_pinned_digests():
    # Packaged ones; a model converted from a wheel (`source`) is checked in tests/test_smollm2.py.
    for name, entry in embedded_models().items():
        if "source" in entry:
            continue
        ref = resolve(name)
        assert ref.digest == entry["digest"]
        assert ref.kind == entry["kind"]


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / name
    shutil.copytree(MODELS_DIR / embedded_models()[name]["path"], dst)
    return dst


@pytest.mark.parametrize("name", ["tiny-text", "tiny-image"])
def test_tampered_weights_are_refused(name, tmp_path):
    path = _copy(name, tmp_path)
    digest = model_digest(path)
    assert resolve(f"{path}@{digest}").digest == digest
    weights = sorted(path.rglob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, deep inside a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="tampered or incomplete"):
        resolve(f"{path}@{digest}")


def test_truncated_weights_are_refused(tmp_path):
    path = _copy("tiny-text", tmp_path)
    digest = model_digest(path)
    w = path / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(ModelError, match="tampered or incomplete"):
        resolve(f"{path}@{digest}")


def test_pickle_weights_are_refused(tmp_path):
    path = _copy("tiny-text", tmp_path)
    (path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickle"):
        resolve(str(path))


def test_tampered_model_via_cli_is_one_line_exit_2(tmp_path):
    path = _copy("tiny-text", tmp_path)
    digest = model_digest(path)
    (path / "config.json").write_text((path / "config.json").read_text().replace("128", "129", 1))
    res = run_cli("generate", "text", "hello", "--model", f"{path}@{digest}")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "tampered" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    "args,needle",
    [
        (["text", ""], "prompt must not be empty"),
        (["text", "hi", "--decoding", "nucleus"], "unknown decoding"),
        (["text", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
        (["text", "hi", "--decoding", "beam", "--num-beams", "1"], "num-beams"),
        (["text", "hi", "--temperature", "-1"], "temperature"),
        (["text", "hi", "--top-p", "1.5"], "top-p"),
        (["text", "hi", "--model", "no-such-model"], "unknown model"),
        (["text", "hi", "--model", "tiny-image"], "image model"),
        (["text", "hi", "--device", "tpu"], "unsupported device"),
        (["image", "a cat", "--steps", "-2"], "steps"),
        (["image", "a cat", "--height", "100000"], "height"),
        (["image", "a cat", "--width", "30"], "width"),
        (["image", "a cat", "--scheduler", "magic"], "unknown scheduler"),
        (["image", "   "], "prompt must not be empty"),
        (["image", "a cat", "-o", "cat.jpg"], ".png"),
    ],
)
def test_bad_parameters_give_one_line_and_exit_2(args, needle, tmp_path):
    res = run_cli("generate", *args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_max_context_is_checked():
    from trustgen.engines.generate import run_text
    from trustgen.engines.params import TextParams
    from trustgen.errors import UsageError

    with pytest.raises(UsageError, match="context"):
        run_text("tiny-text", TextParams(prompt="word " * 200, max_new_tokens=200))


def test_json_profile_is_complete():
    res = run_cli("generate", "text", "Gossip", "--max-new-tokens", "4", "--json", "--threads", "1")
    obj = json.loads(res.stdout)
    prof = obj["profile"]
    assert prof["threads"] == 1 and prof["device"] == "cpu" and prof["dtype"] == "float32"
    assert prof["flags"]["use_deterministic_algorithms"] is True
    assert prof["flags"]["tf32_matmul"] is False
    assert prof["flags"]["cublas_workspace_config"] == ":4096:8"
    assert set(prof["versions"]) >= {"torch", "transformers", "diffusers"}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["submit", "video", "hi", "--gateway", "127.0.0.1:1", "--insecure"], "unknown task kind 'video'"),
        (["submit", "text", "", "--gateway", "127.0.0.1:1", "--insecure"], "prompt must not be empty"),
        (["submit", "image", "a cat", "--gateway", "127.0.0.1:1", "--insecure", "--width", "30"], "width"),
        (["submit", "text", "hi", "--gateway", "127.0.0.1:1"], "give --tls-ca FILE, or --insecure"),
        (["events", "--node", "127.0.0.1:1"], "give --tls-ca FILE, or --insecure"),
        (["blob", "get", "ab" * 32, "--peer", "127.0.0.1:1", "-o", "x.bin"], "give --tls-ca FILE, or --insecure"),
        (["calibrate", "video"], "unknown task kind 'video'"),
    ],
)
def test_network_commands_refuse_bad_input_before_connecting(args, needle, tmp_path):
    res = run_cli(*args, cwd=tmp_path)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
