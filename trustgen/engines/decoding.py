"""Decoding rules as step-by-step task states, so many tasks can share each forward pass.

A task state holds its sequences (one, or one per beam), takes the logits the forward pass
returned for them, and decides the next tokens with the same rules as ever: argmax for greedy,
the (seed, position) Gumbel-max rule for sampling, summed log-probabilities for beam search. A
state sees only its own logits, so what else shares the pass cannot change its choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trustgen.engines.packed import Sequence
from trustgen.engines.params import TextParams
from trustgen.engines.sampling import sample_token


@dataclass
class BeamStep:
    """What one beam-search step keeps: the surviving (beam, token, score) and whether to stop."""

    keep_beam: list[int]
    keep_tok: list[int]
    keep_score: list[float]
    finished: list[tuple[float, list[int]]]
    stop: bool


def beam_select(
    beams: list[list[int]],
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    finished: list[tuple[float, list[int]]],
    step: int,
    p: TextParams,
    eos: int | None,
) -> BeamStep:
    """One step of beam search over summed log-probs; ties go to the lower (beam, token) index."""
    k = p.num_beams
    cand = (scores[:, None] + logprobs).reshape(-1)
    order = torch.sort(cand, descending=True, stable=True).indices[: 2 * k]
    vocab = logprobs.shape[1]
    keep_beam: list[int] = []
    keep_tok: list[int] = []
    keep_score: list[float] = []
    finished = list(finished)
    for idx in order.tolist():
        b, t = divmod(idx, vocab)
        seq = beams[b] + [t]
        if t == eos or step == p.max_new_tokens - 1:
            finished.append((float(cand[idx]), seq))
        else:
            keep_beam.append(b)
            keep_tok.append(t)
            keep_score.append(float(cand[idx]))
        if len(keep_beam) == k:
            break
    finished.sort(key=lambda f: -f[0])
    finished = finished[:k]
    # No running beam can still beat the finished ones: log-probs only go down.
    stop = not keep_beam or (len(finished) == k and keep_score[0] <= finished[-1][0])
    return BeamStep(keep_beam, keep_tok, keep_score, finished, stop)


@dataclass
class StepTask:
    """Greedy or sampled decoding: one sequence, one token a step."""

    params: TextParams
    eos: int | None
    seqs: list[Sequence]
    tokens: list[int] = field(default_factory=list)
    score: float | None = None

    def take(self, logits: list[torch.Tensor]) -> bool:
        """Choose the next token from this task's logits; True when the task is finished."""
        p, row = self.params, logits[0][-1]
        if p.decoding == "greedy":
            tok = int(torch.argmax(row))
        else:
            tok = sample_token(row, p.seed, len(self.tokens), p.temperature, p.top_k, p.top_p)
        self.tokens.append(tok)
        if tok == self.eos or len(self.tokens) == p.max_new_tokens:
            return True
        self.seqs[0].pending = [tok]
        return False


@dataclass
class BeamTask:
    """Beam search: its beams are its sequences, branched from the parents a step keeps."""

    params: TextParams
    eos: int | None
    seqs: list[Sequence]
    tokens: list[int] = field(default_factory=list)
    score: float | None = None
    beams: list[list[int]] = field(default_factory=lambda: [[]])
    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.float32))
    finished: list[tuple[float, list[int]]] = field(default_factory=list)
    step: int = 0

    def take(self, logits: list[torch.Tensor]) -> bool:
        logprobs = torch.log_softmax(torch.cat([x[-1:] for x in logits]).float(), dim=-1)
        sel = beam_select(self.beams, self.scores, logprobs, self.finished, self.step, self.params, self.eos)
        self.finished, self.step = sel.finished, self.step + 1
        if sel.stop:
            self.score, self.tokens = max(self.finished, key=lambda f: f[0])
            return True
        self.beams = [self.beams[b] + [t] for b, t in zip(sel.keep_beam, sel.keep_tok)]
        self.scores = torch.tensor(sel.keep_score, dtype=torch.float32)
        self.seqs = [self.seqs[b].branch(t) for b, t in zip(sel.keep_beam, sel.keep_tok)]
        return False


TASK_STATES: dict[str, type[StepTask] | type[BeamTask]] = {
    "greedy": StepTask,
    "sample": StepTask,
    "beam": BeamTask,
}


def task_state(p: TextParams, prompt_ids: list[int], eos: int | None) -> StepTask | BeamTask:
    return TASK_STATES[p.decoding](params=p, eos=eos, seqs=[Sequence(pending=list(prompt_ids))])
