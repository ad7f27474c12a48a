"""Text verification by one teacher-forced forward pass (prefill) over the claimed tokens.

For every position the verifier recomputes what the decoding rule would have chosen from the
logits, within a tolerance for hardware noise, and rejects at the first token that could not
have been chosen:
- greedy: the claimed token's logit is within `tol` of the maximum;
- sample: the same for the Gumbel-max scores (filtered logits / temperature + the noise derived
  from (seed, position)), so another seed is caught at its first differing token;
- beam: the claimed token is among the top num_beams + 1 of its position (a necessary condition
  for any beam-search output: each beam keeps at most num_beams continuations of a prefix, plus
  one slot an end-of-sequence candidate may take), and its summed log-probability is reported.
  This catches another model, prompt or altered tokens, but not a worker that returns a lower
  beam of the same search; `regenerate` is the exact check for that.
A chat task's prompt is re-rendered with the model's own chat template, so the template is
verified like the weights (the model digest covers it). Termination is checked too: more than
max_new_tokens, tokens after end-of-sequence, or a stop before max_new_tokens without
end-of-sequence are all rejected.

`prefill_check_batch` checks several results with one batched pass; the engine's packed pass is
batch-invariant, so each verdict (distance and margin included) is the one checking it alone gives.
With `method="replay"` the logits come from the engine's incremental replay instead (the calls
generation makes, bit for bit): the check for dtypes whose one-pass logits drift too far from
the incremental ones for a tight tolerance (verifier/policy.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trustgen.engines.params import TextParams
from trustgen.engines.sampling import sample_gaps_rows
from trustgen.engines.text_engine import TextEngine
from trustgen.verifier.fingerprints import text_fingerprint
from trustgen.verifier.vote import VoteValue, reject

METHOD = "prefill"
# How a method computes the logits it judges: one teacher-forced pass, or generation's own calls.
LOGITS = {
    "prefill": lambda engine, items: engine.prefill_logits(items),
    "replay": lambda e, items: e.replay_logits(items),
}
MAX_BATCH_ROWS = 8192  # teacher-forced rows per batched pass; bounds memory however many results wait
_SAMPLE_BLOCK_ROWS = 8


def _termination(engine: TextEngine, p: TextParams, tokens: list[int], method: str = METHOD) -> VoteValue | None:
    n, eos = len(tokens), engine.eos_id
    vocab = engine.model.config.vocab_size
    if n == 0:
        return reject(method, "empty output")
    bad = next((i for i, t in enumerate(tokens) if not 0 <= t < vocab), None)
    if bad is not None:
        return reject(method, f"token id {tokens[bad]} outside the vocabulary", bad)
    if n > p.max_new_tokens:
        return reject(method, f"extended: {n} tokens for max-new-tokens {p.max_new_tokens}", p.max_new_tokens)
    first_eos = next((i for i, t in enumerate(tokens) if t == eos), None)
    if first_eos is not None and first_eos < n - 1:
        return reject(method, "extended past end-of-sequence", first_eos + 1)
    if n < p.max_new_tokens and tokens[-1] != eos:
        return reject(method, f"truncated: stops after {n} tokens without end-of-sequence", n)
    return None


def _logits(engine: TextEngine, p: TextParams, tokens: list[int]) -> torch.Tensor:
    """Logits predicting each claimed token, from one teacher-forced pass."""
    return engine.prefill_logits([(engine.task_prompt(p), tokens)])[0]


def token_gaps(
    engine: TextEngine, p: TextParams, tokens: list[int], logits: torch.Tensor | None = None
) -> torch.Tensor:
    """For greedy and sampled tasks: how far, in logits, each claimed token falls below the
    token the decoding rule picks (0 for the picked one; +inf for one top-k/top-p excluded)."""
    logits = _logits(engine, p, tokens) if logits is None else logits
    claimed = torch.tensor(tokens)
    if p.decoding == "greedy":
        return (logits.max(dim=-1).values - logits.gather(1, claimed[:, None])[:, 0]).double()
    # In blocks of rows: rows are independent (same bits as all at once), and a block's float64
    # scores stay small enough for the cache; a real vocabulary makes each row 400 KB.
    return torch.cat(
        [
            sample_gaps_rows(
                logits[i : i + _SAMPLE_BLOCK_ROWS],
                tokens[i : i + _SAMPLE_BLOCK_ROWS],
                p.seed,
                p.temperature,
                p.top_k,
                p.top_p,
                first=i,
            )
            for i in range(0, len(tokens), _SAMPLE_BLOCK_ROWS)
        ]
    )


def prefill_check(engine: TextEngine, p: TextParams, tokens: list[int], tol: float) -> VoteValue:
    """Check claimed `tokens` for task `p` with one forward pass."""
    return prefill_check_batch(engine, [(p, tokens)], tol)[0]


def _structural(
    engine: TextEngine, p: TextParams, prompt: list[int], tokens: list[int], fp: dict, method: str
) -> VoteValue | None:
    """A rejection that needs no model: bad termination, or more tokens than the context holds."""
    bad = _termination(engine, p, tokens, method)
    if bad is not None:
        return VoteValue(bad.accept, bad.method, bad.distance, bad.margin, bad.reason, bad.position, fp)
    if len(prompt) + len(tokens) > engine.max_positions:
        return reject(method, "prompt and output exceed the model's context", fingerprint=fp)
    return None


def prefill_check_batch(
    engine: TextEngine,
    items: Sequence[tuple[TextParams, list[int]]],
    tol: float | Sequence[float],
    method: str = METHOD,
) -> list[VoteValue]:
    """Check several (task, claimed tokens) pairs, sharing batched passes of at most
    MAX_BATCH_ROWS rows; `tol` is one tolerance for all or one per item; `method` one of LOGITS."""
    logits_of = LOGITS[method]
    tols = [float(tol)] * len(items) if isinstance(tol, (int, float)) else [float(t) for t in tol]
    if len(tols) != len(items):
        raise ValueError(f"{len(tols)} tolerances for {len(items)} results")
    verdicts: list[VoteValue | None] = []
    todo: list[tuple[int, list[int]]] = []
    fps = [text_fingerprint(tokens) if tokens else {} for _, tokens in items]
    for i, (p, tokens) in enumerate(items):
        prompt = engine.task_prompt(p)
        bad = _structural(engine, p, prompt, tokens, fps[i], method)
        verdicts.append(bad)
        if bad is None:
            todo.append((i, prompt))
    for group in _groups(todo, [len(prompt) + len(items[i][1]) for i, prompt in todo]):
        logits = logits_of(engine, [(prompt, items[i][1]) for i, prompt in group])
        for (i, _), lg in zip(group, logits):
            p, tokens = items[i]
            verdicts[i] = _judge(engine, p, tokens, lg, tols[i], fps[i], method)
    return [v for v in verdicts if v is not None]


def judge(
    engine: TextEngine, p: TextParams, tokens: list[int], logits: torch.Tensor, tol: float, method: str
) -> VoteValue:
    """One claim's verdict from logits the caller computed with LOGITS[method] (calibration keeps
    the logits for the gaps it reports): what `prefill_check_batch` gives for it."""
    fp = text_fingerprint(tokens) if tokens else {}
    bad = _structural(engine, p, engine.task_prompt(p), tokens, fp, method)
    return bad if bad is not None else _judge(engine, p, tokens, logits, tol, fp, method)


def _groups(todo: list[tuple[int, list[int]]], rows: list[int]) -> list[list[tuple[int, list[int]]]]:
    groups: list[list[tuple[int, list[int]]]] = [[]]
    used = 0
    for item, n in zip(todo, rows):
        if groups[-1] and used + n > MAX_BATCH_ROWS:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += n
    return groups if groups[0] else []


def _judge(
    engine: TextEngine, p: TextParams, tokens: list[int], logits: torch.Tensor, tol: float, fp: dict, method: str
) -> VoteValue:
    if p.decoding in ("greedy", "sample"):
        why = "token is not the argmax" if p.decoding == "greedy" else "token is not the seeded sample"
        return _verdict(token_gaps(engine, p, tokens, logits), tol, fp, why, method)
    claimed = torch.tensor(tokens)
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    chosen = logprobs.gather(1, claimed[:, None])[:, 0]
    ranks = (logprobs > (chosen + tol)[:, None]).sum(dim=-1)
    bad_pos = torch.nonzero(ranks > p.num_beams)
    score = float(chosen.sum())
    if len(bad_pos):
        i = int(bad_pos[0])
        return reject(
            method,
            f"token ranks {int(ranks[i]) + 1} at its position, outside the {p.num_beams} beams",
            i,
            float(ranks[i]),
            fp,
        )
    return VoteValue(
        True,
        method,
        float(ranks.max()),
        float(p.num_beams - ranks.max()),
        f"every token within the top {p.num_beams + 1}; log-prob {score:.4f}",
        None,
        fp,
    )


def _verdict(gaps: torch.Tensor, tol: float, fp: dict, why: str, method: str) -> VoteValue:
    over = torch.nonzero(gaps > tol)
    worst = float(gaps.max())
    if len(over):
        i = int(over[0])
        g = float(gaps[i])
        return reject(
            method,
            f"{why}: {'filtered out' if g == float('inf') else f'{g:.4g} below the best'}",
            i,
            g if g != float("inf") else float("inf"),
            fp,
        )
    return VoteValue(True, method, worst, tol - worst, "every token is consistent", None, fp)
