"""Text generation on transformers causal LMs with greedy, beam and seeded sampling decoding.

The decoding loop is ours rather than `model.generate`, so every choice it makes is one a
verifier can recompute from the logits of a teacher-forced pass: argmax for greedy, the
(seed, position) Gumbel-max rule for sampling, the summed log-probabilities for beam search.

Each task runs as its own forward passes (batch of one, or of its beams), so its output cannot
depend on what else a worker is running: batched kernels may pick other reduction orders for
other batch shapes, and padding changes attention numerics.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from trustgen.engines.determinism import ExecutionProfile, configure, resolve_dtype
from trustgen.engines.outputs import TextOutput
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
        self.tokenizer = AutoTokenizer.from_pretrained(model.path, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            model.path, dtype=resolve_dtype(dtype), use_safetensors=True, local_files_only=True
        )
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

    def prompt_ids(self, params: TextParams) -> list[int]:
        """The token ids a task's output continues: its prompt, chat-templated when it asks."""
        return self.encode_prompt(self.chat_prompt(params.prompt) if params.chat else params.prompt)

    def decode(self, token_ids: list[int]) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        assert isinstance(text, str)  # a flat id list decodes to one string (a list only for batches)
        return text

    def generate(self, params: TextParams) -> TextOutput:
        prompt_ids = self.prompt_ids(params)
        if not prompt_ids:
            raise UsageError("prompt encodes to no tokens")
        if len(prompt_ids) + params.max_new_tokens > self.max_positions:
            raise UsageError(
                f"prompt ({len(prompt_ids)} tokens) + max-new-tokens ({params.max_new_tokens}) "
                f"exceeds the model's context of {self.max_positions}"
            )
        with torch.inference_mode():
            if params.decoding == "beam":
                tokens, score = self._beam(prompt_ids, params)
            else:
                tokens, score = self._incremental(prompt_ids, params), None
        finish = "eos" if tokens and tokens[-1] == self.eos_id else "length"
        return TextOutput(
            prompt_ids=prompt_ids,
            token_ids=tokens,
            text=self.decode(tokens),
            finish_reason=finish,
            model_digest=self.ref.digest,
            profile=self.profile,
            score=score,
        )

    def generate_batch(self, batch: list[TextParams]) -> list[TextOutput]:
        """Run several tasks; each is computed alone so outputs are batch-invariant."""
        return [self.generate(p) for p in batch]

    def _incremental(self, prompt_ids: list[int], p: TextParams) -> list[int]:
        ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        out: list[int] = []
        for i in range(p.max_new_tokens):
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
        k = p.num_beams
        res = self.model(input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True)
        past = res.past_key_values
        logprobs = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
        beams: list[list[int]] = [[]]
        scores = torch.zeros(1, dtype=torch.float32)
        finished: list[tuple[float, list[int]]] = []
        for step in range(p.max_new_tokens):
            cand = (scores[:, None] + logprobs).reshape(-1)
            order = torch.sort(cand, descending=True, stable=True).indices[: 2 * k]
            vocab = logprobs.shape[1]
            keep_beam, keep_tok, keep_score = [], [], []
            for idx in order.tolist():
                b, t = divmod(idx, vocab)
                seq = beams[b] + [t]
                if t == self.eos_id or step == p.max_new_tokens - 1:
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
            if not keep_beam or (len(finished) == k and keep_score[0] <= finished[-1][0]):
                break
            beams = [beams[b] + [t] for b, t in zip(keep_beam, keep_tok)]
            scores = torch.tensor(keep_score, dtype=torch.float32)
            past.reorder_cache(torch.tensor(keep_beam, device=self.device))
            res = self.model(
                input_ids=torch.tensor(keep_tok, device=self.device)[:, None], past_key_values=past, use_cache=True
            )
            past = res.past_key_values
            logprobs = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
        best_score, best = max(finished, key=lambda f: f[0])
        return best, best_score
