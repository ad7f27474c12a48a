"""Continuous batching: up to `capacity` tasks decode together; a finished task leaves at once and
the next waiting one joins in the same step (its prompt rides along with the others' tokens).

Tasks may also arrive while others decode (`arrivals`, polled before every step): a worker's
tasks join the running batch instead of waiting for it to end, and each one is handed back
(`on_finish`) the step it finishes, not when the batch does.

Which tasks share a step changes nothing for any of them: the packed forward pass is
batch-invariant and each task's state reads only its own logits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as Seq

from trustgen.engines.cancel import checkpoint
from trustgen.engines.decoding import BeamTask, StepTask
from trustgen.engines.packed import PackedGPT2

MAX_BATCH = 256  # tasks decoding at once; bounds memory whatever a caller asks for

Task = StepTask | BeamTask


def run_continuous(
    runner: PackedGPT2,
    tasks: Seq[Task],
    capacity: int,
    arrivals: Callable[[int], list[Task]] | None = None,
    on_finish: Callable[[Task], None] | None = None,
) -> None:
    """Decode every task to completion, at most `capacity` at a time, in order of arrival.
    `arrivals(room)`: up to `room` more tasks, or [] when none are waiting now (it must not block);
    the run ends when nothing is active, nothing waits and `arrivals` has none."""
    if not 1 <= capacity <= MAX_BATCH:
        raise ValueError(f"batch size must be in [1, {MAX_BATCH}], got {capacity}")
    waiting = deque(tasks)
    active: list[Task] = []
    while True:
        room = capacity - len(active) - len(waiting)
        if arrivals is not None and room > 0:
            waiting.extend(arrivals(room))
        checkpoint()  # every task of the run cancelled: it stops between steps
        while waiting and len(active) < capacity:
            active.append(waiting.popleft())
        if not active:
            return
        seqs = [s for t in active for s in t.seqs]
        logits = runner.forward(seqs)
        running, at = [], 0
        for t in active:
            n = len(t.seqs)
            if not t.take(logits[at : at + n]):
                running.append(t)
            elif on_finish is not None:
                on_finish(t)
            at += n
        active = running
