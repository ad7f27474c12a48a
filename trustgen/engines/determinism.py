"""Controlled determinism: one place that sets, and reports, everything that can make two runs of
the same task differ.

`configure()` must run before CUDA initialises (cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, at
handle creation), so engines call it before they touch a device. The returned `ExecutionProfile`
travels with every output: equal profiles mean bit-equal outputs are expected; different profiles
are compared with LSH tolerance by verifiers.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

CUBLAS_WORKSPACE = ":4096:8"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExecutionProfile:
    """What an output was computed with; recorded in every result."""

    device: str
    device_name: str
    dtype: str
    threads: int
    deterministic: bool
    flags: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_numerics(self, other: ExecutionProfile) -> bool:
        """True when bit-identical outputs are expected between the two profiles (the text
        engine's batching mode is part of its numerics: packed and serial differ by ~1e-6)."""
        mine = (
            self.device_name,
            self.dtype,
            self.threads,
            self.deterministic,
            self.versions,
            self.flags.get("batching"),
        )
        return mine == (
            other.device_name,
            other.dtype,
            other.threads,
            other.deterministic,
            other.versions,
            other.flags.get("batching"),
        )


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(_DTYPES)}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    out = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def configure(
    device: str = "cpu", deterministic: bool = True, threads: int | None = None, dtype: str = "float32"
) -> ExecutionProfile:
    """Apply the determinism settings for `device` and return the profile they give.

    With deterministic=False the flags are relaxed (TF32 allowed, cuDNN autotuning on,
    non-deterministic kernels allowed); the benchmark uses that to price determinism.
    """
    if deterministic:
        # Must be in the environment before the first cuBLAS handle is created.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    dev = resolve_device(device)
    resolve_dtype(dtype)
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = not deterministic
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = not deterministic
    torch.set_float32_matmul_precision("highest" if deterministic else "high")

    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = f"cpu:{platform.machine()}"
    flags = {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""),
    }
    return ExecutionProfile(
        device=dev.type,
        device_name=device_name,
        dtype=dtype,
        threads=torch.get_num_threads(),
        deterministic=deterministic,
        flags=flags,
        versions=_versions(),
    )
