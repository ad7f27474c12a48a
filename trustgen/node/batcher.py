"""A worker's batcher: tasks share the engine's forward passes without waiting for each other.

Engines that decode step by step (text, `generate_stream`) run continuous batching across
requests: a task that arrives while others decode joins the running batch at the next step, and
each task's Result goes back the step it finishes. Other engines (images, `generate_batch`) run
what arrived during the previous run as the next batch. No timer decides anything: the first task
runs at once. A batch's outputs are each the one its task gets alone, so batching changes
throughput only, never a Result; a task refused as invalid fails alone. A stream takes only its
engine's tasks at the head of the queue, so once another engine's task is first in line it
finishes what it holds and hands over the one engine thread: no kind starves another. Image batches record each task's trajectory (the
kind's `run_batch`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trustgen.engines.cancel import AllOf, Cancelled
from trustgen.errors import TrustgenError
from trustgen.node.engine_pool import Engines


@dataclass
class _Job:
    engine: Any
    params: Any
    done: asyncio.Future[Any]
    cancel: threading.Event = field(default_factory=threading.Event)
    run: Callable[[Any, list[Any]], list[Any]] | None = None  # the kind's batch runner


class Batcher:
    def __init__(self, engines: Engines, max_batch: int) -> None:
        self.engines, self.max_batch = engines, max_batch
        self._queue: list[_Job] = []  # shared with the engine thread, under _lock
        self._lock = threading.Lock()
        self._draining = False
        self.batches: list[int] = []  # most tasks decoding at once per run, newest last (metrics, tests)

    async def generate(
        self,
        engine: Any,
        params: Any,
        cancel: threading.Event | None = None,
        run: Callable[[Any, list[Any]], list[Any]] | None = None,
    ) -> Any:
        """The task's output; once `cancel` is set it is dropped from the queue, and the run
        holding it stops when every task in that run is cancelled. `run(engine, batch)`: how a
        batch of this task's kind runs (TaskKind.run_batch; default `engine.generate_batch`)."""
        job = _Job(engine, params, asyncio.get_running_loop().create_future(), cancel or threading.Event(), run)
        with self._lock:
            self._queue.append(job)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await job.done

    async def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    self._queue = [j for j in self._queue if not (j.cancel.is_set() or j.done.done())]
                    if not self._queue:
                        return
                    engine = self._queue[0].engine
                if hasattr(engine, "generate_stream"):
                    await self._stream(engine)
                    continue
                with self._lock:
                    batch = [j for j in self._queue if j.engine is engine][: self.max_batch]
                    self._queue = [j for j in self._queue if j not in batch]
                self._record(len(batch))
                await self._run(engine, batch)
        finally:
            self._draining = False

    def _record(self, size: int) -> None:
        self.batches = (self.batches + [size])[-64:]

    async def _stream(self, engine: Any) -> None:
        loop = asyncio.get_running_loop()
        taken: dict[int, _Job] = {}  # jobs handed to the engine and not yet answered
        self._record(0)  # raised to the most tasks held at once as they arrive

        def arrivals(room: int) -> list[tuple[int, Any]]:  # on the engine thread
            with self._lock:
                self._queue = [j for j in self._queue if not j.cancel.is_set()]  # callers gone
                # Only this engine's tasks at the head of the queue: once another engine's task is
                # first in line, this run takes no more, finishes what it holds, and hands over.
                n = 0
                while n < min(room, len(self._queue)) and self._queue[n].engine is engine:
                    n += 1
                got, self._queue = self._queue[:n], self._queue[n:]
            for j in got:
                taken[id(j)] = j
            self.batches[-1] = max(self.batches[-1], len(taken))
            return [(id(j), j.params) for j in got]

        def deliver(key: int, out: Any) -> None:  # on the engine thread
            job = taken.pop(key)
            loop.call_soon_threadsafe(_settle, job, out)

        try:
            # The run stops (at its next step) only when every task it holds has been cancelled.
            cancel = _Held(lambda: [j.cancel for j in list(taken.values())])
            await self.engines.run(engine.generate_stream, arrivals, deliver, self.max_batch, cancel=cancel)
        except Exception as e:  # an engine failure: every task it held reports it
            _fail(list(taken.values()), e)

    async def _run(self, engine: Any, batch: list[_Job]) -> None:
        run = batch[0].run or _generate_batch  # one engine serves one kind: the batch shares its runner
        try:
            outs = await self.engines.run(
                run, engine, [j.params for j in batch], cancel=AllOf([j.cancel for j in batch])
            )
        except Cancelled as e:
            _fail(batch, e)
            return
        except TrustgenError as e:
            if len(batch) == 1:
                _fail(batch, e)
                return
            for j in batch:  # one bad task: each gets its own answer or error
                await self._run(engine, [j])
            return
        except Exception as e:  # an engine failure: every waiting task reports it
            _fail(batch, e)
            return
        for j, out in zip(batch, outs):
            if not j.done.done():
                j.done.set_result(out)


def _generate_batch(engine: Any, batch: list[Any]) -> list[Any]:
    return engine.generate_batch(batch)


class _Held:
    """Set when the run holds tasks and every one of them is cancelled (read on the engine thread)."""

    def __init__(self, flags: Callable[[], list[threading.Event]]) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        now = self.flags()
        return bool(now) and all(f.is_set() for f in now)


def _settle(job: _Job, out: Any) -> None:
    if job.done.done():
        return
    if isinstance(out, BaseException):
        job.done.set_exception(out)
    else:
        job.done.set_result(out)


def _fail(batch: list[_Job], e: BaseException) -> None:
    for j in batch:
        if not j.done.done():
            j.done.set_exception(e)
