"""Task kinds as workers and verifiers handle them: one record per kind, next to its engine-level
part (trustgen.engines.kinds). A worker describes its output in a signed Result with `describe`;
a verifier checks a Result with `check` and indexes accepted outputs for replay detection with
`replay_fingerprint`. `trustgen calibrate` measures a kind's thresholds with `calibrate`.

This module loads the verification stack (and so torch): the gateway reads only the engine-level
kinds, which it needs to validate tasks and to find an output blob.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.challenge import CommitmentError, parse_commitment
from trustgen.engines.kinds import ENGINE_KINDS, EngineKind
from trustgen.engines.outputs import read_png
from trustgen.errors import UsageError
from trustgen.gossip.blobs import blob_digest
from trustgen.verifier.fingerprints import image_fingerprint, text_fingerprint
from trustgen.verifier.policy import text_method
from trustgen.verifier.verify import verify_image, verify_text, verify_texts
from trustgen.verifier.vote import VoteValue, reject

Fingerprint = dict[str, Any]
Checked = tuple[VoteValue, Fingerprint]
Claim = tuple[dict[str, Any], dict[str, Any], bytes]  # (claimed values, Result body, blob bytes)


@dataclass(frozen=True)
class TaskKind:
    engine: EngineKind
    # (engine output, digest of its blob or "") -> (the Result's `output` field, its fingerprint)
    describe: Callable[[Any, str], tuple[dict[str, Any], Fingerprint]]
    # (engine, claimed values, Result body, blob bytes) -> (the vote, the output's fingerprint or {})
    check: Callable[[Any, dict[str, Any], dict[str, Any], bytes], tuple[VoteValue, Fingerprint]]
    # (an accepted Result's `output`, its blob or b"") -> what the replay index keeps, or None
    replay_fingerprint: Callable[[dict[str, Any], bytes], Fingerprint | None]
    # (samples, model) -> calibration report
    calibrate: Callable[[int, str], dict[str, Any]]
    # (engine, params) -> output: how an honest worker runs a task of this kind
    run: Callable[[Any, Any], Any] = lambda engine, params: engine.generate(params)
    # (output) -> (fields added to the Result's `output`, a blob the worker keeps and serves, or
    # b""): what a worker commits to beyond the output itself (images: the trajectory); None:
    # nothing (the worker then never waits for the engine thread, busy with other tasks' batch)
    commit: Callable[[Any], tuple[dict[str, Any], bytes]] | None = None
    # (a Result's `output`) -> whether it commits to a trajectory a verifier may check instead
    commits_trajectory: Callable[[dict[str, Any]], bool] = lambda output: False
    # whether a batching worker runs it through its batcher; False: each task runs alone through `run`
    batched: bool = True
    # (engine, several params) -> their outputs, each the one `run` gives alone: how the batcher
    # runs a batch of this kind's tasks
    run_batch: Callable[[Any, list[Any]], list[Any]] = lambda engine, batch: engine.generate_batch(batch)
    # several `check`s sharing the engine's passes (a UsageError in place of a malformed one), with
    # the verdicts `check` gives one by one; None: the kind has no cheaper way than one by one
    check_batch: Callable[[Any, list[Claim]], list[Checked | UsageError]] | None = None

    @property
    def name(self) -> str:
        return self.engine.name


def _describe_text(out: Any, blob_digest_: str) -> tuple[dict[str, Any], Fingerprint]:
    output = {"token_ids": out.token_ids, "text": out.text, "finish_reason": out.finish_reason}
    return output, text_fingerprint(out.token_ids)


def _check_text(engine: Any, claimed: dict[str, Any], r: dict[str, Any], blob: bytes) -> tuple[VoteValue, Fingerprint]:
    tokens = r["output"].get("token_ids")
    claimed["token_ids"] = tokens
    vote = verify_text(claimed, text_method(claimed["task"]), engine=engine)
    return vote, (text_fingerprint(tokens) if isinstance(tokens, list) and tokens else {})


def _check_texts(engine: Any, claims: list[Claim]) -> list[Checked | UsageError]:
    """Prefill-checked claims share passes; the others (beam: re-generation) are checked alone."""
    out: list[Checked | UsageError | None] = [None] * len(claims)
    shared = [i for i, (c, _, _) in enumerate(claims) if text_method(c["task"]) == "prefill"]
    for i, (c, r, blob) in enumerate(claims):
        if i not in shared:
            try:
                out[i] = _check_text(engine, c, r, blob)
            except UsageError as e:
                out[i] = e
    for i, got in zip(shared, _prefill_texts(engine, [claims[i] for i in shared])):
        out[i] = got
    return [x for x in out if x is not None]


def _prefill_texts(engine: Any, claims: list[Claim]) -> list[Checked | UsageError]:
    tokens = [r["output"].get("token_ids") for _, r, _ in claims]
    claimed = [{**c, "token_ids": t} for (c, _, _), t in zip(claims, tokens)]
    votes = verify_texts(claimed, engine)
    return [
        v if isinstance(v, UsageError) else (v, text_fingerprint(t) if isinstance(t, list) and t else {})
        for v, t in zip(votes, tokens)
    ]


def _replay_text(output: dict[str, Any], blob: bytes) -> Fingerprint | None:
    tokens = output.get("token_ids")
    return text_fingerprint(tokens) if isinstance(tokens, list) and tokens else None


def _calibrate_text(samples: int, model: str) -> dict[str, Any]:
    from trustgen.verifier.calibrate import calibrate_text

    return calibrate_text(samples, model)


_IMAGE = ENGINE_KINDS["image"]


def _describe_image(out: Any, png_digest: str) -> tuple[dict[str, Any], Fingerprint]:
    h, w, _ = out.pixels.shape
    return {_IMAGE.blob_field: png_digest, "height": h, "width": w}, image_fingerprint(out.pixels)


def _check_image(engine: Any, claimed: dict[str, Any], r: dict[str, Any], png: bytes) -> tuple[VoteValue, Fingerprint]:
    if blob_digest(png) != r["output"].get(_IMAGE.blob_field):
        return reject("phash", "image bytes do not match the result"), {}
    try:
        pixels = read_png(png)
    except (OSError, ValueError):
        return reject("phash", "image is not a PNG"), {}
    vote = verify_image(claimed, pixels=pixels, engine=engine)
    return vote, image_fingerprint(pixels, "phash")  # the history index keeps 64-bit hashes


def _replay_image(output: dict[str, Any], png: bytes) -> Fingerprint | None:
    try:
        return image_fingerprint(read_png(png), "phash")
    except (OSError, ValueError):
        return None


def _run_image(engine: Any, params: Any) -> Any:
    """Record the trajectory when the engine's pipeline class supports it (engines/trajectory.py)."""
    return engine.generate(params, record=engine.records)


def _run_images(engine: Any, batch: list[Any]) -> list[Any]:
    return engine.generate_batch(batch, record=engine.records)


def _commit_image(out: Any) -> tuple[dict[str, Any], bytes]:
    """The trajectory commitment (Merkle root, steps, digest of the tensors' blob) and the blob."""
    traj = getattr(out, "trajectory", None)
    if traj is None:
        return {}, b""
    from trustgen.verifier.trajectory import commitment

    data = traj.to_bytes()
    return {"trajectory": commitment(traj, blob_digest(data))}, data


def _calibrate_image(samples: int, model: str) -> dict[str, Any]:
    from trustgen.verifier.calibrate import calibrate_image

    return calibrate_image(samples, model)


TASK_KINDS: dict[str, TaskKind] = {
    k.name: k
    for k in (
        TaskKind(
            ENGINE_KINDS["text"], _describe_text, _check_text, _replay_text, _calibrate_text, check_batch=_check_texts
        ),
        TaskKind(
            ENGINE_KINDS["image"],
            _describe_image,
            _check_image,
            _replay_image,
            _calibrate_image,
            run=_run_image,
            commit=_commit_image,
            commits_trajectory=lambda output: "trajectory" in output,
            run_batch=_run_images,
        ),
    )
}
if TASK_KINDS.keys() != ENGINE_KINDS.keys():
    raise RuntimeError("every engine kind needs its node-level part here")


def check_result(
    engine: Any, task: dict[str, Any], result: dict[str, Any], blob: bytes
) -> tuple[VoteValue, Fingerprint]:
    """Check a Result body against the Task body it claims to answer, with `engine` serving the
    task's model: what a verifier votes on, and what `trustgen audit --recheck` runs again."""
    kind = task_kind(task["kind"])
    return kind.check(engine, _claimed(kind, task, result), result, blob)


def check_results(engine: Any, items: list[tuple[dict[str, Any], dict[str, Any], bytes]]) -> list[Checked | UsageError]:
    """`check_result` for several (Task body, Result body, blob) served by `engine`, in shared
    passes where the kind allows: each answer is the one `check_result` gives alone (its vote, or
    the UsageError it raises)."""
    out: list[Checked | UsageError | None] = [None] * len(items)
    batches: dict[str, list[tuple[int, Claim]]] = {}
    for i, (task, result, blob) in enumerate(items):
        try:
            kind = task_kind(task["kind"])
            claim = (_claimed(kind, task, result), result, blob)
            if kind.check_batch is not None:
                batches.setdefault(kind.name, []).append((i, claim))
            else:
                out[i] = kind.check(engine, *claim)
        except UsageError as e:
            out[i] = e
    for name, todo in batches.items():
        check_batch = TASK_KINDS[name].check_batch
        assert check_batch is not None  # grouped above by having one
        for (i, _), got in zip(todo, check_batch(engine, [c for _, c in todo])):
            out[i] = got
    return [o for o in out if o is not None]


def _claimed(kind: TaskKind, task: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The values a Result claims for its Task, as the verify functions read them."""
    params = kind.engine.parse_params(task["params"])
    return {
        "task": params.to_dict(),
        "model": task["model"],
        "model_digest": result["model_digest"],
        "output_digest": result["output_digest"],
        "profile": result["profile"],
    }


def trajectory_blob(output: dict[str, Any]) -> str:
    """The blob digest a Result's trajectory commitment names, or "" when it names none."""
    try:
        return parse_commitment(output.get("trajectory"))[2]
    except CommitmentError:
        return ""


def check_result_by_trajectory(
    engine: Any, task: dict[str, Any], result: dict[str, Any], png: bytes, data: bytes, beacon: bytes, beacon_size: int
) -> tuple[VoteValue, Fingerprint]:
    """Check an image Result by its committed trajectory (`data`: the fetched tensors blob), with
    the challenge beacon the gateway drew after the result was committed."""
    from trustgen.engines.trajectory import Trajectory, TrajectoryError
    from trustgen.verifier.trajectory import early_reject
    from trustgen.verifier.verify import verify_image_trajectory

    params = ENGINE_KINDS["image"].parse_params(task["params"])
    out = result["output"]
    if blob_digest(png) != out.get(_IMAGE.blob_field):
        return early_reject("image bytes do not match the result", beacon, beacon_size), {}
    try:
        pixels = read_png(png)
    except (OSError, ValueError):
        return early_reject("image is not a PNG", beacon, beacon_size), {}
    try:
        traj = Trajectory.from_bytes(data)
    except TrajectoryError as e:
        return early_reject(str(e), beacon, beacon_size), {}
    claimed = {
        "task": params.to_dict(),
        "model_digest": result["model_digest"],
        "output_digest": result["output_digest"],
        "profile": result["profile"],
        "trajectory": out.get("trajectory"),
    }
    vote = verify_image_trajectory(claimed, pixels, engine, traj, beacon, beacon_size)
    return vote, image_fingerprint(pixels, "phash")


def task_kind(name: str) -> TaskKind:
    kind = TASK_KINDS.get(name)
    if kind is None:
        raise UsageError(f"unknown task kind {name!r}; choose {' or '.join(TASK_KINDS)}")
    return kind
