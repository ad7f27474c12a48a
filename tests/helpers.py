"""Helpers for tests that run trustgen as a user would."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `trustgen ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "trustgen.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)
