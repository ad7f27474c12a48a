"""Cancellable generation: a step callback checked between decoding and denoising steps.

The node runs model work on one executor thread; a thread cannot be killed, so a task the
gateway abandons must stop itself. The runner sets a cancel event for the thread (`cancellable`)
and the engines call `checkpoint()` between decoding steps and before every module of a
diffusion network (`watch`: one denoising step of a large image is itself long, so the check runs
inside it too). A set event makes the next checkpoint raise `Cancelled`; the engine thread is
then free for the next task within one module call. Without an event (the CLI, verifiers,
calibration) a checkpoint costs one attribute read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from trustgen.errors import TrustgenError

_local = threading.local()


class Cancelled(TrustgenError):
    """The task's runner gave up on it (its caller went away): the partial output is dropped."""


class Flag(Protocol):
    def is_set(self) -> bool: ...


class AllOf:
    """Set once every one of `flags` is: a batch stops only when all of its tasks are cancelled."""

    def __init__(self, flags: list[Flag]) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        return all(f.is_set() for f in self.flags)


def checkpoint() -> None:
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("generation cancelled")


@contextmanager
def cancellable(event: Flag | None) -> Iterator[None]:
    """Generation on this thread, inside the block, stops at its next checkpoint once `event` is set."""
    before = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = before


def _hook(_module: Any, _args: Any) -> None:
    checkpoint()


def watch(network: Any) -> None:
    """A checkpoint before every submodule of `network` (a torch module) runs."""
    for m in network.modules():
        m.register_forward_pre_hook(_hook)
