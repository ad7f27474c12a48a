"""Helpers for tests that run trustgen as a user would."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `trustgen ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "trustgen.cli", *args], capture_output=True, text=True, timeout=timeout, **kw
    )


_CHILD = """
import json, sys
from trustgen.engines.generate import load_engine
from trustgen.engines.params import ImageParams, TextParams
kind, tasks = sys.argv[1], json.loads(sys.argv[2])
engine = load_engine("tiny-" + kind, kind)
cls = TextParams if kind == "text" else ImageParams
print(json.dumps({k: engine.generate(cls(**v)).output_digest for k, v in tasks.items()}))
"""


def digests_in_child(kind: str, tasks: dict) -> dict:
    """Output digests of `tasks` computed in a fresh interpreter (another process)."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, json.dumps(tasks)], capture_output=True, text=True, timeout=180, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])
