"""What a worker offers: the models it serves and the largest task it takes, as a signed entry.

A worker appends a `Serves` entry to its own feed (before its NodeJoined) whenever what it serves
changes: `models` lists [kind, digest, name] per loaded model, `limits` maps each kind to the
largest task cost it runs (engines/kinds.py defines the cost; node config sets the limits). The
gateway reads it from the joining feed, so a task naming a model no admitted worker serves, or
costing more than any of them takes, is refused at submit (nothing stored, no worker tried), and
a task only goes to a worker that can run it. Entries are peer input: every field is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from trustgen.consensus.messages import Signed
from trustgen.engines.kinds import ENGINE_KINDS, engine_kind
from trustgen.errors import UsageError
from trustgen.net.auth import RpcError

ENTRY = "Serves"
MAX_MODELS = 16
MAX_NAME = 256
MAX_LIMIT = 2**62


@dataclass(frozen=True)
class Offer:
    models: dict[tuple[str, str], str]  # (kind, digest) -> name
    limits: dict[str, int]  # kind -> largest task cost taken

    def serves(self, kind: str, digest: str) -> bool:
        return (kind, digest) in self.models

    def takes(self, kind: str, cost: int) -> bool:
        return cost <= self.limits.get(kind, 0)


def offer_body(models: dict[str, tuple[str, str]], limits: dict[str, int]) -> dict[str, Any]:
    """The `Serves` entry body for `models` (kind -> (digest, name)) and `limits` (kind -> cost)."""
    return {
        "models": [[kind, digest, name] for kind, (digest, name) in sorted(models.items())],
        "limits": dict(sorted(limits.items())),
    }


def parse_offer(body: Any) -> Offer:
    """An Offer from an untrusted `Serves` body; UsageError naming what is wrong."""

    def text(v: Any) -> bool:
        return isinstance(v, str) and 0 < len(v) <= MAX_NAME

    if not isinstance(body, dict) or set(body) != {"models", "limits"}:
        raise UsageError("Serves: the body is {models, limits}")
    models, limits = body["models"], body["limits"]
    if not isinstance(models, list) or len(models) > MAX_MODELS:
        raise UsageError(f"Serves.models: a list of at most {MAX_MODELS}")
    offered: dict[tuple[str, str], str] = {}
    for m in models:
        if not (isinstance(m, list) and len(m) == 3 and all(text(x) for x in m) and m[0] in ENGINE_KINDS):
            raise UsageError("Serves.models: each is [kind, digest, name] of a known kind")
        offered[(m[0], m[1])] = m[2]
    if not isinstance(limits, dict) or not all(
        k in ENGINE_KINDS and type(v) is int and 0 <= v <= MAX_LIMIT for k, v in limits.items()
    ):
        raise UsageError("Serves.limits: a map from known kinds to costs in [0, 2^62]")
    return Offer(offered, dict(limits))


def task_cost(task: Signed) -> tuple[Any, int]:
    """The task's kind record and its cost (the task's parameters are already checked)."""
    kind = engine_kind(task.body["kind"])
    return kind, kind.cost(kind.parse_params(task.body["params"]))


def can_run(offer: Offer | None, task: Signed) -> bool:
    kind, cost = task_cost(task)
    return offer is not None and offer.serves(kind.name, task.body["model"]) and offer.takes(kind.name, cost)


def check_offered(task: Signed, offers: list[Offer]) -> None:
    """FAILED_PRECONDITION unless some admitted worker serves the task's model and takes its
    cost; the detail names the model, or the parameters that make up the cost."""
    kind, cost = task_cost(task)
    model = task.body["model"]
    serving = [o for o in offers if o.serves(kind.name, model)]
    if not serving:
        raise RpcError(
            grpc.StatusCode.FAILED_PRECONDITION, f"model: no admitted worker serves {kind.name} model {model}"
        )
    top = max(o.limits.get(kind.name, 0) for o in serving)
    if cost > top:
        raise RpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{kind.cost_terms}: task cost {cost} is over the largest worker budget for this model ({top})",
        )
