"""One local generation: resolve the model, load an engine, run the task, describe the result.

The result dictionary is what `trustgen generate --json` prints and what `trustgen verify`
reads back: it carries the task parameters, so the output can be re-checked by anyone.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

from trustgen.engines.kinds import engine_kind
from trustgen.engines.params import ImageParams, TextParams
from trustgen.engines.registry import resolve
from trustgen.engines.trajectory import Trajectory
from trustgen.errors import ModelError, UsageError
from trustgen.logs import quiet_libraries


def load_engine(
    model: str,
    kind: str,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    deterministic: bool = True,
) -> Any:
    """Resolve `model` (digest-checked) and load the matching engine."""
    quiet_libraries()
    ref = resolve(model)
    if ref.kind != kind:
        raise ModelError(f"model {model!r} is a {ref.kind} model; a {kind} model is needed")
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
