"""Logging set-up shared by the CLI and the daemon; third-party chatter is kept at errors."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Silence progress bars and advisory warnings of the ML libraries (they go to stderr and
    would interleave with --json output)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import diffusers
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.logging.set_verbosity_error()
    diffusers.logging.disable_progress_bar()


def setup(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
