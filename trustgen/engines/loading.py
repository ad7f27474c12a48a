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
