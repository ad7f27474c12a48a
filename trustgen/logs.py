"""Logging set-up shared by the CLI and the daemon; third-party chatter is kept at errors.

A node's log is bounded two ways: the file rotates at a size cap (`setup`), and what a peer
causes (bad requests, refused entries) is logged through a `PeerLog`, one line per peer per
interval with a count of what it held back, so a hostile peer cannot grow the log faster than a
line a minute whatever it sends.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pathlib
import time
import warnings
from collections import OrderedDict


def quiet_libraries() -> None:
    """Silence progress bars and advisory warnings of the ML libraries (they go to stderr and
    would interleave with --json output)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    # The utils submodules, which the packages' lazy top-level `logging` attribute points at.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def setup(level: str = "INFO", path: pathlib.Path | None = None, max_bytes: int = 0, backups: int = 3) -> None:
    """Log to stderr, or to `path` rotated at `max_bytes` keeping `backups` old files."""
    if path is None:
        logging.basicConfig(level=level, format=FORMAT)
        return
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    logging.basicConfig(level=level, format=FORMAT, handlers=[handler])


class PeerLog:
    """Warnings about what peers sent, at most one line per peer per `every_s` (with the number of
    lines held back since), over a bounded table of peers."""

    MAX_PEERS = 4096

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, level: int = logging.WARNING) -> None:
        self.logger, self.every_s, self.level = logger, every_s, level
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()  # peer -> (last line, held back)

    def warning(self, peer: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last, held = self._last.pop(peer, (float("-inf"), 0))
        if now - last >= self.every_s:
            more = f" ({held} more from this peer since the last line)" if held else ""
            self.logger.log(self.level, msg + "%s", *args, more)
            last, held = now, 0
        else:
            held += 1
        self._last[peer] = (last, held)
        while len(self._last) > self.MAX_PEERS:
            self._last.popitem(last=False)
