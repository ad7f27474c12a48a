"""What a job trains and on what loss: one registry entry per objective.

An objective loads the base model named by the spec (digest-checked), builds the data set's
samples, exposes the trainable tensors (a name -> tensor dict, the only thing the algorithms
touch), computes the loss of given trainable tensors on given sample indices (a pure
function: the model runs through `torch.func.functional_call`, never mutated), evaluates the
held-out loss, and writes a checkpoint as a normal model directory.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable
from typing import Any, Protocol

import torch

from trustgen.engines.loading import MODEL_LOAD
from trustgen.engines.registry import ModelRef, embedded_models, model_files, resolve
from trustgen.errors import ModelError, UsageError
from trustgen.training.corpus import dataset_digest, dataset_path, read_text_dataset
from trustgen.training.data import Split, split
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors

DTYPES = {"float32": torch.float32, "float64": torch.float64}
EVAL_BATCH = 16


class Objective(Protocol):
    spec: JobSpec
    split: Split

    def initial(self) -> Tensors: ...

    def loss(self, params: Tensors, indices: list[int]) -> torch.Tensor: ...

    def sample_losses(self, params: Tensors, indices: list[int]) -> torch.Tensor: ...

    def eval_loss(self, params: Tensors) -> float: ...

    def save(self, params: Tensors, out: pathlib.Path) -> None: ...


def resolve_base(spec: JobSpec) -> ModelRef:
    m = spec.section("model")
    base = m["base"].split("@", 1)[0]
    if base not in embedded_models() and not pathlib.Path(base).expanduser().is_dir():
        # A replayer reads nothing from its environment: no hub downloads for a job's base model.
        raise ModelError(f"base model {base!r} is neither embedded nor a local directory")
    ref = resolve(f"{m['base']}@{m['digest']}") if "@" not in m["base"] else resolve(m["base"])
    if ref.digest != m["digest"]:
        raise ModelError(f"base model {m['base']!r} has digest {ref.digest}, the job names {m['digest']}")
    return ref


def resolve_data(spec: JobSpec) -> pathlib.Path:
    d = spec.section("data")
    path = dataset_path(d["source"])
    digest = dataset_digest(path)
    if digest != d["digest"]:
        raise UsageError(f"data set {d['source']!r} has digest {digest}, the job names {d['digest']}")
    return path


class CausalLM:
    """Next-token loss on fixed-length token windows of a text data set."""

    def __init__(self, spec: JobSpec) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.ref = resolve_base(spec)
        if self.ref.kind != "text":
            raise ModelError(f"objective causal-lm needs a text model; {self.ref.name!r} is an image model")
        dtype = DTYPES[spec.section("profile")["dtype"]]
        with MODEL_LOAD:
            tok = AutoTokenizer.from_pretrained(self.ref.path, local_files_only=True)
            if spec.section("model")["init"] == "fresh":
                config = AutoConfig.from_pretrained(self.ref.path, local_files_only=True)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(spec.section("job")["seed"])
                    model = AutoModelForCausalLM.from_config(config)
            else:
                model = AutoModelForCausalLM.from_pretrained(self.ref.path, use_safetensors=True, local_files_only=True)
        self.model = model.to(dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        d = spec.section("data")
        eos = tok.eos_token_id
        ids: list[int] = []
        for para in read_text_dataset(resolve_data(spec)).split("\n"):
            if para.strip():
                ids.extend(tok.encode(para, add_special_tokens=False))
                ids.append(eos)
        block = d["block"]
        limit = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", block
        )
        if block > limit:
            raise UsageError(f"data.block = {block} exceeds the model's context of {limit} tokens")
        n = len(ids) // block
        self.windows = torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)
        self.split = split(d["digest"], n, d["heldout_permille"], d["eval_windows"])

    def initial(self) -> Tensors:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def loss(self, params: Tensors, indices: list[int]) -> torch.Tensor:
        x = self.windows[indices]
        out = torch.func.functional_call(self.model, params, args=(), kwargs={"input_ids": x, "labels": x})
        return out.loss

    def sample_losses(self, params: Tensors, indices: list[int]) -> torch.Tensor:
        """Each window's mean next-token loss (what an SPSA trainer commits to per sample)."""
        x = self.windows[indices]
        logits = torch.func.functional_call(self.model, params, args=(), kwargs={"input_ids": x}).logits
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1), reduction="none"
        )
        return per_token.view(len(indices), -1).mean(dim=1)

    def eval_loss(self, params: Tensors) -> float:
        return heldout_loss(self, params)

    def save(self, params: Tensors, out: pathlib.Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(params[n])
        self.model.save_pretrained(out, safe_serialization=True)
        _copy_rest(self.ref.path, out)


class Evaluable(Protocol):
    split: Split

    def loss(self, params: Tensors, indices: list[int]) -> torch.Tensor: ...


def heldout_loss(objective: Evaluable, params: Tensors) -> float:
    """Mean loss over the evaluation windows, in fixed batches (one definition for every
    objective, so every checkpoint's recorded loss is computed the same way)."""
    idx = list(objective.split.eval)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(idx), EVAL_BATCH):
            part = idx[i : i + EVAL_BATCH]
            total += float(objective.loss(params, part).double()) * len(part)
    return total / len(idx)


def _copy_rest(base: pathlib.Path, out: pathlib.Path) -> None:
    """Every file of the base model directory that the checkpoint did not write (tokenizer,
    scheduler, other components), so the checkpoint is a complete model directory."""
    for f in model_files(base):
        rel = f.relative_to(base)
        dst = out / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)


def _image_objective(cls_name: str) -> Callable[[JobSpec], Any]:
    """Image objectives live in image_objectives.py (which imports this module and diffusers):
    imported when a job uses one."""

    def make(spec: JobSpec) -> Any:
        from trustgen.training import image_objectives

        return getattr(image_objectives, cls_name)(spec)

    return make


OBJECTIVES: dict[str, Callable[[JobSpec], Any]] = {
    "causal-lm": CausalLM,
    "textual-inversion": _image_objective("TextualInversion"),
    "unet-denoise": _image_objective("UNetDenoise"),
}


def load_objective(spec: JobSpec) -> Objective:
    name = spec.section("model")["objective"]
    try:
        factory = OBJECTIVES[name]
    except KeyError:
        raise UsageError(f"objective {name!r} is not available (available: {', '.join(OBJECTIVES)})") from None
    return factory(spec)
