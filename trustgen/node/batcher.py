"""A worker's batcher: tasks that arrive while the engine thread is busy run together next time.

No timer decides a batch: the first task runs at once; whatever arrives during a run (up to
`max_batch` tasks for one engine) forms the next batch. Engines' batches are invariant (a task's
output is the one it gets alone), so batching changes throughput only, never a Result. A batch
that fails on a bad task is re-run task by task, so each task gets its own answer or error.
"""

from __future__ import annotations

import asyncio
import threading
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


class Batcher:
    def __init__(self, engines: Engines, max_batch: int) -> None:
        self.engines, self.max_batch = engines, max_batch
        self._queue: list[_Job] = []
        self._draining = False
        self.batches: list[int] = []  # sizes of the batches run, newest last (metrics and tests)

    async def generate(self, engine: Any, params: Any, cancel: threading.Event | None = None) -> Any:
        """The task's output; once `cancel` is set it is dropped from the queue, and its batch
        stops when every task in it is cancelled."""
        job = _Job(engine, params, asyncio.get_running_loop().create_future(), cancel or threading.Event())
        self._queue.append(job)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await job.done

    async def _drain(self) -> None:
        try:
            while self._queue:
                self._queue = [j for j in self._queue if not (j.cancel.is_set() or j.done.done())]
                if not self._queue:
                    break
                engine = self._queue[0].engine
                batch = [j for j in self._queue if j.engine is engine][: self.max_batch]
                self._queue = [j for j in self._queue if j not in batch]
                self.batches = (self.batches + [len(batch)])[-64:]
                await self._run(engine, batch)
        finally:
            self._draining = False

    async def _run(self, engine: Any, batch: list[_Job]) -> None:
        try:
            outs = await self.engines.run(
                engine.generate_batch, [j.params for j in batch], cancel=AllOf([j.cancel for j in batch])
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


def _fail(batch: list[_Job], e: BaseException) -> None:
    for j in batch:
        if not j.done.done():
            j.done.set_exception(e)
