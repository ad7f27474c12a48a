"""A small text-to-image diffusion pipeline that works directly in pixel space.

The embedded `tiny-image` model uses it: a CLIP text encoder and a conditional UNet from the
standard libraries, a standard diffusers scheduler, and no VAE, so that a model small enough to
ship with the project (and to train on a CPU) still produces prompt-dependent pictures. Any
standard diffusers pipeline directory (Stable Diffusion and friends) is loaded by the engine
through `DiffusionPipeline` instead; both are called the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

# Imported from their defining modules: the package's lazy top level shows type checkers only
# placeholder classes. They are the same objects at run time.
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, PreTrainedTokenizerFast


class _Scheduler(Protocol):
    """What the sampling loop uses of a diffusers scheduler (SchedulerMixin itself declares none of it)."""

    config: dict[str, Any]  # ConfigMixin's: the engine builds the other samplers from it
    init_noise_sigma: float
    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **kwargs: Any) -> Any: ...


class PixelTextToImagePipeline(DiffusionPipeline):
    """Classifier-free-guided diffusion in pixel space, conditioned on a CLIP text encoder."""

    # diffusers declares this `= None` without an annotation, so checkers take its type to be None.
    model_cpu_offload_seq = "text_encoder->unet"  # type: ignore[assignment]
    # Set by register_modules (diffusers keeps them as config entries too).
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerFast
    scheduler: _Scheduler

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: SchedulerMixin,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        max_len = self.text_encoder.config.max_position_embeddings
        enc = self.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        ids = enc.input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    def guidance_context(self, prompts: list[str], guidance_scale: float) -> torch.Tensor:
        """The text conditioning of one sampling run: [uncond, cond] under classifier-free guidance."""
        cond = self.encode_prompt(prompts)
        if guidance_scale > 1.0:
            uncond = self.encode_prompt([""] * len(prompts))
            return torch.cat([uncond, cond]).to(self.unet.dtype)
        return cond.to(self.unet.dtype)

    def initial_latents(
        self, gens: Sequence[torch.Generator | None], height: int, width: int, scheduler: Any = None
    ) -> torch.Tensor:
        # Initial noise is drawn on the CPU from each image's own generator, so it is the same
        # on every device and independent of what else is in the batch.
        shape = (self.unet.config["in_channels"], height, width)
        x = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        sigma = (scheduler or self.scheduler).init_noise_sigma
        return (x * sigma).to(device=self.unet.device, dtype=self.unet.dtype)

    def model_input(self, x: torch.Tensor, t: Any, guidance_scale: float, scheduler: Any = None) -> torch.Tensor:
        """What one denoising step feeds the UNet for `x`: [x, x] under classifier-free guidance."""
        model_in = torch.cat([x, x]) if guidance_scale > 1.0 else x
        return (scheduler or self.scheduler).scale_model_input(model_in, t)

    @staticmethod
    def guide(eps: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The UNet's rows for one image to the model output its scheduler gets."""
        if guidance_scale > 1.0:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        return eps

    def guided_output(self, x: torch.Tensor, t: Any, context: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The model output one denoising step feeds its scheduler (one UNet call, CFG batched)."""
        eps = self.unet(self.model_input(x, t, guidance_scale), t, encoder_hidden_states=context).sample
        return self.guide(eps, guidance_scale)

    @staticmethod
    def to_images(x: torch.Tensor) -> np.ndarray:
        """Final latents to [0, 1] float NHWC images (pixel space: no decoder)."""
        return ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int = 32,
        width: int = 32,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        gens = generator if isinstance(generator, list) else [generator] * n
        if len(gens) != n:
            raise ValueError("one generator per prompt is required")
        context = self.guidance_context(prompts, guidance_scale)
        x = self.initial_latents(gens, height, width)
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        extra = step_kwargs(self.scheduler, gens[0] if n == 1 else None)
        if "generator" in extra and n != 1:
            # Stochastic samplers draw fresh noise each step from one generator: only
            # reproducible per image, so they run one image per call.
            raise ValueError("a stochastic scheduler generates one image per call")
        for t in self.scheduler.timesteps:
            eps = self.guided_output(x, t, context, guidance_scale)
            x = self.scheduler.step(eps, t, x, **extra).prev_sample

        images = self.to_images(x)
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        elif output_type != "np":
            raise ValueError(f"unsupported output_type {output_type!r}")
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def step_kwargs(scheduler: Any, generator: torch.Generator | None) -> dict[str, Any]:
    """The extra arguments a sampling loop passes to `scheduler.step`: the image's generator for
    stochastic samplers, and eta = 0 (deterministic DDIM) where the sampler takes one."""
    params = set(inspect.signature(scheduler.step).parameters)
    extra: dict[str, Any] = {}
    if "generator" in params:
        extra["generator"] = generator
    if "eta" in params:
        extra["eta"] = 0.0
    return extra


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] float images to uint8 the way diffusers' PIL conversion does."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
