"""Shared fixtures. Models are embedded; nothing may reach a hub."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_engine():
    from trustgen.engines.generate import load_engine

    return load_engine("tiny-text", "text")


@pytest.fixture(scope="session")
def image_engine():
    from trustgen.engines.generate import load_engine

    return load_engine("tiny-image", "image")


# -- torch's process-wide flags ----------------------------------------------------------------------
# Engines and determinism tests set torch's global flags (deterministic algorithms, TF32, thread
# count...). A test that changes them must not change the numerics of the tests after it, so each
# test's flags are put back as they were before it. Suites that never import torch do not pay for
# it: a test that imports torch first is compared with the flags torch had right after import.

_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"
_at_import: dict[str, Any] = {}


def _torch_flags(torch: ModuleType) -> dict[str, Any]:
    m, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32),
        "matmul": (m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction),
        "env": os.environ.get(_CUBLAS),
    }


def _set_torch_flags(torch: ModuleType, f: dict[str, Any]) -> None:
    m, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    mode, warn_only = f["deterministic"]
    torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    torch.set_num_threads(f["threads"])
    torch.set_default_dtype(f["default_dtype"])
    torch.set_float32_matmul_precision(f["matmul_precision"])
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = f["cudnn"]
    m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction = f["matmul"]
    if f["env"] is None:
        os.environ.pop(_CUBLAS, None)
    else:
        os.environ[_CUBLAS] = f["env"]


class _TorchImportWatch(importlib.abc.MetaPathFinder):
    """Records torch's flags the moment its import completes, then steps aside."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _at_import.update(_torch_flags(module))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "torch" in sys.modules:
    _at_import.update(_torch_flags(sys.modules["torch"]))
else:
    sys.meta_path.insert(0, _TorchImportWatch())


@pytest.fixture(autouse=True)
def restore_torch_flags() -> Iterator[None]:
    torch = sys.modules.get("torch")
    before = _torch_flags(torch) if torch is not None else None
    env = os.environ.get(_CUBLAS)
    yield
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if before is None:  # imported during this test: before it, torch would have had its import-time flags
        before = dict(_at_import, env=env)
    if _torch_flags(torch) != before:
        _set_torch_flags(torch, before)
