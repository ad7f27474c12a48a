"""One model load at a time per process.

transformers and diffusers build models under context managers that patch torch globally for
the duration of a load (empty-weight initialisation on the meta device, skipped initialisers):
two loads at once on two threads of one process corrupt each other, leaving parameters on the
meta device. A node loads from worker threads (engines, training objectives), so every load takes
this lock.
"""

from __future__ import annotations

import threading

MODEL_LOAD = threading.RLock()


def load_failure(kind: str, name: str, e: BaseException) -> str:
    """One line for a model directory the libraries could not load (their messages can run to
    many lines; the first says what failed)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"cannot load {kind} model {name!r} ({type(e).__name__}): {first[:300]}"
