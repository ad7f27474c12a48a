"""Batch-invariant UNet calls: several images share one UNet call, and every op whose result
depends on how many rows its call holds runs on exactly the rows the image has alone.

An image's rows are the ones its batch-of-one call holds: [uncond, cond] under classifier-free
guidance, one row otherwise. Measured on this CPU (oneDNN convolutions, MKL matmuls; see
docs/decisions.md, "Batched images"): a Conv2d over one row computes differently from the same
row inside a call of two or more rows, while calls of two or more rows agree row for row; a Linear
differs with its call's row count (the time embedding at 1, 2 and 6+ rows; the attention
projections at 4 tokens per image, not at 64), so every Linear runs per image. Group norm, layer
norm, activations, the sinusoidal time projection and the attention core gave each row the same
bits whatever else was in the call. `RULES` holds that finding per device; tests keep it true.

On CUDA (cuDNN and cuBLAS pick kernels, and attention kernels split work, by batch shape) every
op that reduces runs per image: by construction, never measured, since no GPU was available.

Each image's rows are copied to fresh memory before a per-image call, so the call sees what the
batch of one does (MKL may branch on alignment), not a view into the shared batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

BATCHED = "batched"  # one call over every row: the op is row-invariant
PER_IMAGE = "per-image"  # one call per image, over its own rows
SINGLES_ALONE = "singles-alone"  # a one-row image alone; images of 2+ rows share one call

Rule = Callable[[torch.Tensor], str]  # the op's first input -> how it runs


def _always(mode: str) -> Rule:
    return lambda _x: mode


RULES: dict[str, dict[type[torch.nn.Module], Rule]] = {
    "cpu": {torch.nn.Conv2d: _always(SINGLES_ALONE), torch.nn.Linear: _always(PER_IMAGE)},
    "cuda": {
        torch.nn.Conv2d: _always(PER_IMAGE),
        torch.nn.Linear: _always(PER_IMAGE),
        torch.nn.GroupNorm: _always(PER_IMAGE),
        torch.nn.LayerNorm: _always(PER_IMAGE),
        Attention: _always(PER_IMAGE),
    },
}
MODES = {"cpu": "image-groups-cpu/v1", "cuda": "image-groups-cuda/v1"}

_local = threading.local()


@contextmanager
def row_groups(sizes: list[int]) -> Iterator[None]:
    """UNet calls on this thread, inside the block, hold these images' rows in this order."""
    before = getattr(_local, "sizes", None)
    _local.sizes = list(sizes)
    try:
        yield
    finally:
        _local.sizes = before


def _split(a: Any, rows: int, start: int, n: int) -> Any:
    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == rows:
        return a[start : start + n].clone(memory_format=torch.contiguous_format)
    return a


def _call(
    forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], rows: int, at: int, n: int
) -> Any:
    return forward(*(_split(a, rows, at, n) for a in args), **{k: _split(v, rows, at, n) for k, v in kwargs.items()})


def _grouped(forward: Callable[..., Any], rule: Rule) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        sizes = getattr(_local, "sizes", None)
        x = args[0] if args else next(iter(kwargs.values()))
        if sizes is None or len(sizes) < 2:
            return forward(*args, **kwargs)  # a batch of one: the call it always was
        rows = sum(sizes)
        mode = rule(x)
        if mode == BATCHED or x.shape[0] != rows:
            return forward(*args, **kwargs)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        if mode == SINGLES_ALONE:
            shared = [i for i, n in enumerate(sizes) if n >= 2]
            if len(shared) == len(sizes):
                return forward(*args, **kwargs)
            outs: list[torch.Tensor | None] = [None] * len(sizes)
            if shared:
                idx = torch.cat([torch.arange(starts[i], starts[i] + sizes[i]) for i in shared])
                both = forward(
                    *(_take(a, rows, idx) for a in args), **{k: _take(v, rows, idx) for k, v in kwargs.items()}
                )
                at = 0
                for i in shared:
                    outs[i] = both[at : at + sizes[i]]
                    at += sizes[i]
            for i, n in enumerate(sizes):
                if outs[i] is None:
                    outs[i] = _call(forward, args, kwargs, rows, starts[i], n)
            return torch.cat([o for o in outs if o is not None])
        return torch.cat([_call(forward, args, kwargs, rows, s, n) for s, n in zip(starts, sizes)])

    return run


def _take(a: Any, rows: int, idx: torch.Tensor) -> Any:
    if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == rows:
        return a.index_select(0, idx.to(a.device))
    return a


def install(network: torch.nn.Module, device: str) -> str:
    """Make `network`'s batch-dependent ops follow the device's rules inside `row_groups`; outside
    it (and for a batch of one) every op runs as before. Returns the batching mode's name."""
    rules = RULES[device]
    for m in network.modules():
        rule = next((r for t, r in rules.items() if isinstance(m, t)), None)
        if rule is not None:
            m.forward = _grouped(m.forward, rule)  # type: ignore[method-assign]
    return MODES[device]
