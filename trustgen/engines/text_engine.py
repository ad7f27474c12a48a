"""Text generation on transformers causal LMs with greedy, beam and seeded sampling decoding.

The decoding loop is ours rather than `model.generate`, so every choice it makes is one a
verifier can recompute from the logits of a teacher-forced pass: argmax for greedy, the
(seed, position) Gumbel-max rule for sampling, the summed log-probabilities for beam search.

A task's output must not depend on what else a worker is running. GPT-2-shaped models run through
the packed, batch-invariant forward pass (engines/packed.py), so tasks decode together with
continuous batching and a batch of one is just the smallest batch. Other architectures run each
task alone (its own forward passes, batch of one or of its beams): batched kernels may pick other
reduction orders for other batch shapes, and padding changes attention numerics. The profile's
`batching` flag says which of the two computed an output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trustgen.engines.batching import MAX_BATCH, run_continuous
from trustgen.engines.cancel import checkpoint
from trustgen.engines.decoding import beam_select, task_state
from trustgen.engines.determinism import ExecutionProfile, configure, resolve_dtype
from trustgen.engines.loading import MODEL_LOAD, load_failure
from trustgen.engines.outputs import TextOutput
from trustgen.engines.packed import Sequence, packed_runner
from trustgen.engines.params import TextParams
from trustgen.engines.registry import ModelRef
from trustgen.engines.sampling import sample_token
from trustgen.errors import ModelError, UsageError

log = logging.getLogger("trustgen.node")


class TextEngine:
    """A loaded causal LM plus its tokenizer, ready to run text tasks."""

    def __init__(
        self,
        model: ModelRef,
        device: str = "cpu",
        dtype: str = "float32",
        deterministic: bool = True,
        threads: int | None = None,
    ) -> None:
        if model.kind != "text":
            raise ModelError(f"model {model.name!r} is an image model, not a text model")
        self.profile: ExecutionProfile = configure(device, deterministic, threads, dtype)
        self.ref = model
        self.device = torch.device(self.profile.device)
        try:
            with MODEL_LOAD:
                self.tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=True)
                loaded = AutoModelForCausalLM.from_pretrained(
                    model.path, dtype=resolve_dtype(dtype), use_safetensors=True, local_files_only=True
                )
        except Exception as e:  # truncated weights, a config that does not fit them, missing files
            raise ModelError(load_failure("text", model.name, e)) from None
        # Called through the class: transformers wraps `to` with functools.wraps, which type
        # checkers take for an unbound function. It is the same call as `loaded.to(device)`.
        self.model: PreTrainedModel = type(loaded).to(loaded, self.device).eval()
        self.eos_id = self.tokenizer.eos_token_id
        positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", 2048
        )
        if not isinstance(positions, int):
            raise ModelError(f"model {model.name!r} declares no integer context length: {positions!r}")
        self.max_positions: int = positions
        runner = packed_runner(self.model)
        self.packed = runner is not None
        self.profile = replace(
            self.profile, flags={**self.profile.flags, "batching": runner.mode if runner is not None else "serial"}
        )

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt, add_special_tokens=False))

    def chat_prompt(self, prompt: str) -> str:
        """`prompt` as one user turn in the model's chat template, ready for the reply."""
        if not self.tokenizer.chat_template:
            raise UsageError(f"model {self.ref.name!r} has no chat template; run the task without chat")
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        assert isinstance(text, str)  # tokenize=False renders one conversation to one string
        return text

    def task_prompt(self, params: TextParams) -> list[int]:
        """The token ids a task's output continues: its prompt, chat-templated when it asks."""
        return self.encode_prompt(self.chat_prompt(params.prompt) if params.chat else params.prompt)

    def decode(self, token_ids: list[int]) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        assert isinstance(text, str)  # a flat id list decodes to one string (a list only for batches)
        return text

    def prompt_ids(self, params: TextParams) -> list[int]:
        """The task's prompt tokens, refused (UsageError) when empty or too long for the context."""
        prompt_ids = self.task_prompt(params)
        if not prompt_ids:
            raise UsageError("prompt encodes to no tokens")
        if len(prompt_ids) + params.max_new_tokens > self.max_positions:
            raise UsageError(
                f"prompt ({len(prompt_ids)} tokens) + max-new-tokens ({params.max_new_tokens}) "
                f"exceeds the model's context of {self.max_positions}"
            )
        return prompt_ids

    def _output(
        self, prompt_ids: list[int], tokens: list[int], score: float | None, profile: ExecutionProfile | None = None
    ) -> TextOutput:
        finish = "eos" if tokens and tokens[-1] == self.eos_id else "length"
        return TextOutput(
            prompt_ids=prompt_ids,
            token_ids=tokens,
            text=self.decode(tokens),
            finish_reason=finish,
            model_digest=self.ref.digest,
            profile=profile or self.profile,
            score=score,
        )

    def generate(self, params: TextParams) -> TextOutput:
        return self.generate_batch([params])[0]

    def generate_batch(self, batch: list[TextParams], batch_size: int | None = None) -> list[TextOutput]:
        """Run several tasks, up to `batch_size` (default: all) decoding at once. Every output is
        the one the task gets alone, whatever else is in the batch."""
        if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
            raise UsageError(f"batch size must be in [1, {MAX_BATCH}], got {batch_size}")
        prompts = [self.prompt_ids(p) for p in batch]
        runner = packed_runner(self.model)  # built per call: calibration swaps `model`
        if runner is None:
            return [self._serial(ids, p) for ids, p in zip(prompts, batch)]
        states = [task_state(p, ids, self.eos_id) for p, ids in zip(batch, prompts)]
        with torch.inference_mode():
            run_continuous(runner, states, batch_size or min(MAX_BATCH, max(1, len(batch))))
        return [self._output(ids, s.tokens, s.score) for ids, s in zip(prompts, states)]

    def generate_stream(
        self,
        arrivals: Callable[[int], list[tuple[Any, TextParams]]],
        deliver: Callable[[Any, TextOutput | UsageError], None],
        capacity: int,
    ) -> None:
        """Continuous batching over tasks that keep arriving: `arrivals(room)` hands over up to
        `room` (key, params) pairs without blocking; each task joins the running batch at the next
        step and `deliver(key, output)` is called the step it finishes (`deliver(key, error)` at
        once for a task refused as invalid). Returns when nothing runs and nothing arrives. Every
        output is the one the task gets alone."""
        if not 1 <= capacity <= MAX_BATCH:
            raise UsageError(f"batch size must be in [1, {MAX_BATCH}], got {capacity}")
        runner = packed_runner(self.model)
        meta: dict[int, tuple[Any, list[int]]] = {}  # id(task state) -> (key, prompt ids)

        def admit(room: int) -> list[Any]:
            states: list[Any] = []
            while not states:
                got = arrivals(room)
                if not got:
                    break
                for key, p in got:
                    try:
                        ids = self.prompt_ids(p)
                    except UsageError as e:
                        deliver(key, e)
                        continue
                    if runner is None:  # a model the packed pass cannot run: each task alone
                        deliver(key, self._serial(ids, p))
                        continue
                    st = task_state(p, ids, self.eos_id)
                    meta[id(st)] = (key, ids)
                    states.append(st)
            return states

        def finish(st: Any) -> None:
            key, ids = meta.pop(id(st))
            deliver(key, self._output(ids, st.tokens, st.score))

        if runner is None:
            admit(1)  # runs every task that arrives, one at a time, until none is waiting
            return
        with torch.inference_mode():
            run_continuous(runner, [], capacity, admit, finish)

    def prefill_logits(self, items: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """For each (prompt ids, claimed tokens): the logits predicting each claimed token, from one
        teacher-forced pass (float32, CPU). All items share one packed pass when the model allows,
        with each item's logits equal to those of its own pass."""
        runner = packed_runner(self.model)
        with torch.inference_mode():
            if runner is None:
                # The output projection only on the positions that predict a claimed token
                # (`logits_to_keep`): on a real model's vocabulary it is a large part of the pass.
                return [
                    self.model(input_ids=torch.tensor([p + t[:-1]], device=self.device), logits_to_keep=len(t))
                    .logits[0]
                    .float()
                    .cpu()
                    for p, t in items
                ]
            return runner.forward([Sequence(pending=p + t[:-1], want=len(t)) for p, t in items])

    def replay_logits(self, items: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """For each (prompt ids, claimed tokens): the logits the decoding loop computed before each
        claimed token, by the calls generation makes (the prompt in one pass, then one token at a
        time over the cache), so they are bit-identical to an honest worker's under this profile.
        The check for dtypes whose one-pass logits drift from the incremental ones (bfloat16:
        docs/decisions.md); it costs what generating the tokens costs."""
        runner = packed_runner(self.model)
        with torch.inference_mode():
            if runner is None:
                return [self._replay_serial(p, t) for p, t in items]
            # The packed pass is batch-invariant: the items step together, each as it would alone.
            seqs = [Sequence(pending=list(p)) for p, _ in items]
            rows: list[list[torch.Tensor]] = [[] for _ in items]
            live = list(range(len(items)))
            for step in range(max((len(t) for _, t in items), default=0)):
                checkpoint()
                out = runner.forward([seqs[i] for i in live])
                for i, lg in zip(live, out):
                    rows[i].append(lg[0])
                live = [i for i in live if step + 1 < len(items[i][1])]
                for i in live:
                    seqs[i].pending = [items[i][1][step]]
            return [torch.stack(r) if r else torch.empty(0) for r in rows]

    def _replay_serial(self, prompt: list[int], tokens: list[int]) -> torch.Tensor:
        """`_incremental`'s model calls, fed the claimed tokens instead of its own choices."""
        ids = torch.tensor([prompt], device=self.device)
        past = None
        rows: list[torch.Tensor] = []
        for i in range(len(tokens)):
            checkpoint()
            res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            rows.append(res.logits[0, -1].float().cpu())
            ids = torch.tensor([[tokens[i]]], device=self.device)
        return torch.stack(rows) if rows else torch.empty(0)

    def generate_unpacked(self, params: TextParams) -> TextOutput:
        """One task through transformers' own forward pass: the path for models the packed pass
        cannot run, and the serial baseline the benchmarks compare batching with."""
        return self._serial(self.prompt_ids(params), params)

    def _serial(self, prompt_ids: list[int], params: TextParams) -> TextOutput:
        with torch.inference_mode():
            if params.decoding == "beam":
                tokens, score = self._beam(prompt_ids, params)
            else:
                tokens, score = self._incremental(prompt_ids, params), None
        serial = replace(self.profile, flags={**self.profile.flags, "batching": "serial"})
        return self._output(prompt_ids, tokens, score, serial)

    def _incremental(self, prompt_ids: list[int], p: TextParams) -> list[int]:
        ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        out: list[int] = []
        for i in range(p.max_new_tokens):
            checkpoint()
            res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logits = res.logits[0, -1]
            if p.decoding == "greedy":
                tok = int(torch.argmax(logits))
            else:
                tok = sample_token(logits, p.seed, i, p.temperature, p.top_k, p.top_p)
            out.append(tok)
            if tok == self.eos_id:
                break
            ids = torch.tensor([[tok]], device=self.device)
        return out

    def _beam(self, prompt_ids: list[int], p: TextParams) -> tuple[list[int], float]:
        """Beam search over summed log-probs; ties are broken by lower (beam, token) index."""
        res = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
        past = res.past_key_values
        logprobs = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
        beams: list[list[int]] = [[]]
        scores = torch.zeros(1, dtype=torch.float32)
        finished: list[tuple[float, list[int]]] = []
        for step in range(p.max_new_tokens):
            checkpoint()
            sel = beam_select(beams, scores, logprobs, finished, step, p, self.eos_id)
            finished = sel.finished
            if sel.stop:
                break
            beams = [beams[b] + [t] for b, t in zip(sel.keep_beam, sel.keep_tok)]
            scores = torch.tensor(sel.keep_score, dtype=torch.float32)
            past.reorder_cache(torch.tensor(sel.keep_beam, device=self.device))
            res = self.model(
                input_ids=torch.tensor(sel.keep_tok, device=self.device)[:, None], past_key_values=past, use_cache=True
            )
            past = res.past_key_values
            logprobs = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
        best_score, best = max(finished, key=lambda f: f[0])
        return best, best_score
