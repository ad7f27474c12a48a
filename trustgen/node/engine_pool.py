"""The engines a worker or verifier serves, and the single thread that runs model work.

Model work never runs on the event loop: the gRPC server must keep answering health checks,
votes and joins while a generation runs. One executor thread per node keeps engines (which are
not thread-safe: schedulers hold state) to one task at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trustgen.engines.generate import load_engine
from trustgen.engines.params import ImageParams, TextParams
from trustgen.errors import ModelError


class Engines:
    def __init__(self, text_model: str, image_model: str, threads: int | None = None) -> None:
        self.text = load_engine(text_model, "text", threads=threads)
        self.image = load_engine(image_model, "image", threads=threads)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")

    def for_task(self, kind: str, model_digest: str) -> Any:
        engine = self.text if kind == "text" else self.image if kind == "image" else None
        if engine is None:
            raise ModelError(f"unknown task kind {kind!r}")
        if engine.ref.digest != model_digest:
            raise ModelError(f"this node does not serve model {model_digest}")
        return engine

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def task_params(kind: str, params: dict[str, Any]) -> TextParams | ImageParams:
    """Task parameters from an untrusted dict (UsageError when invalid)."""
    from trustgen.errors import UsageError

    cls = TextParams if kind == "text" else ImageParams
    try:
        return cls(**params)
    except TypeError as e:
        raise UsageError(f"bad task parameters: {e}") from None
