"""Probes of SPSA variants that keep the protocol (one shared seeded direction per step, one
quantised byte per trainer-step), from a fresh initialisation of tiny-text's shape: held-out
loss against steps and CPU seconds. Of these only `power:P` is in the library (direction kind
`tensor-power`, training/directions.py); this script is how every variant's figure was measured
(docs/benchmarks.md, issue 12 sections).

    python bench/bench_spsa_variants.py full 5e-4 1e-3 0.05 8 30      # mode lr eps scale batch budget
    python bench/bench_spsa_variants.py power:0.25 1e-3 1e-3 0.05 8 30 0.9   # ... momentum beta
    python bench/bench_spsa_variants.py --quick                        # every mode for 5 CPU-s

Modes: `full` (the library's direction), `normfull` (each tensor's share of the direction scaled
by 1/sqrt(numel)), `tensor` (one seeded tensor per step, its step divided by its numel),
`power:P` (each tensor's share scaled by numel^-P, renormalised to the full draw's expected norm:
the library's `tensor-power`), `lowrank:R:K` (each matrix perturbed by U V^T / sqrt(R), U drawn
every step, V every K steps (LOZO's lazy subspace); vectors dense). An optional 7th argument is
a momentum beta on the applied step (m = beta m + (1 - beta) c z; theta -= m).
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

from trustgen.training import data, directions, spsa  # noqa: E402
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
    if mode.startswith("power:"):
        w = directions.tensor_weights(params, float(mode.split(":")[1]))
        return {n: torch.randn(params[n].shape, generator=g) * w[n] for n in names}, 1.0
    if mode.startswith("lowrank:"):
        r, k = (int(x) for x in mode.split(":")[1:3])
        vseed = hashlib.sha256(b"v" + job_id + struct.pack(">Q", t // k)).digest()[:8]
        gv = torch.Generator().manual_seed(int.from_bytes(vseed, "big") >> 1)  # V fixed for K steps
        out = {}
        for n in names:
            shape = params[n].shape
            if len(shape) == 2:
                u = torch.randn(shape[0], r, generator=g)
                v = torch.randn(shape[1], r, generator=gv)
                out[n] = (u @ v.T) / r**0.5
            else:
                out[n] = torch.randn(shape, generator=g)
        return out, 1.0
    raise SystemExit(f"unknown mode {mode}")


def probe(
    mode: str, lr: float, eps: float, scale: float, batch: int, budget: float, every: float, beta: float = 0.0
) -> dict[str, Any]:
    spec = job("spsa", {"lr": lr, "scale": scale, "batch": batch, "eps": eps}, model={"init": "fresh"})
    apply_profile(spec)
    obj = load_objective(spec)
    params = obj.initial()
    mom = {n: torch.zeros_like(p) for n, p in params.items()} if beta else None
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
                if mom is None:
                    params[n].add_(z[n], alpha=-lr * scale * q * w)
                else:
                    mom[n].mul_(beta).add_(z[n], alpha=lr * scale * q * w * (1 - beta))
                    params[n].sub_(mom[n])
        used += time.process_time() - c0
        t += 1
        if used >= nxt:
            nxt += every
            curve.append((t, round(used, 1), round(obj.eval_loss(params), 4)))
    curve.append((t, round(used, 1), round(obj.eval_loss(params), 4)))
    return {
        "mode": mode,
        "config": {"lr": lr, "eps": eps, "scale": scale, "batch": batch, "beta": beta},
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
    beta = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    print(json.dumps(probe(mode, float(lr), float(eps), float(scale), int(batch), float(budget), 10.0, beta)))


if __name__ == "__main__":
    main()
