"""One local generation: resolve the model, load an engine, run the task, describe the result.

The result dictionary is what `trustgen generate --json` prints and what `trustgen verify`
reads back: it carries the task parameters, so the output can be re-checked by anyone.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trustgen.engines.batching import MAX_BATCH
from trustgen.engines.kinds import engine_kind
from trustgen.engines.params import ImageParams, TextParams
from trustgen.engines.registry import resolve
from trustgen.errors import ModelError, UsageError
from trustgen.logs import quiet_libraries

if TYPE_CHECKING:  # the trajectory module loads diffusers: only image runs need it
    from trustgen.engines.trajectory import Trajectory


def load_engine(
    model: str,
    kind: str,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    deterministic: bool = True,
) -> Any:
    """Resolve `model` (digest-checked) and load the matching engine."""
    ref = resolve(model)
    if ref.kind != kind:
        raise ModelError(f"model {model!r} is a {ref.kind} model; a {kind} model is needed")
    quiet_libraries()  # after the checks above: it imports transformers and diffusers
    engine_class = engine_kind(kind).engine_class()
    try:
        return engine_class(ref, device, dtype, deterministic, threads)
    except ValueError as e:  # bad device / dtype / threads
        raise UsageError(str(e)) from None


def run_text(model: str, params: TextParams, **engine_opts: Any) -> dict[str, Any]:
    engine = load_engine(model, "text", **engine_opts)
    result = engine.generate(params).to_dict()
    result.update(model=model, task=params.to_dict())
    return result


MAX_PROMPTS = 10_000
MAX_PROMPTS_FILE = 16 << 20  # bytes; MAX_PROMPTS prompts of MAX_PROMPT_CHARS fit


def read_prompts(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, prompt) from a UTF-8 file, one prompt a line; blank lines are skipped."""
    try:
        size = path.stat().st_size
        if size > MAX_PROMPTS_FILE:
            raise UsageError(f"{path} is larger than {MAX_PROMPTS_FILE} bytes")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"cannot read prompts from {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 (byte {e.start})") from None
    prompts = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not prompts:
        raise UsageError(f"{path} holds no prompts")
    if len(prompts) > MAX_PROMPTS:
        raise UsageError(f"{path} holds {len(prompts)} prompts; at most {MAX_PROMPTS} per run")
    return prompts


def run_text_batch(
    model: str,
    batch: list[TextParams],
    batch_size: int | None = None,
    labels: list[str] | None = None,
    **engine_opts: Any,
) -> list[dict[str, Any]]:
    """Several text tasks, `batch_size` (default: all, at most MAX_BATCH) decoding at once; each
    result is the one the task gets alone. `labels` name the tasks in errors (default: task N)."""
    size = min(len(batch), MAX_BATCH) if batch_size is None else batch_size
    if not 1 <= size <= MAX_BATCH:
        raise UsageError(f"batch size must be in [1, {MAX_BATCH}], got {size}")
    engine = load_engine(model, "text", **engine_opts)
    for label, p in zip(labels or [f"task {i}" for i in range(1, len(batch) + 1)], batch):
        try:
            engine.prompt_ids(p)
        except UsageError as e:
            raise UsageError(f"{label}: {e}") from None
    results = []
    for p, out in zip(batch, engine.generate_batch(batch, size)):
        result = out.to_dict()
        result.update(model=model, task=p.to_dict())
        results.append(result)
    return results


def run_image(
    model: str,
    params: ImageParams,
    output: pathlib.Path | None,
    commit: Callable[[Trajectory], dict[str, Any]] | None = None,
    **engine_opts: Any,
) -> dict[str, Any]:
    """Generate and write the PNG. With `commit` (the verifier's commitment scheme), the denoising
    trajectory is recorded, written beside the PNG (`NAME.traj.safetensors`) and committed to in the
    result's `trajectory` field, so `trustgen verify --method trajectory` can check it."""
    if output is not None and output.suffix.lower() != ".png":
        raise UsageError(f"output must be a .png file (lossless), got {output}")
    engine = load_engine(model, "image", **engine_opts)
    img = engine.generate(params, record=commit is not None)
    path = output or pathlib.Path(f"image-{img.output_digest[7:19]}.png")
    path.write_bytes(img.png())
    result = img.to_dict()
    result.update(model=model, task=params.to_dict(), image_path=str(path))
    if commit is not None:
        traj_path = path.with_suffix(".traj.safetensors")
        img.trajectory.save(traj_path)
        result["trajectory"] = {**commit(img.trajectory), "path": traj_path.name}
    return result
