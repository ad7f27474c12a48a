"""Batched generation: every task's output (tokens, scores, logits) is the one it gets alone."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.helpers import run_cli
from trustgen.engines import packed
from trustgen.engines.generate import load_engine
from trustgen.engines.packed import Sequence, packed_runner
from trustgen.engines.params import TextParams
from trustgen.errors import UsageError

WORDS = "verifiable training of the gossip protocol byzantine consensus we propose locality sensitive hashing".split()


@pytest.fixture(scope="module")
def small_gpt2(tmp_path_factory):
    """A GPT-2 of another shape (width 96, 3 heads of 32, vocab 2,000), random weights, built here."""
    from bench.local_gpt2 import build_gpt2

    path = build_gpt2(
        tmp_path_factory.mktemp("gpt2") / "m", seed=3, n_layer=2, n_embd=96, n_head=3, vocab_size=2000, n_positions=256
    )
    return load_engine(str(path), "text")


@pytest.fixture(scope="module")
def cuda_tiny():
    """tiny-text on the GPU, under the same tests as on CPU; skipped on machines without one."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return load_engine("tiny-text", "text", device="cuda")


def pick(which: str, request) -> object:
    return request.getfixturevalue({"tiny": "text_engine", "small": "small_gpt2", "cuda": "cuda_tiny"}[which])


def mixed_tasks(n: int, seed: int, max_tokens: int = 24) -> list[TextParams]:
    rng = random.Random(seed)
    return [
        TextParams(
            prompt=" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))),
            max_new_tokens=rng.randint(1, max_tokens),
            decoding=("greedy", "sample", "beam")[i % 3],
            num_beams=rng.randint(2, 4),
            seed=rng.randrange(2**31),
            temperature=rng.choice([0.7, 1.0, 1.5]),
            top_k=rng.choice([0, 20]),
            top_p=rng.choice([1.0, 0.9]),
        )
        for i in range(n)
    ]


def step_logits(runner, prompts: list[list[int]], steps: int) -> list[list[torch.Tensor]]:
    """Prefill each prompt then feed token 7 `steps` times; every step's logits per sequence."""
    seqs = [Sequence(pending=list(p)) for p in prompts]
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    with torch.inference_mode():
        for _ in range(steps + 1):
            for i, lg in enumerate(runner.forward(seqs)):
                out[i].append(lg)
            for s in seqs:
                s.pending = [7]
    return out


@pytest.mark.parametrize(
    "which,prepack", [("tiny", True), ("small", True), ("tiny", False), ("small", False), ("cuda", True)]
)
def test_packed_logits_are_bit_identical_to_a_batch_of_one(which, prepack, request):
    """Both matmul modes (MKL's packed-weight gemm, where torch has it, and addmm)."""
    engine = pick(which, request)
    runner = packed_runner(engine.model, prepack)
    gen = torch.Generator().manual_seed(1)
    vocab = engine.model.config.vocab_size
    # Repeated lengths: sequences decoding over equally long caches share an attention call.
    prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in (1, 5, 17, 33, 5, 2, 16, 5, 17)]
    together = step_logits(runner, prompts, 3)
    for p, mine in zip(prompts, together):
        alone = step_logits(runner, [p], 3)[0]
        assert all(torch.equal(a, b) for a, b in zip(alone, mine))


@pytest.mark.parametrize("which", ["tiny", "small", "cuda"])
def test_packed_pass_matches_transformers_within_tolerance(which, request):
    engine = pick(which, request)
    ids = engine.encode_prompt("Verifiable training of the gossip protocol")
    tokens = engine.generate(
        TextParams(prompt="Verifiable training of the gossip protocol", max_new_tokens=12)
    ).token_ids
    ours = engine.prefill_logits([(ids, tokens)])[0]
    with torch.inference_mode():
        theirs = engine.model(input_ids=torch.tensor([ids + tokens[:-1]], device=engine.device)).logits[
            0, len(ids) - 1 :
        ]
        theirs = theirs.float().cpu()
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) < 1e-4  # docs/decisions.md: packed vs transformers


@pytest.mark.parametrize("which,n,size", [("tiny", 36, 5), ("small", 15, 4), ("cuda", 36, 5)])
def test_mixed_tasks_batched_equal_each_alone(which, n, size, request):
    engine = pick(which, request)
    tasks = mixed_tasks(n, seed=n)
    together = engine.generate_batch(tasks, batch_size=size)
    for p, got in zip(tasks, together):
        alone = engine.generate(p)
        assert (got.token_ids, got.score, got.finish_reason) == (alone.token_ids, alone.score, alone.finish_reason)
    assert {len(o.token_ids) for o in together} != {1}  # a mix of stopping points


def test_finished_tasks_leave_and_waiting_ones_join(text_engine, monkeypatch):
    steps: list[list[int]] = []
    forward = packed.PackedGPT2.forward

    def spy(self, seqs):
        steps.append([len(s.pending) for s in seqs])
        return forward(self, seqs)

    monkeypatch.setattr(packed.PackedGPT2, "forward", spy)
    tasks = [TextParams(prompt="We propose a", max_new_tokens=m) for m in (2, 9, 3, 6, 4)]
    outs = text_engine.generate_batch(tasks, batch_size=2)
    assert max(len(s) for s in steps) == 2  # never more than the capacity
    # A prompt (several rows) joined while another task was mid-decode (one row).
    assert any(1 in s and any(n > 1 for n in s) for s in steps)
    assert sum(len(s) for s in steps) == sum(len(o.token_ids) for o in outs)  # one pass per token


def test_profile_records_batching_mode(text_engine):
    want = packed.MODE  # tiny-text is narrower than PREPACK_MIN_WIDTH: addmm matmuls
    assert text_engine.profile.flags["batching"] == want
    if packed.mkl_available():
        assert packed_runner(text_engine.model, prepack=True).mode == packed.MKL_MODE
    out = text_engine.generate(TextParams(prompt="Consensus", max_new_tokens=2))
    assert out.to_dict()["profile"]["flags"]["batching"] == want


@pytest.mark.skipif(not packed.mkl_available(), reason="torch without MKL")
def test_prepacked_weights_follow_an_in_place_change(small_gpt2):
    """A packed weight copy is reused while its weight is unchanged and rebuilt when it changes, so
    the packed pass always computes with the module's live weights."""
    w = torch.randn(96, 64)
    x = torch.randn(3, 96)
    before = packed.chunked_matmul(x, w, None, prepacked=True)
    assert packed._prepacked(w) is packed._prepacked(w)
    with torch.no_grad():
        w.mul_(2)
    after = packed.chunked_matmul(x, w, None, prepacked=True)
    assert torch.allclose(after, 2 * before, atol=1e-5) and torch.allclose(after, x @ w, atol=1e-4)


def test_unsupported_model_runs_each_task_alone(tmp_path):
    from bench.local_gpt2 import build_gpt2

    # scale_attn_by_inverse_layer_idx is a GPT-2 option the packed pass does not implement.
    path = build_gpt2(tmp_path / "m", n_layer=1, n_embd=32, n_head=2, vocab_size=1024, n_positions=64)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    engine = load_engine(str(path), "text")
    assert packed_runner(engine.model) is None and engine.profile.flags["batching"] == "serial"
    tasks = mixed_tasks(4, seed=9, max_tokens=6)
    assert [o.token_ids for o in engine.generate_batch(tasks, 3)] == [engine.generate(p).token_ids for p in tasks]
    assert [o.token_ids for o in streamed(engine, tasks)] == [engine.generate(p).token_ids for p in tasks]


def streamed(engine, tasks: list[TextParams], capacity: int = 3) -> list:
    """Each task through generate_stream, handed over one per poll (so later ones join a running
    batch); what `deliver` got for each, by task."""
    pending = list(enumerate(tasks))
    got: dict[int, object] = {}

    def arrivals(room: int) -> list:
        return [pending.pop(0)] if pending else []

    engine.generate_stream(arrivals, got.__setitem__, capacity)
    return [got[i] for i in range(len(tasks))]


def test_streamed_tasks_join_a_running_batch_and_equal_each_alone(text_engine):
    tasks = mixed_tasks(12, seed=21, max_tokens=10)
    tasks.insert(5, TextParams(prompt="We", max_new_tokens=600))  # past the context: refused alone
    outs = streamed(text_engine, tasks)
    assert isinstance(outs[5], UsageError) and "context" in str(outs[5])
    for p, got in zip(tasks, outs):
        if p.max_new_tokens == 600:
            continue
        alone = text_engine.generate(p)
        assert (got.token_ids, got.score, got.finish_reason) == (alone.token_ids, alone.score, alone.finish_reason)


@pytest.mark.parametrize("size", [0, -1, 257])
def test_batch_size_is_bounded(text_engine, size):
    with pytest.raises(UsageError, match="batch size"):
        text_engine.generate_batch([TextParams(prompt="We")], batch_size=size)


def test_batched_prefill_verdicts_equal_one_at_a_time(text_engine):
    from trustgen.verifier.prefill import prefill_check, prefill_check_batch

    tasks = mixed_tasks(9, seed=4, max_tokens=12)
    outs = text_engine.generate_batch(tasks)
    claims = []
    for p, o in zip(tasks, outs):
        claims.append((p, o.token_ids))
        claims.append((p, [(t + 1) % 1024 for t in o.token_ids]))  # altered
    claims.append((tasks[0], []))  # structural rejection, no forward pass
    batched = prefill_check_batch(text_engine, claims, 1e-3)
    alone = [prefill_check(text_engine, p, t, 1e-3) for p, t in claims]
    assert [v.to_dict() for v in batched] == [v.to_dict() for v in alone]
    assert all(v.accept for v in batched[0:18:2]) and not any(v.accept for v in batched[1:18:2])


@pytest.mark.slow
def test_cli_prompts_file(tmp_path, text_engine):
    f = tmp_path / "prompts.txt"
    f.write_text("Verifiable training\n\nWe propose\nThe gossip protocol\n")
    res = run_cli("generate", "text", "--prompts", str(f), "--batch-size", "2", "--max-new-tokens", "6", "--json")
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert [r["task"]["prompt"] for r in results] == ["Verifiable training", "We propose", "The gossip protocol"]
    alone = text_engine.generate(TextParams(prompt="We propose", max_new_tokens=6))
    assert results[1]["output_digest"] == alone.output_digest
    bad = f.with_name("bad.txt")
    bad.write_bytes(b"We\n" + b"x" * 5000 + b"\n")
    res = run_cli("generate", "text", "--prompts", str(bad))
    assert res.returncode == 2 and res.stderr.strip().endswith("bad.txt:2: prompt is longer than 4096 characters")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content,message",
    [(b"ok\n\xff\n", "not UTF-8"), (b"\n \n", "holds no prompts"), (b"x\n" * 10_001, "at most 10000")],
    ids=["utf8", "empty", "too-many"],
)
def test_prompts_file_bad_input(tmp_path, content, message):
    from trustgen.engines.generate import read_prompts

    f = tmp_path / "prompts.txt"
    f.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        read_prompts(f)


def test_prompts_file_keeps_line_numbers(tmp_path):
    from trustgen.engines.generate import read_prompts

    f = tmp_path / "prompts.txt"
    f.write_text("a\n\nb\r\nc")
    assert read_prompts(f) == [(1, "a"), (3, "b"), (4, "c")]
