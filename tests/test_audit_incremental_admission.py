"""The incremental audit on ledgers under a genesis (as every `cluster up` and demo network runs):
audited by their new entries, with the full audit's verdict on the same ledger both ways, as
admissions, probation, revocations and strangers come and go, and after admission tampering."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Callable

from tests.consensus_fixtures import NET, ident, make_result, make_task, make_vote
from trustgen.consensus.admission import AdmissionState, Genesis, Member, make_admission, make_genesis, make_revocation
from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.audit_incremental import FULL, INCREMENTAL, REBUILT, audit_incremental, verdict
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import Signed
from trustgen.consensus.reputation import Reputation, task_candidates

AUTH, GW, WORKER, CLIENT = ident(90), ident(1), ident(2), ident(3)
VERIFIERS = [ident(10 + i) for i in range(4)]


def genesis(authority: Identity = AUTH, probation: int = 2) -> Genesis:
    members = [Member(GW.public_key, ("gateway",)), Member(WORKER.public_key, ("worker",))]
    members += [Member(v.public_key, ("verifier",)) for v in VERIFIERS]
    return make_genesis(authority, NET, members, probation=probation)


class World:
    """A gateway's ledger written as a running gateway writes it under `g` (open when None):
    candidates chosen by the admission, probation, group and reputation rules at each beacon."""

    def __init__(self, path: pathlib.Path, g: Genesis | None) -> None:
        self.path, self.g = path, g
        self.led = Ledger(path, NET, GW)
        if g is not None:
            self.led.append("Genesis", {"genesis": g.wire()})
        self.led.append("NodeJoined", {"address": "127.0.0.1:1", "roles": ["gateway"]})
        self.ids: dict[bytes, Identity] = {}
        for v in VERIFIERS:
            self.join(v)
        self.n = 0
        self.liars: set[bytes] = set()  # verifiers that vote reject (outvoted: bad marks)
        self.lied = 0

    def join(self, who: Identity, entry_type: str = "NodeJoined", body: dict | None = None) -> None:
        """An entry in `who`'s own feed, replicated into the gateway's ledger."""
        own = Ledger(self.path.parent / f"{who.node_id[:12]}.db", NET, who)
        e = own.append(entry_type, body or {"address": "127.0.0.1:2", "roles": ["verifier"]})
        own.close()
        self.led.ingest(e.payload, e.sig)
        if entry_type == "NodeJoined":
            self.ids[who.public_key] = who

    def carry(self, entry_type: str, msg: Signed) -> None:
        self.led.append(entry_type, {"admission" if entry_type == "Admitted" else "revocation": msg.wire()})

    def due(self, beacon: bytes, size: int, task: Signed) -> list[bytes]:
        entries = list(self.led.iter_entries())[:size]
        rep = Reputation(NET, AdmissionState(self.g))
        joined = []
        for e in entries:
            rep.add(e)
            if e.type == "NodeJoined" and "verifier" in e.body["roles"]:
                joined.append(e.feed)
        return task_candidates(rep, beacon, task.id, joined, task.body["verifiers"])

    def task(
        self, candidates: list[bytes] | None = None, worker: Identity = WORKER, old: object = None, hold: bool = False
    ) -> Callable[[], None]:
        """One task accepted, voted on by its effective verifiers and finalised; `candidates`
        overrides the due ones, `old` (a commitment entry) an earlier beacon; with `hold` the
        votes and certificate wait for the returned call."""
        self.n += 1
        c = old if old is not None else self.led.commit()
        beacon, size = c.body["root"], c.body["size"]  # type: ignore[attr-defined]
        task = make_task(CLIENT, nonce=self.n.to_bytes(4, "big"))
        cands = candidates if candidates is not None else self.due(beacon, size, task)
        self.led.append(
            "TaskAccepted", {"task": task.wire(), "beacon": beacon, "beacon_size": size, "candidates": cands}
        )
        result = make_result(worker, task)
        self.led.append("ResultCommitted", {"result": result.wire()})
        chosen = effective_verifiers(rank(beacon, task.id, cands, worker.public_key), [], 3)

        def finish() -> None:
            votes = [make_vote(self.ids[k], result, k not in self.liars) for k in chosen]
            self.lied += len(self.liars & set(chosen))
            for v in votes:
                self.led.append("VoteCast", {"vote": v.wire()})
            cert = certify(GW, NET, task, beacon, cands, result, votes)
            self.led.append("TaskFinalized", {"certificate": cert.wire()})

        if not hold:
            finish()
        return finish


def same(path: pathlib.Path) -> tuple[str, list[str]]:
    """Audit incrementally; the verdict must equal a full audit's. Returns the mode and codes."""
    out = audit_incremental(path)
    full = audit_ledger(path)
    assert verdict(out.report) == verdict(full), out.mode
    return out.mode, sorted(v.code for v in full.violations)


def world(tmp_path: pathlib.Path, g: Genesis | None = None, tasks: int = 2) -> World:
    w = World(tmp_path / "gw" / "ledger.db", genesis() if g is None else g)
    for _ in range(tasks):
        w.task()
    w.led.commit()
    return w


def test_a_genesis_ledger_is_audited_by_its_new_entries(tmp_path):
    """Admissions, two verifiers on probation (one candidate at most until one leaves it by
    agreeing), an outvoted verifier demoted by its reputation, a stranger's feed listed: audited
    incrementally after every task, the candidates checked against the reputation the state
    keeps across runs."""
    w = world(tmp_path)
    assert same(w.path) == (REBUILT, [])
    late = [ident(14), ident(15)]
    for v in late:  # two admission actions: two groups
        w.carry("Admitted", make_admission(AUTH, NET, [Member(v.public_key, ("verifier",))]))
        w.join(v)
    stranger = ident(71)
    w.join(stranger, "Evidence", {"kind": "minority_vote", "subject": GW.public_key, "proof": {}})
    assert same(w.path) == (INCREMENTAL, [])
    liar = VERIFIERS[0].public_key
    w.liars = {liar}
    both_late = demoted = False
    for i in range(24):
        if i == 1:  # a task finalised two audits after its acceptance, other beacons between
            finish = w.task(hold=True)
            w.task()
            assert same(w.path) == (INCREMENTAL, [])
            finish()
        w.task()
        due = w.due(*_last_beacon(w))
        both_late = both_late or all(v.public_key in due for v in late)
        demoted = w.lied >= 2 and liar not in due
        assert same(w.path) == (INCREMENTAL, [])
        if both_late and demoted:
            break
    assert both_late and demoted  # the rules the replayed reputation decides were exercised
    report = audit_incremental(w.path).report
    assert report.genesis == w.g.id.hex() and report.strangers == [stranger.public_key.hex()]


def _last_beacon(w: World) -> tuple[bytes, int, Signed]:
    acc = list(w.led.iter_entries(entry_type="TaskAccepted"))[-1]
    from trustgen.consensus.messages import open_wire

    return acc.body["beacon"], acc.body["beacon_size"], open_wire(acc.body["task"], "Task", NET)


def test_entries_of_an_unadmitted_key_fail_both_ways(tmp_path):
    w = world(tmp_path)
    assert same(w.path)[0] == REBUILT
    sybil = ident(72)
    w.join(sybil)  # joins as a verifier, never admitted
    assert same(w.path) == (INCREMENTAL, [])  # its feed is a stranger's: listed, not judged
    w.task(candidates=sorted([*(v.public_key for v in VERIFIERS), sybil.public_key]))
    mode, codes = same(w.path)
    assert mode == FULL and {"not_admitted", "bad_candidates"} <= set(codes)


def test_a_result_of_an_unadmitted_worker_fails_both_ways(tmp_path):
    w = world(tmp_path)
    assert same(w.path)[0] == REBUILT
    w.task(worker=ident(73))
    mode, codes = same(w.path)
    assert mode == FULL and "not_admitted" in codes


def test_an_admission_not_signed_by_an_authority_fails_both_ways(tmp_path):
    w = world(tmp_path)
    assert same(w.path)[0] == REBUILT
    w.carry("Admitted", make_admission(ident(91), NET, [Member(ident(91).public_key, ("verifier",))]))
    assert same(w.path) == (FULL, ["bad_admission"])
    w.carry("Revoked", make_revocation(ident(91), NET, [VERIFIERS[0].public_key]))
    assert same(w.path) == (FULL, ["bad_admission", "bad_admission"])


def test_a_revoked_verifier_is_no_candidate_of_later_tasks(tmp_path):
    """A revocation takes effect from its place in the log: tasks after it that still name the
    revoked verifier fail; tasks that leave it out pass, incrementally."""
    w = world(tmp_path)
    assert same(w.path)[0] == REBUILT
    gone = VERIFIERS[0].public_key
    w.carry("Revoked", make_revocation(AUTH, NET, [gone]))
    w.task()
    assert gone not in w.due(*_last_beacon(w))
    assert same(w.path) == (INCREMENTAL, [])
    w.task(candidates=sorted(v.public_key for v in VERIFIERS))  # still names the revoked one
    assert same(w.path) == (FULL, ["bad_candidates"])


def test_admission_rows_edited_below_the_verified_head(tmp_path):
    w = world(tmp_path)
    w.carry("Admitted", make_admission(AUTH, NET, [Member(ident(14).public_key, ("verifier",))]))
    w.task()
    w.led.close()
    assert same(w.path)[0] == REBUILT
    assert same(w.path) == (INCREMENTAL, [])
    db = sqlite3.connect(w.path, isolation_level=None)
    for typ in ("Genesis", "Admitted"):
        (payload,) = db.execute("SELECT payload FROM entries WHERE type = ?", (typ,)).fetchone()
        changed = bytearray(payload)
        changed[-40] ^= 0x01
        db.execute("UPDATE entries SET payload = ? WHERE type = ?", (bytes(changed), typ))
        mode, codes = same(w.path)
        assert mode == FULL and codes, typ
        db.execute("UPDATE entries SET payload = ? WHERE type = ?", (payload, typ))
        assert same(w.path) == (INCREMENTAL, [])  # restored: clean again
    db.execute("DELETE FROM entries WHERE type = 'Admitted'")  # an admission cut out of the past
    mode, codes = same(w.path)
    assert mode == FULL and codes
    db.close()


def test_what_changes_the_verified_prefix_rewinds_to_position_0(tmp_path):
    """A genesis after entries audited without one, a stranger admitted after its entries were
    audited unjudged, and a beacon older than the kept reputation: rebuilt, same verdict."""
    w = World(tmp_path / "gw" / "ledger.db", None)
    w.task()
    assert same(w.path) == (REBUILT, [])
    g = genesis()
    w.led.append("Genesis", {"genesis": g.wire()})
    w.g = g
    assert same(w.path) == (REBUILT, [])
    assert audit_incremental(w.path).report.genesis == g.id.hex()

    late = ident(15)
    w.join(late)
    w.task()
    assert same(w.path) == (INCREMENTAL, [])  # a stranger's join: listed
    w.carry("Admitted", make_admission(AUTH, NET, [Member(late.public_key, ("verifier",))]))
    assert same(w.path) == (REBUILT, [])  # now a member: its old entries are judged

    old = w.led.commit()
    w.task()
    assert same(w.path) == (INCREMENTAL, [])
    w.task(old=old)  # a beacon older than the latest commitment the state replayed to
    assert same(w.path) == (REBUILT, [])
    w.task()
    assert same(w.path) == (INCREMENTAL, [])


def test_a_second_genesis_fails_both_ways(tmp_path):
    w = world(tmp_path)
    assert same(w.path)[0] == REBUILT
    w.join(VERIFIERS[1], "Genesis", {"genesis": genesis(probation=3).wire()})
    assert same(w.path) == (FULL, ["genesis_mismatch"])
