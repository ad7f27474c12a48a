"""Seeded token selection whose only randomness is a function of (seed, position).

Sampling is Gumbel-max: token = argmax(processed_logits + g), where g is standard Gumbel noise
from a counter-based generator: a SplitMix64 finalizer over (key, token index), with the key
BLAKE2b(seed, position). Counter-based means any position's noise is computed directly and all
positions at once, in vectorised integer arithmetic that is the same on every platform. A verifier holding the
logits of a single teacher-forced forward pass can recompute the noise for every position and
check each sampled token independently; nothing depends on the order tokens were drawn in.

Selection runs in float64 on the CPU so that the noise and the filtering are bit-identical on
every machine; only the model's logits carry hardware noise, which verifiers absorb with a margin.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

_NOISE_DOMAIN = b"trustgen/gumbel/v1"  # consensus.domains.GUMBEL_NOISE; engines may not import consensus


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _keys(seed: int, positions: range | list[int]) -> np.ndarray:
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(_NOISE_DOMAIN + struct.pack("<QQ", seed, p), digest_size=8).digest(), "little"
            )
            for p in positions
        ],
        dtype=np.uint64,
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer (a bijection on 64-bit words with full avalanche)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def gumbel_noise_rows(seed: int, positions: range | list[int], vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise, one row per position, float64, identical on every platform."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        counters = (np.arange(1, vocab_size + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        raw = _mix(_keys(seed, positions)[:, None] + counters)
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
    return torch.from_numpy(-np.log(-np.log(u)))


def gumbel_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    return gumbel_noise_rows(seed, [position], vocab_size)[0]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and top-p applied to logits (one row or a [positions, vocab] matrix);
    excluded tokens become -inf. Rows are independent: a row's result does not depend on the
    other rows, so generation (one row at a time) and verification (all rows) agree."""
    x = logits.detach().to("cpu", torch.float64) / temperature
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype)
    if 0 < top_k < x.shape[1]:
        kth = torch.topk(x, top_k, dim=1).values[:, -1:]
        x = torch.where(x < kth, neg_inf, x)
    if top_p < 1.0:
        order = torch.sort(x, dim=1, descending=True, stable=True).indices
        sorted_x = torch.gather(x, 1, order)
        probs = torch.softmax(sorted_x, dim=1)
        before = torch.cumsum(probs, dim=1) - probs  # mass strictly above each token
        drop_sorted = before >= top_p  # the first token always stays (before == 0)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        x = torch.where(drop, neg_inf, x)
    return x[0] if squeeze else x


def sample_scores(
    logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """The scores whose argmax is the sampled token at `position`."""
    x = filter_logits(logits, temperature, top_k, top_p)
    return x + gumbel_noise(seed, position, x.numel())


def sample_scores_rows(
    logits: torch.Tensor, seed: int, temperature: float, top_k: int, top_p: float, first: int = 0
) -> torch.Tensor:
    """Scores for positions first..first+n-1 at once (the verifier's single pass, or a block of it)."""
    x = filter_logits(logits, temperature, top_k, top_p)
    return x + gumbel_noise_rows(seed, range(first, first + x.shape[0]), x.shape[1])


def sample_token(logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int, top_p: float) -> int:
    return int(torch.argmax(sample_scores(logits, seed, position, temperature, top_k, top_p)))
