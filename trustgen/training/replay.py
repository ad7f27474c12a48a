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
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from trustgen.consensus.messages import Signed
from trustgen.engines.registry import model_digest
from trustgen.training import diloco
from trustgen.training.checks import CheckResult, check_delta, check_inner_step, check_scalar
from trustgen.training.job import (
    DilocoState,
    SpsaState,
    UpdateError,
    by_trainer,
    checkpoint_digest,
    evaluation_points,
    start_state,
)
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.records import Run, RunError, open_run, updates_digest
from trustgen.training.tensors import from_bytes, layout, relative_l2

LOSS_REL_TOLERANCE = 1e-5  # held-out loss across profiles (same profile: exact)
# A trainer's whole-round delta re-executed under another profile, against its blob (int8
# rounding included); bench_training.py measures honest and dishonest distances.
DELTA_CROSS_PROFILE_REL_L2 = 0.05  # honest 1 vs 2 threads, 16 inner steps: 0.0058; another trainer: 1.04


@dataclass
class ReplayReport:
    ok: bool
    job_id: str
    steps: int
    checkpoints: int
    final_digest: str
    first_bad: dict[str, Any] | None = None
    final_step: int | None = None  # the best held-out checkpoint: the job's final model
    same_profile: bool = True
    profile: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0
    # Rounds of a network job whose state was taken from the finalised state blob, not
    # recomputed (the node held no copy of some delta): ledger_replay.py
    from_state: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "job_id": self.job_id,
            "steps": self.steps,
            "checkpoints": self.checkpoints,
            "final_digest": self.final_digest,
            "first_bad": self.first_bad,
            "final_step": self.final_step,
            "same_profile": self.same_profile,
            "profile": self.profile,
            "cpu_s": self.cpu_s,
            "from_state": self.from_state,
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


def _same_profile(spec: Any, threads: int | None) -> bool:
    """Exact comparison is expected when this replay runs the profile the signed spec names (the
    run's own unsigned notes never decide how strict a check is)."""
    return threads is None or threads == spec.section("profile")["threads"]


def _records(run: Run, total: int, key: str) -> dict[int, Signed]:
    """The run's checkpoint records: signed by the job's author, one per step, within the job."""
    out: dict[int, Signed] = {}
    for n, c in enumerate(run.checkpoints, 1):
        s = c.body["step"]
        if c.signer != run.job.signer:
            raise RunError(f"checkpoints.log: record {n} is not signed by the job's author")
        if not 0 <= s <= total:
            raise RunError(f"checkpoints.log: record {n} is for {key} {s}, outside 0..{total}")
        if s in out:
            raise RunError(f"checkpoints.log: two records for {key} {s}")
        out[s] = c
    return out


def replay(
    root: str | pathlib.Path,
    threads: int | None = None,
    losses: bool = True,
    mode: str = "full",
    start_record: bool = True,
) -> ReplayReport:
    """start_record=False: the run need not record step 0 (a run exported from a ledger: the
    network signs no checkpoint for the start, which the spec fixes); every later evaluation point
    up to the last record must still be recorded."""
    run = open_run(root)
    spec = run.spec
    prof = apply_profile(spec, threads).to_dict()
    same = _same_profile(spec, threads)
    objective = load_objective(spec)
    c0 = time.process_time()  # from here: the replay's own work (loading is the same for a trainer)
    state = start_state(spec, objective)
    algo = spec.algorithm
    key = "step" if isinstance(state, SpsaState) else "round"
    total = algo["steps"] if isinstance(state, SpsaState) else algo["rounds"]
    groups = _group(run.updates, key)
    if groups and max(groups) >= total:
        raise RunError(f"updates.log holds updates for {key} {max(groups)}, past the job's {total}")
    records = _records(run, total, key)
    if not records:
        raise RunError("checkpoints.log records no checkpoint: nothing to replay against")
    points = evaluation_points(spec)
    stray = sorted(set(records) - points)
    if stray:
        raise RunError(f"checkpoints.log records {key} {stray[0]}, which is not an evaluation point of this job")
    best: list[Any] = []  # [loss, step, params] of the best recorded checkpoint so far
    applied: list[Signed] = []
    report = ReplayReport(True, spec.id.hex(), 0, 0, "", same_profile=same, profile=prof)

    def compare(step: int) -> bool:
        rec = records.get(step)
        if rec is None:
            if step in points and step <= max(records) and (step > 0 or start_record):
                report.first_bad = {
                    key: step,
                    "what": "missing_checkpoint",
                    "detail": "no record at this evaluation point",
                }
                return False
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
        if not best or rec.body["heldout_loss"] < best[0]:
            best[:] = [rec.body["heldout_loss"], step, {n: v.clone() for n, v in state.params.items()}]
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
    report.final_step = best[1]
    final = run.root / "final"
    if final.is_dir() and not _final_matches(objective, best[2], final):
        report.ok = False
        report.first_bad = {
            key: best[1],
            "what": "final",
            "detail": f"{final} is not the best held-out checkpoint ({key} {best[1]}) saved as a model directory",
        }
    return _done(report, c0)


def _final_matches(objective: Any, params: Any, final: pathlib.Path) -> bool:
    """The run's final model directory is exactly the best checkpoint saved by the objective
    (saving is deterministic, so the two directories' content digests must be equal)."""
    with tempfile.TemporaryDirectory() as td:
        mine = pathlib.Path(td) / "final"
        objective.save(params, mine)
        return model_digest(mine) == model_digest(final)


def _done(report: ReplayReport, c0: float) -> ReplayReport:
    report.cpu_s = time.process_time() - c0
    return report


def _diloco_round(
    run: Run, objective: Any, state: DilocoState, ups: list[Signed], mode: str, same: bool
) -> dict[str, Any] | None:
    spec = run.spec
    deltas = []
    base = {n: v.clone() for n, v in state.params.items()}
    seen: set[bytes] = set()
    for u in by_trainer(ups):
        if u.signer in seen:
            raise UpdateError("duplicate", f"two updates from one trainer in round {state.step}")
        seen.add(u.signer)
        state.check(u)
        blob = run.blobs.get(u.body["delta"])
        delta = state.decode(u, blob)
        if mode == "full":
            bad = _reexecute(objective, spec, state.step, u, base, blob, delta, same)
            if bad is not None:
                return {"trainer": u.signer.hex(), **bad}
        deltas.append(delta)
    state.apply(deltas)
    return None


def _reexecute(
    objective: Any, spec: Any, rnd: int, u: Signed, base: Any, blob: bytes, delta: Any, same: bool
) -> dict[str, Any] | None:
    """Re-execute a trainer's round: under the job's profile every inner state must match its
    commitment and the blob must be the exact encoding of the final state; under another profile
    the re-executed delta must be within tolerance of the blob's."""
    hp = spec.algorithm
    work = diloco.run_round(objective, base, spec.id, rnd, u.signer, hp, keep=False)
    if same:
        for h, (mine, theirs) in enumerate(zip(work.digests, u.body["states"]), 1):
            if mine != theirs:
                return {
                    "inner_step": h,
                    "what": "inner_state",
                    "detail": "re-executed state differs from the committed one",
                }
        if diloco.encode_delta(diloco.delta_of(work.final, base), hp["delta_format"]) != blob:
            return {"what": "delta", "detail": "the delta blob is not the encoding of the re-executed final state"}
        return None
    dist = relative_l2(diloco.delta_of(work.final, base), delta)
    if dist > DELTA_CROSS_PROFILE_REL_L2:
        return {"what": "delta", "detail": f"re-executed delta is {dist:.3g} (relative L2) from the blob's"}
    return None


# -- check-step --------------------------------------------------------------------------------


def _trainer_key(run: Run, trainer: str) -> bytes:
    keys = run.spec.trainers
    if trainer.isdecimal() and int(trainer) < len(keys):
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
    apply_profile(spec, threads)
    same = _same_profile(spec, threads)
    who = _trainer_key(run, trainer)
    key = "step" if spec.algorithm["name"] == "spsa" else "round"
    total = spec.algorithm["steps"] if key == "step" else spec.algorithm["rounds"]
    if not 0 <= step < total:
        raise RunError(f"--step {step} is outside the job's {key}s 0..{total - 1}")
    groups = _group(run.updates, key)
    mine = [u for u in groups.get(step, []) if u.signer == who]
    if len(mine) != 1:
        raise RunError(f"trainer {who.hex()[:16]}… has {len(mine)} accepted updates at {key} {step}, not one")
    update = mine[0]
    objective = load_objective(spec)
    state = start_state(spec, objective)
    c0 = time.process_time()
    try:
        for t in range(step):  # reach the state the update was computed from (cheap for SPSA)
            ups = by_trainer(groups.get(t, []))
            if isinstance(state, SpsaState):
                state.apply(ups)
            else:
                for u in ups:
                    state.check(u)
                state.apply([state.decode(u, run.blobs.get(u.body["delta"])) for u in ups])
        if isinstance(state, DilocoState):
            state.check(update)
    except UpdateError as e:
        raise RunError(f"{key} {state.step}: {e}") from None
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
