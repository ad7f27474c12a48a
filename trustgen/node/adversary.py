"""Cheating modes: real misbehaviour, for tests and demonstrations of the network catching it.

A node's `adversary` setting names one mode; the mode applies to one role and the node's other
roles stay honest. Each mode really misbehaves through the same code path an honest node uses:
- worker `other-model`: generates with a different model (perturbed weights) but claims the task's;
- worker `alter`: generates honestly, then changes one token / a patch of pixels;
- worker `replay`: returns the output of its previous task as the output of the current one;
- worker `fake-step`: images: skips the model at the middle denoising step (reusing the step
  before's output) and commits that trajectory; caught when the challenge picks that step;
- worker `forge-trajectory`: images: commits the task's honest trajectory but returns another
  image (a patch inverted), so the trajectory does not produce the image it claims;
- verifier `lie`: signs the opposite of what its check found.

Roles get their misbehaviour from `for_role`; config validation reads `MODES`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from trustgen.engines.kinds import EngineKind
from trustgen.errors import UsageError
from trustgen.verifier.vote import VoteValue


class WorkerCheat(Protocol):
    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any: ...


class VerifierCheat(Protocol):
    def vote(self, honest: VoteValue) -> VoteValue: ...


# -- workers -------------------------------------------------------------------------------------


class OtherModel:
    """Generates with a copy of the engine whose model weights are perturbed (seeded, so the
    cheat is the same every time), and reports the task's model as if it had used it."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any:
        if kind.name not in self._engines:
            self._engines[kind.name] = _perturbed(kind, engine)
        return self._engines[kind.name].generate(params)


def _perturbed(kind: EngineKind, engine: Any) -> Any:
    import torch  # only a cheating worker needs it here; it has loaded engines already

    top, *inner = kind.weights.split(".")
    cheat = copy.copy(engine)
    module = copy.deepcopy(getattr(engine, top))
    net = module
    for name in inner:
        net = getattr(net, name)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2 * p.abs().mean())
    setattr(cheat, top, module)
    return cheat


def _alter_text(out: Any) -> Any:
    tokens = list(out.token_ids)
    i = len(tokens) // 2
    tokens[i] = (tokens[i] + 1) % 1000
    return dataclasses.replace(out, token_ids=tokens)


def _alter_image(out: Any) -> Any:
    pixels = out.pixels.copy()
    h, w, _ = pixels.shape
    pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255 - pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    return dataclasses.replace(out, pixels=np.ascontiguousarray(pixels))


# How `alter` changes an output of each task kind.
ALTERATIONS: dict[str, Callable[[Any], Any]] = {"text": _alter_text, "image": _alter_image}


class Alter:
    """Generates honestly, then changes the output a little (still a well-formed output)."""

    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any:
        alter = ALTERATIONS.get(kind.name)
        if alter is None:
            raise UsageError(f"the alter adversary cannot change a {kind.name} output")
        return alter(engine.generate(params))


class Replay:
    """Returns its previous output (of the same type) instead of the one it just generated."""

    def __init__(self) -> None:
        self._last: Any = None

    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any:
        out = engine.generate(params)
        previous, self._last = self._last, out
        return previous if previous is not None and type(previous) is type(out) else out


def _image_only(kind: EngineKind, mode: str) -> None:
    if kind.name != "image":
        raise UsageError(f"the {mode} adversary only cheats on image tasks, not {kind.name}")


class FakeStep:
    """Fakes the model output of the middle step (the previous step's reused), does everything
    else honestly and commits the trajectory it really sampled."""

    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any:
        from trustgen.engines.outputs import ImageOutput
        from trustgen.verifier.calibrate_traj import sample_faking

        _image_only(kind, "fake-step")
        pixels, traj = sample_faking(engine, params, {params.steps // 2})
        return ImageOutput(pixels=pixels, model_digest=engine.ref.digest, profile=engine.profile, trajectory=traj)


class ForgeTrajectory:
    """Commits the honest trajectory of the task, and claims another image than it decodes to."""

    def generate(self, kind: EngineKind, engine: Any, params: Any) -> Any:
        _image_only(kind, "forge-trajectory")
        return _alter_image(engine.generate(params, record=True))


# -- verifiers -----------------------------------------------------------------------------------


class Lie:
    """Signs the opposite of the honest check's outcome, with a reason to match."""

    def vote(self, honest: VoteValue) -> VoteValue:
        # The record of what was checked (steps, distances) stays: only the verdict is a lie.
        return dataclasses.replace(
            honest, accept=not honest.accept, reason="looks fine" if not honest.accept else "looks wrong", position=None
        )


# -- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    role: str  # the role that misbehaves: "worker" or "verifier"
    make: Callable[[], Any]  # a fresh misbehaviour (modes such as replay keep state)


MODES: dict[str, Mode] = {
    "other-model": Mode("worker", OtherModel),
    "alter": Mode("worker", Alter),
    "replay": Mode("worker", Replay),
    "fake-step": Mode("worker", FakeStep),
    "forge-trajectory": Mode("worker", ForgeTrajectory),
    "lie": Mode("verifier", Lie),
}


def check_mode(name: str) -> None:
    """UsageError unless `name` is empty (honest) or a known mode."""
    if name and name not in MODES:
        raise UsageError(f"unknown adversary {name!r} (modes: {', '.join(MODES)})")


def for_role(name: str, role: str) -> Any:
    """The misbehaviour that mode `name` gives `role`, or None when that role stays honest."""
    check_mode(name)
    mode = MODES.get(name)
    return mode.make() if mode is not None and mode.role == role else None


def worker_cheat(name: str) -> WorkerCheat | None:
    cheat: WorkerCheat | None = for_role(name, "worker")
    return cheat


def verifier_cheat(name: str) -> VerifierCheat | None:
    cheat: VerifierCheat | None = for_role(name, "verifier")
    return cheat
