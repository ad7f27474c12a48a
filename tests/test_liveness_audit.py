"""Liveness facts in the ledger and what the audit holds them to: one terminal state per task
(TaskFailed or an accepting TaskFinalized), a standby replacing a skipped verifier only with a
record that the verifier missed, late votes recorded and judged like counted ones, and a
verifier's demotion (and restoration) replayed from the gateway's feed. Every ledger is a real
one written by the Ledger class; every edit is a signed append, as a dishonest gateway would."""

from __future__ import annotations

import pathlib
import time

import pytest

from tests.consensus_fixtures import NET, Open, Scenario, build, ident, make_task, make_vote, open_task
from trustgen.consensus.audit import AuditReport, audit_ledger
from trustgen.consensus.audit_incremental import FULL, REBUILT, audit_incremental
from trustgen.consensus.finality import certify
from trustgen.consensus.messages import Signed
from trustgen.consensus.reputation import reputation
from trustgen.node import votes as gw_votes
from trustgen.node.scheduling import recover_tasks
from trustgen.node.votes import Miss


def codes(report: AuditReport) -> list[str]:
    return sorted(v.code for v in report.violations)


def audited(scen: Scenario) -> AuditReport:
    return audit_ledger(scen.ledger.path)


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture()
def scen(tmp_path: pathlib.Path) -> Scenario:
    return build(tmp_path / "gw" / "ledger.db", n_tasks=1)


def by_key(scen: Scenario) -> dict[bytes, object]:
    return {v.public_key: v for v in scen.verifiers}


def finalise(scen: Scenario, t: Open, voters: list[bytes], skipped: list[bytes] | None = None) -> Signed:
    keys = by_key(scen)
    vs = [make_vote(keys[k], t.result, True) for k in voters]  # type: ignore[arg-type]
    for v in vs:
        scen.ledger.append("VoteCast", {"vote": v.wire()})
    cert = certify(scen.gateway, NET, t.task, t.beacon, t.candidates, t.result, vs, skipped or [])
    scen.ledger.append("TaskFinalized", {"certificate": cert.wire()})
    return cert


def skip(scen: Scenario, t: Open, verifier: bytes, reason: str = "deadline", asked: int = 0, deadline_ms: int = 1):
    if not asked:  # asked now (after the result), recorded once its deadline has passed
        asked = now_ms()
        while now_ms() < asked + deadline_ms:
            time.sleep(0.0005)
    miss = Miss(reason, asked)
    gw_votes.record_skip(scen.ledger, t.task, t.result, verifier, miss, deadline_ms)


def fail(scen: Scenario, task_id: bytes, reason: str = "expired", detail: str = "") -> None:
    scen.ledger.append("TaskFailed", {"task_id": task_id, "reason": reason, "detail": detail})


def test_a_failed_task_is_a_clean_terminal_state_and_recovers_as_failed(scen):
    t = open_task(scen, b"fails")
    fail(scen, t.task.id, "expired", "verifiers gave no majority")
    assert audited(scen).ok
    st = recover_tasks(scen.ledger, scen.gateway.public_key, NET, blobs=None)  # type: ignore[arg-type]
    assert (st[t.task.id].state, st[t.task.id].detail) == ("failed", "expired: verifiers gave no majority")


@pytest.mark.parametrize("second", ["failed", "finalized"])
def test_a_ledger_edited_to_add_a_second_terminal_state_fails_audit(scen, second):
    """A finalised task later also failed, or a failed one failed again: the second terminal entry
    is flagged, whichever kind it is (and a failed task later accepted likewise)."""
    finalised = scen.tasks[0]
    if second == "failed":
        fail(scen, finalised.id)
        target = finalised.id
    else:
        t = open_task(scen, b"twice")
        fail(scen, t.task.id, "rejected")
        fail(scen, t.task.id, "expired")
        target = t.task.id
    r = audited(scen)
    assert codes(r) == ["second_terminal_state"] and target.hex()[:16] in r.violations[0].detail
    # The incremental audit gives the same verdict (it hands liveness entries to the full audit).
    out = audit_incremental(scen.ledger.path)
    assert out.mode == FULL and codes(out.report) == ["second_terminal_state"]


def test_a_failed_task_then_accepted_fails_audit(scen):
    t = open_task(scen, b"late accept")
    fail(scen, t.task.id, "expired")
    finalise(scen, t, t.ranking[:3])
    assert codes(audited(scen)) == ["second_terminal_state"]
    # Recovery keeps the first terminal state: the task stays failed.
    st = recover_tasks(scen.ledger, scen.gateway.public_key, NET, blobs=None)  # type: ignore[arg-type]
    assert st[t.task.id].state == "failed"


def test_failures_must_name_a_known_reason_and_an_accepted_task(scen):
    fail(scen, ident(99).public_key, "expired")  # a task id never accepted
    t = open_task(scen, b"odd reason")
    fail(scen, t.task.id, "because")
    assert codes(audited(scen)) == ["bad_failure", "unknown_task"]


def test_a_standby_counts_only_when_the_skipped_verifier_is_recorded_as_missing(scen):
    # No record at all: the certificate's skip is unjustified.
    t = open_task(scen, b"no record")
    finalise(scen, t, t.ranking[1:4], skipped=[t.ranking[0]])
    r = audited(scen)
    assert codes(r) == ["unjustified_skip"] and "no VerifierSkipped record" in r.violations[0].detail


def test_a_deadline_miss_recorded_before_the_deadline_is_unjustified(scen):
    t = open_task(scen, b"too early")
    skip(scen, t, t.ranking[0], "deadline", asked=now_ms(), deadline_ms=60_000)  # recorded at once
    finalise(scen, t, t.ranking[1:4], skipped=[t.ranking[0]])
    r = audited(scen)
    assert codes(r) == ["unjustified_skip"] and "before the deadline" in r.violations[0].detail


def test_a_record_after_the_certificate_does_not_justify_it(scen):
    t = open_task(scen, b"after")
    finalise(scen, t, t.ranking[1:4], skipped=[t.ranking[0]])
    skip(scen, t, t.ranking[0])
    assert codes(audited(scen)) == ["unjustified_skip"]


def test_a_recorded_miss_justifies_the_standby(scen):
    t = open_task(scen, b"justified")
    skip(scen, t, t.ranking[0], "deadline", deadline_ms=1)
    finalise(scen, t, t.ranking[1:4], skipped=[t.ranking[0]])
    r = audited(scen)
    assert r.ok, r.violations


def test_a_late_minority_vote_is_evidence_and_never_changes_the_decision(scen):
    """Two matching votes decide; the third assigned verifier's vote arrives after the
    certificate and disagrees: it is recorded, it is evidence, it costs reputation, the audit
    passes and the decision stands."""
    t = open_task(scen, b"late")
    cert = finalise(scen, t, t.ranking[:2])
    assert cert.body["decision"] == "accept" and len(cert.body["votes"]) == 2
    late_key = t.ranking[2]
    late = make_vote(by_key(scen)[late_key], t.result, False)  # type: ignore[arg-type]
    before = reputation(scen.ledger.iter_entries(), NET).get(late_key, 0.5)
    assert gw_votes.record_late_vote(scen.ledger, cert, late)
    kinds = [(e.type, e.body.get("kind")) for e in scen.ledger.iter_entries()][-2:]
    assert kinds == [("VoteCast", None), ("Evidence", "minority_vote")]
    assert audited(scen).ok
    rep = reputation(scen.ledger.iter_entries(), NET)
    assert rep[late_key] < before  # debited as a counted minority vote would be
    # A vote of a verifier not assigned to the result is not a late vote: nothing is written.
    outsider = make_vote(by_key(scen)[t.ranking[3]], t.result, False)  # type: ignore[arg-type]
    size = scen.ledger.size()
    assert not gw_votes.record_late_vote(scen.ledger, cert, outsider) and scen.ledger.size() == size


def accept(scen: Scenario, nonce: bytes, candidates: list[bytes]) -> None:
    c = scen.ledger.commit()
    task = make_task(ident(3), nonce=nonce)
    body = {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": candidates}
    scen.ledger.append("TaskAccepted", body)


def test_an_unresponsive_verifier_is_demoted_until_restored(scen):
    """After a deadline miss in the owner's feed, its next tasks must leave the verifier out of
    the candidates (the pool has a standby to spare); after a VerifierRestored, it is back."""
    t = open_task(scen, b"miss")
    slow = t.ranking[0]
    skip(scen, t, slow, "deadline")
    finalise(scen, t, t.ranking[1:4], skipped=[slow])
    everyone = sorted(t.candidates)
    accept(scen, b"demoted", [k for k in everyone if k != slow])
    assert audited(scen).ok and audit_incremental(scen.ledger.path).report.ok
    accept(scen, b"not demoted", everyone)
    r = audited(scen)
    assert codes(r) == ["bad_candidates"], r.violations
    # The incremental audit never vouches for it: every candidate listed looks like no demotion.
    assert codes(audit_incremental(scen.ledger.path).report) == ["bad_candidates"]
    scen.ledger.append("VerifierRestored", {"verifier": slow})
    accept(scen, b"restored", everyone)
    assert codes(audited(scen)) == ["bad_candidates"]  # only the one before the restore
    # A skip for a bad vote is no sign of unresponsiveness: no demotion.
    t2 = open_task(scen, b"bad vote")
    skip(scen, t2, slow, "bad_vote")
    accept(scen, b"after a bad vote", everyone)
    assert codes(audited(scen)) == ["bad_candidates"]


def test_the_incremental_audit_vouches_for_liveness_facts_and_remembers_terminal_states(scen):
    """Failures, skip records after a certificate and restorations stay on the fast path; a second
    terminal state in a later extension is caught against the state the first audit persisted."""
    t = open_task(scen, b"late miss")
    finalise(scen, t, t.ranking[:2])
    skip(scen, t, t.ranking[2], "deadline")  # the third assigned verifier missed, after the decision
    scen.ledger.append("VerifierRestored", {"verifier": t.ranking[2]})
    failed = open_task(scen, b"expires")
    fail(scen, failed.task.id, "expired")
    first = audit_incremental(scen.ledger.path)
    assert first.mode == REBUILT and first.report.ok, first.report.violations
    finalise(scen, failed, failed.ranking[:3])  # accepted after it failed
    out = audit_incremental(scen.ledger.path)
    assert out.mode == FULL and codes(out.report) == ["second_terminal_state"]


def test_the_incremental_audit_never_vouches_for_a_missed_demotion(scen):
    """A state saved after a late miss knows the verifier is unresponsive: a later task of the
    owner listing it among its candidates (no demotion) is handed to the full audit, which flags
    it, as a fresh full audit does."""
    t = open_task(scen, b"late miss")
    finalise(scen, t, t.ranking[:2])
    skip(scen, t, t.ranking[2], "deadline")
    assert audit_incremental(scen.ledger.path).report.ok
    accept(scen, b"not demoted", sorted(t.candidates))
    assert codes(audited(scen)) == ["bad_candidates"]
    out = audit_incremental(scen.ledger.path)
    assert out.mode == FULL and codes(out.report) == ["bad_candidates"]
