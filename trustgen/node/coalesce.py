"""Calls on the engine thread that arrive while it is busy run together, as one batch, next time.

No timer forms a batch: the first call runs at once, and whatever arrives during a run (up to
`max_batch` calls with the same key) is the next batch. `run_batch(key, items)` answers each item
in order; when it raises, each item of that batch is run again alone, so one bad item cannot take
the others' answers with it. A verifier uses this to check concurrent results in shared prefill
passes (the answers are those of checking each alone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trustgen.node.engine_pool import Engines


@dataclass
class _Call:
    key: Any
    item: Any
    done: asyncio.Future[Any]


class Coalescer:
    def __init__(self, engines: Engines, run_batch: Callable[[Any, list[Any]], list[Any]], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.engines, self.run_batch, self.max_batch = engines, run_batch, max_batch
        self._queue: list[_Call] = []
        self._draining = False
        self.batches: list[int] = []  # sizes of the batches run, newest last (metrics and tests)

    async def submit(self, key: Any, item: Any) -> Any:
        call = _Call(key, item, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await call.done

    async def _drain(self) -> None:
        try:
            while self._queue:
                key = self._queue[0].key
                batch = [c for c in self._queue if c.key is key][: self.max_batch]
                self._queue = [c for c in self._queue if c not in batch]
                self.batches = (self.batches + [len(batch)])[-64:]
                await self._run(key, batch)
        finally:
            self._draining = False

    async def _run(self, key: Any, batch: list[_Call]) -> None:
        try:
            outs = await self.engines.run(self.run_batch, key, [c.item for c in batch])
            if len(outs) != len(batch):
                raise RuntimeError(f"{len(outs)} answers for {len(batch)} calls")
        except Exception as e:
            if len(batch) == 1:
                if not batch[0].done.done():
                    batch[0].done.set_exception(e)
                return
            for c in batch:  # each alone: its own answer or its own error
                await self._run(key, [c])
            return
        for c, out in zip(batch, outs):
            if not c.done.done():
                c.done.set_result(out)
