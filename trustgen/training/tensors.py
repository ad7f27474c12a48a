"""Named tensor sets: canonical digests, (de)serialisation as safetensors bytes, copies.

A digest covers names, dtypes, shapes and the raw little-endian bytes, in name order: two
tensor sets with the same digest are bit-identical. safetensors is the only format read from
a peer (it cannot execute code), and a loaded set is checked against the names, shapes and
dtypes the reader expects before anything uses it.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from trustgen.consensus.domains import TENSORS as DIGEST_DOMAIN
from trustgen.errors import TrustgenError

Tensors = dict[str, torch.Tensor]


class TensorError(TrustgenError):
    """A tensor blob that is malformed or does not have the expected layout."""


def tensor_digest(tensors: Mapping[str, torch.Tensor], domain: bytes = DIGEST_DOMAIN) -> bytes:
    h = hashlib.sha256(domain)
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # 0-dim too
        head = f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{','.join(map(str, t.shape))}\0".encode()
        h.update(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(raw)))
        h.update(raw)
    return h.digest()


def clone(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    return {k: v.detach().clone() for k, v in tensors.items()}


def to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())})


def from_bytes(data: bytes, expect: Mapping[str, tuple[torch.Size, torch.dtype]], what: str) -> Tensors:
    """Parse safetensors bytes and check they hold exactly the expected names, shapes, dtypes
    and only finite values."""
    try:
        got = st_load(data)
    except Exception as e:  # safetensors raises its own error types for every malformed header
        raise TensorError(f"{what}: not a safetensors blob ({type(e).__name__})") from None
    if set(got) != set(expect):
        missing, extra = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
        raise TensorError(f"{what}: tensors missing {missing[:3]}, unexpected {extra[:3]}")
    for name, (shape, dtype) in expect.items():
        t = got[name]
        if t.shape != shape or t.dtype != dtype:
            raise TensorError(f"{what}: tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TensorError(f"{what}: tensor {name} holds a non-finite value")
    return got


def layout(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in tensors.items()}


def relative_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors (float64 sums), the cross-profile distance."""
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)


def numel(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in tensors.values())
