"""Engines of a served model in other dtypes, for checking claims made under them.

A verifier serves each model in one dtype (float32 by default), but a worker may compute in
another; such a claim is checked under the dtype it names (verifier/policy.py says which dtypes
are accepted and how each is checked). The copy in that dtype is loaded on first use, through the
same constructor a worker uses (so its buffers and rounding are the worker's, not a cast of the
verifier's weights), and kept in a small LRU: at most one copy per (model, dtype), at most
`capacity` copies in all, the least recently used dropped first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

DEFAULT_CAPACITY = 2  # extra engines kept (SmolLM2 in bfloat16: ~270 MB each)

Loader = Callable[[Any, str], Any]  # (base engine, dtype) -> an engine of the same model in `dtype`


def load_like(base: Any, dtype: str) -> Any:
    """A new engine of `base`'s class, model, device, thread count and determinism, in `dtype`."""
    prof = base.profile
    return type(base)(base.ref, prof.device, dtype, prof.deterministic, prof.threads)


class DtypeVariants:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, load: Loader = load_like) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity, self._load = capacity, load
        self._engines: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # engines loaded so far (metrics and tests)

    def get(self, base: Any, dtype: str) -> Any:
        """`base` itself when it runs in `dtype`; otherwise the kept copy, loaded on first use."""
        if base.profile.dtype == dtype:
            return base
        prof = base.profile
        key = (base.ref.digest, str(base.ref.path), prof.device, prof.threads, prof.deterministic, dtype)
        with self._lock:
            hit = self._engines.get(key)
            if hit is not None:
                self._engines.move_to_end(key)
                return hit
            engine = self._load(base, dtype)
            self.loads += 1
            self._engines[key] = engine
            while len(self._engines) > self.capacity:
                self._engines.popitem(last=False)
            return engine

    def kept(self) -> list[tuple[str, str]]:
        """(model digest, dtype) of every kept copy, least recently used first."""
        with self._lock:
            return [(k[0], k[-1]) for k in self._engines]
