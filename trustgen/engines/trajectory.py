"""Denoising trajectories: what a worker records while it samples, and the single-step re-execution
a verifier runs on it.

A trajectory is the latent before every scheduler step (the first is the initial noise, scaled as
the pipeline feeds it in), the model output each step fed its scheduler, and the final latent.
Recording wraps `scheduler.step`, which every diffusers sampling loop calls with exactly these
tensors, so it works for any scheduler: multistep schedulers (DPM-Solver, PNDM) keep a history of
model outputs, which the committed outputs let a verifier rebuild; stochastic ones (Euler
ancestral, DDPM) draw step noise from the task's generator, which a verifier re-seeds from the
task and advances by replaying the same cheap scheduler steps.

How a pipeline computes one step's model output, its initial latents and its decoded image is
per pipeline class (`SAMPLING`): the pixel-space pipeline of the embedded model, and diffusers'
StableDiffusionPipeline (latent space, VAE decoder).

Leaf digests are sha256 over a domain tag, the leaf's role and index, dtype, shape and raw
little-endian bytes; verifier/trajectory.py folds them into the Merkle root a Result commits.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from trustgen.engines.params import ImageParams
from trustgen.engines.pixel_pipeline import step_kwargs, to_uint8

# Copy of trustgen.consensus.domains.TRAJECTORY_LEAF (engines may not import consensus).
TRAJECTORY_LEAF = b"trustgen/trajectory-leaf/v1\0"
LATENT, OUTPUT = 0, 1
# Storage dtypes a trajectory may hold (what the engine's dtypes produce); anything else is refused.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A 200-step SD trajectory at 1024x1024 (128x128x4 latents) is ~105 MB in float32; pixel-space
# models that large would not fit and are verified by regeneration instead.
MAX_FILE_BYTES = 512 << 20


class TrajectoryError(ValueError):
    """A trajectory that is malformed or does not fit its task (the verifier rejects it)."""


def tensor_leaf(role: int, index: int, t: torch.Tensor) -> bytes:
    """sha256 over tag, role, index, dtype name, shape and the tensor's raw bytes."""
    t = t.detach().to("cpu").contiguous()
    name = str(t.dtype).removeprefix("torch.").encode()
    head = struct.pack("<IIB", role, index, len(name)) + name + struct.pack(f"<B{t.dim()}I", t.dim(), *t.shape)
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(TRAJECTORY_LEAF + head + raw).digest()


@dataclass
class Trajectory:
    """latents[j] is what step j started from (latents[0]: the initial latent); outputs[j] is the
    model output step j fed its scheduler; latents[-1] is the final latent that is decoded."""

    latents: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.outputs)

    def leaves(self) -> list[bytes]:
        """Leaf digests in commitment order: latent 0, then (output j, latent j+1) per step."""
        out = [tensor_leaf(LATENT, 0, self.latents[0])]
        for j, eps in enumerate(self.outputs):
            out += [tensor_leaf(OUTPUT, j, eps), tensor_leaf(LATENT, j + 1, self.latents[j + 1])]
        return out

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"latent.{j:04d}": x for j, x in enumerate(self.latents)}
        tensors |= {f"output.{j:04d}": e for j, e in enumerate(self.outputs)}
        # Own storage per tensor: a loop may hand the scheduler one output object twice (a
        # faked step reusing the last), and safetensors refuses tensors that share memory.
        return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}

    def save(self, path: pathlib.Path) -> None:
        from safetensors.torch import save_file

        save_file(self._tensors(), str(path))

    def to_bytes(self) -> bytes:
        """The safetensors encoding a worker serves as a blob (the same bytes `save` writes)."""
        from safetensors.torch import save

        return save(self._tensors())

    @classmethod
    def load(cls, path: pathlib.Path) -> Trajectory:
        """Read a trajectory file (safetensors: no code runs on load). Structure only is checked
        here; whether it fits the task is the verifier's check."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = pathlib.Path(path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise TrajectoryError(f"trajectory file is larger than {MAX_FILE_BYTES >> 20} MiB")
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as e:
            raise TrajectoryError(f"cannot read trajectory {path}: {e}") from None
        return cls._from_tensors(tensors)

    @classmethod
    def from_bytes(cls, data: bytes) -> Trajectory:
        """Parse a trajectory blob fetched from a peer (untrusted; size bounded by the caller)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        if len(data) > MAX_FILE_BYTES:
            raise TrajectoryError(f"trajectory is larger than {MAX_FILE_BYTES >> 20} MiB")
        try:
            tensors = load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise TrajectoryError(f"cannot parse trajectory: {e}") from None
        return cls._from_tensors(tensors)

    @classmethod
    def _from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Trajectory:
        n = sum(k.startswith("output.") for k in tensors)
        expected = {f"latent.{j:04d}" for j in range(n + 1)} | {f"output.{j:04d}" for j in range(n)}
        if set(tensors) != expected or n == 0:
            raise TrajectoryError("trajectory does not hold latents 0..N and outputs 0..N-1")
        traj = cls([tensors[f"latent.{j:04d}"] for j in range(n + 1)], [tensors[f"output.{j:04d}"] for j in range(n)])
        first = traj.latents[0]
        if first.dtype not in DTYPES.values():
            raise TrajectoryError(f"trajectory dtype {first.dtype} is not one an engine produces")
        if any(t.dtype != first.dtype or t.shape != first.shape for t in traj.latents + traj.outputs):
            raise TrajectoryError("trajectory tensors differ in dtype or shape")
        if first.dim() != 4 or first.shape[0] != 1:
            raise TrajectoryError("trajectory latents must be one image (1, C, H, W)")
        if not all(bool(torch.isfinite(t).all()) for t in traj.latents + traj.outputs):
            raise TrajectoryError("trajectory holds non-finite values")
        return traj


@contextmanager
def recording(pipe: Any) -> Iterator[Trajectory]:
    """Record every `pipe.scheduler.step` call of one sampling run into a Trajectory."""
    with recording_steps(pipe.scheduler) as traj:
        yield traj


@contextmanager
def recording_steps(scheduler: Any) -> Iterator[Trajectory]:
    """Record every `scheduler.step` call of one sampling run (one image) into a Trajectory. The
    wrapper keeps the step's signature visible (`functools.wraps`), since pipelines inspect it to
    decide whether to pass a generator."""
    traj = Trajectory()
    original = scheduler.step

    @functools.wraps(original)
    def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *a: Any, **k: Any) -> Any:
        out = original(model_output, timestep, sample, *a, **k)
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        if not traj.latents:
            traj.latents.append(sample.detach().to("cpu", copy=True))
        elif not torch.equal(traj.latents[-1], sample.detach().cpu()):
            # Pipelines that edit latents between steps (inpainting) are not supported: their
            # trajectory would not replay from its own records.
            raise RuntimeError("the pipeline changed the latents between scheduler steps")
        traj.outputs.append(model_output.detach().to("cpu", copy=True))
        traj.latents.append(prev.detach().to("cpu", copy=True))
        return out

    scheduler.step = step
    try:
        yield traj
    finally:
        del scheduler.step  # back to the class's method


class SamplingModel(Protocol):
    """How one pipeline class computes what a trajectory step needs."""

    # Whether the pipeline sets the scheduler's timesteps before it draws the initial noise (the
    # noise scale of sigma-based samplers such as Euler depends on it).
    timesteps_first: bool

    def context(self, pipe: Any, p: ImageParams) -> Any: ...

    def initial_latents(
        self, pipe: Any, p: ImageParams, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        """On the CPU, as the pipeline draws them (advancing `generator` the same way)."""
        ...

    def model_output(self, pipe: Any, x: torch.Tensor, t: Any, ctx: Any, p: ImageParams) -> torch.Tensor: ...

    def decode(self, pipe: Any, x: torch.Tensor) -> np.ndarray:
        """Final latent to uint8 HWC pixels, as the pipeline's output_type="np" path does."""
        ...


class PixelSampling:
    """trustgen's pixel-space pipeline (the embedded tiny-image model)."""

    timesteps_first = False

    def context(self, pipe: Any, p: ImageParams) -> Any:
        return pipe.guidance_context([p.prompt], p.guidance)

    def initial_latents(
        self, pipe: Any, p: ImageParams, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        shape = (pipe.unet.config["in_channels"], p.height, p.width)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)[None]
        return (x * pipe.scheduler.init_noise_sigma).to(dtype)

    def model_output(self, pipe: Any, x: torch.Tensor, t: Any, ctx: Any, p: ImageParams) -> torch.Tensor:
        return pipe.guided_output(x, t, ctx, p.guidance)

    def decode(self, pipe: Any, x: torch.Tensor) -> np.ndarray:
        return to_uint8(pipe.to_images(x)[0])


class StableDiffusionSampling:
    """diffusers' StableDiffusionPipeline: the same calls its `__call__` makes, one step at a time."""

    timesteps_first = True

    @staticmethod
    def _cfg(pipe: Any, p: ImageParams) -> bool:
        return p.guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None

    def context(self, pipe: Any, p: ImageParams) -> Any:
        cfg = self._cfg(pipe, p)
        cond, uncond = pipe.encode_prompt(p.prompt, pipe._execution_device, 1, cfg, None)
        return torch.cat([uncond, cond]) if cfg else cond

    def initial_latents(
        self, pipe: Any, p: ImageParams, generator: torch.Generator, dtype: torch.dtype
    ) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        f = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, p.height // f, p.width // f)
        return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype) * (
            pipe.scheduler.init_noise_sigma
        )

    def model_output(self, pipe: Any, x: torch.Tensor, t: Any, ctx: Any, p: ImageParams) -> torch.Tensor:
        cfg = self._cfg(pipe, p)
        model_in = torch.cat([x] * 2) if cfg else x
        model_in = pipe.scheduler.scale_model_input(model_in, t)
        eps = pipe.unet(model_in, t, encoder_hidden_states=ctx, return_dict=False)[0]
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + p.guidance * (eps_c - eps_u)
        return eps

    def decode(self, pipe: Any, x: torch.Tensor) -> np.ndarray:
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor, return_dict=False)[0]
        images = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True])
        return to_uint8(images[0])


SAMPLING: dict[str, SamplingModel] = {
    "PixelTextToImagePipeline": PixelSampling(),
    "StableDiffusionPipeline": StableDiffusionSampling(),
}


def sampling_model(pipe: Any) -> SamplingModel:
    model = SAMPLING.get(type(pipe).__name__)
    if model is None:
        raise TrajectoryError(f"trajectories are not supported for {type(pipe).__name__}")
    return model


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    den = float(b64.norm())
    num = float((a64 - b64).norm())
    if not (np.isfinite(num) and np.isfinite(den)):
        return float("inf")  # a NaN must never compare as "within tolerance"
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


@dataclass
class StepCheck:
    """A re-executed step: the verifier's model output against the committed one."""

    step: int
    rel_l2: float
    exact: bool


@dataclass
class Replay:
    """What re-executing a trajectory found. `chain_*`: every scheduler step recomputed from the
    committed model output and latent against the committed next latent."""

    noise_exact: bool
    steps: list[StepCheck]
    chain_max_rel_l2: float
    chain_exact: bool
    first_chain_break: int | None
    pixels: np.ndarray


@torch.inference_mode()
def replay(engine: Any, p: ImageParams, traj: Trajectory, chosen: set[int]) -> Replay:
    """Re-execute a committed trajectory: the initial latent from the task's seed (exact: drawn on
    the CPU), every scheduler step from the committed tensors (cheap arithmetic), the model at the
    `chosen` steps only, and the decoder on the final latent. TrajectoryError when the
    trajectory's step count or latent shape is not the task's."""
    pipe = engine.pipe
    model = sampling_model(pipe)
    engine._set_scheduler(p.scheduler)
    sched = pipe.scheduler
    device = engine.profile.device
    generator = torch.Generator(device="cpu").manual_seed(p.seed)
    dtype = traj.latents[0].dtype
    if model.timesteps_first:
        sched.set_timesteps(p.steps, device=device)
    noise = model.initial_latents(pipe, p, generator, dtype)
    if not model.timesteps_first:
        sched.set_timesteps(p.steps, device=device)
    if len(sched.timesteps) != traj.steps:
        raise TrajectoryError(f"trajectory has {traj.steps} steps; the task takes {len(sched.timesteps)}")
    if noise.shape != traj.latents[0].shape:
        raise TrajectoryError(f"trajectory latents are {tuple(traj.latents[0].shape)}, the task's {tuple(noise.shape)}")
    noise_exact = torch.equal(noise, traj.latents[0])
    ctx = model.context(pipe, p) if chosen else None
    extra = step_kwargs(sched, generator)
    checks: list[StepCheck] = []
    chain_max, chain_exact, first_break = 0.0, True, None
    unet_dtype = pipe.unet.dtype
    for j, t in enumerate(sched.timesteps):
        x = traj.latents[j].to(device)
        if j in chosen:
            own = model.model_output(pipe, x.to(unet_dtype), t, ctx, p).cpu()
            claimed = traj.outputs[j]
            exact = own.dtype == claimed.dtype and torch.equal(own, claimed)
            checks.append(StepCheck(j, rel_l2(own, claimed), exact))
        else:
            sched.scale_model_input(x, t)  # samplers that scale inputs track it (Euler warns otherwise)
        out = sched.step(traj.outputs[j].to(device), t, x, **extra).prev_sample.cpu()
        d = rel_l2(out, traj.latents[j + 1])
        if not torch.equal(out, traj.latents[j + 1]):
            chain_exact = False
            first_break = j if first_break is None else first_break
        chain_max = max(chain_max, d)
    pixels = model.decode(pipe, traj.latents[-1].to(device=device, dtype=unet_dtype))
    return Replay(noise_exact, checks, chain_max, chain_exact, first_break, pixels)
