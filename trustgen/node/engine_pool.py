"""The engines a worker or verifier serves, and the single thread that runs model work.

Model work never runs on the event loop: the gRPC server must keep answering health checks,
votes and joins while a generation runs. One executor thread per node keeps engines (which are
not thread-safe: schedulers hold state) to one task at a time. A run given a cancel event stops
at the engine's next checkpoint once it is set (engines/cancel.py), freeing the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trustgen.engines.cancel import Flag, cancellable
from trustgen.engines.generate import load_engine
from trustgen.engines.kinds import ENGINE_KINDS
from trustgen.errors import ModelError


class Engines:
    def __init__(self, models: dict[str, str], threads: int | None = None) -> None:
        """`models`: the model each task kind is served with (one engine per kind)."""
        self.engines = {kind: load_engine(models[kind], kind, threads=threads) for kind in ENGINE_KINDS}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")

    def for_task(self, kind: str, model_digest: str) -> Any:
        engine = self.engines.get(kind)
        if engine is None:
            raise ModelError(f"unknown task kind {kind!r}")
        if engine.ref.digest != model_digest:
            raise ModelError(f"this node does not serve model {model_digest}")
        return engine

    def served(self) -> dict[str, tuple[str, str]]:
        """kind -> (model digest, model name), as a worker announces it."""
        return {kind: (e.ref.digest, e.ref.name) for kind, e in self.engines.items()}

    async def run(self, fn: Callable[..., Any], *args: Any, cancel: Flag | None = None) -> Any:
        def call() -> Any:
            with cancellable(cancel):
                return fn(*args)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
