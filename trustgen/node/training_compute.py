"""The gateway's training arithmetic, in a child process.

Loading a model (importing transformers, tokenising the corpus) holds the interpreter for seconds;
in the gateway's own process that stalled every RPC it serves (a text task submitted while a job
started timed out). So the coordinator keeps only bytes (signed wires, state blobs) and asks one
spawned worker process to load objectives, aggregate rounds and evaluate held-out loss. The
functions below run in that process; each job's objective is loaded once and kept.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_OBJECTIVES: dict[bytes, Any] = {}  # in the child: job id -> (spec, objective)


def _job(job_wire: bytes, network: str) -> tuple[Any, Any]:
    from trustgen.training.objectives import load_objective
    from trustgen.training.profile import apply_profile
    from trustgen.training.spec import open_job

    _, spec = open_job(job_wire, network)
    got = _OBJECTIVES.get(spec.id)
    if got is None:
        if len(_OBJECTIVES) >= 4:
            _OBJECTIVES.pop(next(iter(_OBJECTIVES)))
        apply_profile(spec)
        got = _OBJECTIVES[spec.id] = (spec, load_objective(spec))
    return got


def start(job_wire: bytes, network: str) -> tuple[bytes, float]:
    """The job's initial state blob and its held-out loss."""
    from trustgen.training import rounds
    from trustgen.training.job import start_state

    spec, objective = _job(job_wire, network)
    state = start_state(spec, objective)
    return rounds.encode_state(state), objective.eval_loss(state.params)


def restore(job_wire: bytes, network: str, state_blob: bytes, rnd: int) -> bytes:
    """The checkpoint digest of a stored state blob (raises TensorError on a bad one)."""
    from trustgen.training import rounds
    from trustgen.training.job import checkpoint_digest, start_state

    spec, objective = _job(job_wire, network)
    state = rounds.decode_state(spec, start_state(spec, objective), state_blob, rnd)
    return checkpoint_digest(state.params)


def derive(
    job_wire: bytes, network: str, state_blob: bytes, rnd: int, accepted: list[tuple[bytes, bytes]]
) -> tuple[bytes, float, bytes]:
    """Round `rnd`'s next state from its state blob and the accepted (update wire, delta blob)
    pairs: (next state blob, held-out loss, checkpoint digest)."""
    from trustgen.consensus.messages import open_wire
    from trustgen.training import rounds
    from trustgen.training.job import DilocoState, checkpoint_digest, start_state

    spec, objective = _job(job_wire, network)
    state = rounds.decode_state(spec, start_state(spec, objective), state_blob, rnd)
    assert isinstance(state, DilocoState)
    ups = [open_wire(w, "DeltaUpdate", network) for w, _ in accepted]
    deltas = {u.id: state.decode(u, blob) for u, (_, blob) in zip(ups, accepted)}
    nxt = rounds.apply_round(state, ups, deltas)
    return rounds.encode_state(nxt), objective.eval_loss(nxt.params), checkpoint_digest(nxt.params)


def derive_block(
    job_wire: bytes, network: str, state_blob: bytes, block: int, steps: list[list[bytes]]
) -> tuple[bytes, float, bytes]:
    """An SPSA block's end state from its base state blob and, per step, the accepted SpsaUpdate
    wires: (next state blob, held-out loss, checkpoint digest)."""
    from trustgen.consensus.messages import open_wire
    from trustgen.training import rounds
    from trustgen.training.job import SpsaState, checkpoint_digest, start_state

    spec, objective = _job(job_wire, network)
    state = rounds.decode_state(spec, start_state(spec, objective), state_blob, block)
    assert isinstance(state, SpsaState)
    for wires in steps:
        state.apply([open_wire(w, "SpsaUpdate", network) for w in wires])
    return rounds.encode_state(state), objective.eval_loss(state.params), checkpoint_digest(state.params)


class Compute:
    """One spawned worker process, started on first use, for the coordinator's arithmetic."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
