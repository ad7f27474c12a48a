"""Image objectives: the denoising loss of a pixel-space diffusion pipeline on a folder of PNGs.

Both objectives train on the loss the embedded `tiny-image` model was built with
(scripts/build_tiny_image.py): noise an image to a timestep with the pipeline's own noise
schedule and regress the UNet's output onto the target its scheduler predicts (v, epsilon or
the clean sample), conditioned on the caption `data.captions`. `textual-inversion` trains one
new token's embedding row only; `unet-denoise` trains every UNet parameter.

The loss is a pure function of the trainable tensors and the sample indices, so a verifier
re-computes it exactly: images are decoded and resized with fixed arithmetic (no resampler whose
output depends on the Pillow version), and sample s is image s // DRAWS noised by draw
s % DRAWS, whose timestep and noise come from a generator seeded by H(domain ‖ data digest ‖ s).
The held-out split is by image, so no held-out picture is trained on under another noise draw.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pathlib
import struct
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from trustgen.engines.loading import MODEL_LOAD
from trustgen.engines.registry import ModelRef
from trustgen.errors import ModelError, UsageError
from trustgen.training.corpus import image_files
from trustgen.training.data import Split, split
from trustgen.training.objectives import DTYPES, _copy_rest, heldout_loss, resolve_base, resolve_data
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors

NOISE_DOMAIN = b"trustgen/train/image-noise/v1\0"
DRAWS = 8  # noised versions of each image: more samples from a small picture set
TOKEN_PARAM = "token_embedding"
PIXEL_PIPELINE = "PixelTextToImagePipeline"
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_PIXELS = 2048 * 2048  # decoded as float64 RGBA: 128 MiB at the bound
_M = TypeVar("_M", bound=torch.nn.Module)


# -- images -----------------------------------------------------------------------------------


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) box-filter weights: output pixel j averages the input it covers, each input
    pixel weighted by its overlap. Computed in exact fractions, so the matrix is the same
    everywhere; it down- and upsamples by any ratio."""
    w = np.zeros((n_out, n_in), dtype=np.float64)
    step = Fraction(n_in, n_out)
    for j in range(n_out):
        lo, hi = j * step, (j + 1) * step
        for i in range(int(lo), min(n_in, -(-hi.numerator // hi.denominator))):
            overlap = min(hi, Fraction(i + 1)) - max(lo, Fraction(i))
            if overlap > 0:
                w[j, i] = float(overlap / step)
    return w


def load_image(path: pathlib.Path, size: tuple[int, int]) -> np.ndarray:
    """An image as float64 (H, W, 3) in [-1, 1] at `size` (height, width): alpha composited onto
    white, then box-resampled; the same bytes give the same array on every machine."""
    try:
        im = Image.open(path, formats=["PNG"])  # reads the header only
    except Exception as e:  # Pillow raises many types for a file that is no PNG
        raise UsageError(f"{path}: not a readable PNG image ({_reason(e)})") from None
    with im:
        w, h = im.size
        # Bounded before decoding: a small file can declare a huge image (a decompression bomb),
        # and _area_weights holds an (output, input) matrix per axis.
        if not (1 <= w <= MAX_IMAGE_SIDE and 1 <= h <= MAX_IMAGE_SIDE and w * h <= MAX_IMAGE_PIXELS):
            raise UsageError(
                f"{path}: a {w}x{h} image is outside the bounds (sides 1..{MAX_IMAGE_SIDE}, "
                f"at most {MAX_IMAGE_PIXELS} pixels)"
            )
        try:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        except Exception as e:  # truncated or corrupt data: OSError, SyntaxError, zlib.error, ...
            raise UsageError(f"{path}: not a readable PNG image ({_reason(e)})") from None
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    h, w = size
    if rgb.shape[:2] != (h, w):
        wh, ww = _area_weights(rgb.shape[0], h), _area_weights(rgb.shape[1], w)
        # einsum without optimisation sums in a fixed order (no BLAS kernel choice).
        rgb = np.einsum("oh,hwc->owc", wh, rgb, optimize=False)
        rgb = np.einsum("pw,owc->opc", ww, rgb, optimize=False)
    return rgb / 127.5 - 1.0


def _reason(e: Exception) -> str:
    """An exception as one line for an error message."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def _sample_seed(data_digest: str, sample: int) -> int:
    h = hashlib.sha256(NOISE_DOMAIN + data_digest.encode() + struct.pack(">Q", sample)).digest()
    return int.from_bytes(h[:8], "big") >> 1


# -- the shared denoising objective -------------------------------------------------------------


class _Denoising(ABC):
    """Loads the pipeline and the noised samples; subclasses say which tensors train."""

    name = ""

    def __init__(self, spec: JobSpec) -> None:
        from diffusers import DDPMScheduler
        from diffusers.utils import logging as diffusers_logging

        from trustgen.engines.pixel_pipeline import PixelTextToImagePipeline

        self.spec = spec
        self.ref: ModelRef = resolve_base(spec)
        _check_pixel_pipeline(self.ref, self.name)
        self.dtype = DTYPES[spec.section("profile")["dtype"]]
        bars = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()
        try:
            # low_cpu_mem_usage=False: the default asks for `accelerate` and warns in every trainer's log.
            with MODEL_LOAD:
                pipe = PixelTextToImagePipeline.from_pretrained(
                    self.ref.path, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
                )
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load image model {self.ref.name!r}: {e}") from None
        finally:
            if bars:
                diffusers_logging.enable_progress_bar()
        self.pipe = pipe
        self.store_dtype = pipe.unet.dtype  # checkpoints are written in the base model's dtype
        for module in (pipe.unet, pipe.text_encoder):
            _to(module, self.dtype).eval()
            for p in module.parameters():
                p.requires_grad_(False)

        d = spec.section("data")
        files = image_files(resolve_data(spec))
        size = pipe.unet.config["sample_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        x0 = torch.from_numpy(np.stack([load_image(f, (h, w)) for f in files])).permute(0, 3, 1, 2)
        by_image = split(d["digest"], len(files), d["heldout_permille"], len(files))
        heldout = tuple(i * DRAWS + k for k in range(DRAWS) for i in by_image.heldout)  # eval spans every image
        self.split = Split(
            train=tuple(i * DRAWS + k for i in by_image.train for k in range(DRAWS)),
            heldout=heldout,
            eval=heldout[: d["eval_windows"]],
        )

        sched = DDPMScheduler.from_config(pipe.scheduler.config)
        n = len(files) * DRAWS
        steps = torch.empty(n, dtype=torch.long)
        noise = torch.empty((n, *x0.shape[1:]), dtype=torch.float32)
        for s in range(n):
            g = torch.Generator().manual_seed(_sample_seed(d["digest"], s))
            steps[s] = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=g)[0]
            noise[s] = torch.randn(x0.shape[1:], generator=g, dtype=torch.float32)
        clean = x0.repeat_interleave(DRAWS, dim=0).to(self.dtype)
        noise = noise.to(self.dtype)
        self.noisy = sched.add_noise(clean, noise, steps)
        self.steps = steps
        kind = sched.config.prediction_type
        if kind == "v_prediction":
            self.target = sched.get_velocity(clean, noise, steps)
        elif kind == "epsilon":
            self.target = noise
        elif kind == "sample":
            self.target = clean
        else:
            raise ModelError(f"model {self.ref.name!r}: unknown prediction type {kind!r}")
        self.caption = d["captions"].replace("{token}", spec.section("model")["token"])

    def caption_ids(self) -> torch.Tensor:
        """The caption as the pipeline tokenizes a prompt (padded to the text encoder's length)."""
        tok = self.pipe.tokenizer
        max_len = self.pipe.text_encoder.config.max_position_embeddings
        ids = tok([self.caption], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        ids = ids.input_ids
        if tok.unk_token_id is not None and bool((ids == tok.unk_token_id).any()):
            raise UsageError(f"caption {self.caption!r} has words the model's tokenizer does not know")
        return ids

    @abstractmethod
    def context(self, params: Tensors) -> torch.Tensor:
        """The caption's text-encoder states (1, length, width) under `params`."""

    @abstractmethod
    def predict(self, params: Tensors, noisy: torch.Tensor, steps: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """The UNet's output for noised samples under `params`."""

    def loss(self, params: Tensors, indices: list[int]) -> torch.Tensor:
        idx = torch.tensor(indices, dtype=torch.long)
        ctx = self.context(params).expand(len(indices), -1, -1)
        pred = self.predict(params, self.noisy[idx], self.steps[idx], ctx)
        return torch.nn.functional.mse_loss(pred, self.target[idx])

    def sample_losses(self, params: Tensors, indices: list[int]) -> torch.Tensor:
        """Each sample's denoising MSE (what an SPSA trainer commits to per sample)."""
        idx = torch.tensor(indices, dtype=torch.long)
        ctx = self.context(params).expand(len(indices), -1, -1)
        pred = self.predict(params, self.noisy[idx], self.steps[idx], ctx)
        return ((pred - self.target[idx]) ** 2).flatten(1).mean(dim=1)

    def eval_loss(self, params: Tensors) -> float:
        return heldout_loss(self, params)


def _to(module: _M, dtype: torch.dtype) -> _M:
    # diffusers warns on every cast of a UNet, even one to the dtype it already has.
    return module if module.dtype == dtype else module.to(dtype)


def _check_pixel_pipeline(ref: ModelRef, objective: str) -> None:
    if ref.kind != "image":
        raise ModelError(f"objective {objective} needs an image model; {ref.name!r} is a text model")
    index = json.loads((ref.path / "model_index.json").read_text())
    if index.get("_class_name") != PIXEL_PIPELINE:
        raise ModelError(
            f"objective {objective} trains pixel-space pipelines ({PIXEL_PIPELINE}, like tiny-image); "
            f"{ref.name!r} is a {index.get('_class_name')}"
        )


class TextualInversion(_Denoising):
    """One new token (`model.token`) whose embedding row, started from `model.init_token`'s, is
    the only trainable tensor; the UNet and the rest of the text encoder stay frozen."""

    name = "textual-inversion"

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        m = spec.section("model")
        token, init = m["token"], m["init_token"]
        if "{token}" not in spec.section("data")["captions"]:
            raise UsageError("textual inversion needs data.captions to contain {token}")
        tok = self.pipe.tokenizer
        init_ids = tok.encode(init, add_special_tokens=False)
        if len(init_ids) != 1 or init_ids[0] == tok.unk_token_id:
            raise UsageError(f"model.init_token {init!r} is not one token of {self.ref.name!r}'s vocabulary")
        if token in tok.get_vocab():
            raise UsageError(f"model.token {token!r} is already in {self.ref.name!r}'s vocabulary")
        tok.add_tokens([token])
        self.token_id = tok.convert_tokens_to_ids(token)
        encoder = self.pipe.text_encoder
        embedding = encoder.get_input_embeddings()
        if not isinstance(embedding, torch.nn.Embedding):
            raise ModelError(f"{self.ref.name!r}: the text encoder's input embedding is not a lookup table")
        table = embedding.weight
        if self.token_id != table.shape[0]:
            raise ModelError(
                f"{self.ref.name!r}: the tokenizer has {self.token_id} ids, the embedding {table.shape[0]}"
            )
        self.table_name = next(n for n, p in encoder.named_parameters() if p is table)
        self.table = table.detach()
        self.init_row = self.table[init_ids[0]].clone()
        self.ids = self.caption_ids()
        if not bool(self.ids.eq(self.token_id).any()):
            raise UsageError(f"caption {self.caption!r} loses the token {token!r} to truncation")

    def initial(self) -> Tensors:
        return {TOKEN_PARAM: self.init_row.clone()}

    def grown_table(self, params: Tensors) -> torch.Tensor:
        return torch.cat([self.table, params[TOKEN_PARAM].to(self.table.dtype).unsqueeze(0)])

    def context(self, params: Tensors) -> torch.Tensor:
        # The embedding module is swapped for the grown table for this call only.
        encoder = self.pipe.text_encoder
        out = torch.func.functional_call(encoder, {self.table_name: self.grown_table(params)}, args=(self.ids,))
        return out.last_hidden_state

    def predict(self, params: Tensors, noisy: torch.Tensor, steps: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.pipe.unet(noisy, steps, encoder_hidden_states=ctx).sample

    def save(self, params: Tensors, out: pathlib.Path) -> None:
        """The whole pipeline with the token added to the tokenizer and its row appended to the
        text encoder's embedding matrix; UNet, scheduler and the rest copied from the base."""
        out.mkdir(parents=True, exist_ok=True)
        encoder = copy.deepcopy(self.pipe.text_encoder)
        old = encoder.get_input_embeddings()
        with torch.no_grad():
            grown = torch.nn.Embedding.from_pretrained(
                self.grown_table(params).clone(), freeze=False, padding_idx=old.padding_idx
            )
        encoder.set_input_embeddings(grown)
        encoder.config.vocab_size = grown.num_embeddings
        _to(encoder, self.store_dtype).save_pretrained(out / "text_encoder", safe_serialization=True)
        self.pipe.tokenizer.save_pretrained(out / "tokenizer")
        _copy_rest(self.ref.path, out)


class UNetDenoise(_Denoising):
    """Every UNet parameter trains; the text encoder is frozen, so the caption's encoding is
    computed once."""

    name = "unet-denoise"

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        with torch.no_grad():
            self.ctx = self.pipe.text_encoder(self.caption_ids()).last_hidden_state

    def initial(self) -> Tensors:
        return {n: p.detach().clone() for n, p in self.pipe.unet.named_parameters()}

    def context(self, params: Tensors) -> torch.Tensor:
        return self.ctx

    def predict(self, params: Tensors, noisy: torch.Tensor, steps: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        unet = self.pipe.unet
        return torch.func.functional_call(
            unet, params, args=(noisy, steps), kwargs={"encoder_hidden_states": ctx}
        ).sample

    def save(self, params: Tensors, out: pathlib.Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        unet = copy.deepcopy(self.pipe.unet)
        with torch.no_grad():
            for n, p in unet.named_parameters():
                p.copy_(params[n])
        _to(unet, self.store_dtype).save_pretrained(out / "unet", safe_serialization=True)
        _copy_rest(self.ref.path, out)
