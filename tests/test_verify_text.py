import copy
import json

import pytest
import torch

from tests.helpers import run_cli
from trustgen.engines.params import TextParams
from trustgen.verifier.prefill import prefill_check
from trustgen.verifier.reexec import regenerate_text

TOL = 1e-3
CASES = [
    TextParams(prompt="Verifiable training", max_new_tokens=40),
    TextParams(prompt="We propose", max_new_tokens=40, decoding="sample", seed=11, temperature=0.8, top_p=0.9),
    TextParams(prompt="Byzantine", max_new_tokens=40, decoding="sample", seed=5, top_k=20),
    TextParams(prompt="Gossip", max_new_tokens=24, decoding="beam", num_beams=3),
]


@pytest.fixture(scope="module")
def other_model(text_engine):
    """Another model: the same architecture with different weights."""
    eng = copy.copy(text_engine)
    eng.model = copy.deepcopy(text_engine.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in eng.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.abs().mean())
    return eng


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.decoding)
def test_honest_output_is_accepted(text_engine, p):
    out = text_engine.generate(p)
    v = prefill_check(text_engine, p, out.token_ids, TOL)
    assert v.accept, v.reason
    assert v.method == "prefill" and v.margin >= 0 and v.fingerprint["kind"] == "text"
    assert regenerate_text(text_engine, p, out.token_ids).accept


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.decoding)
def test_other_model_is_caught(text_engine, other_model, p):
    claimed = other_model.generate(p).token_ids
    assert claimed != text_engine.generate(p).token_ids
    assert not prefill_check(text_engine, p, claimed, TOL).accept


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.decoding)
def test_other_prompt_is_caught(text_engine, p):
    other = TextParams(**{**p.to_dict(), "prompt": "Decentralized learning"})
    claimed = text_engine.generate(other).token_ids
    assert not prefill_check(text_engine, p, claimed, TOL).accept


@pytest.mark.parametrize("p", CASES[:3], ids=lambda p: p.decoding)
def test_one_altered_token_is_caught_at_its_position(text_engine, p):
    tokens = text_engine.generate(p).token_ids
    for pos in (0, len(tokens) // 2, len(tokens) - 2):
        bad = list(tokens)
        logits = text_engine.model(torch.tensor([text_engine.encode_prompt(p.prompt) + tokens[:pos]])).logits[0, -1]
        bad[pos] = int(torch.argsort(logits, descending=True)[5])  # a plausible but wrong token
        v = prefill_check(text_engine, p, bad, TOL)
        assert not v.accept and v.position == pos, (pos, v)


def test_altered_beam_token_far_down_is_caught(text_engine):
    p = CASES[3]
    tokens = text_engine.generate(p).token_ids
    bad = list(tokens)
    logits = text_engine.model(torch.tensor([text_engine.encode_prompt(p.prompt) + tokens[:3]])).logits[0, -1]
    bad[3] = int(torch.argsort(logits, descending=True)[50])
    v = prefill_check(text_engine, p, bad, TOL)
    assert not v.accept and v.position == 3


@pytest.mark.parametrize("p", CASES, ids=lambda p: p.decoding)
def test_truncated_and_extended_outputs_are_caught(text_engine, p):
    tokens = text_engine.generate(p).token_ids
    assert not prefill_check(text_engine, p, tokens[:-3], TOL).accept
    v = prefill_check(text_engine, p, tokens + [tokens[0]], TOL)
    assert not v.accept
    assert not prefill_check(text_engine, p, [], TOL).accept


def test_other_seed_is_caught(text_engine):
    p = CASES[1]
    claimed = text_engine.generate(TextParams(**{**p.to_dict(), "seed": 12})).token_ids
    v = prefill_check(text_engine, p, claimed, TOL)
    assert not v.accept and "seeded sample" in v.reason
    assert not regenerate_text(text_engine, p, claimed).accept


def _write(tmp_path, obj) -> str:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(obj))
    return str(path)


def test_verify_cli(tmp_path):
    gen = run_cli(
        "generate", "text", "Consensus", "--max-new-tokens", "32", "--decoding", "sample", "--seed", "4", "--json"
    )
    assert gen.returncode == 0, gen.stderr
    result = json.loads(gen.stdout)
    res = run_cli("verify", _write(tmp_path, result), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["accept"] is True
    assert run_cli("verify", _write(tmp_path, result), "--method", "regenerate").returncode == 0

    from trustgen.engines.outputs import text_digest

    forged = dict(result, token_ids=result["token_ids"][:5] + [7] + result["token_ids"][6:])
    forged["output_digest"] = text_digest(forged["token_ids"])  # consistent digest, wrong token
    res = run_cli("verify", _write(tmp_path, forged), "--json")
    assert res.returncode == 1
    vote = json.loads(res.stdout)
    assert vote["accept"] is False and vote["position"] == 5

    lying_digest = dict(result, output_digest="sha256:" + "00" * 32)
    assert run_cli("verify", _write(tmp_path, lying_digest)).returncode == 1
    (tmp_path / "junk.json").write_text("{not json")
    bad = run_cli("verify", str(tmp_path / "junk.json"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
    bad_task = dict(result, task=dict(result["task"], decoding="telepathy"))
    assert run_cli("verify", _write(tmp_path, bad_task)).returncode == 2


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (20, 0.9)])
def test_sampled_gaps_in_blocks_equal_all_rows_at_once(top_k, top_p):
    from trustgen.engines.sampling import sample_scores_rows
    from trustgen.verifier.prefill import token_gaps

    g = torch.Generator().manual_seed(0)
    logits, claimed = torch.randn(37, 500, generator=g) * 3, torch.randint(0, 500, (37,), generator=g)
    p = TextParams(prompt="x", decoding="sample", seed=9, temperature=0.7, top_k=top_k, top_p=top_p, max_new_tokens=37)
    s = sample_scores_rows(logits, 9, 0.7, top_k, top_p)
    whole = (s.max(dim=-1).values - s.gather(1, claimed[:, None])[:, 0]) * 0.7
    assert torch.equal(token_gaps(None, p, claimed.tolist(), logits), whole)  # bit for bit
