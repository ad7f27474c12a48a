"""The training audit's rules for one block of an SPSA job (audit_training.py runs the rest: the
job, the proposal, the finalised proof, the evidence).

Per step t of the block: every update is the job's SpsaUpdate for t with no blob, one per trainer,
by no trainer rejected at an earlier step; every UpdateCheck names one beacon, a Commitment root of
the gateway's feed appended after the step's updates and before the checks; the checkers are the
step's verifiers (spsa_rounds.decide: ranked by that beacon with the step target, the candidates
above the last checker without a check counting as skipped), each with one verdict per update that
re-computed exactly the sample the step's coin names when it accepts; a strict majority decides
every update.
"""

from __future__ import annotations

from typing import Any, Protocol

from trustgen.consensus.ledger import Entry
from trustgen.consensus.messages import Signed
from trustgen.training import spsa_rounds
from trustgen.training.ledger_view import LedgerJob, RoundRecord, where
from trustgen.training.rounds import ProofError, Verdict


class Auditor(Protocol):
    j: LedgerJob
    roots: dict[tuple[bytes, bytes], int]
    spsa_rejected: dict[bytes, int]

    def bad(self, at: str, code: str, detail: str) -> None: ...


def _at(e: Entry, j: LedgerJob, t: int) -> str:
    return f"{where(e)} job {j.id.hex()[:16]} step {t}"


def check_block(a: Auditor, r: int, rec: RoundRecord) -> dict[bytes, str]:
    """Every step rule of block r; returns the decision per update id."""
    j = a.j
    out: dict[bytes, str] = {}
    for t in spsa_rounds.block_steps(j.spec, r):
        ups = [(e, u, blob) for e, u, blob in rec.updates if u.body["step"] == t]
        checks = [(e, c) for e, c in rec.checks if c.body["round"] == t]
        out.update(_check_step(a, t, ups, checks))
    return out


def _check_step(
    a: Auditor, t: int, ups: list[tuple[Entry, Signed, str]], checks: list[tuple[Entry, Signed]]
) -> dict[bytes, str]:
    j = a.j
    seen: set[bytes] = set()
    for e, u, blob in ups:
        at = _at(e, j, t)
        if blob != "":
            a.bad(at, "bad_training_update", "an SPSA update names a blob (its bytes are inline)")
        if u.signer not in j.spec.trainers:
            a.bad(at, "foreign_update", f"update by {u.signer.hex()[:16]}, not a trainer of the job")
        if u.signer in seen:
            a.bad(at, "duplicate_update", "a second update from one trainer in one step")
        seen.add(u.signer)
        if a.spsa_rejected.get(u.signer, t) < t:
            a.bad(at, "excluded_trainer", f"the trainer was rejected at step {a.spsa_rejected[u.signer]}")
    if not ups and not checks:
        return {}
    if not checks:
        a.bad(_at(ups[-1][0], j, t), "undecided_update", "the step's updates have no checks")
        return {u.id: "pending" for _, u, _ in ups}
    first = checks[0][0]
    beacons = {c.body["beacon"] for _, c in checks}
    beacon = checks[0][1].body["beacon"]
    last_update = max((e.seq for e, _, _ in ups), default=-1)
    at_beacon = a.roots.get((first.feed, beacon))
    if len(beacons) != 1 or at_beacon is None or not last_update < at_beacon < min(e.seq for e, _ in checks):
        a.bad(_at(first, j, t), "bad_beacon", "the step's checks do not name one commitment made after its updates")
    try:
        step = spsa_rounds.decide(j.spec, t, beacon, [u for _, u, _ in ups], [c for _, c in checks], j.candidates, j.k)
    except ProofError as err:
        a.bad(_at(first, j, t), err.code, str(err))
        return {u.id: "pending" for _, u, _ in ups}
    want = spsa_rounds.plan(j.spec, t, step.updates)
    for e, c in checks:
        for v in (Verdict.from_list(x) for x in c.body["verdicts"]):
            if v.inner not in (0, want[v.update]):
                a.bad(_at(e, j, t), "wrong_challenge", f"sample {v.inner} re-computed, the step's is {want[v.update]}")
            elif v.accept and v.inner != want[v.update]:
                a.bad(_at(e, j, t), "unchecked_accept", f"accepted without re-computing sample {want[v.update]}")
    for u in step.updates:
        d = step.decisions[u.id]
        if d == "pending":
            a.bad(_at(first, j, t), "undecided_update", f"update of {u.signer.hex()[:16]} has no majority verdict")
        elif d == "reject":
            a.spsa_rejected.setdefault(u.signer, t)
    return step.decisions


def round_of(spec: Any, u: Signed) -> int:
    """The network round an update belongs to: an SPSA step's block, a local-SGD round."""
    return spsa_rounds.block_of(spec, u.body["step"]) if u.type == "SpsaUpdate" else u.body["round"]
