"""Replay a run from its signed job and updates alone, and spot-check single steps.

`replay` recomputes every checkpoint the run recorded and compares digests (and, unless told
not to, held-out losses); it names the first step, round or trainer where the recomputation
parts from the record. SPSA replay needs no forward pass: it redraws each step's direction
and applies the signed bytes. Local-SGD replay either re-executes every trainer's inner steps
(`full`, which names the first diverging inner state) or trusts the delta blobs and checks the
aggregation (`deltas`).
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import dataclass, field
from typing import Any

from trustgen.consensus.messages import Signed
from trustgen.errors import TrustgenError
from trustgen.training import diloco
from trustgen.training.checks import CheckResult, check_delta, check_inner_step, check_scalar
from trustgen.training.job import DilocoState, SpsaState, UpdateError, by_trainer, checkpoint_digest, start_state
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile, profile_dict, same_numerics
from trustgen.training.records import Run, RunError, open_run, updates_digest
from trustgen.training.tensors import from_bytes, layout

LOSS_REL_TOLERANCE = 1e-5  # held-out loss across profiles (same profile: exact)


@dataclass
class ReplayReport:
    ok: bool
    job_id: str
    steps: int
    checkpoints: int
    final_digest: str
    first_bad: dict[str, Any] | None = None
    same_profile: bool = True
    profile: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "job_id": self.job_id,
            "steps": self.steps,
            "checkpoints": self.checkpoints,
            "final_digest": self.final_digest,
            "first_bad": self.first_bad,
            "same_profile": self.same_profile,
            "profile": self.profile,
            "cpu_s": self.cpu_s,
        }


def _group(updates: list[Signed], key: str) -> dict[int, list[Signed]]:
    out: dict[int, list[Signed]] = {}
    last = -1
    for n, u in enumerate(updates, 1):
        s = u.body[key]
        if s < last:
            raise RunError(f"updates.log: update {n} is for {key} {s} after {key} {last}: out of order")
        last = s
        out.setdefault(s, []).append(u)
    return out


def _record_profile(run: Run) -> dict[str, Any]:
    return run.info().get("profile", {})


def replay(
    root: str | pathlib.Path, threads: int | None = None, losses: bool = True, mode: str = "full"
) -> ReplayReport:
    run = open_run(root)
    spec = run.spec
    prof = profile_dict(apply_profile(spec, threads))
    same = same_numerics(prof, _record_profile(run)) if _record_profile(run) else True
    objective = load_objective(spec)
    c0 = time.process_time()  # from here: the replay's own work (loading is the same for a trainer)
    state = start_state(spec, objective)
    algo = spec.algorithm
    key = "step" if isinstance(state, SpsaState) else "round"
    total = algo["steps"] if isinstance(state, SpsaState) else algo["rounds"]
    groups = _group(run.updates, key)
    if groups and max(groups) >= total:
        raise RunError(f"updates.log holds updates for {key} {max(groups)}, past the job's {total}")
    records = {c.body["step"]: c for c in run.checkpoints}
    if not records:
        raise RunError("checkpoints.log records no checkpoint: nothing to replay against")
    applied: list[Signed] = []
    report = ReplayReport(True, spec.id.hex(), 0, 0, "", same_profile=same, profile=prof)

    def compare(step: int) -> bool:
        rec = records.get(step)
        if rec is None:
            return True
        report.checkpoints += 1
        digest = checkpoint_digest(state.params)
        report.final_digest = digest.hex()
        if rec.body["updates"] != updates_digest(applied):
            report.first_bad = {
                key: step,
                "what": "updates",
                "detail": "the update list differs from the one the checkpoint commits to (missing, extra or reordered updates)",
            }
            return False
        if digest != rec.body["digest"]:
            report.first_bad = {
                key: step,
                "what": "checkpoint",
                "detail": f"recomputed {digest.hex()[:16]}…, recorded {rec.body['digest'].hex()[:16]}…",
            }
            return False
        if losses:
            loss = objective.eval_loss(state.params)
            ref = rec.body["heldout_loss"]
            if (loss != ref) if same else abs(loss - ref) > LOSS_REL_TOLERANCE * max(1.0, abs(ref)):
                report.first_bad = {
                    key: step,
                    "what": "heldout_loss",
                    "detail": f"recomputed {loss!r}, recorded {ref!r}",
                }
                return False
        return True

    if not compare(0):
        report.ok = False
        return _done(report, c0)
    last_record = max(records)
    for t in range(last_record):
        ups = groups.get(t, [])
        try:
            if isinstance(state, SpsaState):
                state.apply(ups)
            else:
                bad = _diloco_round(run, objective, state, ups, mode, same)
                if bad is not None:
                    report.ok, report.first_bad = False, {key: t, **bad}
                    return _done(report, c0)
        except UpdateError as e:
            report.ok, report.first_bad = False, {key: t, "what": e.code, "detail": str(e)}
            return _done(report, c0)
        applied.extend(by_trainer(ups))
        report.steps = t + 1
        if not compare(t + 1):
            report.ok = False
            return _done(report, c0)
    if last_record < total:
        report.ok = False
        report.first_bad = {
            key: last_record,
            "what": "truncated",
            "detail": f"checkpoints stop at {key} {last_record} of {total}",
        }
    return _done(report, c0)


def _done(report: ReplayReport, c0: float) -> ReplayReport:
    report.cpu_s = time.process_time() - c0
    return report


def _diloco_round(
    run: Run, objective: Any, state: DilocoState, ups: list[Signed], mode: str, same: bool
) -> dict[str, Any] | None:
    spec = run.spec
    hp = spec.algorithm
    deltas = []
    base = {n: v.clone() for n, v in state.params.items()}
    for u in by_trainer(ups):
        state.check(u)
        blob = run.blobs.get(u.body["delta"])
        if mode == "full":
            work = diloco.run_round(objective, base, spec.id, state.step, u.signer, hp, keep=False)
            who = u.signer.hex()
            for h, (mine, theirs) in enumerate(zip(work.digests, u.body["states"]), 1):
                if mine != theirs:
                    if same:
                        return {
                            "trainer": who,
                            "inner_step": h,
                            "what": "inner_state",
                            "detail": "re-executed state differs from the committed one",
                        }
                    break  # across profiles the digests differ everywhere: compare the delta instead
            if diloco.encode_delta(diloco.delta_of(work.final, base), hp["delta_format"]) != blob and same:
                return {
                    "trainer": who,
                    "what": "delta",
                    "detail": "the delta blob is not the encoding of the re-executed final state",
                }
        deltas.append(state.decode(u, blob))
    state.apply(deltas)
    return None


# -- check-step --------------------------------------------------------------------------------


def _trainer_key(run: Run, trainer: str) -> bytes:
    keys = run.spec.trainers
    if trainer.isdigit() and int(trainer) < len(keys):
        return keys[int(trainer)]
    matches = [k for k in keys if k.hex().startswith(trainer.lower())] if trainer else []
    if len(matches) != 1:
        raise RunError(
            f"--trainer {trainer!r} names no single trainer of this job (give an index below {len(keys)} or a key prefix)"
        )
    return matches[0]


def check_step(
    root: str | pathlib.Path, step: int, trainer: str, inner: int | None = None, threads: int | None = None
) -> dict[str, Any]:
    """Re-execute one SPSA scalar (step T) or one local-SGD inner step (round T) of one trainer."""
    run = open_run(root)
    spec = run.spec
    prof = profile_dict(apply_profile(spec, threads))
    same = same_numerics(prof, _record_profile(run)) if _record_profile(run) else True
    who = _trainer_key(run, trainer)
    key = "step" if spec.algorithm["name"] == "spsa" else "round"
    groups = _group(run.updates, key)
    mine = [u for u in groups.get(step, []) if u.signer == who]
    if not mine:
        raise RunError(f"trainer {who.hex()[:16]}… has no accepted update at {key} {step}")
    update = mine[0]
    objective = load_objective(spec)
    state = start_state(spec, objective)
    c0 = time.process_time()
    for t in range(step):  # reach the state the update was computed from (cheap for SPSA)
        if isinstance(state, SpsaState):
            state.apply(groups.get(t, []))
        else:
            state.apply([state.decode(u, run.blobs.get(u.body["delta"])) for u in by_trainer(groups.get(t, []))])
    replay_cpu = time.process_time() - c0
    c1 = time.process_time()
    if isinstance(state, SpsaState):
        res = check_scalar(objective, spec, state.params, state.direction(), update, same)
        inner_step = None
    else:
        res, inner_step = _check_inner(run, objective, state, update, step, inner, same)
    out: dict[str, Any] = {
        **res.to_dict(),
        "job_id": spec.id.hex(),
        key: step,
        "trainer": who.hex(),
        "same_profile": same,
        "check_cpu_s": time.process_time() - c1,
        "reach_cpu_s": replay_cpu,
    }
    if inner_step is not None:
        out["inner_step"] = inner_step
    return out


def _check_inner(
    run: Run, objective: Any, state: DilocoState, update: Signed, rnd: int, inner: int | None, same: bool
) -> tuple[CheckResult, int]:
    spec = run.spec
    hp = spec.algorithm
    kept = run.info().get("kept_states", {}).get(f"{rnd}/{update.signer.hex()}", {})
    if inner is None:
        # The step the run challenged (recorded), else the challenge derived from the committed
        # updates (the same unless the run rejected a trainer in that round).
        inner = run.info().get("challenges", {}).get(f"{rnd}/{update.signer.hex()}")
        if inner is None:
            round_ups = by_trainer([u for u in run.updates if u.body["round"] == rnd])
            inner = diloco.challenge(spec.id, rnd, update.signer, updates_digest(round_ups), hp["inner_steps"])
    if not 1 <= inner <= hp["inner_steps"]:
        raise RunError(f"--inner must be between 1 and {hp['inner_steps']}")
    base = {n: v.clone() for n, v in state.params.items()}
    shape = layout(diloco.initial_state(base))

    def load(h: int) -> Any:
        hx = kept.get(str(h))
        if hx is None:
            raise RunError(f"the run kept no inner state {h} for this trainer and round (run with --keep-states)")
        return from_bytes(run.blobs.get(bytes.fromhex(hx)), shape, f"inner state {h}")

    if inner == 1:
        before = diloco.initial_state(base)
    else:
        before = load(inner - 1)
        if diloco.state_digest(before, inner - 1) != update.body["states"][inner - 2]:
            return CheckResult(
                False, float("inf"), f"kept state {inner - 1} is not the committed one", "inner-step"
            ), inner
    after = load(inner) if str(inner) in kept else None
    res = check_inner_step(objective, spec, update, inner, before, after, same)
    if res.accept and str(hp["inner_steps"]) in kept:
        res2 = check_delta(
            load(hp["inner_steps"]), base, run.blobs.get(update.body["delta"]), update, hp["delta_format"]
        )
        if not res2.accept:
            return res2, inner
    return res, inner


__all__ = ["ReplayReport", "RunError", "TrustgenError", "check_step", "replay"]
