"""The one-pass check's linear layers through MKL's packed-weight gemm.

A verifier's prefill pass over a transformers model (one the batch-invariant GPT-2 runner cannot
run, e.g. SmolLM2) spends most of its time in `nn.Linear` matmuls of a few hundred rows, and
addmm re-packs the whole weight on every call. Within `packed_linears(model)` each float32 CPU
linear of `model` multiplies by a copy of its weight packed once (kept on the weight, as
engines/packed.py does for the GPT-2 runner) instead. Only the calling thread is affected, so a
worker generating on the same model keeps its own numerics; measured on this machine's MKL the
results are bit-identical to addmm's at SmolLM2's shapes (docs/benchmarks.md, issue 18, third
pass), and any difference would be rounding (~1e-7), far inside the same-dtype tolerance.
The packed copies cost memory (SmolLM2-135M: about 3.5x its float32 weights, counted in the
benchmark); they are built on the first check and live as long as the weights.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from trustgen.engines.packed import ROWS, _prepacked, mkl_available

_ON = threading.local()


class _PackedForward:
    """An `nn.Linear`'s forward: through the packed weight inside `packed_linears` on this
    thread, plain `F.linear` (what `nn.Linear.forward` computes) everywhere else."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear = linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        if not getattr(_ON, "active", False) or lin.weight.dtype != torch.float32 or x.dtype != torch.float32:
            return F.linear(x, lin.weight, lin.bias)
        packed = _prepacked(lin.weight.t())  # keyed on the weight's version: an update re-packs
        return torch.ops.mkl._mkl_linear(x, packed, lin.weight, lin.bias, ROWS)


def _install(model: nn.Module) -> None:
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.device.type == "cpu" and not isinstance(m.forward, _PackedForward):
            m.forward = _PackedForward(m)  # type: ignore[method-assign,assignment]


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Run `model`'s float32 CPU linears through packed weights on this thread, while inside."""
    if not mkl_available():
        yield
        return
    _install(model)
    before = getattr(_ON, "active", False)
    _ON.active = True
    try:
        yield
    finally:
        _ON.active = before
