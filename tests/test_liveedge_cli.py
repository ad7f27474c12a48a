"""Every error a user can cause is one line, exit 2, never a traceback: a prompt that is not UTF-8,
a missing --tls-ca file, broken model directories (truncated safetensors, a config that does not
fit the weights, a missing component folder), and `verify --method NAME` on an image result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from trustgen.engines.generate import load_engine
from trustgen.errors import ModelError

MODELS = os.path.join(os.path.dirname(__file__), "..", "trustgen", "models")


def _cli(*args: bytes | str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustgen.cli", *args], capture_output=True, timeout=180, cwd=cwd)


def _one_line_exit_2(res: subprocess.CompletedProcess, needle: str) -> None:
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 2, (res.stdout, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error:") and needle in err, err


def _copy(name: str, tmp_path) -> str:
    dst = tmp_path / name
    shutil.copytree(os.path.join(MODELS, name), dst)
    return str(dst)


def test_a_prompt_that_is_not_utf8_is_one_line():
    # os.fsencode keeps the raw byte: the child gets argv holding 0xff, as a shell would pass it.
    res = _cli("submit", "text", b"caf\xff", "--gateway", "127.0.0.1:1", "--insecure")
    _one_line_exit_2(res, "UTF-8")


def test_a_missing_tls_ca_file_is_one_line(tmp_path):
    res = _cli("submit", "text", "hi", "--gateway", "127.0.0.1:1", "--tls-ca", str(tmp_path / "nope.pem"))
    _one_line_exit_2(res, "nope.pem")


def test_verify_refuses_a_text_method_on_an_image_result(tmp_path):
    """In-process (the CLI prints any TrustgenError as one line, exit 2: tested on the commands
    above): NAME is checked before anything is loaded or regenerated."""
    from trustgen.errors import UsageError
    from trustgen.verifier.verify import verify_file

    result = {"kind": "image", "task": {"prompt": "a cat"}, "model": "tiny-image", "model_digest": "sha256:00"}
    result.update(output_digest="sha256:00", image_path="cat.png")
    (tmp_path / "r.json").write_text(json.dumps(result))
    for name in ("prefill", "bogus"):
        with pytest.raises(UsageError, match="unknown image method"):
            verify_file(tmp_path / "r.json", name)


@pytest.mark.parametrize(
    "name,kind,breaks",
    [
        ("tiny-text", "text", "model.safetensors"),
        ("tiny-text", "text", "config.json"),
        ("tiny-image", "image", "unet/diffusion_pytorch_model.safetensors"),
        ("tiny-image", "image", "unet"),
        ("tiny-image", "image", "text_encoder/config.json"),
    ],
)
def test_broken_model_directories_are_model_errors(tmp_path, name, kind, breaks):
    """Truncated weights, a config that does not fit the weights and missing components: a
    ModelError of one line (the CLI prints it as such, exit 2), whatever the library raised."""
    path = _copy(name, tmp_path)
    target = os.path.join(path, breaks)
    if os.path.isdir(target):
        shutil.rmtree(target)
    elif breaks.endswith(".json"):
        cfg = json.loads(open(target).read())
        for key in ("n_embd", "hidden_size"):  # the width the weights were saved with, doubled
            if key in cfg:
                cfg[key] *= 2
        open(target, "w").write(json.dumps(cfg))
    else:
        data = open(target, "rb").read()
        open(target, "wb").write(data[: len(data) // 2])
    with pytest.raises(ModelError, match=f"cannot load {kind} model") as e:
        load_engine(path, kind, threads=1)
    assert "\n" not in str(e.value)
