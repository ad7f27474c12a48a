"""Image generation on diffusers pipelines with seeded, per-image CPU generators.

The embedded `tiny-image` model uses trustgen's pixel-space pipeline; any other diffusers
directory is loaded through `DiffusionPipeline`. Both are called with one prompt and one CPU
`torch.Generator` seeded from the task, with `output_type="np"`, so the initial noise is the
same on every device and the output hashed is the decoded pixel array, never an encoding.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from trustgen.engines import image_groups
from trustgen.engines.cancel import watch
from trustgen.engines.determinism import ExecutionProfile, configure, resolve_dtype
from trustgen.engines.loading import MODEL_LOAD, load_failure
from trustgen.engines.outputs import ImageOutput
from trustgen.engines.params import ImageParams
from trustgen.engines.pixel_pipeline import PixelTextToImagePipeline, to_uint8
from trustgen.engines.registry import ModelRef
from trustgen.engines.trajectory import SAMPLING, recording
from trustgen.errors import ModelError, UsageError

log = logging.getLogger("trustgen.node")

SCHEDULER_CLASSES = {
    "ddim": diffusers.DDIMScheduler,
    "euler": diffusers.EulerDiscreteScheduler,
    "euler_ancestral": diffusers.EulerAncestralDiscreteScheduler,
    "dpmsolver": diffusers.DPMSolverMultistepScheduler,
    "pndm": diffusers.PNDMScheduler,
    "ddpm": diffusers.DDPMScheduler,
}


def _load_pipeline(model: ModelRef, dtype: torch.dtype) -> Any:
    index = json.loads((model.path / "model_index.json").read_text())
    cls = (
        PixelTextToImagePipeline if index.get("_class_name") == PixelTextToImagePipeline.__name__ else DiffusionPipeline
    )
    try:
        with MODEL_LOAD:
            return cls.from_pretrained(model.path, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
    except Exception as e:  # truncated weights, a config that does not fit them, missing components
        raise ModelError(load_failure("image", model.name, e)) from None


class ImageEngine:
    """A loaded diffusion pipeline, ready to run image tasks."""

    def __init__(
        self,
        model: ModelRef,
        device: str = "cpu",
        dtype: str = "float32",
        deterministic: bool = True,
        threads: int | None = None,
    ) -> None:
        if model.kind != "image":
            raise ModelError(f"model {model.name!r} is a text model, not an image model")
        self.profile: ExecutionProfile = configure(device, deterministic, threads, dtype)
        self.ref = model
        self.pipe = _load_pipeline(model, resolve_dtype(dtype)).to(self.profile.device)
        self.pipe.set_progress_bar_config(disable=True)
        watch(self.pipe.unet)  # cancellable inside a denoising step, not only between steps
        self._base_scheduler_config = dict(self.pipe.scheduler.config)
        # The pixel pipeline shares UNet calls between images (engines/image_batch.py); other
        # pipelines run one image per call. Alone or batched, an output is the same bits, so the
        # mode names what a worker could do, not what this output went through.
        batched = isinstance(self.pipe, PixelTextToImagePipeline)
        mode = image_groups.install(self.pipe.unet, self.profile.device) if batched else "serial"
        self.profile = replace(self.profile, flags={**self.profile.flags, "batching": mode})
        # Whether a run can record its trajectory (a worker commits to it when it can).
        self.records = type(self.pipe).__name__ in SAMPLING

    def new_scheduler(self, name: str) -> Any:
        # A fresh scheduler per task: schedulers keep state (step index, multistep history).
        return SCHEDULER_CLASSES[name].from_config(self._base_scheduler_config)

    def _set_scheduler(self, name: str) -> None:
        self.pipe.scheduler = self.new_scheduler(name)

    def check(self, params: ImageParams) -> None:
        """UsageError when the task's sampler cannot take its step count (PNDM needs 4 or more),
        before any of a batch runs: a bad task must fail alone, not take its batch with it."""
        try:
            self.new_scheduler(params.scheduler).set_timesteps(params.steps)
        except (ValueError, IndexError) as e:
            raise UsageError(f"scheduler {params.scheduler!r} cannot take {params.steps} steps ({e})") from None

    def generate(self, params: ImageParams, record: bool = False) -> ImageOutput:
        """Run one task. With `record`, the output carries its denoising trajectory (every
        latent and model output), which a trajectory commitment is made from."""
        self.check(params)
        self._set_scheduler(params.scheduler)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        with torch.inference_mode(), recording(self.pipe) if record else nullcontext() as traj:
            images = self.pipe(
                params.prompt,
                height=params.height,
                width=params.width,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                generator=generator,
                output_type="np",
            ).images
        return ImageOutput(
            pixels=to_uint8(images[0]), model_digest=self.ref.digest, profile=self.profile, trajectory=traj
        )

    def generate_batch(
        self, batch: list[ImageParams], record: bool = False, batch_size: int | None = None
    ) -> list[ImageOutput]:
        """Run several tasks, sharing UNet calls (up to `batch_size` images per call, at most
        image_batch.MAX_IMAGES) where the pipeline allows; every output (pixels, trajectory) is
        bit-identical to the task's `generate` alone."""
        if self.profile.flags["batching"] == "serial" or len(batch) < 2:
            return [self.generate(p, record) for p in batch]
        from trustgen.engines.image_batch import MAX_IMAGES, sample

        for p in batch:
            self.check(p)
        size = min(batch_size or MAX_IMAGES, MAX_IMAGES)
        with torch.inference_mode():
            got = sample(self.pipe, self.new_scheduler, batch, record, size)
        return [
            ImageOutput(pixels=px, model_digest=self.ref.digest, profile=self.profile, trajectory=traj)
            for px, traj in got
        ]
