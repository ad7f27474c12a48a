"""Calibration of image verification with a held-out split: trajectory checks and pHash regeneration.

Every sample is a random task (prompt from the tiny model's grammar, seed, and a sampler taken in
turn from all the engine supports). An honest float32 worker produces it, and so does each
variation below; the verifier (float32, this machine) replays each result's trajectory with the
model re-run at EVERY step, so one replay gives the distance at each step and any challenge of c
steps can be judged from it without running the model again.

Honest variations: the verifier's own profile (exact), one thread (another profile), weights
perturbed by 1e-4 (a float32 stand-in for another device's rounding), bfloat16. Dishonest ones:
another seed, another sampler, another model, fewer steps, an int8-quantised model, a prompt with
only the foreground colour changed, a replayed output (the previous task's result), one faked
step in the middle (the model output of the step before reused), and half the steps faked.

Thresholds (relative L2 of model outputs; pHash bits) are fitted on the even samples and judged
on the odd ones, with an explicit margin. Votes are measured, not modelled: each pair is judged
by three verifiers with independent beacons, and the majority rate is counted from those votes.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trustgen.engines.params import SCHEDULERS, ImageParams
from trustgen.engines.pixel_pipeline import step_kwargs
from trustgen.engines.trajectory import Replay, Trajectory, TrajectoryError, replay, sampling_model
from trustgen.verifier import policy
from trustgen.verifier.calibrate import (
    COLORS,
    SHAPES,
    _with_threads,
    choose_threshold,
    histogram_png,
    image_engines,
)
from trustgen.verifier.calibrate import wilson as _wilson
from trustgen.verifier.compare import distance
from trustgen.verifier.fingerprints import image_fingerprint
from trustgen.verifier.trajectory import challenge, detection_probability

HONEST = ("same_profile", "threads", "weight_noise_1e-4", "bfloat16")
# The dtype each class claims: a cheater claims float32 (the tighter tolerance) unless it is one.
CLAIMS_OTHER_DTYPE = {"bfloat16"}
MARGIN = 1.0  # tolerance = (1 + MARGIN) x the largest honest distance of the fit split
FLOOR = {"same_dtype": 1e-4, "cross_dtype": 1e-2}  # below these, profiles calibration did not see
BEACON_DRAWS = 2000  # challenges per faked pair to measure detection against the formula


@dataclass
class Pair:
    """One claimed result, replayed with the model at every step."""

    kind: str
    split: str  # "fit" | "heldout"
    structural: str  # "" when layout, noise, chain and decode match within tolerance; else why not
    exact_ok: bool  # noise, every scheduler step and the decoded image bit-identical
    step_rel_l2: list[float]  # per step (empty when structurally rejected before the model ran)
    phash: float  # pHash distance from the verifier's own regeneration (the regenerate method)
    commit: bytes  # stands for the commitment root in the challenge
    faked: int = 0  # steps whose model output the worker faked (partial-fake classes)

    @property
    def honest(self) -> bool:
        return self.kind in HONEST

    @property
    def tol_class(self) -> str:
        return "cross_dtype" if self.kind in CLAIMS_OTHER_DTYPE else "same_dtype"

    def distance(self) -> float:
        return max(self.step_rel_l2, default=math.inf) if not self.structural else math.inf

    def vote(self, beacon: bytes, c: int, tol: float, exact: bool) -> bool:
        if self.structural or (exact and not self.exact_ok):
            return False
        steps = challenge(beacon, self.commit, "", len(self.step_rel_l2), c)
        return all((self.step_rel_l2[j] == 0.0) if exact else self.step_rel_l2[j] <= tol for j in steps)


def sample_faking(engine: Any, p: ImageParams, faked: set[int]) -> tuple[np.ndarray, Trajectory]:
    """A cheating worker: at the `faked` steps it skips the model and reuses the previous step's
    output, doing everything else honestly (so noise, sampler chain and decode all check out)."""
    pipe = engine.pipe
    model = sampling_model(pipe)
    engine._set_scheduler(p.scheduler)
    sched, device = pipe.scheduler, engine.profile.device
    gen = torch.Generator(device="cpu").manual_seed(p.seed)
    with torch.inference_mode():
        if model.timesteps_first:
            sched.set_timesteps(p.steps, device=device)
        x = model.initial_latents(pipe, p, gen, pipe.unet.dtype).to(device)
        if not model.timesteps_first:
            sched.set_timesteps(p.steps, device=device)
        ctx = model.context(pipe, p)
        extra = step_kwargs(sched, gen)
        traj = Trajectory([x.cpu()], [])
        eps = None
        for j, t in enumerate(sched.timesteps):
            if j in faked and eps is not None:
                sched.scale_model_input(x, t)
            else:
                eps = model.model_output(pipe, x, t, ctx, p)
            assert eps is not None
            x = sched.step(eps, t, x, **extra).prev_sample
            traj.outputs.append(eps.cpu())
            traj.latents.append(x.cpu())
        return model.decode(pipe, x), traj


def _measure(verifier: Any, p: ImageParams, pixels: np.ndarray, traj: Trajectory) -> tuple[str, bool, list[float]]:
    """(structural rejection or "", all exact, per-step relative L2): the cheap replay first (no
    model), the model at every step only for claims that pass it."""
    try:
        cheap: Replay = replay(verifier, p, traj, set())
    except TrajectoryError:
        return "layout", False, []
    same_pixels = cheap.pixels.shape == pixels.shape and bool(np.array_equal(cheap.pixels, pixels))
    exact_ok = cheap.noise_exact and cheap.chain_exact and same_pixels
    if not cheap.noise_exact:
        return "noise", False, []
    if cheap.chain_max_rel_l2 > policy.TRAJ_CHAIN_REL_L2:
        return "chain", False, []
    if not same_pixels and (
        cheap.pixels.shape != pixels.shape
        or distance(image_fingerprint(cheap.pixels), image_fingerprint(pixels)) > policy.PHASH_THRESHOLD
    ):
        return "decode", False, []
    full = replay(verifier, p, traj, set(range(traj.steps)))
    return "", exact_ok, [s.rel_l2 for s in full.steps]


def collect(
    samples: int,
    model: str = "tiny-image",
    steps: int = 20,
    seed: int = 0,
    on_sample: Callable[[list[Pair]], None] | None = None,
) -> list[Pair]:
    """Every pair of `samples` tasks; `on_sample` sees each task's pairs as they are measured
    (long runs save them as they go)."""
    rng = random.Random(seed)
    e = image_engines(model)
    fp32, bf16, noisy, other, quant = e.fp32, e.bf16, e.noisy, e.other, e.quant
    pairs: list[Pair] = []
    faked_sets = {"faked_middle_step": {steps // 2}, "faked_half_steps": set(range(1, steps, 2))}
    previous: tuple[np.ndarray, Trajectory] | None = None
    for i in range(samples):
        fg, bg = rng.sample(COLORS, 2)
        prompt = f"a {rng.choice(['small', 'large'])} {fg} {rng.choice(SHAPES)} on a {bg} background"
        p = ImageParams(
            prompt=prompt, seed=rng.randrange(2**31), steps=steps, scheduler=SCHEDULERS[i % len(SCHEDULERS)]
        )
        split = "fit" if i % 2 == 0 else "heldout"

        def variant(**kw: Any) -> ImageParams:
            return ImageParams(**{**p.to_dict(), **kw})

        def run(engine: Any, q: ImageParams = p) -> tuple[np.ndarray, Trajectory]:
            o = engine.generate(q, record=True)
            return o.pixels, o.trajectory

        own = run(fp32)
        ref_fp = image_fingerprint(own[0])
        other_sched = SCHEDULERS[(i + 1) % len(SCHEDULERS)]
        fg2 = rng.choice([c for c in COLORS if c != fg])
        claims: dict[str, tuple[np.ndarray, Trajectory]] = {
            "same_profile": own,
            "threads": _with_threads(1, lambda: run(fp32)),
            "weight_noise_1e-4": run(noisy),
            "bfloat16": run(bf16),
            "other_seed": run(fp32, variant(seed=p.seed + 1)),
            "other_sampler": run(fp32, variant(scheduler=other_sched)),
            "other_model": run(other),
            "fewer_steps": run(fp32, variant(steps=max(1, steps // 4))),
            "quantised_model": run(quant),
            "colour_only_prompt": run(fp32, variant(prompt=prompt.replace(fg, fg2, 1))),
            "faked_middle_step": sample_faking(fp32, p, faked_sets["faked_middle_step"]),
            "faked_half_steps": sample_faking(fp32, p, faked_sets["faked_half_steps"]),
        }
        if previous is not None:
            claims["replayed_output"] = previous
        previous = own
        start = len(pairs)
        for kind, (pixels, traj) in claims.items():
            structural, exact_ok, per_step = _measure(fp32, p, pixels, traj)
            ph = distance(ref_fp, image_fingerprint(pixels)) if pixels.shape == own[0].shape else math.inf
            n_faked = len(faked_sets.get(kind, ()))
            pairs.append(Pair(kind, split, structural, exact_ok, per_step, ph, os.urandom(32), n_faked))
        if on_sample is not None:
            on_sample(pairs[start:])
    return pairs


def _pooled(flags: list[bool]) -> dict[str, Any]:
    k, n = sum(flags), len(flags)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": _wilson(k, n)}


def _fit(pairs: list[Pair]) -> dict[str, float]:
    tol = {}
    for cls in ("same_dtype", "cross_dtype"):
        # Same-profile pairs are judged exactly and do not set a tolerance.
        top = max(
            (d for q in pairs if q.honest and q.kind != "same_profile" and q.tol_class == cls for d in q.step_rel_l2),
            default=0.0,
        )
        tol[cls] = max(FLOOR[cls], (1 + MARGIN) * top)
    return tol


def _rates(pairs: list[Pair], judge: Any) -> dict[str, Any]:
    """Votes of three verifiers (independent beacons) per pair, counted per class."""
    out: dict[str, Any] = {}
    by_kind: dict[str, list[Pair]] = defaultdict(list)
    for q in pairs:
        by_kind[q.kind].append(q)
    for kind, qs in by_kind.items():
        votes = [[judge(q, os.urandom(32)) for _ in range(3)] for q in qs]
        single = sum(v[0] for v in votes)
        major = sum(sum(v) >= 2 for v in votes)
        n = len(qs)
        out[kind] = {
            "honest": kind in HONEST,
            "n": n,
            "accept_rate": single / n,
            "accept_ci95": _wilson(single, n),
            "majority3_accept_rate": major / n,
            "majority3_accept_ci95": _wilson(major, n),
        }
    return out


def _detection(pairs: list[Pair], kind: str, checks: int) -> dict[str, Any]:
    """Measured rejection rate of a partial fake under BEACON_DRAWS independent challenges per
    pair (judged exactly: the claim is of the verifier's profile), against the formula averaged
    over the pairs (samplers differ in step count: PNDM adds warm-up steps)."""
    qs = [q for q in pairs if q.kind == kind and not q.structural]
    caught = sum(not q.vote(os.urandom(32), checks, 0.0, exact=True) for q in qs for _ in range(BEACON_DRAWS))
    n = len(qs) * BEACON_DRAWS
    formula = sum(detection_probability(len(q.step_rel_l2), q.faked, checks) for q in qs) / len(qs) if qs else None
    lo, hi = _wilson(caught, n)
    return {
        "formula": formula,
        "measured": caught / n if n else None,
        "measured_ci95": (lo, hi),
        "formula_within_ci": formula is not None and lo <= formula <= hi,
        "draws": n,
    }


def report(pairs: list[Pair], checks: int, steps: int) -> dict[str, Any]:
    fit = [q for q in pairs if q.split == "fit"]
    held = [q for q in pairs if q.split == "heldout"]
    tol = _fit(fit)

    def traj_judge(q: Pair, beacon: bytes) -> bool:
        return q.vote(beacon, checks, tol[q.tol_class], exact=q.kind == "same_profile")

    def exact_judge(q: Pair, beacon: bytes) -> bool:  # a claim of the verifier's own profile
        return q.vote(beacon, checks, 0.0, exact=True)

    def bf16_claim_judge(q: Pair, beacon: bytes) -> bool:  # a cheater claiming bfloat16's tolerance
        return q.vote(beacon, checks, tol["cross_dtype"], exact=False)

    other_profiles = set(HONEST) - {"same_profile"}

    honest_fit = [q.phash for q in fit if q.honest]
    phash_t = choose_threshold(honest_fit, [], 192)

    def phash_judge(q: Pair, beacon: bytes) -> bool:
        return q.phash <= phash_t

    held_honest = [d for q in held if q.honest and q.kind != "same_profile" for d in q.step_rel_l2]
    half_faked = len(range(1, steps, 2))
    return {
        "kind": "image-trajectory",
        "samples": sum(q.kind == "same_profile" for q in pairs),
        "steps": steps,
        "checks": checks,
        "margin": MARGIN,
        "fitted_tolerance": tol,
        "phash_threshold": phash_t,
        "honest_pairs": sum(q.honest for q in pairs),
        "honest_step_comparisons": sum(len(q.step_rel_l2) for q in pairs if q.honest),
        "heldout_max_honest_rel_l2": {
            cls: max(
                (
                    d
                    for q in held
                    if q.honest and q.kind != "same_profile" and q.tol_class == cls
                    for d in q.step_rel_l2
                ),
                default=None,
            )
            for cls in ("same_dtype", "cross_dtype")
        },
        "heldout_honest_step_comparisons": len(held_honest),
        # Each honest step comparison judged alone against its class's tolerance: the per-step
        # false-reject rate the vote's rate rests on (a vote checks c of them).
        "heldout_step_false_reject": _pooled(
            [d > tol[q.tol_class] for q in held if q.honest and q.kind != "same_profile" for d in q.step_rel_l2]
        ),
        "heldout_pooled": {
            "trajectory_honest_other_profiles_false_reject": _pooled(
                [not traj_judge(q, os.urandom(32)) for q in held if q.kind in other_profiles]
            ),
            "trajectory_exact_full_fakes_false_accept": _pooled(
                [exact_judge(q, os.urandom(32)) for q in held if not q.honest and not q.faked]
            ),
            "phash_honest_false_reject": _pooled([not phash_judge(q, b"") for q in held if q.honest]),
        },
        "heldout": {
            "trajectory": _rates(held, traj_judge),
            "trajectory_exact": _rates([q for q in held if q.kind not in other_profiles], exact_judge),
            "trajectory_claiming_bfloat16": _rates([q for q in held if not q.honest], bf16_claim_judge),
            "phash_regenerate": _rates(held, phash_judge),
        },
        "structural_rejections": {
            k: sorted({q.structural for q in pairs if q.kind == k and q.structural})
            for k in sorted({q.kind for q in pairs})
        },
        "distances": {
            k: {
                "honest": k in HONEST,
                "rel_l2_max_per_pair": [
                    q.distance() if math.isfinite(q.distance()) else None for q in pairs if q.kind == k
                ],
                "phash": [q.phash if math.isfinite(q.phash) else None for q in pairs if q.kind == k],
            }
            for k in sorted({q.kind for q in pairs})
        },
        "detection": {
            **{kind: _detection(pairs, kind, checks) for kind in ("faked_middle_step", "faked_half_steps")},
            "formula_table": {
                f"faked={f}": {f"c={c}": round(detection_probability(steps, f, c), 4) for c in (1, 2, 4, 8)}
                for f in sorted({1, 2, max(1, steps // 4), half_faked, steps})
            },
        },
    }


def calibrate_trajectory(
    samples: int, model: str = "tiny-image", steps: int = 20, seed: int = 0, checks: int = 2
) -> dict[str, Any]:
    return report(collect(samples, model, steps, seed), checks, steps)


def _log_bin(d: float | None) -> int:
    """Relative L2 on a log scale: bin = 10 log10(d) + 80 (0: d <= 1e-8 or exact; 80: >= 1 or rejected)."""
    if d is None or not math.isfinite(d):
        return 80
    return 0 if d <= 1e-8 else int(min(80, max(0, round(10 * math.log10(d) + 80))))


def write_report(rep: dict[str, Any], out: pathlib.Path) -> dict[str, str]:
    """The JSON report and one honest-vs-dishonest histogram per method."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "calibration-image-trajectory.json")}
    pathlib.Path(files["json"]).write_text(json.dumps(rep, indent=1) + "\n")
    dist = rep["distances"]
    honest = [d for v in dist.values() if v["honest"] for d in v["rel_l2_max_per_pair"]]
    dishonest = [d for v in dist.values() if not v["honest"] for d in v["rel_l2_max_per_pair"]]
    files["trajectory_png"] = str(out / "calibration-image-trajectory.png")
    histogram_png(
        pathlib.Path(files["trajectory_png"]),
        [_log_bin(d) for d in honest],
        [_log_bin(d) for d in dishonest],
        _log_bin(rep["fitted_tolerance"]["cross_dtype"]),
        80,
        "trajectory: 10 log10(max rel. L2) + 80 (80 = rejected before the model)",
    )
    ph_h = [min(96, d if d is not None else 96) for v in dist.values() if v["honest"] for d in v["phash"]]
    ph_d = [min(96, d if d is not None else 96) for v in dist.values() if not v["honest"] for d in v["phash"]]
    files["phash_png"] = str(out / "calibration-image-phash-heldout.png")
    histogram_png(pathlib.Path(files["phash_png"]), ph_h, ph_d, rep["phash_threshold"], 96, "regenerate: pHash bits")
    return files
