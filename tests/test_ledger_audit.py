import json
import random
import sqlite3

import pytest

from tests.consensus_fixtures import NET, build, ident, make_result, make_task, make_vote
from tests.helpers import run_cli
from trustgen.consensus import merkle
from trustgen.consensus.audit import AuditInputError, audit_ledger
from trustgen.consensus.finality import certify
from trustgen.consensus.ledger import IngestError, Ledger
from trustgen.consensus.messages import MessageError, open_wire, sign
from trustgen.consensus.reputation import reputation


def codes(report) -> set[str]:
    return {v.code for v in report.violations}


def snapshot(path) -> list[tuple]:
    db = sqlite3.connect(path)
    rows = db.execute("SELECT * FROM entries ORDER BY log_index").fetchall()
    db.close()
    return rows


def test_clean_ledger_audits_clean(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=3)
    scen.ledger.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert r.ok, r.violations
    assert r.tasks_checked == 3 and r.feeds == 5 and r.commitments_checked == 4


def test_every_single_byte_change_is_detected(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=1)
    scen.ledger.close()
    path = tmp_path / "ledger.db"
    db = sqlite3.connect(path, isolation_level=None)
    rows = db.execute("SELECT rowid, feed, hash, payload, sig FROM entries").fetchall()
    checked = 0
    for rowid, *cols in rows:
        for name, value in zip(("feed", "hash", "payload", "sig"), cols):
            for i in range(len(value)):
                changed = bytearray(value)
                changed[i] ^= 0x01
                db.execute(f"UPDATE entries SET {name}=? WHERE rowid=?", (bytes(changed), rowid))
                report = audit_ledger(path)
                assert not report.ok, (name, rowid, i)
                db.execute(f"UPDATE entries SET {name}=? WHERE rowid=?", (value, rowid))
                checked += 1
    assert audit_ledger(path).ok
    assert checked > 3000  # every byte of every stored entry, not a sample
    db.close()


def test_forged_signature_fails_audit(tmp_path):
    scen = build(tmp_path / "ledger.db")
    scen.ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    forger = ident(99)
    payload = db.execute("SELECT payload FROM entries WHERE log_index=3").fetchone()[0]
    db.execute("UPDATE entries SET sig=? WHERE log_index=3", (forger.sign(payload),))
    db.close()
    assert "bad_entry" in codes(audit_ledger(tmp_path / "ledger.db"))


def test_entry_replayed_into_other_feed_or_network_is_refused(tmp_path):
    a = Ledger(tmp_path / "a.db", NET, ident(1))
    e = a.append("NodeJoined", {"address": "x", "roles": ["worker"]})
    other_net = Ledger(tmp_path / "b.db", "trustgen-other", ident(2))
    with pytest.raises(IngestError) as err:
        other_net.ingest(e.payload, e.sig)
    assert err.value.code == "wrong_network"
    # The same body re-signed by another key as if it were feed 1's entry: signature fails.
    from trustgen.consensus.encoding import signing_bytes

    body = {
        "feed": ident(1).public_key,
        "seq": 1,
        "prev": bytes(32),
        "time": 1,
        "type": "NodeJoined",
        "body": {"address": "x", "roles": []},
    }
    forged = signing_bytes("LedgerEntry", NET, body)
    c = Ledger(tmp_path / "c.db", NET, ident(3))
    with pytest.raises(IngestError) as err:
        c.ingest(forged, ident(2).sign(forged))
    assert err.value.code == "bad_signature"


def test_reordered_and_missing_entries_are_refused_and_detected(tmp_path):
    src = Ledger(tmp_path / "src.db", NET, ident(1))
    es = [src.append("NodeJoined", {"address": str(i), "roles": []}) for i in range(4)]
    dst = Ledger(tmp_path / "dst.db", NET, ident(2))
    before = snapshot(tmp_path / "dst.db")
    with pytest.raises(IngestError) as err:
        dst.ingest(es[1].payload, es[1].sig)  # out of order: predecessor missing
    assert err.value.code == "gap"
    assert snapshot(tmp_path / "dst.db") == before  # nothing changed
    for e in es:
        assert dst.ingest(e.payload, e.sig) == "stored"
    assert dst.ingest(es[2].payload, es[2].sig) == "duplicate"
    src.close()
    dst.close()
    # Delete an entry in the middle of the source feed: the audit sees the hole.
    db = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    db.execute("DELETE FROM entries WHERE seq=2")
    db.close()
    assert {"missing_entry", "log_gap"} <= codes(audit_ledger(tmp_path / "src.db"))
    # Swap two entries' sequence columns: index mismatch.
    db = sqlite3.connect(tmp_path / "dst.db", isolation_level=None)
    db.execute("UPDATE entries SET seq = -seq WHERE seq IN (3, 4)")
    db.execute("UPDATE entries SET seq = 7 - (-seq) WHERE seq < 0")
    db.close()
    assert "index_mismatch" in codes(audit_ledger(tmp_path / "dst.db"))


def test_bad_link_is_refused(tmp_path):
    a = Ledger(tmp_path / "a.db", NET, ident(1))
    a.append("NodeJoined", {"address": "x", "roles": []})
    b = Ledger(tmp_path / "b.db", NET, ident(5))
    b.ingest(*a.entries(ident(1).public_key)[0])
    # A second entry whose prev does not name entry 1.
    bad = sign(
        ident(1),
        "LedgerEntry",
        NET,
        {
            "feed": ident(1).public_key,
            "seq": 2,
            "prev": b"\x07" * 32,
            "time": 5,
            "type": "NodeJoined",
            "body": {"address": "y", "roles": []},
        },
    )
    with pytest.raises(IngestError) as err:
        b.ingest(bad.payload, bad.sig)
    assert err.value.code == "bad_link"


def test_equivocation_yields_evidence_and_store_is_unchanged_otherwise(tmp_path):
    liar = ident(7)
    l1 = Ledger(tmp_path / "l1.db", NET, liar)
    e1 = l1.append("NodeJoined", {"address": "a", "roles": ["worker"]})
    l2 = Ledger(tmp_path / "l2.db", NET, liar)  # same key, second history: a fork
    e2 = l2.append("NodeJoined", {"address": "b", "roles": ["worker"]})
    node = Ledger(tmp_path / "ledger.db", NET, ident(8))
    assert node.ingest(e1.payload, e1.sig) == "stored"
    assert node.ingest(e2.payload, e2.sig) == "equivocation"
    assert node.ingest(e2.payload, e2.sig) == "equivocation"  # evidence recorded once
    evidence = [e for e in node.iter_entries() if e.type == "Evidence"]
    assert len(evidence) == 1 and evidence[0].body["subject"] == liar.public_key
    assert node.get(liar.public_key, 1).hash == e1.hash  # the first entry stays
    node.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert r.ok and r.equivocations == [
        {"feed": liar.public_key.hex(), "seq": 1, "reported_by": ident(8).public_key.hex()}
    ]
    rep = reputation(Ledger(tmp_path / "ledger.db", NET).iter_entries(), NET)
    assert rep[liar.public_key] < 0.1


def _rewrite_certificate(tmp_path, scen, mutate) -> None:
    """Re-sign the first certificate after `mutate(body)`; chain stays valid from there on."""
    led = Ledger(tmp_path / "forged.db", NET, scen.gateway)
    done = False
    for e in scen.ledger.iter_entries():
        if e.feed != scen.gateway.public_key:
            led.ingest(e.payload, e.sig)
            continue
        body = e.body
        if e.type == "TaskFinalized" and not done:
            cert = dict(open_wire(body["certificate"], "Certificate", NET).body)
            mutate(cert)
            body = {"certificate": sign(scen.gateway, "Certificate", NET, cert).wire()}
            done = True
        if e.type == "Commitment":
            led.commit()
        else:
            led.append(e.type, body, e.time)
    led.close()


def test_certificate_contradicting_its_votes_fails_audit(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=2)
    _rewrite_certificate(tmp_path, scen, lambda c: c.update(decision="reject"))
    r = audit_ledger(tmp_path / "forged.db")
    assert "bad_decision" in codes(r)
    assert audit_ledger(tmp_path / "ledger.db").ok


def test_certificate_with_wrong_verifiers_fails_audit(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=1)
    _rewrite_certificate(tmp_path, scen, lambda c: c.update(verifiers=list(reversed(c["verifiers"]))))
    assert "bad_assignment" in codes(audit_ledger(tmp_path / "forged.db"))


def test_one_lying_verifier_is_outvoted_and_loses_reputation(tmp_path):
    scen = build(tmp_path / "ledger.db", n_tasks=6, lying={0})
    r = audit_ledger(tmp_path / "ledger.db")
    assert r.ok, r.violations
    liar = scen.verifiers[0].public_key
    rep = reputation(scen.ledger.iter_entries(), NET)
    assert liar in rep and rep[liar] < 0.5  # it voted against the majority every time it voted
    honest = [rep[v.public_key] for v in scen.verifiers[1:] if v.public_key in rep]
    assert honest and min(honest) > 0.5
    assert rep[scen.worker.public_key] > 0.5  # every result was accepted by majority


def test_certify_refuses_without_majority(tmp_path):
    gw, worker = ident(1), ident(2)
    vs = [ident(10 + i) for i in range(3)]
    task = make_task(ident(3))
    result = make_result(worker, task)
    votes = [make_vote(vs[0], result, True), make_vote(vs[1], result, False)]
    with pytest.raises(MessageError, match="no majority"):
        certify(gw, NET, task, merkle.EMPTY_ROOT, [v.public_key for v in vs], result, votes)
    cert = certify(
        gw, NET, task, merkle.EMPTY_ROOT, [v.public_key for v in vs], result, votes + [make_vote(vs[2], result, True)]
    )
    assert cert.body["decision"] == "accept" and len(cert.body["votes"]) == 3


def test_skipped_verifier_is_replaced_by_next_standby(tmp_path):
    from trustgen.consensus.assignment import effective_verifiers, rank

    vs = [ident(10 + i).public_key for i in range(5)]
    ranking = rank(b"\x01" * 32, b"\x02" * 32, vs, worker=vs[4])
    assert vs[4] not in ranking and len(ranking) == 4
    assert effective_verifiers(ranking, [ranking[1]], 3) == [ranking[0], ranking[2], ranking[3]]
    # The rank is a pure function of its inputs: any node recomputes the same order.
    assert ranking == rank(b"\x01" * 32, b"\x02" * 32, list(reversed(vs)), worker=vs[4])


def test_merkle_proofs_against_reference():
    def ref_root(leaves):
        if len(leaves) == 1:
            return leaves[0]
        k = 1 << ((len(leaves) - 1).bit_length() - 1)
        return merkle.node_hash(ref_root(leaves[:k]), ref_root(leaves[k:]))

    leaves = [merkle.leaf_hash(bytes([i])) for i in range(40)]
    for n in range(1, 40):
        root = merkle.root(leaves[:n])
        assert root == ref_root(leaves[:n])
        for i in range(n):
            proof = merkle.inclusion_proof(i, leaves[:n])
            assert merkle.verify_inclusion(i, n, leaves[i], proof, root)
            assert not merkle.verify_inclusion(i, n, leaves[(i + 1) % 40], proof, root)
        assert merkle.roots_at(leaves[:n], list(range(n + 1)))[n] == root
        assert merkle.Tree(leaves[:n]).root == root
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(m, leaves[:n])
            assert merkle.verify_consistency(m, n, merkle.root(leaves[:m]), root, proof)
            if m < n:
                assert not merkle.verify_consistency(m, n, bytes(32), root, proof)
                assert not merkle.verify_consistency(m, n, merkle.root(leaves[:m]), bytes(32), proof)


def test_tampered_commitment_fails_audit(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    for i in range(5):
        led.append("NodeJoined", {"address": str(i), "roles": []})
    led.append("Commitment", {"size": 5, "root": b"\x00" * 32})  # a lie, properly signed
    led.close()
    assert "bad_commitment" in codes(audit_ledger(tmp_path / "ledger.db"))


def test_audit_cli_exit_codes(tmp_path):
    build(tmp_path / "node" / "ledger.db").ledger.close()
    res = run_cli("audit", str(tmp_path / "node"), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    obj = json.loads(res.stdout)
    assert obj["ok"] and obj["ledgers"][0]["tasks_checked"] == 2
    db = sqlite3.connect(tmp_path / "node" / "ledger.db", isolation_level=None)
    db.execute("UPDATE entries SET sig = zeroblob(64) WHERE log_index = 2")
    db.close()
    res = run_cli("audit", str(tmp_path / "node"), "--json")
    assert res.returncode == 1
    v = json.loads(res.stdout)["ledgers"][0]["violations"]
    assert v and "log index 2" in v[0]["where"]
    human = run_cli("audit", str(tmp_path / "node"))
    assert human.returncode == 1 and "violation" in human.stdout
    assert run_cli("audit", str(tmp_path / "nothing")).returncode == 2
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    bad = run_cli("audit", str(tmp_path / "junk.db"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_audit_input_errors(tmp_path):
    with pytest.raises(AuditInputError):
        audit_ledger(tmp_path / "missing.db")


def test_ingest_of_random_garbage_never_changes_the_store(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    led.append("NodeJoined", {"address": "x", "roles": []})
    before = snapshot(tmp_path / "ledger.db")
    rng = random.Random(1)
    good = led.entries(ident(1).public_key)[0]
    for _ in range(300):
        payload = bytearray(good[0])
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        if bytes(payload) == good[0]:
            continue
        with pytest.raises(IngestError):
            led.ingest(bytes(payload), good[1])
    assert snapshot(tmp_path / "ledger.db") == before


def test_accusations_must_be_proven(tmp_path):
    """Evidence that a worker cheated or a verifier voted against the majority must carry the
    certificate (and vote) that prove it; a gateway cannot slander a node in its ledger."""
    scen = build(tmp_path / "ledger.db", n_tasks=2, lying={0})
    led = scen.ledger
    certs = [
        open_wire(e.body["certificate"], "Certificate", NET) for e in led.iter_entries() if e.type == "TaskFinalized"
    ]
    cert = certs[0]
    liar = scen.verifiers[0].public_key
    liar_votes = [v for v in cert.body["votes"] if open_wire(v, "Vote", NET).body["verifier"] == liar]
    if liar_votes:  # the liar was assigned to this task: a true accusation audits clean
        led.append(
            "Evidence",
            {"kind": "minority_vote", "subject": liar, "proof": {"certificate": cert.wire(), "vote": liar_votes[0]}},
        )
        assert audit_ledger(tmp_path / "ledger.db").ok
    honest = next(v for v in cert.body["votes"] if open_wire(v, "Vote", NET).body["accept"])
    honest_key = open_wire(honest, "Vote", NET).body["verifier"]
    led.append(
        "Evidence",
        {"kind": "minority_vote", "subject": honest_key, "proof": {"certificate": cert.wire(), "vote": honest}},
    )
    led.append(
        "Evidence",
        {"kind": "rejected_result", "subject": scen.worker.public_key, "proof": {"certificate": cert.wire()}},
    )  # the certificate accepted it
    led.close()
    bad = [v for v in audit_ledger(tmp_path / "ledger.db").violations if v.code == "bad_evidence"]
    assert len(bad) == 2
    assert "agrees with the decision" in bad[0].detail and "does not reject" in bad[1].detail


def test_incremental_commitments_survive_a_rolled_back_batch(tmp_path):
    led = Ledger(tmp_path / "ledger.db", NET, ident(1))
    for i in range(3):
        led.append("NodeJoined", {"address": str(i), "roles": []})
    led.commit()
    with pytest.raises(RuntimeError):
        with led.batch():
            led.append("NodeJoined", {"address": "gone", "roles": []})
            led.commit()  # hashes a row that the rollback removes
            raise RuntimeError("abort")
    led.append("NodeJoined", {"address": "3", "roles": []})
    c = led.commit()
    assert c.body["size"] == 5  # 4 joins + the first commitment; nothing of the rolled-back batch
    led.close()
    r = audit_ledger(tmp_path / "ledger.db")
    assert r.ok, r.violations  # the audit recomputes every root from the stored log
    assert r.commitments_checked == 2


def test_beacon_and_candidates_are_checked(tmp_path):
    """A task's beacon must be an earlier commitment of the gateway, and its candidates every
    verifier the gateway knew at that commitment: no picking one's favourite verifiers."""
    scen = build(tmp_path / "ledger.db", n_tasks=1)
    led = scen.ledger
    c = led.commit()
    everyone = sorted(v.public_key for v in scen.verifiers)
    task = make_task(ident(3), nonce=b"later")
    good = {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": everyone}
    led.append("TaskAccepted", good)
    assert audit_ledger(tmp_path / "ledger.db").ok
    led.append("TaskAccepted", dict(good, candidates=everyone[1:]))  # one verifier left out
    led.append("TaskAccepted", dict(good, beacon=b"\x05" * 32))  # not a commitment
    led.append("TaskAccepted", dict(good, beacon_size=c.body["size"] - 1))  # size does not match
    led.close()
    found = [v.code for v in audit_ledger(tmp_path / "ledger.db").violations]
    assert found.count("bad_candidates") == 1 and found.count("bad_beacon") == 2
