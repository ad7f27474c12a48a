"""Local-SGD rounds on the network: what every party computes, as pure functions over signed inputs.

The coordinating gateway, the verifiers, the trainers and an auditor all call these, so there is
one definition of: which verifiers a round assigns (the task beacon rule, with a per-round
target), which updates are re-executed (a coin drawn from the round's committed update set, so a
trainer learns it only after committing), what a verifier's verdict on one update is, which
updates a round accepts (a strict majority of the assigned verifiers), and the checkpoint state
that travels between nodes (parameters and the outer momentum, so a joiner can continue).
Transport lives in trustgen.node; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.domains import TRAIN_CHECK_COIN, TRAIN_ROUND
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.tally import tally
from trustgen.training import diloco
from trustgen.training.checks import CheckResult, check_delta, check_inner_step
from trustgen.training.job import DilocoState, SpsaState, UpdateError, by_trainer, checkpoint_step
from trustgen.training.objectives import Objective
from trustgen.training.records import updates_digest
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import TensorError, Tensors, from_bytes, layout, to_bytes

# A round's verdict list and a checkpoint vote must stay small: bounded by the trainer set.
MAX_REASON = 300


def round_target(job_id: bytes, rnd: int) -> bytes:
    """What the verifier ranking of round `rnd` hashes in place of a task id."""
    return hashlib.sha256(TRAIN_ROUND + job_id + struct.pack(">Q", rnd)).digest()


def round_id(updates: list[Signed]) -> bytes:
    """The round's committed update set (trainer order): the seed of its challenges and coins."""
    return updates_digest(by_trainer(updates))


def check_coin(job_id: bytes, rnd: int, trainer: bytes, rid: bytes, probability: float) -> bool:
    """Whether this trainer's challenged inner step is re-executed this round. Every verifier
    draws the same coin, and an auditor can recompute it; no trainer knows it before committing."""
    h = hashlib.sha256(TRAIN_CHECK_COIN + job_id + struct.pack(">Q", rnd) + trainer + rid).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < probability


def challenges(spec: JobSpec, rnd: int, updates: list[Signed]) -> dict[bytes, int]:
    """For each update id, the inner step to re-execute (0: only the static and delta-free checks)."""
    hp = spec.algorithm
    rid = round_id(updates)
    out = {}
    for u in updates:
        if check_coin(spec.id, rnd, u.signer, rid, hp["check_probability"]):
            out[u.id] = diloco.challenge(spec.id, rnd, u.signer, rid, hp["inner_steps"])
        else:
            out[u.id] = 0
    return out


# -- the checkpoint state that ships between nodes -------------------------------------------------


def encode_state(state: DilocoState | SpsaState) -> bytes:
    """Parameters (and local SGD's outer momentum; SPSA has no other state) as canonical
    safetensors bytes (deterministic)."""
    out = {"p/" + n: v for n, v in state.params.items()}
    if isinstance(state, DilocoState):
        out.update({"m/" + n: v for n, v in state.momentum.items()})
    return to_bytes(out)


def decode_state(spec: JobSpec, like: DilocoState | SpsaState, blob: bytes, rnd: int) -> DilocoState | SpsaState:
    """The shipped state after `rnd` rounds, checked against the exact layout of the job's
    parameters; raises TensorError on any other layout or a non-finite value."""
    shape = {"p/" + n: s for n, s in layout(like.params).items()}
    if isinstance(like, DilocoState):
        shape.update({"m/" + n: s for n, s in layout(like.momentum).items()})
    t = from_bytes(blob, shape, "checkpoint state")  # exact names, shapes, dtypes; finite
    params = {k[2:]: v for k, v in t.items() if k.startswith("p/")}
    if isinstance(like, SpsaState):
        return SpsaState(spec, params, checkpoint_step(spec, rnd - 1) if rnd > 0 else 0)
    momentum = {k[2:]: v for k, v in t.items() if k.startswith("m/")}
    return DilocoState(spec, params, momentum, rnd)


def copy_state(state: DilocoState) -> DilocoState:
    return DilocoState(
        state.spec,
        {n: v.clone() for n, v in state.params.items()},
        {n: v.clone() for n, v in state.momentum.items()},
        state.step,
    )


# -- a verifier's verdict on one update --------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    update: bytes  # the update's message id
    accept: bool
    code: str  # "" when accepted; else why (stale_base, bad_blob, failed_check, ...)
    inner: int  # the inner step re-executed, 0 when none
    distance: float
    reason: str

    def to_list(self) -> list:
        # A check that failed before measuring has no distance: -1 (the encoding has no infinity).
        d = self.distance if math.isfinite(self.distance) else -1.0
        return [self.update, self.accept, self.code, self.inner, d, self.reason[:MAX_REASON]]

    @classmethod
    def from_list(cls, v: object) -> Verdict:
        ok = (
            isinstance(v, list)
            and len(v) == 6
            and isinstance(v[0], bytes)
            and len(v[0]) == 32
            and isinstance(v[1], bool)
            and isinstance(v[2], str)
            and isinstance(v[3], int)
            and not isinstance(v[3], bool)
            and isinstance(v[4], float)
            and isinstance(v[5], str)
            and len(v[5]) <= MAX_REASON
        )
        if not ok:
            raise ValueError("a verdict is [update id, accept, code, inner step, distance, reason]")
        assert isinstance(v, list)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5])


def static_verdict(state: DilocoState, u: Signed, blob: bytes | None) -> tuple[Verdict | None, Tensors | None]:
    """The checks that need no re-execution: round, base checkpoint, commitments, delta blob
    present, hashing to its name, of the exact layout and finite. Returns (rejection, None) or
    (None, the decoded delta)."""
    try:
        state.check(u)
    except UpdateError as e:
        return Verdict(u.id, False, e.code, 0, float("inf"), str(e)), None
    if blob is None:
        return Verdict(u.id, False, "blob_missing", 0, float("inf"), "the delta blob could not be fetched"), None
    if hashlib.sha256(blob).digest() != u.body["delta"]:
        return Verdict(u.id, False, "bad_blob", 0, float("inf"), "the delta blob does not hash to its name"), None
    try:
        delta = state.decode(u, blob)
    except TensorError as e:
        return Verdict(u.id, False, "bad_blob", 0, float("inf"), str(e)), None
    return None, delta


def challenged_verdict(
    objective: Objective,
    spec: JobSpec,
    u: Signed,
    blob: bytes,
    base: Tensors,
    h: int,
    given: Mapping[str, bytes] | None,
) -> Verdict:
    """Re-execute inner step h from the trainer's committed state before it and check the delta
    against its committed final state (given: state bytes for "before" (h > 1), "after", "final")."""

    def done(res: CheckResult) -> Verdict:
        return Verdict(u.id, res.accept, "" if res.accept else "failed_check", h, res.distance, res.reason)

    if given is None:
        return Verdict(u.id, False, "no_states", h, float("inf"), f"the trainer gave no states for step {h}")
    shape = layout(diloco.initial_state(base))
    try:
        states = {k: from_bytes(v, shape, f"state {k}") for k, v in given.items() if k in ("before", "after", "final")}
    except TensorError as e:
        return done(CheckResult(False, float("inf"), f"state blobs: {e}", "inner-step"))
    if "final" not in states or "after" not in states:
        return done(
            CheckResult(False, float("inf"), "the states after the step and at the end are needed", "inner-step")
        )
    before = diloco.initial_state(base) if h == 1 else states.get("before")
    if before is None or (h > 1 and diloco.state_digest(before, h - 1) != u.body["states"][h - 2]):
        return done(
            CheckResult(False, float("inf"), f"the state before step {h} is not the committed one", "inner-step")
        )
    res = check_inner_step(objective, spec, u, h, before, states["after"], True)
    if not res.accept:
        return done(res)
    return done(check_delta(states["final"], base, blob, u, spec.algorithm["delta_format"]))


# -- what a round accepts ------------------------------------------------------------------------------


def verdicts_of(check: Signed) -> dict[bytes, Verdict]:
    return {v.update: v for v in (Verdict.from_list(x) for x in check.body["verdicts"])}


def round_decisions(updates: list[Signed], checks: list[Signed], verifiers: list[bytes], k: int) -> dict[bytes, str]:
    """Per update id: accept, reject (a strict majority of the k assigned verifiers said so) or
    pending. Checks from keys outside `verifiers` do not count."""
    allowed = set(verifiers)
    per: dict[bytes, dict[bytes, bool]] = {u.id: {} for u in updates}
    for c in checks:
        if c.signer not in allowed:
            continue
        for uid, v in verdicts_of(c).items():
            if uid in per:
                per[uid][c.signer] = v.accept
    return {uid: tally(votes, verifiers, k).decision for uid, votes in per.items()}


def apply_round(state: DilocoState, accepted: list[Signed], deltas: Mapping[bytes, Tensors]) -> DilocoState:
    """The state after the round: a copy of `state` stepped with the accepted deltas in trainer order."""
    nxt = copy_state(state)
    nxt.apply([deltas[u.id] for u in by_trainer(accepted)])
    return nxt


# -- the proof a finalised checkpoint carries ---------------------------------------------------------


class ProofError(ValueError):
    """A CheckpointFinalized that does not prove what it claims; `code` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def effective_round_verifiers(
    job_id: bytes, rnd: int, beacon: bytes, candidates: list[bytes], skipped: list[bytes], k: int
) -> list[bytes]:
    return effective_verifiers(rank(beacon, round_target(job_id, rnd), candidates), skipped, k)


def check_finalized(spec: JobSpec, gateway: bytes, candidates: list[bytes], k: int, body: dict) -> Signed:
    """Check a CheckpointFinalized body against the job (its author `gateway`, verifier candidates
    and k): the checkpoint is the gateway's for this job and round, the verifiers are the round's
    effective ones, and a strict majority of them signed an accepting vote for exactly this
    digest and state blob. Returns the checkpoint; raises ProofError."""
    network, rnd = spec.network, body["round"]
    try:
        cp = open_wire(body["checkpoint"], "TrainingCheckpoint", network)
    except MessageError as e:
        raise ProofError("bad_checkpoint", f"round {rnd}: checkpoint: {e}") from None
    c = cp.body
    if c["publisher"] != gateway or c["job"] != spec.id or c["step"] != checkpoint_step(spec, rnd):
        raise ProofError("bad_checkpoint", f"round {rnd}: the checkpoint is not the gateway's for this job and round")
    want = effective_round_verifiers(spec.id, rnd, body["beacon"], candidates, list(body["skipped"]), k)
    if list(body["verifiers"]) != want:
        raise ProofError("wrong_verifiers", f"round {rnd}: the voters are not the round's assigned verifiers")
    yes: set[bytes] = set()
    for w in body["votes"]:
        try:
            v = open_wire(w, "CheckpointVote", network)
        except (MessageError, TypeError) as e:
            raise ProofError("bad_vote", f"round {rnd}: vote: {e}") from None
        b = v.body
        if v.signer not in want:
            raise ProofError("foreign_vote", f"round {rnd}: a vote from a key not assigned to the round")
        if b["job"] != spec.id or b["round"] != rnd:
            raise ProofError("bad_vote", f"round {rnd}: a vote for another job or round")
        if b["accept"] and b["digest"] == c["digest"] and b["state"] == body["state"]:
            yes.add(v.signer)
    if len(yes) * 2 <= k:
        raise ProofError("no_majority", f"round {rnd}: {len(yes)} of {k} verifiers accepted this checkpoint")
    return cp
