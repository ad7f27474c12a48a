"""Every violation the audit names, each from a real signed ledger that holds exactly that one
fault (the same ledger without the fault audits clean)."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from tests.consensus_fixtures import NET, Open, Scenario, build, ident, make_result, make_task, make_vote, open_task
from trustgen.consensus import merkle
from trustgen.consensus.assignment import rank
from trustgen.consensus.audit import AuditReport, audit_ledger
from trustgen.consensus.encoding import encode
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger, leaf_data
from trustgen.consensus.messages import Signed, open_wire, sign


def codes(report: AuditReport) -> set[str]:
    return {v.code for v in report.violations}


def details(report: AuditReport, code: str) -> list[str]:
    return [v.detail for v in report.violations if v.code == code]


def accept_task(scen: Scenario, nonce: bytes, commit_result: bool = True) -> Open:
    """Accept a task on a fresh beacon, as the gateway does, and gather its assigned votes."""
    o = open_task(scen, nonce, commit_result=commit_result)
    by_key = {v.public_key: v for v in scen.verifiers}
    o.votes = [make_vote(by_key[k], o.result, True) for k in o.ranking[:3]]
    for v in o.votes:
        scen.ledger.append("VoteCast", {"vote": v.wire()})
    return o


def finalize(
    scen: Scenario, t: Open, mutate: Callable[[dict[str, Any]], None] | None = None, signer: Identity | None = None
) -> None:
    """Append the task's certificate, first changed by `mutate` and signed by `signer`."""
    cert = certify(scen.gateway, NET, t.task, t.beacon, t.candidates, t.result, t.votes)
    body = dict(cert.body)
    if mutate is not None:
        mutate(body)
    signer = signer or scen.gateway
    scen.ledger.append("TaskFinalized", {"certificate": sign(signer, "Certificate", NET, body).wire()})


def vote(verifier: Identity, result: Signed, **changes: Any) -> Signed:
    body = dict(make_vote(verifier, result, True).body, **changes)
    return sign(verifier, "Vote", NET, body)


def verifier_of(scen: Scenario, key: bytes) -> Identity:
    return next(v for v in scen.verifiers if v.public_key == key)


def audited(scen: Scenario) -> AuditReport:
    scen.ledger.close()
    return audit_ledger(scen.ledger.path)


@pytest.fixture()
def scen(tmp_path: pathlib.Path) -> Scenario:
    s = build(tmp_path / "ledger.db", n_tasks=1)
    return s


def test_honest_ledger_with_an_extra_task_reports_nothing(scen):
    finalize(scen, accept_task(scen, b"extra"))
    r = audited(scen)
    assert r.ok and r.violations == [] and r.tasks_checked == 2


# -- the certificate ------------------------------------------------------------------------------


def _foreign_result_vote(scen: Scenario, t: Open, body: dict) -> None:
    other = make_result(scen.worker, t.task, digest="sha256:" + "ee" * 32)
    first = verifier_of(scen, t.ranking[0])
    body["votes"] = [make_vote(first, other, True).wire()] + [v.wire() for v in t.votes[1:]]


def _foreign_task_vote(scen: Scenario, t: Open, body: dict) -> None:
    first = verifier_of(scen, t.ranking[0])
    forged = vote(first, t.result, task_id=make_task(ident(3), nonce=b"elsewhere").id)
    body["votes"] = [forged.wire()] + [v.wire() for v in t.votes[1:]]


def _unassigned_vote(scen: Scenario, t: Open, body: dict) -> None:
    standby = verifier_of(scen, t.ranking[3])
    body["votes"] = [v.wire() for v in t.votes[:2]] + [make_vote(standby, t.result, True).wire()]


def _duplicate_vote(scen: Scenario, t: Open, body: dict) -> None:
    first = verifier_of(scen, t.ranking[0])
    again = vote(first, t.result, distance=0.25)  # a second, different vote by the same verifier
    body["votes"] = [t.votes[0].wire(), again.wire(), t.votes[1].wire()]


def _skipped_stranger(scen: Scenario, t: Open, body: dict) -> None:
    body["skipped"] = [ident(77).public_key]  # changes no assignment, but was never a candidate


def _one_vote_decides(scen: Scenario, t: Open, body: dict) -> None:
    body["votes"] = [t.votes[0].wire()]  # 1 of 3: no majority, yet "accept" is recorded


CERT_FAULTS = {
    "foreign_vote: vote for another result": (_foreign_result_vote, "foreign_vote", "another task or result"),
    "foreign_vote: vote for another task": (_foreign_task_vote, "foreign_vote", "another task or result"),
    "foreign_vote: vote of an unassigned verifier": (_unassigned_vote, "foreign_vote", "not assigned"),
    "duplicate_vote": (_duplicate_vote, "duplicate_vote", "two votes by one verifier"),
    "bad_assignment: skipped a non-candidate": (_skipped_stranger, "bad_assignment", "never candidates"),
    "bad_decision: no majority": (_one_vote_decides, "bad_decision", "1 accept, 0 reject of 3"),
}


@pytest.mark.parametrize("fault", list(CERT_FAULTS))
def test_certificate_faults(scen, fault):
    change, code, detail = CERT_FAULTS[fault]
    t = accept_task(scen, b"faulty")
    finalize(scen, t, lambda body: change(scen, t, body))
    r = audited(scen)
    assert codes(r) == {code}, r.violations
    assert len(r.violations) == 1 and detail in r.violations[0].detail


def test_certificate_of_another_gateway_in_this_feed(scen):
    other = ident(4)
    t = accept_task(scen, b"theirs")
    finalize(scen, t, lambda body: body.update(gateway=other.public_key), signer=other)
    r = audited(scen)
    assert codes(r) == {"bad_certificate"} and details(r, "bad_certificate") == [
        "certificate signed by another node than the feed"
    ]


def test_certificate_for_a_task_never_accepted(scen):
    # Votes and a certificate for a task the gateway never recorded as accepted.
    task = make_task(ident(3), nonce=b"never")
    result = make_result(scen.worker, task)
    candidates = sorted(v.public_key for v in scen.verifiers)
    ranking = rank(merkle.EMPTY_ROOT, task.id, candidates, scen.worker.public_key)
    votes = [make_vote(verifier_of(scen, k), result, True) for k in ranking[:3]]
    cert = certify(scen.gateway, NET, task, merkle.EMPTY_ROOT, candidates, result, votes)
    scen.ledger.append("TaskFinalized", {"certificate": cert.wire()})
    r = audited(scen)
    assert codes(r) == {"unknown_task"} and len(r.violations) == 1


def test_certificate_for_a_result_never_committed(scen):
    finalize(scen, accept_task(scen, b"uncommitted", commit_result=False))
    r = audited(scen)
    assert codes(r) == {"unknown_result"} and len(r.violations) == 1


def test_certificate_naming_another_worker_than_the_result(scen):
    # The committed result is the worker's; the certificate credits someone else with it.
    t = accept_task(scen, b"credit")
    finalize(scen, t, lambda body: body.update(worker=ident(5).public_key))
    r = audited(scen)
    assert codes(r) == {"unknown_result"} and len(r.violations) == 1


def test_unreadable_certificate(scen):
    scen.ledger.append("TaskFinalized", {"certificate": b"\x01not a certificate"})
    r = audited(scen)
    assert codes(r) == {"bad_certificate"} and r.tasks_checked == 1  # the honest task is still checked


# -- the messages inside entries --------------------------------------------------------------------


def _forged(msg: Signed, forger: Identity) -> bytes:
    """The message's payload under another key's signature (its signer field is unchanged)."""
    return encode({"payload": msg.payload, "sig": forger.sign(msg.payload)})


def _other_network(msg_type: str, signer: Identity, body: dict) -> bytes:
    return sign(signer, msg_type, "trustgen-elsewhere", body).wire()


def test_unreadable_or_forged_task_result_and_vote(scen):
    client = ident(3)
    task = make_task(client, nonce=b"forged")
    result = make_result(scen.worker, task)
    v = make_vote(scen.verifiers[0], result, True)
    led = scen.ledger
    c = led.commit()
    accepted = {"beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": []}
    led.append("TaskAccepted", dict(accepted, task=b"garbage"))
    led.append("TaskAccepted", dict(accepted, task=_forged(task, ident(99))))
    led.append("TaskAccepted", dict(accepted, task=_other_network("Task", client, task.body)))
    led.append("ResultCommitted", {"result": _forged(result, ident(99))})
    led.append("ResultCommitted", {"result": _other_network("Result", scen.worker, result.body)})
    led.append("VoteCast", {"vote": b"\x00"})
    led.append("VoteCast", {"vote": _forged(v, ident(99))})
    r = audited(scen)
    found = [x.code for x in r.violations]
    assert sorted(found) == ["bad_result"] * 2 + ["bad_task"] * 3 + ["bad_vote"] * 2, r.violations
    assert any("signature is invalid" in d for d in details(r, "bad_task"))
    assert any("network" in d for d in details(r, "bad_result"))


# -- storage and commitments ------------------------------------------------------------------------


def test_stored_hash_column_that_differs_from_the_entry(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    for i in range(3):
        led.append("NodeJoined", {"address": str(i), "roles": []})
    led.close()
    assert audit_ledger(tmp_path / "ledger.db").ok
    db = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    db.execute("UPDATE entries SET hash = ? WHERE log_index = 2", (b"\x05" * 32,))  # the last entry
    db.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert codes(r) == {"hash_mismatch"} and len(r.violations) == 1 and "log index 2" in r.violations[0].where


def test_commitment_that_shrinks(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    for i in range(3):
        led.append("NodeJoined", {"address": str(i), "roles": []})
    led.commit()  # size 3
    led.append("NodeJoined", {"address": "3", "roles": []})
    # A true root, but of a shorter prefix than the commitment before it: the log cannot shrink.
    leaves = [merkle.leaf_hash(leaf_data(e.feed, e.seq, e.hash)) for e in led.iter_entries()]
    led.append("Commitment", {"size": 2, "root": merkle.root(leaves[:2])})
    led.commit()  # an honest one after it
    led.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert codes(r) == {"inconsistent_commitment"} and len(r.violations) == 1
    assert "shrinks from 3" in r.violations[0].detail and r.commitments_checked == 3


def test_commitment_covering_entries_not_yet_stored(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    led.append("NodeJoined", {"address": "0", "roles": []})
    led.append("Commitment", {"size": 5, "root": b"\x00" * 32})
    led.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert codes(r) == {"bad_commitment"} and "not yet stored" in r.violations[0].detail


# -- evidence ----------------------------------------------------------------------------------------


def test_equivocation_proofs_must_show_a_fork(scen):
    led = scen.ledger
    liar = ident(7)
    a = Ledger(led.path.parent / "fork-a.db", NET, liar)
    a1 = a.append("NodeJoined", {"address": "a", "roles": []})
    a2 = a.append("NodeJoined", {"address": "a2", "roles": []})
    subject = liar.public_key
    led.append(
        "Evidence",
        {"kind": "equivocation", "subject": subject, "proof": {"a_payload": b"x", "a_sig": b"y"}},
    )  # unreadable
    same = {"a_payload": a1.payload, "a_sig": a1.sig, "b_payload": a1.payload, "b_sig": a1.sig}
    led.append("Evidence", {"kind": "equivocation", "subject": subject, "proof": same})  # one entry twice
    seqs = {"a_payload": a1.payload, "a_sig": a1.sig, "b_payload": a2.payload, "b_sig": a2.sig}
    led.append("Evidence", {"kind": "equivocation", "subject": subject, "proof": seqs})  # two seqs: no fork
    b = Ledger(led.path.parent / "fork-b.db", NET, liar)
    b1 = b.append("NodeJoined", {"address": "b", "roles": []})
    fork = {"a_payload": a1.payload, "a_sig": a1.sig, "b_payload": b1.payload, "b_sig": b1.sig}
    led.append("Evidence", {"kind": "equivocation", "subject": ident(8).public_key, "proof": fork})  # wrong subject
    led.append("Evidence", {"kind": "equivocation", "subject": subject, "proof": fork})  # the true one
    a.close()
    b.close()
    r = audited(scen)
    assert [v.code for v in r.violations] == ["bad_evidence"] * 4
    assert "equivocation proof invalid" in r.violations[0].detail
    assert all("not two entries at one (feed, seq)" in v.detail for v in r.violations[1:])
    assert r.equivocations == [{"feed": subject.hex(), "seq": 1, "reported_by": scen.gateway.public_key.hex()}]


def test_accusations_whose_proof_does_not_hold(scen):
    led = scen.ledger
    cert = next(
        open_wire(e.body["certificate"], "Certificate", NET) for e in led.iter_entries() if e.type == "TaskFinalized"
    )
    voter = open_wire(cert.body["votes"][0], "Vote", NET).body["verifier"]
    worker = scen.worker.public_key
    other_gw = ident(4)
    theirs = sign(other_gw, "Certificate", NET, dict(cert.body, gateway=other_gw.public_key, decision="reject"))
    stranger_vote = make_vote(ident(60), make_result(scen.worker, scen.tasks[0]), False)
    accusations = [
        ("rejected_result", worker, {"certificate": b"junk"}, "certificate in the proof is invalid"),
        ("rejected_result", worker, {}, "certificate in the proof is invalid"),
        ("rejected_result", worker, {"certificate": theirs.wire()}, "not the accuser's"),
        ("minority_vote", voter, {"certificate": cert.wire(), "vote": b"junk"}, "vote in the proof is invalid"),
        (
            "minority_vote",
            voter,
            {"certificate": cert.wire(), "vote": stranger_vote.wire()},
            "not the accused verifier's vote",
        ),
        (
            "minority_vote",
            ident(60).public_key,
            {"certificate": cert.wire(), "vote": cert.body["votes"][0]},
            "not the accused verifier's vote",
        ),
    ]
    for kind, subject, proof, _ in accusations:
        led.append("Evidence", {"kind": kind, "subject": subject, "proof": proof})
    r = audited(scen)
    assert [v.code for v in r.violations] == ["bad_evidence"] * len(accusations)
    for v, (kind, _, _, why) in zip(r.violations, accusations):
        assert v.detail.startswith(kind) and why in v.detail, v.detail
