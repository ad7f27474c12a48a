"""The execution profile a training process runs under, set from the spec and nothing else."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from trustgen.engines.determinism import ExecutionProfile, configure
from trustgen.errors import UsageError
from trustgen.training.spec import SECTIONS, JobSpec


def apply_profile(spec: JobSpec, threads: int | None = None) -> ExecutionProfile:
    """Configure this process as the spec says (or with another thread count, for a replay that
    wants to compare across profiles) and return the profile it got."""
    p = spec.section("profile")
    if threads:  # a replay's --threads (0 or None: the job's), bounded like the spec's own count
        SECTIONS["profile"]["threads"].check("--threads", threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        prof = configure(p["device"], p["deterministic"], threads or p["threads"], "float32")
    except (ValueError, RuntimeError, AssertionError) as e:
        # The device a spec names may not exist here: `cuda` without CUDA (ValueError), `cuda:x`
        # (torch.device's RuntimeError), a CUDA-less torch build (AssertionError).
        raise UsageError(f"profile.device {p['device']!r} cannot be used here ({e})") from None
    if prof.device != "cpu":
        # The objectives keep their tensors on the CPU; computing there while the profile claimed a
        # GPU would record a profile the numbers did not come from.
        raise UsageError(
            f"profile.device {p['device']!r} cannot be used here (training runs on the CPU in this version)"
        )
    # transformers warns per call about attention masks and loss types; training windows are
    # never padded, so the warnings are noise in a trainer's log.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return replace(prof, dtype=p["dtype"])
