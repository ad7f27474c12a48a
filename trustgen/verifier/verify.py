"""Re-check a result written by `trustgen generate --json` (or received from a worker).

Inputs are untrusted: every field is validated, the claimed digests are recomputed from the
claimed tokens or pixels, the model is resolved by digest, and only then is the output checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from trustgen.engines.generate import load_engine
from trustgen.engines.outputs import image_digest, read_png, text_digest
from trustgen.engines.params import MAX_STEPS, ImageParams, TextParams
from trustgen.engines.trajectory import Trajectory, TrajectoryError
from trustgen.engines.variants import DtypeVariants
from trustgen.errors import TrustgenError, UsageError
from trustgen.verifier import policy
from trustgen.verifier.prefill import prefill_check_batch
from trustgen.verifier.reexec import regenerate_image, regenerate_text
from trustgen.verifier.trajectory import check_trajectory, choose_method, early_reject
from trustgen.verifier.vote import VoteValue, reject

TEXT_METHODS = ("prefill", "regenerate")
# The engines a verifier keeps in other dtypes than its own, for claims computed in them.
DTYPE_ENGINES = DtypeVariants()
IMAGE_METHODS = ("regenerate", "trajectory", "auto")


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


def verify_text(
    result: dict[str, Any], method: str = "prefill", engine=None, variants: DtypeVariants = DTYPE_ENGINES
) -> VoteValue:
    """Check one text result in its claimed dtype: "prefill" is the policy's one-model check for
    greedy and sampled tasks (verifier/policy.py: text_check; the rank test for beam tasks),
    "regenerate" re-generates it."""
    if method not in TEXT_METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(TEXT_METHODS)}")
    engine = engine or load_engine(result["model"], "text")
    vote = verify_texts([result], engine, variants, regenerate=method == "regenerate")[0]
    if isinstance(vote, UsageError):
        raise vote
    return vote


def claimed_dtype(result: dict[str, Any]) -> object:
    """The dtype a result says it was computed in (None when it names none)."""
    profile = result.get("profile")
    return profile.get("dtype") if isinstance(profile, dict) else None


def verify_texts(
    results: Sequence[dict[str, Any]],
    engine: Any,
    variants: DtypeVariants = DTYPE_ENGINES,
    regenerate: bool = False,
) -> list[VoteValue | UsageError]:
    """Check several text results served by `engine`, each as the policy says (its method, in
    its claimed dtype: `engine` itself or its copy from `variants`), those sharing a method and
    dtype in shared batched passes: each verdict is the one `verify_text` gives alone; a
    malformed result gets its UsageError in its place. `regenerate`: re-generate every one."""
    out: list[VoteValue | UsageError] = []
    todo: dict[tuple[str, str], list[tuple[int, TextParams, list[int], float]]] = {}
    for i, result in enumerate(results):
        label = "regenerate" if regenerate else policy.text_method(result.get("task"))
        try:
            claim = _text_form(result, label)
        except UsageError as e:
            out.append(e)
            continue
        if isinstance(claim, VoteValue):
            out.append(claim)
            continue
        bad = _model_mismatch(result, label, engine)
        if bad is not None:
            out.append(bad)
            continue
        check = policy.text_check(claim[0].to_dict(), claimed_dtype(result), engine.profile.dtype)
        if isinstance(check, policy.Refused):
            out.append(_refusal(label, check))
            continue
        # Beam tasks: the policy re-generates them (node/kinds.py asks for that); asked for the
        # prefill check by name (`trustgen verify --method prefill`), the rank test runs instead.
        method = "regenerate" if regenerate else ("prefill" if check.method == "regenerate" else check.method)
        todo.setdefault((method, check.dtype), []).append((i, claim[0], claim[1], check.tolerance))
        out.append(reject(method, "not checked"))  # replaced below
    for (method, dtype), group in todo.items():
        runs_in = variants.get(engine, dtype)
        if method == "regenerate":
            votes = [regenerate_text(runs_in, p, tokens) for _, p, tokens, _ in group]
        else:
            votes = prefill_check_batch(runs_in, [(p, t) for _, p, t, _ in group], [tol for *_, tol in group], method)
        for (i, *_), vote in zip(group, votes):
            out[i] = vote
    return out


def _refusal(method: str, refused: policy.Refused) -> VoteValue:
    v = reject(method, refused.reason)
    return VoteValue(v.accept, v.method, v.distance, v.margin, v.reason, None, {}, {"refused": refused.code.value})


def _text_form(result: dict[str, Any], method: str) -> VoteValue | tuple[TextParams, list[int]]:
    """A verdict that needs no model, or what the model must check: (task, claimed tokens)."""
    p = _params(TextParams, result["task"])
    tokens = result.get("token_ids")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise UsageError("result token_ids must be a list of integers")
    if any(not 0 <= t < 2**32 for t in tokens):
        return reject(method, "token id out of range")
    if text_digest(tokens) != result["output_digest"]:
        return reject(method, "output digest does not match the claimed tokens")
    return p, tokens


def _model_mismatch(result: dict[str, Any], method: str, engine: Any) -> VoteValue | None:
    if engine.ref.digest != result["model_digest"]:
        return reject(method, f"claimed model {result['model_digest']} is not the task's model {engine.ref.digest}")
    return None


def _local_path(name: Any, base: pathlib.Path | None, what: str) -> pathlib.Path:
    if not isinstance(name, str) or not name:
        raise UsageError(f"result names no {what} file")
    path = pathlib.Path(name)
    return base / path if not path.is_absolute() and base is not None else path


def verify_image(
    result: dict[str, Any],
    pixels=None,
    base: pathlib.Path | None = None,
    engine=None,
    method: str = "regenerate",
    beacon: bytes | None = None,
    checks: int = policy.TRAJ_CHECKS,
) -> VoteValue:
    """Re-check an image result by full regeneration or by its committed trajectory (the result's
    `trajectory` commitment and the tensor file it names). The trajectory check re-executes steps
    chosen by `beacon` (fresh randomness when None: the worker must not know it in advance)."""
    if method not in IMAGE_METHODS:
        raise UsageError(f"unknown image method {method!r}; choose one of {', '.join(IMAGE_METHODS)}")
    if not 1 <= checks <= MAX_STEPS:
        raise UsageError(f"checks must be in [1, {MAX_STEPS}], got {checks}")
    p = _params(ImageParams, result["task"])
    if pixels is None:
        path = _local_path(result.get("image_path"), base, "image")
        try:
            pixels = read_png(path.read_bytes())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the result image {path}: {e}") from None
    beacon = os.urandom(32) if beacon is None else beacon
    if method == "auto":  # the network's policy: trajectory, with a sampled fraction audited in full
        task_id = hashlib.sha256(json.dumps(p.to_dict(), sort_keys=True).encode()).digest()
        method = choose_method(isinstance(result.get("trajectory"), dict), beacon, task_id)
    label = "trajectory" if method == "trajectory" else "phash"
    if image_digest(pixels) != result["output_digest"]:
        return reject(label, "output digest does not match the image pixels")
    engine = engine or load_engine(result["model"], "image")
    if engine.ref.digest != result["model_digest"]:
        return reject(label, f"claimed model {result['model_digest']} is not the task's model {engine.ref.digest}")
    if method == "regenerate":
        return regenerate_image(engine, p, pixels, policy.PHASH_THRESHOLD)
    commit = result.get("trajectory")
    if not isinstance(commit, dict):
        return reject(label, "result carries no trajectory commitment")
    try:
        traj = Trajectory.load(_local_path(commit.get("path"), base, "trajectory"))
    except TrajectoryError as e:
        return reject(label, str(e))
    return check_trajectory(
        engine, p, pixels, result["output_digest"], commit, traj, result.get("profile"), beacon, checks
    )


def verify_image_trajectory(
    result: dict[str, Any], pixels: Any, engine: Any, traj: Trajectory, beacon: bytes, beacon_size: int
) -> VoteValue:
    """A network image result checked by its trajectory (fetched by the caller) under the
    network's challenge rule (consensus/challenge.py): what a verifier node votes."""
    p = _params(ImageParams, result["task"])
    if image_digest(pixels) != result["output_digest"]:
        return early_reject("output digest does not match the image pixels", beacon, beacon_size)
    if engine.ref.digest != result["model_digest"]:
        return early_reject(f"claimed model {result['model_digest']} is not the task's model", beacon, beacon_size)
    commit, profile = result["trajectory"], result["profile"]
    digest = result["output_digest"]
    return check_trajectory(
        engine, p, pixels, digest, commit, traj, profile, beacon, policy.TRAJ_CHECKS, None, beacon_size
    )


def verify_file(
    path: pathlib.Path, method: str | None = None, beacon: bytes | None = None, checks: int = policy.TRAJ_CHECKS
) -> VoteValue:
    """Verify a result file; `method` None picks each kind's default (prefill, regenerate)."""
    result = load_result(path)
    try:
        if result["kind"] == "text":
            return verify_text(result, method or "prefill")
        base = pathlib.Path(path).resolve().parent
        return verify_image(result, base=base, method=method or "regenerate", beacon=beacon, checks=checks)
    except TrustgenError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"malformed result: {e}") from None
