"""Task kinds as the engines see them: one record per kind (text, image; training later).

A kind names its parameter class, the engine class that runs it, the embedded model used when
none is named, the network whose weights make the model, and whether its outputs travel as
content-addressed blobs. Everything that branches on a task's kind reads it from here (the node
adds how workers describe and verifiers check an output: trustgen.node.kinds).

Importing this module imports no torch: engine classes are loaded by name on first use, so a
pure gateway can validate tasks without the model stack.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from trustgen.engines.params import ImageParams, TextParams, params_from_dict
from trustgen.errors import UsageError


@dataclass(frozen=True)
class EngineKind:
    name: str
    params: type[TextParams] | type[ImageParams]
    engine: str  # "module:Class", imported on first use (engines import torch)
    default_model: str  # the embedded model a client gets when it names none
    weights: str  # attribute path, from the engine, to the network whose weights are the model
    # Outputs that travel as blobs: the field of a result's output that holds the blob's digest,
    # and how an output becomes the blob's bytes. Both empty: the output is inline in the result.
    blob_field: str = ""
    to_blob: Callable[[Any], bytes] | None = None
    # The cost model: what a task of this kind costs a worker (its budget unit), and in words which
    # parameters make it up (errors name them).
    cost: Callable[[Any], int] = lambda _p: 0
    cost_terms: str = ""

    def __post_init__(self) -> None:
        if bool(self.blob_field) != (self.to_blob is not None):
            raise ValueError(f"kind {self.name}: blob_field and to_blob go together")

    def parse_params(self, params: dict[str, Any]) -> Any:
        """Task parameters from an untrusted dict (UsageError naming the field when invalid)."""
        return params_from_dict(self.params, params)

    def param_names(self) -> list[str]:
        return [f.name for f in fields(self.params)]

    def engine_class(self) -> type:
        module, _, cls = self.engine.partition(":")
        return getattr(importlib.import_module(module), cls)

    def blob(self, output: Any) -> bytes:
        """The bytes an output travels as (b"" for inline kinds)."""
        return self.to_blob(output) if self.to_blob is not None else b""


def _png(output: Any) -> bytes:
    return output.png()


def _text_cost(p: TextParams) -> int:
    # Prompt bytes bound its tokens from above (no tokenizer at the gateway); every beam decodes.
    beams = p.num_beams if p.decoding == "beam" else 1
    return (len(p.prompt.encode("utf-8", "surrogatepass")) + p.max_new_tokens) * beams


def _image_cost(p: ImageParams) -> int:
    return p.width * p.height * p.steps


ENGINE_KINDS: dict[str, EngineKind] = {
    k.name: k
    for k in (
        EngineKind(
            "text",
            TextParams,
            "trustgen.engines.text_engine:TextEngine",
            "tiny-text",
            "model",
            cost=_text_cost,
            cost_terms="(prompt bytes + max_new_tokens) x num_beams",
        ),
        EngineKind(
            "image",
            ImageParams,
            "trustgen.engines.image_engine:ImageEngine",
            "tiny-image",
            "pipe.unet",
            blob_field="png_digest",
            to_blob=_png,
            cost=_image_cost,
            cost_terms="width x height x steps",
        ),
    )
}


def engine_kind(name: str) -> EngineKind:
    kind = ENGINE_KINDS.get(name)
    if kind is None:
        raise UsageError(f"unknown task kind {name!r}; choose {' or '.join(ENGINE_KINDS)}")
    return kind
