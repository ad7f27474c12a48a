"""The incremental audit gives the full audit's verdict on the same ledger, as it grows and after
every tampering the audit suite applies, including edits of rows below an already-verified head;
and it only re-checks what is new."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from tests.consensus_fixtures import NET, build, ident, make_vote, open_task
from tests.test_audit_replicas import by_name, delete_own_tail, drop_primary_key, replicate, run_task
from trustgen.consensus.audit import audit_ledger, audit_path
from trustgen.consensus.audit_incremental import (
    FULL,
    INCREMENTAL,
    REBUILT,
    audit_incremental,
    audit_paths_incremental,
    verdict,
)
from trustgen.consensus.audit_state import state_path_for
from trustgen.consensus.finality import certify
from trustgen.consensus.ledger import Ledger


def same(path: pathlib.Path) -> str:
    """Audit `path` incrementally, check the verdict equals a full audit's; return the mode."""
    out = audit_incremental(path)
    assert verdict(out.report) == verdict(audit_ledger(path)), out.mode
    return out.mode


def tamper(path: pathlib.Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(sql, args)
    db.close()


@pytest.fixture()
def audited(tmp_path: pathlib.Path):
    """A ledger audited once (its state written), then grown by one task."""
    path = tmp_path / "node" / "ledger.db"
    scen = build(path, n_tasks=2)
    assert same(path) == REBUILT and state_path_for(path).is_file()
    run_task(scen, b"later")
    scen.ledger.close()
    return path, scen


def test_a_growing_ledger_is_audited_by_its_new_entries_only(audited):
    path, scen = audited
    first = audit_ledger(path)
    out = audit_incremental(path)
    assert (
        out.mode == INCREMENTAL and out.report.ok and out.new_entries == 8
    )  # commitment, task, result, 3 votes, certificate, commitment
    assert verdict(out.report) == verdict(first) and out.report.tasks_checked == 3
    again = audit_incremental(path)
    assert again.mode == INCREMENTAL and again.new_entries == 0 and verdict(again.report) == verdict(first)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE entries SET sig = zeroblob(64) WHERE log_index = 3",  # a forged signature, old row
        "DELETE FROM entries WHERE log_index = 6",  # a hole below the head
        "UPDATE entries SET seq = seq WHERE 0",  # nothing: the clean case
        "UPDATE entries SET log_index = -log_index - 1 WHERE log_index IN (4, 5)",  # reordered old rows
        "UPDATE entries SET type = 'NodeJoined' WHERE log_index = 7",  # an index column edited
    ],
)
def test_a_tamper_below_the_verified_head_is_caught(audited, sql):
    path, _ = audited
    assert same(path) == INCREMENTAL
    tamper(path, sql)
    mode = same(path)
    assert mode == (INCREMENTAL if "WHERE 0" in sql else FULL)


def test_every_column_of_every_old_row_is_covered(tmp_path):
    """One flipped byte in each stored column of each verified row: caught every time."""
    path = tmp_path / "ledger.db"
    build(path, n_tasks=1).ledger.close()
    assert same(path) == REBUILT
    db = sqlite3.connect(path, isolation_level=None)
    rows = db.execute("SELECT rowid, feed, hash, payload, sig FROM entries").fetchall()
    for rowid, *cols in rows:
        for name, value in zip(("feed", "hash", "payload", "sig"), cols):
            changed = bytearray(value)
            changed[len(value) // 2] ^= 0x01
            db.execute(f"UPDATE entries SET {name}=? WHERE rowid=?", (bytes(changed), rowid))
            out = audit_incremental(path)
            assert out.mode == FULL and not out.report.ok, (name, rowid)
            db.execute(f"UPDATE entries SET {name}=? WHERE rowid=?", (value, rowid))
    db.close()
    assert same(path) == INCREMENTAL  # restored: the state, never touched by a failed run, holds again


def test_a_bad_new_entry_gets_the_full_audits_verdict(audited):
    path, scen = audited
    led = Ledger(path, NET, scen.gateway)
    led.append("Commitment", {"size": 5, "root": b"\x00" * 32})  # a lie about an old prefix, properly signed
    led.close()
    out = audit_incremental(path)
    assert out.mode == FULL and [v.code for v in out.report.violations] == ["bad_commitment"]
    assert verdict(out.report) == verdict(audit_ledger(path))


def test_a_new_certificate_re_judges_votes_already_verified(tmp_path):
    """Votes of every ranked verifier are fine before a certificate; once one arrives, a vote of
    a standby it did not count is foreign, though it was verified clean before."""
    path = tmp_path / "ledger.db"
    scen = build(path, n_tasks=1)
    t = open_task(scen, b"open")
    by_key = {v.public_key: v for v in scen.verifiers}
    votes = [make_vote(by_key[k], t.result, True) for k in t.ranking]
    for v in votes:
        scen.ledger.append("VoteCast", {"vote": v.wire()})
    scen.ledger.close()
    assert same(path) == REBUILT
    led = Ledger(path, NET, scen.gateway)
    cert = certify(scen.gateway, NET, t.task, t.beacon, t.candidates, t.result, votes[:3])
    led.append("TaskFinalized", {"certificate": cert.wire()})
    led.close()
    out = audit_incremental(path)
    assert out.mode == FULL and [v.code for v in out.report.violations] == ["foreign_vote"]
    assert verdict(out.report) == verdict(audit_ledger(path))


def test_equivocation_findings_are_kept_across_runs(tmp_path):
    liar = ident(7)
    a = Ledger(tmp_path / "a.db", NET, liar).append("NodeJoined", {"address": "a", "roles": ["worker"]})
    b = Ledger(tmp_path / "b.db", NET, liar).append("NodeJoined", {"address": "b", "roles": ["worker"]})
    node = Ledger(tmp_path / "ledger.db", NET, ident(8))
    node.ingest(a.payload, a.sig)
    node.ingest(b.payload, b.sig)
    node.close()
    assert same(tmp_path / "ledger.db") == REBUILT
    node = Ledger(tmp_path / "ledger.db", NET, ident(8))
    node.commit()
    node.close()
    out = audit_incremental(tmp_path / "ledger.db")
    assert out.mode == INCREMENTAL and len(out.report.equivocations) == 1
    assert verdict(out.report) == verdict(audit_ledger(tmp_path / "ledger.db"))


def test_a_duplicate_row_in_a_store_without_keys(tmp_path):
    path = tmp_path / "ledger.db"
    scen = build(path, n_tasks=1)
    scen.ledger.close()
    drop_primary_key(path).close()
    assert same(path) == REBUILT  # the same rows in a rebuilt table: still the verified prefix
    tamper(
        path,
        "INSERT INTO entries SELECT feed, seq, hash, type, payload, sig, "
        "(SELECT MAX(log_index) + 1 FROM entries) FROM entries WHERE feed = ? AND seq = 1",
        scen.gateway.public_key,
    )
    assert same(path) == FULL
    tamper(path, "UPDATE entries SET log_index = NULL WHERE log_index = (SELECT MAX(log_index) FROM entries)")
    assert same(path) == FULL  # a row in no log position: outside both the prefix and the new rows
    tamper(path, "UPDATE entries SET log_index = 'x' WHERE log_index IS NULL")
    assert same(path) == FULL


def test_replicas_are_cross_checked_the_same_both_ways(tmp_path):
    root = tmp_path / "net"
    scen = build(root / "gateway" / "ledger.db", n_tasks=1)
    run_task(scen, b"second")
    v0 = Ledger(root / "verifier-0" / "ledger.db", NET, scen.verifiers[0])
    replicate(scen.ledger, v0)
    gw = scen.gateway.public_key
    head = scen.ledger.head(gw)[0]
    scen.ledger.close()
    v0.close()

    def both() -> list[str]:
        full = by_name(audit_path(root))
        outs = audit_paths_incremental([root])
        inc = by_name([o.report for o in outs])
        assert {k: verdict(r) for k, r in inc.items()} == {k: verdict(r) for k, r in full.items()}
        return sorted(o.mode for o in outs)

    assert both() == [REBUILT, REBUILT]
    assert both() == [INCREMENTAL, INCREMENTAL]
    delete_own_tail(root / "verifier-0" / "ledger.db", gw, head - 2)  # a lagging replica: findings, no violation
    assert both() == [INCREMENTAL, REBUILT]  # its verified prefix changed: a new state
    delete_own_tail(root / "gateway" / "ledger.db", gw, head - 3)  # the gateway cuts its own feed
    assert both() == [INCREMENTAL, REBUILT]
    assert "truncated_feed" in [v.code for v in by_name(audit_path(root))["gateway"].violations]


def test_audit_cli_full_and_incremental_agree(tmp_path):
    import json

    from tests.helpers import run_cli

    build(tmp_path / "node" / "ledger.db").ledger.close()
    runs = [
        json.loads(run_cli("audit", str(tmp_path / "node"), *flag, "--json").stdout) for flag in ([], [], ["--full"])
    ]
    assert [r["ledgers"][0]["audit_mode"] for r in runs] == [REBUILT, INCREMENTAL, FULL]
    assert (
        len(
            {
                json.dumps({k: v for k, v in r["ledgers"][0].items() if k not in ("audit_mode", "new_entries")})
                for r in runs
            }
        )
        == 1
    )
    assert run_cli("audit", str(tmp_path / "node"), "--full", "--follow").returncode == 2


_APPENDER = """
import sys
from tests.consensus_fixtures import NET, ident
from trustgen.consensus.ledger import Ledger
led = Ledger(sys.argv[1], NET, ident(1))
for i in range(5):
    led.append("NodeJoined", {"address": f"127.0.0.1:{i}", "roles": ["worker"]})
led.commit()
led.close()
"""


@pytest.mark.slow
def test_audit_follow_keeps_up_with_an_appending_process(tmp_path):
    import json
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    path = tmp_path / "node" / "ledger.db"
    build(path).ledger.close()
    size = audit_ledger(path).entries
    follower = subprocess.Popen(
        [sys.executable, "-m", "trustgen.cli", "audit", str(path.parent), "--follow", "--json", "--poll", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in follower.stdout], daemon=True).start()

    def until_entries(n: int) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                got = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))["ledgers"][0]
            except queue.Empty:
                break
            if got["entries"] == n:
                return got
        raise AssertionError(f"the follower never reported {n} entries")

    try:
        assert until_entries(size)["ok"]
        subprocess.run([sys.executable, "-c", _APPENDER, str(path)], check=True, timeout=60, env=os.environ)
        last = until_entries(size + 6)
        assert last["ok"] and last["audit_mode"] == INCREMENTAL and last["new_entries"] > 0
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        if follower.poll() is None:
            follower.kill()


def test_chunked_prefix_digests_in_parallel(tmp_path, monkeypatch):
    """Small chunks and a low parallel threshold: many chunks, a partial last one re-hashed on
    append, hashed by a process pool; an edit in a middle chunk is still caught."""
    from trustgen.consensus import audit_state

    monkeypatch.setattr(audit_state, "CHUNK_ROWS", 4)
    monkeypatch.setattr(audit_state, "PARALLEL_FROM", 8)
    path = tmp_path / "ledger.db"
    scen = build(path, n_tasks=2)
    assert same(path) == REBUILT
    run_task(scen, b"more")
    scen.ledger.close()
    assert same(path) == INCREMENTAL
    db = sqlite3.connect(state_path_for(path))
    chunks = db.execute("SELECT lo, hi FROM chunks ORDER BY lo").fetchall()
    db.close()
    size = audit_ledger(path).entries
    assert chunks == [(lo, min(lo + 4, size)) for lo in range(0, size, 4)]
    tamper(path, "UPDATE entries SET sig = zeroblob(64) WHERE log_index = 9")
    assert same(path) == FULL
