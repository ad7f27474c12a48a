"""A batch-invariant forward pass for GPT-2-shaped models: many sequences, one step, and every
sequence's numbers the same as when it runs alone.

The rows of every sequence in a step (a joining task's whole prompt, one token for each decoding
sequence) are packed into one [rows, hidden] matrix, with no padding between sequences. Three
kinds of op touch it:
- row-wise ops (embeddings, layer norm, GELU, residual adds): a row's result is a function of that
  row alone;
- matmuls: run in fixed chunks of ROWS rows, the last one zero-padded, so every BLAS call has one
  shape whatever the batch. Measured on this machine's MKL (2 threads): a 1-row addmm takes the
  gemv path and differs from the same row in a >= 2-row call by ~1e-6, and the 3072->768
  projection changes again from ~512 rows; in a fixed-shape call a row's result depends neither on
  its place in the chunk nor on the other rows (docs/decisions.md, "Batched generation");
- attention: per sequence, over that sequence's own cache, so its shapes are the sequence's own
  (on CPU, sequences decoding one token over equally long caches share one call; see
  `_attention`). On CUDA every sequence has its own call: flash-decoding kernels choose how to
  split a cache by the batch and head count, so a shared call would change a sequence's sums.
  The rest of the CUDA path is the same fixed 16-row matmuls under the deterministic flags
  `determinism.configure` sets (no TF32, no reduced-precision reductions, deterministic
  algorithms, a fixed cuBLAS workspace): cuBLAS picks its kernel by shape, and every shape is fixed.
The logits are therefore bit-identical to a batch of one, by construction, and the tests check it.

Models this module cannot run (another architecture, or GPT-2 options it does not implement)
get `None` from `packed_runner`, and the engine runs them one task at a time instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROWS = 16  # rows per matmul call; part of the numerics, so recorded in the profile
MODE = f"packed-rows{ROWS}"  # matmuls by addmm
MKL_MODE = f"packed-mkl-rows{ROWS}"  # matmuls by MKL's packed-weight gemm (CPU, float32)
PREPACK_MIN_WIDTH = 512  # hidden size from which the packed-weight gemm is used (tiny-text: 128)


@dataclass
class Sequence:
    """One sequence's state: its cache, the tokens to feed next step, how many logit rows it wants."""

    pending: list[int]
    cache: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer (k, v)
    want: int = 1  # logits of the last `want` pending rows come back

    @property
    def length(self) -> int:
        return int(self.cache[0][0].shape[1]) if self.cache else 0

    def branch(self, token: int) -> Sequence:
        """A child sharing this cache (tensors are never written in place, only replaced)."""
        return Sequence(pending=[token], cache=list(self.cache))


def chunked_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prepacked: bool = False
) -> torch.Tensor:
    """x @ weight (+ bias), computed ROWS rows per call so a row's result ignores the batch shape.
    `prepacked`: through MKL's packed-weight gemm (`_prepacked`), whose sums differ from addmm's
    for some shapes, so the two are separate modes in the profile."""
    n = x.shape[0]
    padded_n = -(-n // ROWS) * ROWS
    if padded_n != n:
        x = torch.cat([x, x.new_zeros(padded_n - n, x.shape[1])])
    if prepacked:
        packed = _prepacked(weight)
        parts = [torch.ops.mkl._mkl_linear(c, packed, weight.t(), bias, ROWS) for c in torch.split(x, ROWS)]
    else:
        parts = [torch.mm(c, weight) if bias is None else torch.addmm(bias, c, weight) for c in torch.split(x, ROWS)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out[:n]


# MKL's packed copy of each [in, out] weight, kept on the tensor it views (so it lives as long as
# the weight): addmm re-packs the whole weight on every call, which dominates a step of a few rows
# on a large model (measured: docs/benchmarks.md, issue 17). A weight changed in place (its
# version moves) is packed again.
_PACK_LOCK = threading.Lock()


def _prepacked(weight: torch.Tensor) -> torch.Tensor:
    base = weight._base if weight._base is not None else weight
    key = (base._version, weight.data_ptr(), *weight.shape, *weight.stride())
    with _PACK_LOCK:
        hit = getattr(base, "_trustgen_packed", None)
        if hit is not None and hit[0] == key:
            return hit[1]
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.t().contiguous(), ROWS)
        base._trustgen_packed = (key, packed)  # type: ignore[attr-defined]
        return packed


def mkl_available() -> bool:
    return bool(torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"))


class PackedGPT2:
    """Runs GPT2LMHeadModel's weights (read live from the module, so a swapped model is used)."""

    def __init__(self, model: nn.Module, prepack: bool | None = None) -> None:
        self.model = model
        core: Any = model.transformer  # submodules are typed Any: torch types them Tensor | Module
        self.wte, self.wpe, self.ln_f = core.wte, core.wpe, core.ln_f
        self.blocks: list[Any] = list(core.h)
        attn = self.blocks[0].attn
        self.heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)
        self.scale = float(attn.scaling)
        # Sharing attention calls across sequences is invariant on CPU (measured; tests check it),
        # not on CUDA (see the module docstring).
        self.share_attention = self.wte.weight.device.type == "cpu"
        # MKL's packed-weight gemm where torch has it (CPU, float32 weights) and the model is wide
        # enough to gain: a step of a few rows no longer re-packs every weight; same fixed-shape
        # argument, its own numerics (`mode`). On narrow models its per-call cost loses (measured).
        wanted = int(self.wte.weight.shape[1]) >= PREPACK_MIN_WIDTH if prepack is None else prepack
        self.prepacked = wanted and self.share_attention and self.wte.weight.dtype == torch.float32 and mkl_available()
        self.mode = MKL_MODE if self.prepacked else MODE

    def _mm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return chunked_matmul(x, weight, bias, self.prepacked)

    def forward(self, seqs: list[Sequence]) -> list[torch.Tensor]:
        """Feed every sequence its pending tokens, extend its cache, return its wanted logit rows
        ([want, vocab], float32, CPU), in the order given."""
        ids: list[int] = []
        pos: list[int] = []
        for s in seqs:
            start = s.length
            ids.extend(s.pending)
            pos.extend(range(start, start + len(s.pending)))
        dev = self.wte.weight.device
        x = self.wte(torch.tensor(ids, device=dev)) + self.wpe(torch.tensor(pos, device=dev))
        sizes = [len(s.pending) for s in seqs]
        for layer, block in enumerate(self.blocks):
            x = x + self._attention(block, layer, block.ln_1(x), seqs, sizes)
            mlp = block.mlp
            h = mlp.act(self._mm(block.ln_2(x), mlp.c_fc.weight, mlp.c_fc.bias))
            x = x + self._mm(h, mlp.c_proj.weight, mlp.c_proj.bias)
        rows, end = [], 0
        for s, n in zip(seqs, sizes):
            end += n
            rows.append(torch.arange(end - s.want, end))
        picked = self.ln_f(x[torch.cat(rows).to(dev)])
        head: Any = self.model.lm_head
        logits = self._mm(picked, head.weight.t(), None).float().cpu()
        for s in seqs:
            s.pending = []
        return list(torch.split(logits, [s.want for s in seqs]))

    def _attention(
        self, block: Any, layer: int, h: torch.Tensor, seqs: list[Sequence], sizes: list[int]
    ) -> torch.Tensor:
        attn = block.attn
        qkv = self._mm(h, attn.c_attn.weight, attn.c_attn.bias)
        outs: list[torch.Tensor] = [qkv] * len(seqs)  # placeholders, each replaced below
        decoding: dict[int, list[tuple[int, torch.Tensor]]] = {}  # one-token steps by cache length
        for i, (s, part) in enumerate(zip(seqs, torch.split(qkv, sizes))):
            n = part.shape[0]
            # One fresh contiguous [3, heads, n, head_dim] tensor: the same memory layout whatever
            # the sequence's place in the batch.
            q, k, v = part.view(n, 3, self.heads, self.head_dim).permute(1, 2, 0, 3).contiguous()
            if len(s.cache) > layer:
                pk, pv = s.cache[layer]
                k, v = torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1)
                s.cache[layer] = (k, v)
            else:
                s.cache.append((k, v))
            if n == 1 and self.share_attention:
                decoding.setdefault(k.shape[1], []).append((i, q))
                continue
            if n > 1 and k.shape[1] != n:
                raise ValueError("several new tokens on a non-empty cache are not supported")
            outs[i] = self._attend(q[None], k[None], v[None], causal=n > 1)[0]
        # Sequences decoding one token over caches of one length share a call: torch's CPU flash
        # kernel splits work by (sequence, head, query block) with block sizes set by the lengths
        # alone, so each sequence's result is the one a call of its own gives (tests check it).
        for group in decoding.values():
            idx = [i for i, _ in group]
            ks = torch.stack([seqs[i].cache[layer][0] for i in idx])
            vs = torch.stack([seqs[i].cache[layer][1] for i in idx])
            o = self._attend(torch.stack([q for _, q in group]), ks, vs, causal=False)
            for j, i in enumerate(idx):
                outs[i] = o[j]
        return self._mm(torch.cat(outs), attn.c_proj.weight, attn.c_proj.bias)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """[b, heads, n, head_dim] attention -> [b, n, heads * head_dim] rows."""
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.scale)
        b, _, n, _ = o.shape
        return o.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)


def packed_runner(model: nn.Module, prepack: bool | None = None) -> PackedGPT2 | None:
    """The packed runner for `model`, or None when it is not a GPT-2 this module implements.
    `prepack`: MKL's packed-weight gemm where available (True), never (False), or where the model
    is at least PREPACK_MIN_WIDTH wide (None)."""
    cfg: Any = model.config
    supported = (
        getattr(cfg, "model_type", "") == "gpt2"
        and type(model).__name__ == "GPT2LMHeadModel"
        and not getattr(cfg, "add_cross_attention", False)
        and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
        and not getattr(cfg, "reorder_and_upcast_attn", False)
    )
    return PackedGPT2(model, prepack) if supported else None
