"""Generation outputs and their canonical bytes.

An output digest is sha256 over canonical bytes with a domain tag: little-endian uint32 token
ids for text, and a small header (height, width, channels) plus the uint8 HWC pixel array for
images. Never over a decoded string (tokenizers are not injective) or an encoded PNG (encoders
differ); both sides of a comparison hash exactly what the model produced.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from trustgen.engines.determinism import ExecutionProfile

TEXT_DOMAIN = b"trustgen/text-output/v1\0"
IMAGE_DOMAIN = b"trustgen/image-output/v1\0"


def token_bytes(token_ids: list[int]) -> bytes:
    return np.asarray(token_ids, dtype="<u4").tobytes()


def text_digest(token_ids: list[int]) -> str:
    return "sha256:" + hashlib.sha256(TEXT_DOMAIN + token_bytes(token_ids)).hexdigest()


def image_digest(pixels: np.ndarray) -> str:
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError("image pixels must be a uint8 HxWxC array")
    header = struct.pack("<III", *pixels.shape)
    return "sha256:" + hashlib.sha256(IMAGE_DOMAIN + header + np.ascontiguousarray(pixels).tobytes()).hexdigest()


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def read_png(data: bytes) -> np.ndarray:
    """Decode a PNG to a uint8 HWC RGB array (PNG is lossless, so pixels round-trip exactly)."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass
class TextOutput:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" or "length"
    model_digest: str
    profile: ExecutionProfile
    score: float | None = None  # beam search: sum of log-probs of the chosen sequence

    @property
    def output_digest(self) -> str:
        return text_digest(self.token_ids)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "text",
            "output_digest": self.output_digest,
            "model_digest": self.model_digest,
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_ids": self.prompt_ids,
            "finish_reason": self.finish_reason,
            "profile": self.profile.to_dict(),
        }
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass
class ImageOutput:
    pixels: np.ndarray = field(repr=False)
    model_digest: str
    profile: ExecutionProfile
    trajectory: Any = field(default=None, repr=False)  # engines.trajectory.Trajectory when recorded

    @property
    def output_digest(self) -> str:
        return image_digest(self.pixels)

    def png(self) -> bytes:
        return png_bytes(self.pixels)

    def to_dict(self) -> dict[str, Any]:
        h, w, c = self.pixels.shape
        return {
            "kind": "image",
            "output_digest": self.output_digest,
            "model_digest": self.model_digest,
            "height": h,
            "width": w,
            "channels": c,
            "profile": self.profile.to_dict(),
        }
