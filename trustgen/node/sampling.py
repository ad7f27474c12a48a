"""Seeded token selection whose only randomness is a function of (seed, position).

Sampling is Gumbel-max: token = argmax(processed_logits + g), where g is standard Gumbel noise
drawn from a counter-based generator (Philox) keyed by H(seed, position). A verifier holding the
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

_NOISE_DOMAIN = b"trustgen/gumbel/v1"


def gumbel_noise(seed: int, position: int, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise for one position, as float64, identical on every platform."""
    key = hashlib.blake2b(_NOISE_DOMAIN + struct.pack("<QQ", seed, position), digest_size=16).digest()
    gen = np.random.Philox(key=np.frombuffer(key, dtype="<u8").copy())
    raw = gen.random_raw(vocab_size)  # the raw bit stream is stable across NumPy versions
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)
    return torch.from_numpy(-np.log(-np.log(u)))


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and top-p applied to one row of logits; excluded tokens become -inf."""
    x = logits.detach().to("cpu", torch.float64) / temperature
    if 0 < top_k < x.numel():
        kth = torch.topk(x, top_k).values[-1]
        x = torch.where(x < kth, torch.tensor(float("-inf"), dtype=x.dtype), x)
    if top_p < 1.0:
        order = torch.sort(x, descending=True, stable=True).indices
        probs = torch.softmax(x[order], dim=0)
        before = torch.cumsum(probs, dim=0) - probs  # mass strictly above each token
        drop = order[before >= top_p]  # the first token always stays (before == 0)
        x = x.clone()
        x[drop] = float("-inf")
    return x


def sample_scores(logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int,
                  top_p: float) -> torch.Tensor:
    """The scores whose argmax is the sampled token at `position`."""
    x = filter_logits(logits, temperature, top_k, top_p)
    return x + gumbel_noise(seed, position, x.numel())


def sample_token(logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int,
                 top_p: float) -> int:
    return int(torch.argmax(sample_scores(logits, seed, position, temperature, top_k, top_p)))
