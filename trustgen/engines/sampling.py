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


def _uniform(raw: np.ndarray) -> np.ndarray:
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def _gumbel(raw: np.ndarray) -> np.ndarray:
    return _gumbel_of(_uniform(raw))


def _gumbel_of(u: np.ndarray) -> np.ndarray:
    return -np.log(-np.log(u))


def gumbel_noise_rows(seed: int, positions: range | list[int], vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise, one row per position, float64, identical on every platform."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        counters = (np.arange(1, vocab_size + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        raw = _mix(_keys(seed, positions)[:, None] + counters)
    return torch.from_numpy(_gumbel(raw))


def gumbel_noise_at(seed: int, positions: range | list[int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The entries (rows[i], cols[i]) of `gumbel_noise_rows(seed, positions, ...)`, same bits, at
    the cost of those entries alone: every step is elementwise."""
    with np.errstate(over="ignore"):
        counters = (cols.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        raw = _mix(_keys(seed, positions)[rows] + counters)
    return _gumbel(raw)


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
        x = _top_p(x, top_p)
    return x[0] if squeeze else x


def top_p_by_sort(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p rule as specified: sort each row (stable, descending), drop every token whose
    mass strictly above it is at least top_p. `_top_p` computes the same bits faster; this is
    its reference, and its path for rows with NaN."""
    order = torch.sort(x, dim=1, descending=True, stable=True).indices
    sorted_x = torch.gather(x, 1, order)
    probs = torch.softmax(sorted_x, dim=1)
    before = torch.cumsum(probs, dim=1) - probs  # mass strictly above each token
    drop_sorted = before >= top_p  # the first token always stays (before == 0)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return torch.where(drop, torch.tensor(float("-inf"), dtype=x.dtype), x)


def _top_p(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """`top_p_by_sort`, bit for bit, without its stable argsort, full cumulative sum and scatter
    (12 ms a row on a 49k vocabulary, more than a token's forward pass):
    - the sorted values are unique whatever breaks ties, so a plain value sort gives the same
      softmax input, hence the same probabilities;
    - the cumulative sum runs left to right, so a prefix of it has the prefix's bits, and the mass
      above a token never decreases along the sorted row (sums grow, probabilities shrink), so
      the kept tokens are a prefix: the first m, found on a prefix of the row;
    - in the original order that prefix is every token above the m-th value plus, of the tokens
      tied with it, the lowest-indexed ones (the stable sort put them first)."""
    xn = x.numpy()
    if np.isnan(xn).any():
        return top_p_by_sort(x, top_p)
    n = xn.shape[1]
    sorted_x = np.ascontiguousarray(np.sort(xn, axis=1)[:, ::-1])
    probs = torch.softmax(torch.from_numpy(sorted_x), dim=1).numpy()
    out = xn.copy()
    # Row by row in numpy: single-threaded small operations, which on a loaded host cost a
    # fraction of torch's (each of which wakes its thread pool).
    for r in range(xn.shape[0]):
        m, prefix = n, 64
        while True:
            p = probs[r, :prefix]
            over = np.flatnonzero((np.cumsum(p) - p) >= top_p)
            if len(over):
                m = int(over[0])
                break
            if prefix >= n:
                break
            prefix *= 4
        if m == n:
            continue  # nothing dropped
        row, tau = xn[r], sorted_x[r, m - 1]
        keep = row > tau
        ties = np.flatnonzero(row == tau)
        keep[ties[: m - int(np.count_nonzero(keep))]] = True
        out[r, ~keep] = -np.inf
    return torch.from_numpy(out)


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


def _filters(top_k: int, top_p: float) -> bool:
    return top_k > 0 or top_p < 1.0


def sample_token(logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int, top_p: float) -> int:
    if not _filters(top_k, top_p):
        return int(torch.argmax(sample_scores(logits, seed, position, temperature, top_k, top_p)))
    # Noise only where the filter kept a token: an excluded token's score is -inf whatever its
    # noise, and the first maximum among kept tokens (in index order) is the full row's.
    x = filter_logits(logits, temperature, top_k, top_p).numpy()
    kept = np.flatnonzero(x != -np.inf)
    s = torch.from_numpy(x[kept] + gumbel_noise_at(seed, [position], np.zeros(len(kept), np.intp), kept))
    return int(kept[int(torch.argmax(s))])


def sample_gaps_rows(
    logits: torch.Tensor, claimed: list[int], seed: int, temperature: float, top_k: int, top_p: float, first: int = 0
) -> torch.Tensor:
    """For positions first..first+n-1: how far, in logits, each claimed token's score falls below
    the best score (0 for the sampled token, +inf for a filtered-out one). Equal, bit for bit, to
    the same from `sample_scores_rows`; with a filter, noise is computed for kept tokens only."""
    claimed_t = torch.tensor(claimed)
    if not _filters(top_k, top_p):
        x = filter_logits(logits, temperature, top_k, top_p).numpy()
        if not np.isfinite(x).all():
            s = sample_scores_rows(logits, seed, temperature, top_k, top_p, first)
            return (s.max(dim=-1).values - s.gather(1, claimed_t[:, None])[:, 0]) * temperature
        return _unfiltered_gaps(x, claimed_t.numpy(), seed, first) * temperature
    x = filter_logits(logits, temperature, top_k, top_p).numpy()
    positions = range(first, first + x.shape[0])
    rows, cols = np.nonzero(x != -np.inf)
    scores = x[rows, cols] + gumbel_noise_at(seed, positions, rows, cols)
    best = np.full(x.shape[0], -np.inf)
    np.maximum.at(best, rows, scores)
    idx = np.arange(x.shape[0])
    # A filtered-out claimed token scores -inf (its noise is finite): an infinite gap.
    mine = x[idx, claimed_t.numpy()] + gumbel_noise_at(seed, positions, idx, claimed_t.numpy())
    return (torch.from_numpy(best) - torch.from_numpy(mine)) * temperature


def _unfiltered_gaps(x: np.ndarray, claimed: np.ndarray, seed: int, first: int) -> torch.Tensor:
    """Best score minus the claimed token's, every token kept, without the noise of most tokens:
    the noise is a nondecreasing function of a uniform draw, so no token's noise exceeds that of
    its row's largest draw, g_max; a token whose logit x is below L - g_max, with L a score
    already known (the claimed token's, the top logit's), cannot hold the best score. The two
    logarithms, most of the noise's cost, then run on a few tokens a row. Same bits as the dense
    rule: the best score is the maximum of the same values over a set that contains it (1.0 of
    slack covers a logarithm not exactly monotone in its last bits)."""
    n, vocab = x.shape
    idx = np.arange(n)
    with np.errstate(over="ignore"):
        counters = (np.arange(1, vocab + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        u = _uniform(_mix(_keys(seed, range(first, first + n))[:, None] + counters))
    g_max = _gumbel_of(u.max(axis=1))
    mine = x[idx, claimed] + _gumbel_of(u[idx, claimed])
    top = x.argmax(axis=1)
    known = np.maximum(mine, x[idx, top] + _gumbel_of(u[idx, top]))
    rows, cols = np.nonzero(x >= (known - g_max - 1.0)[:, None])
    best = np.full(n, -np.inf)
    np.maximum.at(best, rows, x[rows, cols] + _gumbel_of(u[rows, cols]))
    return torch.from_numpy(best) - torch.from_numpy(mine)
