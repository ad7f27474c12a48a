"""Batched sampling on the pixel-space pipeline: images of one size and scheduler share every UNet
call, and each image's pixels and trajectory are bit-identical to its batch of one.

Per image, exactly the calls the pipeline makes for it alone: its prompt encoded on its own, its
initial noise from its own CPU generator, its own scheduler instance (step index, multistep
history, and the step noise of stochastic samplers, drawn from its generator), the guidance
combination, the scheduler step and the decoding. Shared: the UNet call, whose batch-dependent
ops run on each image's own rows (engines/image_groups.py). Images may take different step counts
and guidance scales: each row carries its image's own timestep; an image leaves the step it
finishes and a waiting one of its group joins the next call (continuous batching, as for text).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trustgen.engines.cancel import checkpoint
from trustgen.engines.image_groups import row_groups
from trustgen.engines.params import ImageParams
from trustgen.engines.pixel_pipeline import PixelTextToImagePipeline, step_kwargs, to_uint8
from trustgen.engines.trajectory import Trajectory, recording_steps

MAX_IMAGES = 8  # images per UNet call: the call sizes the invariance tests cover

Sampled = tuple[np.ndarray, Trajectory | None]  # uint8 HWC pixels, the recorded trajectory


@dataclass
class _Image:
    index: int
    p: ImageParams
    scheduler: Any
    context: torch.Tensor
    x: torch.Tensor
    extra: dict[str, Any]
    traj: Trajectory | None
    stack: ExitStack = field(default_factory=ExitStack)
    j: int = 0

    @property
    def rows(self) -> int:
        return 2 if self.p.guidance > 1.0 else 1

    @property
    def t(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.j]


def _start(pipe: PixelTextToImagePipeline, index: int, p: ImageParams, scheduler: Any, record: bool) -> _Image:
    """The pipeline's preamble for one image, in its order (noise before timesteps)."""
    stack = ExitStack()
    traj = stack.enter_context(recording_steps(scheduler)) if record else None
    generator = torch.Generator(device="cpu").manual_seed(p.seed)
    context = pipe.guidance_context([p.prompt], p.guidance)
    x = pipe.initial_latents([generator], p.height, p.width, scheduler)
    scheduler.set_timesteps(p.steps, device=pipe.unet.device)
    extra = step_kwargs(scheduler, generator)
    return _Image(index, p, scheduler, context, x, extra, traj, stack)


def _step(pipe: PixelTextToImagePipeline, active: list[_Image]) -> None:
    """One denoising step of every active image, in one UNet call."""
    sizes = [a.rows for a in active]
    model_in = torch.cat([pipe.model_input(a.x, a.t, a.p.guidance, a.scheduler) for a in active])
    context = torch.cat([a.context for a in active])
    t = torch.cat([a.t.reshape(1).expand(n) for a, n in zip(active, sizes)])
    with row_groups(sizes):
        eps = pipe.unet(model_in, t, encoder_hidden_states=context).sample
    at = 0
    for a, n in zip(active, sizes):
        out = pipe.guide(eps[at : at + n], a.p.guidance)
        a.x = a.scheduler.step(out, a.t, a.x, **a.extra).prev_sample
        a.j += 1
        at += n


def sample(
    pipe: PixelTextToImagePipeline,
    new_scheduler: Callable[[str], Any],
    tasks: list[ImageParams],
    record: bool,
    capacity: int = MAX_IMAGES,
) -> list[Sampled]:
    """Every task's pixels (and trajectory, with `record`), in task order. Tasks are grouped by
    (height, width, scheduler); each group runs at most `capacity` images per UNet call."""
    if not 1 <= capacity <= MAX_IMAGES:
        raise ValueError(f"images per call must be in [1, {MAX_IMAGES}], got {capacity}")
    out: dict[int, Sampled] = {}
    groups: dict[tuple[int, int, str], list[int]] = {}
    for i, p in enumerate(tasks):
        groups.setdefault((p.height, p.width, p.scheduler), []).append(i)
    for indices in groups.values():
        waiting = list(indices)
        active: list[_Image] = []
        try:
            while waiting or active:
                checkpoint()  # every task of the batch cancelled: it stops between steps
                while waiting and len(active) < capacity:
                    i = waiting.pop(0)
                    active.append(_start(pipe, i, tasks[i], new_scheduler(tasks[i].scheduler), record))
                _step(pipe, active)
                for a in [a for a in active if a.j == len(a.scheduler.timesteps)]:
                    a.stack.close()
                    out[a.index] = (to_uint8(pipe.to_images(a.x)[0]), a.traj)
                    active.remove(a)
        finally:
            for a in active:
                a.stack.close()
    return [out[i] for i in range(len(tasks))]
