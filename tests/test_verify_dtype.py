"""Claims are checked under the dtype they name (issue 18): a float32 verifier checks a bfloat16
worker's output in a bfloat16 copy of the model (kept in a bounded LRU), by replaying
generation's calls; a dtype outside the registry is refused with a typed reason."""

from __future__ import annotations

from typing import Any

import pytest

from trustgen.engines.generate import load_engine
from trustgen.engines.outputs import text_digest
from trustgen.engines.params import TextParams
from trustgen.engines.variants import DtypeVariants
from trustgen.node.kinds import check_result, check_results
from trustgen.verifier import policy
from trustgen.verifier.prefill import prefill_check_batch, token_gaps
from trustgen.verifier.verify import DTYPE_ENGINES

GREEDY = TextParams(prompt="Byzantine", max_new_tokens=32)
SAMPLE = TextParams(prompt="We propose", max_new_tokens=48, decoding="sample", seed=3, temperature=0.8, top_p=0.95)
BEAM = TextParams(prompt="Gossip", max_new_tokens=16, decoding="beam", num_beams=3)


@pytest.fixture(scope="module")
def bf16_worker() -> Any:
    return load_engine("tiny-text", "text", dtype="bfloat16")


def _task_result(engine: Any, p: TextParams, tokens: list[int] | None = None) -> tuple[dict, dict]:
    """A Task and a Result body as a worker running `engine` would sign them (tokens: a claim)."""
    out = engine.generate(p)
    tokens = out.token_ids if tokens is None else tokens
    task = {"kind": "text", "model": engine.ref.digest, "params": p.to_dict()}
    result = {
        "model_digest": out.model_digest,
        "output_digest": text_digest(tokens),
        "profile": out.profile.to_dict(),
        "output": {"token_ids": tokens, "text": "", "finish_reason": out.finish_reason},
    }
    return task, result


def test_policy_checks_each_dtype_its_way():
    assert policy.text_check(GREEDY.to_dict(), "float32", "float32") == policy.TextCheck("prefill", "float32", 1e-3)
    assert policy.text_check(SAMPLE.to_dict(), "bfloat16", "float32") == policy.TextCheck("replay", "bfloat16", 1e-3)
    assert policy.text_check(BEAM.to_dict(), "bfloat16", "float32").method == "regenerate"  # type: ignore[union-attr]
    assert policy.text_check(GREEDY.to_dict(), None, "float32") == policy.TextCheck("prefill", "float32", 1e-3)
    for bad in ("int8", "float64", {"x": 1}, "b" * 10_000):
        got = policy.text_check(GREEDY.to_dict(), bad, "float32")
        assert isinstance(got, policy.Refused) and got.code is policy.Refusal.UNSUPPORTED_DTYPE
        assert len(got.reason) < 200


def test_bfloat16_claims_are_accepted_by_a_float32_verifier_in_bfloat16(text_engine, bf16_worker):
    assert text_engine.profile.dtype == "float32"
    claims = [_task_result(bf16_worker, p) for p in (GREEDY, SAMPLE, BEAM)]
    checked = check_results(text_engine, [(t, r, b"") for t, r in claims])
    for vote, fp in checked:  # type: ignore[misc]
        assert vote.accept, vote.reason
        assert fp["kind"] == "text"
    assert [v.method for v, _ in checked] == ["replay", "replay", "regenerate"]  # type: ignore[union-attr]
    # The same check, one at a time, is what `audit --recheck` runs.
    vote, _ = check_result(text_engine, *claims[1], b"")
    assert vote.accept and vote.method == "replay" and vote.distance == 0.0
    assert (text_engine.ref.digest, "bfloat16") in DTYPE_ENGINES.kept()


def test_replay_reproduces_generation_where_one_pass_prefill_drifts(bf16_worker):
    """bfloat16 one-pass logits differ from the incremental ones (the reason for the replay);
    the replay's are generation's, so an honest claim's gaps are exactly 0."""
    drift = 0.0
    for p in (GREEDY, SAMPLE):
        tokens = bf16_worker.generate(p).token_ids
        logits = bf16_worker.replay_logits([(bf16_worker.task_prompt(p), tokens)])[0]
        assert float(token_gaps(bf16_worker, p, tokens, logits).max()) == 0.0
        drift = max(drift, float(token_gaps(bf16_worker, p, tokens).max()))
    assert drift > 0.0  # measured 0.0045 on the sampled task


def test_bfloat16_claim_of_another_prompts_output_is_rejected(text_engine, bf16_worker):
    for p in (GREEDY, SAMPLE):
        other = bf16_worker.generate(TextParams(**{**p.to_dict(), "prompt": "Decentralized learning"})).token_ids
        task, result = _task_result(bf16_worker, p, other)
        vote, _ = check_result(text_engine, task, result, b"")
        assert not vote.accept and vote.method == "replay" and vote.position is not None, vote


def test_unsupported_dtype_is_refused_with_its_code(text_engine, bf16_worker):
    task, result = _task_result(bf16_worker, GREEDY)
    result["profile"] = {**result["profile"], "dtype": "int4"}
    vote, _ = check_result(text_engine, task, result, b"")
    assert not vote.accept and vote.detail == {"refused": "unsupported_dtype"}
    assert "'int4' is not checked here; supported: float32, bfloat16, float16" in vote.reason


def test_replay_checks_several_claims_together_as_alone(bf16_worker):
    items = [(p, bf16_worker.generate(p).token_ids) for p in (GREEDY, SAMPLE)]
    items.append((GREEDY, items[1][1]))  # another task's output: rejected in the batch as alone
    together = prefill_check_batch(bf16_worker, items, 1e-3, "replay")
    alone = [prefill_check_batch(bf16_worker, [it], 1e-3, "replay")[0] for it in items]
    assert together == alone and [v.accept for v in together] == [True, True, False]


def test_dtype_engines_are_a_bounded_lru(text_engine):
    engines = DtypeVariants(capacity=1)
    assert engines.get(text_engine, "float32") is text_engine and engines.loads == 0
    bf16 = engines.get(text_engine, "bfloat16")
    assert bf16.profile.dtype == "bfloat16" and bf16.ref.digest == text_engine.ref.digest
    assert engines.get(text_engine, "bfloat16") is bf16 and engines.loads == 1  # one copy per dtype
    fp16 = engines.get(text_engine, "float16")
    assert fp16.profile.dtype == "float16" and engines.kept() == [(text_engine.ref.digest, "float16")]
    assert engines.get(text_engine, "bfloat16") is not bf16 and engines.loads == 3  # evicted, loaded again
    with pytest.raises(ValueError):
        DtypeVariants(capacity=0)
