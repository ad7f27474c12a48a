"""The sampler's noise is standard Gumbel over (seed, position) pairs, and Gumbel-max sampling from
fixed logits draws tokens with the softmax probabilities. The noise is a fixed function of its
inputs, so these statistics are the same on every run: the bounds cannot flake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from trustgen.engines.sampling import gumbel_noise, gumbel_noise_rows, sample_scores_rows, sample_token

EULER_GAMMA = 0.5772156649015329
SEEDS = range(400)
POSITIONS = range(250)  # 100,000 (seed, position) pairs


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """[seed, position, token] noise for 100,000 pairs and an 8-token vocabulary."""
    return np.stack([gumbel_noise_rows(s, POSITIONS, 8).numpy() for s in SEEDS])


def test_noise_is_standard_gumbel(noise):
    x = noise.ravel()
    n = x.size
    sd = math.pi / math.sqrt(6)
    assert abs(x.mean() - EULER_GAMMA) < 4 * sd / math.sqrt(n)
    # Var of the sample variance of a Gumbel: (mu4 - sigma^4) / n, with excess kurtosis 12/5.
    var_se = sd**2 * math.sqrt((12 / 5 + 2) / n)
    assert abs(x.var() - math.pi**2 / 6) < 4 * var_se
    assert stats.kstest(x, "gumbel_r").pvalue > 1e-3
    # Each column alone, i.e. one token's noise across the pairs, is Gumbel too.
    for j in range(noise.shape[2]):
        assert stats.kstest(noise[:, :, j].ravel(), "gumbel_r").pvalue > 1e-3


def test_noise_is_uncorrelated_across_positions_seeds_and_tokens(noise):
    first = noise[:, :, 0]
    bound = 4 / math.sqrt(first.size)  # the sampling error of a correlation near 0
    for a, b in (
        (first[:, :-1], first[:, 1:]),  # next position, same seed
        (first[:-1, :], first[1:, :]),  # next seed, same position
        (noise[:, :, 0], noise[:, :, 1]),  # next token, same pair
    ):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound


def test_single_position_noise_is_the_row_of_the_batch():
    rows = gumbel_noise_rows(7, [0, 3, 9], 50)
    assert torch.equal(gumbel_noise(7, 3, 50), rows[1])
    assert not torch.equal(gumbel_noise(7, 3, 50), gumbel_noise(8, 3, 50))


def draws(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Token counts over the (seed, position) pairs: 50 seeds x 2,000 positions."""
    rows = logits[None].repeat(2000, 1)
    counts = np.zeros(logits.numel(), dtype=np.int64)
    for seed in range(50):
        picks = torch.argmax(sample_scores_rows(rows, seed, temperature, top_k, top_p), dim=1)
        counts += np.bincount(picks.numpy(), minlength=logits.numel())
    return counts


LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_gumbel_max_draws_follow_the_softmax(temperature):
    counts = draws(LOGITS, temperature)
    p = torch.softmax(LOGITS.double() / temperature, dim=0).numpy()
    n = counts.sum()
    assert stats.chisquare(counts, n * p).pvalue > 1e-3
    assert np.all(np.abs(counts / n - p) < 5 * np.sqrt(p * (1 - p) / n))


def test_top_k_draws_follow_the_renormalised_softmax():
    counts = draws(LOGITS, top_k=3)
    assert counts[3:].sum() == 0  # excluded tokens are never drawn
    p = torch.softmax(LOGITS[:3].double(), dim=0).numpy()
    assert stats.chisquare(counts[:3], counts.sum() * p).pvalue > 1e-3


def test_flat_logits_draw_every_token_equally():
    counts = draws(torch.zeros(10))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_one_token_at_a_time_matches_the_batch():
    rows = LOGITS[None].repeat(64, 1)
    batch = torch.argmax(sample_scores_rows(rows, 11, 0.9, 0, 1.0), dim=1).tolist()
    assert [sample_token(LOGITS, 11, i, 0.9, 0, 1.0) for i in range(64)] == batch
