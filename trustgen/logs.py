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
    # The utils submodules, which the packages' lazy top-level `logging` attribute points at.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def setup(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
