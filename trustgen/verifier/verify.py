"""Re-check a result written by `trustgen generate --json` (or received from a worker).

Inputs are untrusted: every field is validated, the claimed digests are recomputed from the
claimed tokens or pixels, the model is resolved by digest, and only then is the output checked.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from trustgen.engines.generate import load_engine
from trustgen.engines.outputs import image_digest, read_png, text_digest
from trustgen.engines.params import ImageParams, TextParams
from trustgen.errors import TrustgenError, UsageError
from trustgen.verifier import policy
from trustgen.verifier.prefill import prefill_check
from trustgen.verifier.reexec import regenerate_image, regenerate_text
from trustgen.verifier.vote import VoteValue, reject

TEXT_METHODS = ("prefill", "regenerate")


def load_result(path: pathlib.Path) -> dict[str, Any]:
    try:
        obj = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read result {path}: {e}") from None
    if not isinstance(obj, dict) or obj.get("kind") not in ("text", "image"):
        raise UsageError(f"{path} is not a trustgen result (no kind text|image)")
    for key in ("task", "model", "model_digest", "output_digest"):
        if key not in obj:
            raise UsageError(f"{path}: result lacks {key!r}")
    return obj


def _params(cls, task: Any):
    if not isinstance(task, dict):
        raise UsageError("result task is not an object")
    try:
        return cls(**task)
    except TypeError as e:
        raise UsageError(f"result task has unexpected fields: {e}") from None


def verify_text(result: dict[str, Any], method: str = "prefill", engine=None) -> VoteValue:
    if method not in TEXT_METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(TEXT_METHODS)}")
    p = _params(TextParams, result["task"])
    tokens = result.get("token_ids")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise UsageError("result token_ids must be a list of integers")
    if any(not 0 <= t < 2**32 for t in tokens):
        return reject(method, "token id out of range")
    if text_digest(tokens) != result["output_digest"]:
        return reject(method, "output digest does not match the claimed tokens")
    engine = engine or load_engine(result["model"], "text")
    if engine.ref.digest != result["model_digest"]:
        return reject(method, f"claimed model {result['model_digest']} is not the task's model {engine.ref.digest}")
    if method == "regenerate":
        return regenerate_text(engine, p, tokens)
    claimed_dtype = (result.get("profile") or {}).get("dtype")
    tol = policy.prefill_tolerance(claimed_dtype, engine.profile.dtype)
    return prefill_check(engine, p, tokens, tol)


def verify_image(result: dict[str, Any], pixels=None, base: pathlib.Path | None = None, engine=None) -> VoteValue:
    p = _params(ImageParams, result["task"])
    if pixels is None:
        path = pathlib.Path(result.get("image_path") or "")
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            pixels = read_png(path.read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the result image {path}: {e}") from None
    if image_digest(pixels) != result["output_digest"]:
        return reject("phash", "output digest does not match the image pixels")
    engine = engine or load_engine(result["model"], "image")
    if engine.ref.digest != result["model_digest"]:
        return reject("phash", f"claimed model {result['model_digest']} is not the task's model {engine.ref.digest}")
    return regenerate_image(engine, p, pixels, policy.PHASH_THRESHOLD)


def verify_file(path: pathlib.Path, method: str = "prefill") -> VoteValue:
    result = load_result(path)
    try:
        if result["kind"] == "text":
            return verify_text(result, method)
        return verify_image(result, base=pathlib.Path(path).resolve().parent)
    except TrustgenError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"malformed result: {e}") from None
