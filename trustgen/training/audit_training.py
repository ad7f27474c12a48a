"""The training audit: every rule of docs/training-network.md checked over the training entries a
ledger holds (all the replicas in it), as a pure function of those entries.

Per job (in the feed of the gateway that accepted it): the job is the gateway's own; every
update opens, is by a trainer of the job, one per trainer and round, and none from a trainer
already rejected; every UpdateCheck is by one of its round's effective verifiers (recomputed from
the round's beacon, the round target and the skipped list), names the round's beacon, gives one
verdict per recorded update in trainer order, and re-executes exactly the inner step the round's
coin and challenge name; a proposal's accepted set is the strict-majority set of the checks; a
finalised checkpoint is the gateway's, proposed before, carries a strict majority of accepting
votes from effective verifiers for its digest and state, commits to every update accepted so
far, and rounds finalise once each, consecutively from 0; rejected_update evidence agrees with the
checks. Across ledgers, two different checkpoints finalised for one job and round are an
equivocation. Codes are typed (`TrainingViolation.code`); `where` names the entry, job and round.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field

from trustgen.consensus.audit import AuditReport, Violation
from trustgen.consensus.ledger import Entry
from trustgen.consensus.merkle import EMPTY_ROOT
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.tally import tally
from trustgen.training import audit_spsa
from trustgen.training.job import checkpoint_step
from trustgen.training.ledger_view import LedgerJob, LedgerReadError, RoundRecord, collect, read_ledger, where
from trustgen.training.records import open_update, updates_digest
from trustgen.training.rounds import Verdict, challenges

_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")  # a gossip blob address


@dataclass(frozen=True)
class TrainingViolation:
    where: str
    code: str
    detail: str


@dataclass
class TrainingAudit:
    jobs: int = 0
    rounds: int = 0  # finalised rounds checked
    violations: list[TrainingViolation] = field(default_factory=list)
    # (gateway feed, job id, round) -> (checkpoint message id, state blob, where): the cross-ledger check
    finalized: dict[tuple[bytes, bytes, int], tuple[bytes, str, str]] = field(default_factory=dict)


def _at(e: Entry, j: LedgerJob, r: int | None = None) -> str:
    return f"{where(e)} job {j.id.hex()[:16]}" + ("" if r is None else f" round {r}")


class _JobAudit:
    def __init__(self, j: LedgerJob, network: str, commitments: dict, out: TrainingAudit) -> None:
        self.j, self.network, self.commitments, self.out = j, network, commitments, out
        # A round's beacon names no size: the root of any earlier Commitment of the gateway.
        self.roots: dict[tuple[bytes, bytes], int] = {}
        self.spsa_rejected: dict[bytes, int] = {}  # SPSA: trainer -> the step it was rejected at
        self.spsa = j.spec.algorithm["name"] == "spsa"
        for (f, _, root), seq in commitments.items():
            self.roots[(f, root)] = min(seq, self.roots.get((f, root), seq))

    def bad(self, at: str, code: str, detail: str) -> None:
        self.out.violations.append(TrainingViolation(at, code, detail))

    def earlier_commitment(self, e: Entry, size: int, root: bytes) -> bool:
        return self.commitments.get((e.feed, size, root), e.seq) < e.seq

    def run(self) -> None:
        j = self.j
        e = j.accepted
        if j.job.signer != e.feed:
            self.bad(_at(e, j), "job_not_gateways", "the job is signed by another key than the accepting gateway")
        size, beacon = e.body["beacon_size"], e.body["beacon"]
        if (size != 0 or beacon != EMPTY_ROOT) and not self.earlier_commitment(e, size, beacon):
            self.bad(_at(e, j), "bad_beacon", "the job's beacon is not an earlier commitment of the gateway")
        accepted_so_far: list[Signed] = []
        rejected: dict[bytes, int] = {}  # trainer -> the round it was rejected in
        expected_round = 0
        for r in sorted(j.rounds):
            rec = j.rounds[r]
            self.check_updates(r, rec, rejected)
            if not rec.finalized:
                self.check_unfinalised_checks(r, rec)
                continue
            fe = rec.finalized[0][0]
            if r != expected_round:
                self.bad(_at(fe, j, r), "round_gap", f"round {r} is finalised but round {expected_round} is not")
            expected_round = r + 1
            self.out.rounds += 1
            dec = self.check_round(r, rec)
            ok = [u for u in rec.update_msgs() if dec.get(u.id) == "accept"]
            accepted_so_far.extend(ok)
            self.check_finalized(r, rec, accepted_so_far)
            self.check_proposed(r, rec, ok)
            for u in rec.update_msgs():
                if dec.get(u.id) == "reject":
                    rejected.setdefault(u.signer, r)
            self.check_evidence(r, rec, dec)

    # -- updates -------------------------------------------------------------------------------

    def check_updates(self, r: int, rec: RoundRecord, rejected: dict[bytes, int]) -> None:
        if self.spsa:
            return  # per step, in check_round (audit_spsa.py)
        j = self.j
        trainers = set(j.spec.trainers)
        seen: set[bytes] = set()
        for e, u, blob in rec.updates:
            at = _at(e, j, r)
            if u.signer not in trainers:
                self.bad(at, "foreign_update", f"update by {u.signer.hex()[:16]}, not a trainer of the job")
            if u.signer in seen:
                self.bad(at, "duplicate_update", "a second update from one trainer in one round")
            seen.add(u.signer)
            if u.signer in rejected and rejected[u.signer] < r:
                self.bad(at, "excluded_trainer", f"the trainer was rejected in round {rejected[u.signer]}")
            if not _BLOB_NAME.match(blob):
                self.bad(at, "bad_training_update", "the blob is not a 64-hex-digit blob address")

    # -- checks and decisions ------------------------------------------------------------------

    def check_unfinalised_checks(self, r: int, rec: RoundRecord) -> None:
        """A round still in progress: its checks must come from candidates (which of them count is
        fixed only by the CheckpointFinalized)."""
        cands = set(self.j.candidates)
        for e, c in rec.checks:
            if c.signer not in cands:
                self.bad(_at(e, self.j, r), "foreign_check", "an UpdateCheck by a key that is no verifier candidate")

    def check_round(self, r: int, rec: RoundRecord) -> dict[bytes, str]:
        if self.spsa:
            return audit_spsa.check_block(self, r, rec)
        j = self.j
        fe = rec.finalized[0][0]
        beacon = fe.body["beacon"]
        eff = j.effective(r) or []
        ups = rec.update_msgs()
        ids = [u.id for u in ups]
        hp = j.spec.algorithm
        coin = challenges(j.spec, r, ups)
        by_verifier: set[bytes] = set()
        cands = set(j.candidates)
        for e, c in rec.checks:
            at = _at(e, j, r)
            if c.body["beacon"] != beacon:
                # an attempt before a restart: its checks do not count, but must be a candidate's
                # under a beacon the gateway committed to before
                if c.signer not in cands or self.roots.get((e.feed, c.body["beacon"]), e.seq) >= e.seq:
                    self.bad(at, "foreign_check", "an UpdateCheck of an earlier attempt by no candidate or beacon")
                continue
            if c.signer not in eff:
                self.bad(at, "foreign_check", f"an UpdateCheck by {c.signer.hex()[:16]}, not an effective verifier")
                continue
            if c.signer in by_verifier:
                self.bad(at, "duplicate_check", "a second UpdateCheck by one verifier for one round")
            by_verifier.add(c.signer)
            verdicts = [Verdict.from_list(v) for v in c.body["verdicts"]]  # collect() kept parseable ones
            # Exactly one verdict per recorded update; their order carries no meaning (the
            # reference verifier sorts them by update id).
            if sorted(v.update for v in verdicts) != sorted(ids):
                self.bad(at, "verdicts_mismatch", "the verdicts do not cover exactly the round's recorded updates")
                continue
            for v in verdicts:
                want = coin[v.update]
                if v.inner not in (0, want) or not 0 <= v.inner <= hp["inner_steps"]:
                    self.bad(
                        at, "wrong_challenge", f"inner step {v.inner} re-executed, the round's challenge is {want}"
                    )
                elif v.accept and v.inner != want:
                    self.bad(at, "unchecked_accept", f"accepted without re-executing challenged step {want}")
        dec = j.decisions(r) or {}
        for u in ups:
            if dec.get(u.id) == "pending":
                self.bad(_at(fe, j, r), "undecided_update", f"update of {u.signer.hex()[:16]} has no majority verdict")
        return dec

    def check_proposed(self, r: int, rec: RoundRecord, ok: list[Signed]) -> None:
        """The proposal that was finalised lists exactly the accepted updates (a proposal of an
        attempt that failed before a restart is superseded, not finalised)."""
        want = [u.id for u in ok]
        final = rec.finalized[0][1].payload
        for e, p in rec.proposed:
            if p.payload == final and list(e.body["accepted"]) != want:
                self.bad(_at(e, self.j, r), "bad_accepted_set", "the accepted updates differ from the checks' majority")

    # -- the finalised checkpoint ---------------------------------------------------------------

    def check_finalized(self, r: int, rec: RoundRecord, accepted_so_far: list[Signed]) -> None:
        j = self.j
        for n, (e, cp) in enumerate(rec.finalized):
            at = _at(e, j, r)
            key = (e.feed, j.id, r)
            if n > 0:
                first = rec.finalized[0]
                same = first[1].payload == cp.payload and first[0].body["state"] == e.body["state"]
                self.bad(
                    at,
                    "duplicate_finalized" if same else "conflicting_finalized",
                    "the round is finalised twice" + ("" if same else ", with different checkpoints"),
                )
                continue
            self.out.finalized[key] = (cp.id, e.body["state"], at)
            b = e.body
            if cp.signer != e.feed:
                self.bad(at, "bad_checkpoint", "the checkpoint is not signed by the gateway")
            if cp.body["step"] != checkpoint_step(j.spec, r):
                self.bad(at, "bad_checkpoint", f"checkpoint step {cp.body['step']} for round {r}")
            if self.roots.get((e.feed, b["beacon"]), e.seq) >= e.seq:
                self.bad(at, "bad_beacon", "the round's beacon is not an earlier commitment of the gateway")
            ranking = j.ranking(b["beacon"], r)
            eff = j.effective(r) or []
            if list(b["verifiers"]) != eff:
                self.bad(at, "bad_assignment", "verifiers differ from the recomputed assignment")
            if not set(b["skipped"]) <= set(ranking):
                self.bad(at, "bad_assignment", "skipped verifiers were never candidates")
            if cp.body["updates"] != updates_digest(accepted_so_far):
                self.bad(at, "bad_updates_digest", "the checkpoint does not commit to the updates accepted so far")
            if not any(p.wire() == cp.wire() and pe.body["state"] == b["state"] for pe, p in rec.proposed):
                self.bad(
                    at, "unproposed_checkpoint", "no CheckpointProposed of this round has this checkpoint and state"
                )
            self.check_votes(at, r, b, cp, eff)

    def check_votes(self, at: str, r: int, b: dict, cp: Signed, eff: list[bytes]) -> None:
        votes: dict[bytes, bool] = {}
        for raw in b["votes"]:
            try:
                v = open_wire(raw, "CheckpointVote", self.network) if isinstance(raw, bytes) else None
            except MessageError as err:
                self.bad(at, "bad_checkpointvote", str(err))
                return
            if v is None:
                self.bad(at, "bad_checkpointvote", "a vote is not a CheckpointVote wire")
                return
            vb = v.body
            if vb["job"] != self.j.id or vb["round"] != r:
                self.bad(at, "foreign_vote", "a vote is for another job or round")
                return
            if v.signer not in eff:
                self.bad(at, "foreign_vote", f"a vote by {v.signer.hex()[:16]}, not an effective verifier")
                return
            if v.signer in votes:
                self.bad(at, "duplicate_vote", "two votes by one verifier")
                return
            votes[v.signer] = vb["accept"] and vb["digest"] == cp.body["digest"] and vb["state"] == b["state"]
        t = tally(votes, eff, self.j.k)
        if t.accepts * 2 <= self.j.k:
            self.bad(at, "no_majority", f"{t.accepts} of {self.j.k} verifiers accepted this digest and state")

    # -- evidence --------------------------------------------------------------------------------

    def check_evidence(self, r: int, rec: RoundRecord, dec: dict[bytes, str]) -> None:
        j = self.j
        ups = {u.id: u for u in rec.update_msgs()}
        accused: set[bytes] = set()
        for e in j.evidence:
            p = e.body["proof"]
            try:
                u = open_update(p["update"], self.network)
            except (MessageError, KeyError, TypeError):
                continue  # collect() reported it
            if audit_spsa.round_of(j.spec, u) != r:
                continue
            at = _at(e, j, r)
            if u.signer != e.body["subject"] or u.id not in ups:
                self.bad(at, "bad_evidence", "rejected_update: the proof's update is not the subject's recorded update")
                continue
            if dec.get(u.id) != "reject":
                self.bad(at, "bad_evidence", "rejected_update: the round's checks did not reject this update")
                continue
            if not self._proof_rejects(e, p, u, r):
                self.bad(at, "bad_evidence", "rejected_update: the proof's checks are not a rejecting majority")
                continue
            accused.add(u.id)
        for uid, d in dec.items():
            if d == "reject" and uid not in accused:
                self.bad(
                    _at(rec.finalized[0][0], j, r),
                    "missing_evidence",
                    f"update of {ups[uid].signer.hex()[:16]} was rejected but no evidence records it",
                )

    def _proof_rejects(self, e: Entry, proof: dict, u: Signed, r: int) -> bool:
        """The proof's checks, by distinct candidates under one beacon the gateway committed to
        before, reject the update by more than k/2 (the attempt that rejected it may be one a
        restart superseded, so its effective set is not the finalised one)."""
        checks = proof.get("checks")
        if not isinstance(checks, list):
            return False
        rejects: set[bytes] = set()
        beacons: set[bytes] = set()
        cands = set(self.j.candidates)
        for raw in checks:
            try:
                c = open_wire(raw, "UpdateCheck", self.network) if isinstance(raw, bytes) else None
                verdicts = [Verdict.from_list(v) for v in c.body["verdicts"]] if c is not None else []
            except (MessageError, ValueError, TypeError):
                return False
            checked = u.body["step"] if self.spsa else r  # an SPSA check's `round` is the step
            if c is None or c.body["job"] != self.j.id or c.body["round"] != checked or c.signer not in cands:
                return False
            beacons.add(c.body["beacon"])
            if any(v.update == u.id and not v.accept for v in verdicts):
                rejects.add(c.signer)
        if len(beacons) != 1 or self.roots.get((e.feed, beacons.pop()), e.seq) >= e.seq:
            return False
        return len(rejects) * 2 > self.j.k


def audit_training(entries: list[Entry], network: str) -> TrainingAudit:
    """Every training rule over one ledger's entries (every feed it holds), in log order."""
    out = TrainingAudit()
    jobs, problems = collect(entries, network)
    out.violations.extend(TrainingViolation(*p) for p in problems)
    commitments: dict[tuple[bytes, int, bytes], int] = {}
    for e in entries:
        if e.type == "Commitment":
            key = (e.feed, e.body["size"], e.body["root"])
            commitments[key] = min(e.seq, commitments.get(key, e.seq))
    for j in jobs.values():
        out.jobs += 1
        _JobAudit(j, network, commitments, out).run()
    return out


def cross_check_finalized(audits: list[TrainingAudit]) -> list[tuple[int, TrainingViolation]]:
    """(index of the audit, violation) for every job round that two ledgers finalised differently:
    a checkpoint equivocation by the gateway (each round is finalised once)."""
    first: dict[tuple[bytes, bytes, int], tuple[int, bytes, str, str]] = {}
    out = []
    for i, a in enumerate(audits):
        for key, (cp_id, state, at) in a.finalized.items():
            seen = first.setdefault(key, (i, cp_id, state, at))
            if (seen[1], seen[2]) != (cp_id, state):
                detail = f"another replica finalised this round with checkpoint {seen[1].hex()[:16]} ({seen[3]})"
                out.append((i, TrainingViolation(at, "conflicting_finalized", detail)))
    return out


def audit_training_file(db_path: pathlib.Path) -> TrainingAudit:
    network, entries = read_ledger(db_path)
    return audit_training(entries, network)


def add_training_violations(reports: list[AuditReport]) -> None:
    """Run the training audit on the ledger of every report (the ledger audit has run) and add its
    violations, with the cross-ledger check of finalised checkpoints, to the reports."""
    audits = []
    for rep in reports:
        try:
            a = audit_training_file(pathlib.Path(rep.path))
        except LedgerReadError as e:
            rep.violations.append(Violation(rep.path, "unreadable_ledger", str(e)))
            a = TrainingAudit()
        rep.training_jobs, rep.training_rounds = a.jobs, a.rounds
        rep.violations.extend(Violation(v.where, v.code, v.detail) for v in a.violations)
        audits.append(a)
    for i, v in cross_check_finalized(audits):
        reports[i].violations.append(Violation(v.where, v.code, v.detail))
