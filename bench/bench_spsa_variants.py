"""Probes of SPSA variants that keep the protocol (one shared seeded direction per step, one
quantised byte per trainer-step), from a fresh initialisation of tiny-text's shape: held-out
loss against steps and CPU seconds. The variants are not in the library (none earned a spec
field; docs/benchmarks.md, issue 12 section); this script is how their figures were measured.

    python bench/bench_spsa_variants.py full 5e-4 1e-3 0.05 8 30      # mode lr eps scale batch budget
    python bench/bench_spsa_variants.py --quick                        # every mode for 5 CPU-s

Modes: `full` (the library's direction), `normfull` (each tensor's share of the direction scaled
by 1/sqrt(numel)), `tensor` (one seeded tensor per step, its step divided by its numel).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from bench_training import job, trainers  # noqa: E402

from trustgen.training import data, spsa  # noqa: E402
from trustgen.training.objectives import load_objective  # noqa: E402
from trustgen.training.profile import apply_profile  # noqa: E402


def direction(mode: str, job_id: bytes, t: int, params: dict[str, torch.Tensor]) -> tuple[dict, float]:
    """z_t for the mode, and the factor its step is multiplied by."""
    names = sorted(params)
    seed = int.from_bytes(hashlib.sha256(b"z" + job_id + struct.pack(">Q", t)).digest()[:8], "big") >> 1
    g = torch.Generator().manual_seed(seed)
    if mode == "full":
        return {n: torch.randn(params[n].shape, generator=g) for n in names}, 1.0
    if mode == "normfull":
        return {n: torch.randn(params[n].shape, generator=g) / params[n].numel() ** 0.5 for n in names}, 1.0
    if mode == "tensor":
        n = names[int(torch.randint(len(names), (1,), generator=g))]
        return {n: torch.randn(params[n].shape, generator=g)}, 1.0 / params[n].numel()
    raise SystemExit(f"unknown mode {mode}")


def probe(mode: str, lr: float, eps: float, scale: float, batch: int, budget: float, every: float) -> dict[str, Any]:
    spec = job("spsa", {"lr": lr, "scale": scale, "batch": batch, "eps": eps}, model={"init": "fresh"})
    apply_profile(spec)
    obj = load_objective(spec)
    params = obj.initial()
    curve = [(0, 0.0, obj.eval_loss(params))]
    used, t, sat, zero, nxt = 0.0, 0, 0, 0, every
    while used < budget:
        c0 = time.process_time()
        z, w = direction(mode, spec.id, t, params)
        idx = data.select(spec.id, t, trainers(1)[0], batch, obj.split.train)
        with torch.no_grad():
            plus = {**params, **{n: params[n] + eps * z[n] for n in z}}
            minus = {**params, **{n: params[n] - eps * z[n] for n in z}}
            lp = obj.sample_losses(plus, idx).double().tolist()
            lm = obj.sample_losses(minus, idx).double().tolist()
            q = spsa.scalar([spsa.finite((a - b) / (2 * eps)) for a, b in zip(lp, lm)], scale)
            sat += abs(q) == spsa.QMAX
            zero += q == 0
            for n in z:
                params[n].add_(z[n], alpha=-lr * scale * q * w)
        used += time.process_time() - c0
        t += 1
        if used >= nxt:
            nxt += every
            curve.append((t, round(used, 1), round(obj.eval_loss(params), 4)))
    curve.append((t, round(used, 1), round(obj.eval_loss(params), 4)))
    return {
        "mode": mode,
        "config": {"lr": lr, "eps": eps, "scale": scale, "batch": batch},
        "change": curve[-1][2] / curve[0][2] - 1,
        "saturated": sat / t,
        "zero": zero / t,
        "curve_step_cpu_loss": curve,
    }


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--quick"]:
        runs = [("full", 5e-4, 1e-3, 0.05, 8), ("normfull", 0.1, 1e-3, 0.01, 8), ("tensor", 4.0, 1e-3, 0.01, 8)]
        for mode, lr, eps, scale, batch in runs:
            print(json.dumps(probe(mode, lr, eps, scale, batch, 5.0, 5.0)), flush=True)
        return
    mode, lr, eps, scale, batch, budget = sys.argv[1:7]
    print(json.dumps(probe(mode, float(lr), float(eps), float(scale), int(batch), float(budget), 10.0)))


if __name__ == "__main__":
    main()
