"""What an audit can only know by comparing ledgers: a node that cut the end off its own feed, seen
against other nodes' replicas of it; forks between replicas; an entry stored twice in a tampered
store; and VoteCast entries from verifiers the task never assigned. Every ledger is a real one
written by the Ledger class, every fault a real change of its SQLite file."""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time

import pytest

from tests.consensus_fixtures import NET, Open, Scenario, build, ident, make_result, make_task, make_vote, open_task
from tests.helpers import run_cli
from trustgen.consensus import audit
from trustgen.consensus.audit import AuditReport, audit_ledger, audit_path, audit_paths
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed


def codes(report: AuditReport) -> list[str]:
    return sorted(v.code for v in report.violations)


def by_name(reports: list[AuditReport]) -> dict[str, AuditReport]:
    return {pathlib.Path(r.path).parent.name: r for r in reports}


def replicate(src: Ledger, dst: Ledger) -> None:
    """What gossip does: every entry src holds, in src's log order, ingested by dst."""
    for e in src.iter_entries():
        dst.ingest(e.payload, e.sig)


def run_task(scen: Scenario, nonce: bytes, skip: int = 0) -> Open:
    """One more task accepted, voted on by its effective verifiers (the first `skip` of the
    ranking skipped, as if they had not answered) and finalised in the gateway's feed, then a
    commitment."""
    t = open_task(scen, nonce)
    skipped = t.ranking[:skip]
    by_key = {v.public_key: v for v in scen.verifiers}
    votes = [make_vote(by_key[k], t.result, True) for k in t.ranking[skip : skip + 3]]
    for k in skipped:  # why each was passed over, before the certificate (asked after the result)
        body = {"task_id": t.task.id, "result_id": t.result.id, "verifier": k, "reason": "unavailable"}
        scen.ledger.append("VerifierSkipped", {**body, "asked": int(time.time() * 1000), "deadline_ms": 1000})
    for v in votes:
        scen.ledger.append("VoteCast", {"vote": v.wire()})
    cert = certify(scen.gateway, NET, t.task, t.beacon, t.candidates, t.result, votes, skipped)
    scen.ledger.append("TaskFinalized", {"certificate": cert.wire()})
    scen.ledger.commit()
    return t


@pytest.fixture()
def net(tmp_path: pathlib.Path) -> tuple[pathlib.Path, Scenario, Ledger]:
    """A cluster directory as `trustgen cluster up --dir net` lays it out: the gateway's node
    directory and a verifier's, each with a ledger.db holding every feed it replicated. The
    verifier has replicated the gateway's ledger, including a second task."""
    root = tmp_path / "net"
    scen = build(root / "gateway" / "ledger.db", n_tasks=1)
    run_task(scen, b"second")
    v0 = Ledger(root / "verifier-0" / "ledger.db", NET, scen.verifiers[0])
    replicate(scen.ledger, v0)
    return root, scen, v0


def gateway_feed_tail(scen: Scenario) -> tuple[int, int]:
    """(head seq of the gateway's feed, size of its log)."""
    return scen.ledger.head(scen.gateway.public_key)[0], scen.ledger.size()


def delete_own_tail(path: pathlib.Path, feed: bytes, keep: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DELETE FROM entries WHERE feed = ? AND seq > ?", (feed, keep))
    db.close()


# -- 1. truncation across replicas -----------------------------------------------------------------


def test_honest_cluster_directory_audits_clean_with_every_replica_compared(net):
    root, scen, v0 = net
    scen.ledger.close()
    v0.close()
    reports = by_name(audit_path(root))
    assert set(reports) == {"gateway", "verifier-0"}
    for r in reports.values():
        assert r.ok and r.behind == [] and r.equivocations == [], (r.path, r.violations)
    assert reports["verifier-0"].tasks_checked == 2


def test_truncated_own_feed_passes_alone_but_not_against_a_replica(net):
    root, scen, v0 = net
    gw = scen.gateway.public_key
    head, log_size = gateway_feed_tail(scen)
    scen.ledger.close()
    v0.close()
    # The gateway deletes the end of its own feed: the last vote, the certificate and the
    # commitment after it. They were the end of its log, so its ledger alone stays consistent.
    delete_own_tail(root / "gateway" / "ledger.db", gw, head - 3)
    alone = audit_ledger(root / "gateway" / "ledger.db")
    assert alone.ok, alone.violations

    reports = by_name(audit_path(root))
    r = reports["gateway"]
    assert codes(r) == ["truncated_feed", "truncated_log"], r.violations
    cut = next(v for v in r.violations if v.code == "truncated_feed")
    assert cut.where == f"feed {gw.hex()[:16]} seq {head - 2}..{head}"
    assert f"entries {head - 2}..{head} of this node's own feed are missing" in cut.detail
    assert "verifier-0" in cut.detail and "1 Commitment" in cut.detail and "1 TaskFinalized" in cut.detail
    log = next(v for v in r.violations if v.code == "truncated_log")
    # The deleted commitment covered every log position before its own.
    assert f"covers {log_size - 1} log positions" in log.detail and f"holds {log_size - 3}" in log.detail
    assert reports["verifier-0"].ok and reports["verifier-0"].behind == []

    # The same two ledgers given as separate paths: the same finding.
    again = by_name(audit_paths([root / "verifier-0", root / "gateway" / "ledger.db"]))
    assert codes(again["gateway"]) == ["truncated_feed", "truncated_log"]


def test_commitment_held_by_a_replica_is_checked_against_the_owners_log(net):
    """The gateway deleted its last commitment and then reordered the entries it had covered
    (after every commitment it kept): alone its ledger is consistent; the replica's copy of the
    deleted commitment no longer matches its log."""
    root, scen, v0 = net
    gw = scen.gateway.public_key
    head, log_size = gateway_feed_tail(scen)
    scen.ledger.close()
    v0.close()
    path = root / "gateway" / "ledger.db"
    delete_own_tail(path, gw, head - 1)  # only the last commitment
    db = sqlite3.connect(path, isolation_level=None)
    a, b = (
        i
        for (i,) in db.execute("SELECT log_index FROM entries WHERE type = 'VoteCast' ORDER BY log_index DESC LIMIT 2")
    )
    db.execute("UPDATE entries SET log_index = -log_index WHERE log_index IN (?, ?)", (a, b))
    db.execute("UPDATE entries SET log_index = ? + log_index WHERE log_index < 0", (a + b,))  # a and b trade places
    db.close()
    alone = audit_ledger(path)
    assert alone.ok, alone.violations
    r = by_name(audit_path(root))["gateway"]
    assert codes(r) == ["bad_commitment", "truncated_feed"], r.violations
    held = next(v for v in r.violations if v.code == "bad_commitment")
    assert held.where == f"feed {gw.hex()[:16]} seq {head}"
    assert "verifier-0" in held.detail and f"first {log_size - 1} log entries" in held.detail


def test_a_node_that_appended_during_the_audit_is_not_called_truncated(net):
    """Ledgers are read one after another: a live gateway appends (and gossips) after its own
    ledger was read and before the verifier's replica is. Its ledger is read again first."""
    root, scen, v0 = net
    gw = scen.gateway.public_key
    head = scen.ledger.head(gw)[0]
    read_first = audit._audit(root / "gateway" / "ledger.db")
    run_task(scen, b"during")
    replicate(scen.ledger, v0)
    read_later = audit._audit(root / "verifier-0" / "ledger.db")
    reports = audit._cross_check([read_first, read_later])
    assert all(r.ok and r.behind == [] for r in reports), [r.violations for r in reports]
    scen.ledger.close()
    v0.close()
    delete_own_tail(root / "gateway" / "ledger.db", gw, head)  # what it appended, cut off again
    assert codes(by_name(audit_path(root))["gateway"]) == ["truncated_feed", "truncated_log"]


def test_a_lagging_replica_is_reported_but_is_no_violation(net):
    """A replica of another node's feed that ends early cannot be told apart from one gossip
    has not caught up yet: listed, not a violation."""
    root, scen, v0 = net
    gw = scen.gateway.public_key
    head = scen.ledger.head(gw)[0]
    scen.ledger.close()
    v0.close()
    delete_own_tail(root / "verifier-0" / "ledger.db", gw, head - 2)  # the replica's end of the gateway feed
    reports = by_name(audit_path(root))
    assert all(r.ok for r in reports.values()), [r.violations for r in reports.values()]
    assert reports["verifier-0"].behind == [
        {"feed": gw.hex(), "seq": head - 2, "replica": str(root / "gateway" / "ledger.db"), "replica_seq": head}
    ]
    assert reports["gateway"].behind == []


def test_a_fork_between_replicas_is_an_equivocation_not_a_truncation(net):
    root, scen, v0 = net
    liar = ident(7)
    mine = Ledger(root / "liar" / "ledger.db", NET, liar)
    mine.append("NodeJoined", {"address": "a", "roles": ["worker"]})
    other = Ledger(root.parent / "elsewhere.db", NET, liar)  # the same key, a second history
    for addr in ("b", "c"):
        e = other.append("NodeJoined", {"address": addr, "roles": ["worker"]})
        v0.ingest(e.payload, e.sig)  # the verifier only ever saw the second history
    for led in (mine, other, scen.ledger, v0):
        led.close()
    reports = by_name(audit_path(root))
    assert all(r.ok for r in reports.values()), [r.violations for r in reports.values()]
    assert reports["liar"].equivocations == [
        {
            "feed": liar.public_key.hex(),
            "seq": 1,
            "reported_by": scen.verifiers[0].public_key.hex(),
            "replica": str(root / "verifier-0" / "ledger.db"),
        }
    ]
    assert [(e["feed"], e["seq"]) for e in reports["verifier-0"].equivocations] == [(liar.public_key.hex(), 1)]
    assert reports["liar"].behind == [] and reports["verifier-0"].behind == []


def test_audit_cli_compares_replicas(net):
    root, scen, v0 = net
    gw = scen.gateway.public_key
    head = scen.ledger.head(gw)[0]
    scen.ledger.close()
    v0.close()
    delete_own_tail(root / "gateway" / "ledger.db", gw, head - 3)
    res = run_cli("audit", str(root / "gateway"), "--json")
    assert res.returncode == 0, res.stdout + res.stderr  # one node's directory alone cannot know
    res = run_cli("audit", str(root), "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    ledgers = {pathlib.Path(x["path"]).parent.name: x for x in json.loads(res.stdout)["ledgers"]}
    assert [v["code"] for v in ledgers["gateway"]["violations"]] == ["truncated_feed", "truncated_log"]
    both = run_cli("audit", str(root / "gateway"), str(root / "verifier-0" / "ledger.db"))
    assert both.returncode == 1 and "truncated_feed" in both.stdout


def test_the_same_ledger_given_twice_is_audited_once(net):
    root, scen, v0 = net
    scen.ledger.close()
    v0.close()
    path = root / "gateway" / "ledger.db"
    reports = audit_paths([path, root / "gateway", root / "gateway" / ".." / "gateway" / "ledger.db"])
    assert [r.path for r in reports] == [str(path)] and reports[0].ok


# -- 2. an entry stored twice -----------------------------------------------------------------------


def drop_primary_key(path: pathlib.Path) -> sqlite3.Connection:
    """The entries table rebuilt without its (feed, seq) key or unique log index, as someone with
    the file can do; what it held is unchanged."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE loose(feed BLOB, seq INTEGER, hash BLOB, type TEXT, payload BLOB, sig BLOB, log_index INTEGER);
        INSERT INTO loose SELECT * FROM entries;
        DROP TABLE entries;
        ALTER TABLE loose RENAME TO entries;
        """
    )
    return db


def test_an_entry_stored_twice_is_a_duplicate_not_a_gap(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=1)
    gw = scen.gateway.public_key
    scen.ledger.close()
    db = drop_primary_key(tmp_path / "ledger.db")
    assert audit_ledger(tmp_path / "ledger.db").ok  # the rebuilt table alone changes nothing
    db.execute(
        "INSERT INTO entries SELECT feed, seq, hash, type, payload, sig, "
        "(SELECT MAX(log_index) + 1 FROM entries) FROM entries WHERE feed = ? AND seq = 1",
        (gw,),
    )
    db.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert codes(r) == ["duplicate_entry"], r.violations
    assert r.violations[0].where == f"feed {gw.hex()[:16]} seq 1"
    assert r.violations[0].detail == "the entry is stored twice"


def test_a_second_entry_at_one_seq_in_one_store_is_a_duplicate_entry(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=1)
    gw = scen.gateway.public_key
    fork = Ledger(tmp_path / "fork.db", NET, scen.gateway).append("NodeJoined", {"address": "x", "roles": []})
    scen.ledger.close()
    db = drop_primary_key(tmp_path / "ledger.db")
    db.execute(
        "INSERT INTO entries VALUES (?, 1, ?, 'NodeJoined', ?, ?, (SELECT MAX(log_index) + 1 FROM entries))",
        (gw, fork.hash, fork.payload, fork.sig),
    )
    db.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert codes(r) == ["duplicate_entry"], r.violations
    assert "two different entries" in r.violations[0].detail


# -- 3. VoteCast entries from verifiers the task never assigned ----------------------------------------


@pytest.fixture()
def scen(tmp_path: pathlib.Path) -> Scenario:
    return build(tmp_path / "ledger.db", n_tasks=1)


def cast(scen: Scenario, voter: Identity, result: Signed) -> None:
    scen.ledger.append("VoteCast", {"vote": make_vote(voter, result, True).wire()})


def verifier(scen: Scenario, key: bytes) -> Identity:
    return next(v for v in scen.verifiers if v.public_key == key)


def audited(scen: Scenario) -> AuditReport:
    scen.ledger.close()
    return audit_ledger(scen.ledger.path)


def reopen(scen: Scenario) -> None:
    """Check the ledger audits clean so far, then open it again for the one faulty entry."""
    clean = audited(scen)
    assert clean.ok, clean.violations
    scen.ledger = Ledger(scen.ledger.path, NET, scen.gateway)


def test_vote_cast_by_a_registered_verifier_not_assigned_to_the_certified_task(scen):
    t = run_task(scen, b"t")
    reopen(scen)
    cast(scen, verifier(scen, t.ranking[3]), t.result)  # a standby: a verifier, but never asked
    r = audited(scen)
    assert codes(r) == ["foreign_vote"], r.violations
    assert "not assigned" in r.violations[0].detail and t.ranking[3].hex()[:16] in r.violations[0].detail


def test_vote_cast_by_a_key_that_is_no_verifier(scen):
    t = run_task(scen, b"t")
    reopen(scen)
    cast(scen, ident(60), t.result)
    assert codes(audited(scen)) == ["foreign_vote"]


def test_vote_cast_by_a_skipped_verifier(scen):
    """A skipped verifier gave no vote that counts and its standby stood in: a VoteCast of the
    skipped one contradicts the certificate, the standby's is the honest record."""
    t = run_task(scen, b"skip", skip=1)
    reopen(scen)
    cast(scen, verifier(scen, t.ranking[0]), t.result)
    r = audited(scen)
    assert codes(r) == ["foreign_vote"] and t.ranking[0].hex()[:16] in r.violations[0].detail


def test_vote_cast_for_a_task_without_certificate(scen):
    """Before its certificate (a gateway that stopped between the votes and the certificate), a
    task's votes may come from any verifier of its ranking, never from anyone else."""
    t = open_task(scen, b"open")
    for k in t.ranking:
        cast(scen, verifier(scen, k), t.result)  # any ranked verifier may have been asked
    reopen(scen)
    cast(scen, ident(60), t.result)  # a key that was never a candidate
    r = audited(scen)
    assert codes(r) == ["foreign_vote"] and ident(60).public_key.hex()[:16] in r.violations[0].detail


def test_vote_cast_by_the_worker_on_its_own_result(scen):
    """The worker is never among its task's ranked verifiers, even when it is a registered
    verifier itself."""
    worker = scen.verifiers[2]
    t = open_task(scen, b"self", worker=worker)
    assert worker.public_key not in t.ranking
    reopen(scen)
    cast(scen, worker, t.result)
    assert codes(audited(scen)) == ["foreign_vote"]


def test_vote_cast_for_a_task_this_gateway_never_accepted(scen):
    t = make_task(ident(3), nonce=b"nowhere")
    cast(scen, scen.verifiers[0], make_result(scen.worker, t))
    r = audited(scen)
    assert codes(r) == ["unknown_task"] and "never accepted" in r.violations[0].detail


def test_one_task_certified_by_two_gateways_is_checked_against_each_ones_acceptance(scen, tmp_path):
    """A client may send one task to two gateways: each accepts it on its own beacon. A ledger
    replicating both feeds checks each certificate against its own gateway's acceptance."""
    other = Scenario(Ledger(tmp_path / "other.db", NET, ident(5)), ident(5), scen.verifiers, scen.worker)
    mine, theirs = run_task(scen, b"both"), run_task(other, b"both")
    assert mine.task.id == theirs.task.id  # on two beacons: two assignments (unless they happen to agree)
    replicate(other.ledger, scen.ledger)
    other.ledger.close()
    r = audited(scen)
    assert r.ok and r.tasks_checked == 3, r.violations
