"""The execution profile a training process runs under, set from the spec and nothing else."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from trustgen.engines.determinism import ExecutionProfile, configure
from trustgen.training.spec import JobSpec


def apply_profile(spec: JobSpec, threads: int | None = None) -> ExecutionProfile:
    """Configure this process as the spec says (or with another thread count, for a replay that
    wants to compare across profiles) and return the profile it got."""
    p = spec.section("profile")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    prof = configure(p["device"], p["deterministic"], threads or p["threads"], "float32")
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


def profile_dict(prof: ExecutionProfile) -> dict[str, Any]:
    return prof.to_dict()


def same_numerics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("device_name", "dtype", "threads", "deterministic", "versions")
    return all(a.get(k) == b.get(k) for k in keys)
