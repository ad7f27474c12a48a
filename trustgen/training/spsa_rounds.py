"""SPSA steps on the network: what every party computes, as pure functions over signed inputs.

A network round of an SPSA job is a block of `eval_every` steps ending at an evaluation point of
the local run (job.rounds_of, job.checkpoint_step). Inside a block every step is decided before
it is applied: the coordinating gateway records the step's updates, commits (the step's beacon),
and the step's verifiers, ranked by that beacon with the step target below, each sign one
UpdateCheck (its `round` is the global step) with a verdict per update: the free arithmetic check
always, and one committed sample re-computed when the update's coin comes up. A step accepts what
a strict majority of its verifiers accepted. Trainers and verifiers advance θ themselves from the
block's base by applying the accepted bytes of each step, after checking each step's proof.

Which verifiers a step assigned is implied by the checks recorded under its beacon: candidates
ranked above the lowest-ranked verifier that answered, without a check of their own, were skipped
(docs/decisions.md: the same information a recorded skipped list would carry, and the same rule
for a trainer reading a proof, a verifier and an auditor). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.domains import TRAIN_CHECK_COIN, TRAIN_STEP
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.training import spsa
from trustgen.training.checks import check_sample
from trustgen.training.job import SpsaState, by_trainer
from trustgen.training.objectives import Objective
from trustgen.training.rounds import ProofError, Verdict, round_decisions, round_id, verdicts_of
from trustgen.training.spec import JobSpec
from trustgen.training.tensors import Tensors

# A network SPSA job's eval_every: every step request carries the block's history so far, so the
# block length bounds what one request holds (100 steps of 16 trainers' 370-byte updates ~ 0.6 MB).
MAX_BLOCK = 100


def block_steps(spec: JobSpec, b: int) -> range:
    a = spec.algorithm
    return range(b * a["eval_every"], min((b + 1) * a["eval_every"], a["steps"]))


def block_of(spec: JobSpec, t: int) -> int:
    return t // spec.algorithm["eval_every"]


def step_target(job_id: bytes, t: int) -> bytes:
    """What the verifier ranking of step t hashes in place of a task id."""
    return hashlib.sha256(TRAIN_STEP + job_id + struct.pack(">Q", t)).digest()


def ranking(spec: JobSpec, t: int, beacon: bytes, candidates: list[bytes]) -> list[bytes]:
    return rank(beacon, step_target(spec.id, t), candidates)


def challenge(job_id: bytes, t: int, trainer: bytes, sid: bytes, probability: float, batch: int) -> int:
    """0 when this update's coin does not come up, else 1 + the committed sample to re-compute.
    One hash (rounds.check_coin's, with the step for the round) decides both, over the step's
    committed update set: no trainer knows it before committing."""
    h = hashlib.sha256(TRAIN_CHECK_COIN + job_id + struct.pack(">Q", t) + trainer + sid).digest()
    if int.from_bytes(h[:8], "big") / 2.0**64 >= probability:
        return 0
    return 1 + int.from_bytes(h[8:16], "big") % batch


def plan(spec: JobSpec, t: int, updates: list[Signed]) -> dict[bytes, int]:
    hp = spec.algorithm
    sid = round_id(updates)
    return {u.id: challenge(spec.id, t, u.signer, sid, hp["check_probability"], hp["batch"]) for u in updates}


def static_verdict(spec: JobSpec, t: int, u: Signed) -> Verdict | None:
    """A rejection needing no forward pass (step, byte range, the byte's arithmetic), else None."""
    b, hp = u.body, spec.algorithm
    if b["step"] != t or b["job"] != spec.id:
        return Verdict(u.id, False, "wrong_step", 0, float("inf"), f"update for step {b['step']} at step {t}")
    if not -spsa.QMAX <= b["q"] <= spsa.QMAX:
        return Verdict(u.id, False, "out_of_range", 0, float("inf"), f"byte {b['q']} is outside one signed byte")
    why = spsa.arithmetic_error(b["q"], b["diffs"], hp["batch"], hp["scale"])
    return None if why is None else Verdict(u.id, False, "wrong_scalar", 0, float("inf"), why)


def verdict(objective: Objective, spec: JobSpec, params: Tensors, z: Tensors, t: int, u: Signed, j1: int) -> Verdict:
    """A verifier's verdict on one update of step t at θ_t (j1: the plan's 1-based sample, 0 none)."""
    bad = static_verdict(spec, t, u)
    if bad is not None:
        return bad
    if j1 == 0:
        return Verdict(u.id, True, "", 0, 0.0, "")
    res = check_sample(objective, spec, params, z, u, j1 - 1)
    return Verdict(u.id, res.accept, "" if res.accept else "forged_sample", j1, res.distance, res.reason)


def step_verifiers(
    spec: JobSpec, t: int, beacon: bytes, candidates: list[bytes], k: int, checkers: set[bytes]
) -> list[bytes]:
    """The step's effective verifiers implied by who answered: candidates ranked above the
    lowest-ranked one that answered, without an answer, count as skipped."""
    order = ranking(spec, t, beacon, candidates)
    last = max((order.index(v) for v in checkers if v in order), default=-1)
    skipped = [v for v in order[: last + 1] if v not in checkers]
    return effective_verifiers(order, skipped, k)


@dataclass
class Step:
    """One decided step: its recorded updates (trainer order), the checks under its beacon, the
    verifiers they imply and which updates a strict majority accepted."""

    step: int
    beacon: bytes
    updates: list[Signed]
    checks: list[Signed]
    verifiers: list[bytes]
    decisions: dict[bytes, str]

    @property
    def accepted(self) -> list[Signed]:
        return [u for u in self.updates if self.decisions.get(u.id) == "accept"]

    def to_args(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "beacon": self.beacon,
            "updates": [u.wire() for u in self.updates],
            "checks": [c.wire() for c in self.checks],
        }


def decide(
    spec: JobSpec, t: int, beacon: bytes, updates: list[Signed], checks: list[Signed], candidates: list[bytes], k: int
) -> Step:
    """A step's decision from its updates and its verifiers' checks; raises ProofError when a check
    is not one of the step's (another job, step or beacon, a second one per verifier, more than k,
    verdicts that do not cover exactly the step's updates)."""
    ids = sorted(u.id for u in updates)
    signers: set[bytes] = set()
    for c in checks:
        b = c.body
        if b["job"] != spec.id or b["round"] != t or b["beacon"] != beacon or c.signer not in candidates:
            raise ProofError("foreign_check", f"step {t}: a check for another job, step or beacon, or by no candidate")
        if c.signer in signers:
            raise ProofError("duplicate_check", f"step {t}: two checks by one verifier")
        signers.add(c.signer)
        try:
            covered = sorted(verdicts_of(c))
        except ValueError as e:
            raise ProofError("bad_check", f"step {t}: {e}") from None
        if covered != ids:
            raise ProofError("verdicts_mismatch", f"step {t}: a check does not cover exactly the step's updates")
    verifiers = step_verifiers(spec, t, beacon, candidates, k, signers)
    if not signers <= set(verifiers):
        raise ProofError("foreign_check", f"step {t}: more than {k} verifiers checked")
    ups = by_trainer(updates)
    return Step(t, beacon, ups, list(checks), verifiers, round_decisions(ups, list(checks), verifiers, k))


def open_steps(
    spec: JobSpec, network: str, candidates: list[bytes], k: int, first: int, raw: Any, upto: int
) -> list[Step]:
    """The block's history as a request carries it: one record per step from `first` to `upto`
    (exclusive), each proven by its checks. Raises ProofError (code "bad_history" for shape)."""
    want = list(range(first, upto))
    if not isinstance(raw, list) or len(raw) != len(want) or len(raw) > MAX_BLOCK:
        raise ProofError("bad_history", f"the history must hold steps {first}..{upto - 1}")
    out = []
    for t, rec in zip(want, raw):
        ok = (
            isinstance(rec, dict)
            and rec.get("step") == t
            and isinstance(rec.get("beacon"), bytes)
            and isinstance(rec.get("updates"), list)
            and isinstance(rec.get("checks"), list)
            and len(rec["updates"]) <= len(spec.trainers)
            and len(rec["checks"]) <= k
            and all(isinstance(w, bytes) for w in rec["updates"] + rec["checks"])
        )
        if not ok:
            raise ProofError("bad_history", f"step {t}: a record is {{step, beacon, updates, checks}}")
        try:
            ups = [open_wire(w, "SpsaUpdate", network) for w in rec["updates"]]
            checks = [open_wire(w, "UpdateCheck", network) for w in rec["checks"]]
        except MessageError as e:
            raise ProofError("bad_history", f"step {t}: {e}") from None
        if len({u.signer for u in ups}) != len(ups) or any(
            u.signer not in spec.trainers or u.body["job"] != spec.id or u.body["step"] != t for u in ups
        ):
            raise ProofError("bad_history", f"step {t}: an update by no trainer, for another step, or a second one")
        out.append(decide(spec, t, rec["beacon"], ups, checks, candidates, k))
    return out


def advance(state: SpsaState, steps: list[Step]) -> None:
    """Apply each decided step's accepted updates, in order, from `state.step`."""
    for s in steps:
        state.apply(s.accepted)


def block_accepted(steps: list[Step]) -> list[Signed]:
    """The block's accepted updates in step, then trainer order (what its checkpoint commits to)."""
    return [u for s in steps for u in s.accepted]
