"""Continuous batching: up to `capacity` tasks decode together; a finished task leaves at once and
the next waiting one joins in the same step (its prompt rides along with the others' tokens).

Which tasks share a step changes nothing for any of them: the packed forward pass is
batch-invariant and each task's state reads only its own logits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence as Seq

from trustgen.engines.cancel import checkpoint
from trustgen.engines.decoding import BeamTask, StepTask
from trustgen.engines.packed import PackedGPT2

MAX_BATCH = 256  # tasks decoding at once; bounds memory whatever a caller asks for


def run_continuous(runner: PackedGPT2, tasks: Seq[StepTask | BeamTask], capacity: int) -> None:
    """Decode every task to completion, at most `capacity` at a time, in order of arrival."""
    if not 1 <= capacity <= MAX_BATCH:
        raise ValueError(f"batch size must be in [1, {MAX_BATCH}], got {capacity}")
    waiting = deque(tasks)
    active: list[StepTask | BeamTask] = []
    while waiting or active:
        checkpoint()  # a cancelled task stops between steps
        while waiting and len(active) < capacity:
            active.append(waiting.popleft())
        seqs = [s for t in active for s in t.seqs]
        logits = runner.forward(seqs)
        running, at = [], 0
        for t in active:
            n = len(t.seqs)
            if not t.take(logits[at : at + n]):
                running.append(t)
            at += n
        active = running
