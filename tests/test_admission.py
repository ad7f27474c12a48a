"""Admission (genesis, admissions, revocations), the assignment rules that resist Sybils, and
reputation that only admitted gateways' certificates move. Pure functions and small ledgers."""

from __future__ import annotations

import pytest

from tests.consensus_fixtures import NET, build, ident, make_result, make_task, make_vote
from trustgen.consensus.admission import (
    MAX_MEMBERS,
    AdmissionError,
    AdmissionState,
    Genesis,
    Member,
    make_admission,
    make_genesis,
    make_revocation,
)
from trustgen.consensus.assignment import effective_verifiers, rank, select_candidates
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.encoding import decode, encode
from trustgen.consensus.finality import certify
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import sign
from trustgen.consensus.reputation import Reputation
from trustgen.consensus.sybil import AttackerGroup, max_seats, needed_for_majority, run_trials

AUTH = ident(90)
GW, WORKER = ident(1), ident(2)
VERIFIERS = [ident(10 + i) for i in range(4)]


def genesis(verifiers=VERIFIERS, probation: int = 2) -> Genesis:
    members = [Member(GW.public_key, ("gateway",)), Member(WORKER.public_key, ("worker",))]
    members += [Member(v.public_key, ("verifier",)) for v in verifiers]
    return make_genesis(AUTH, NET, members, probation=probation)


def entry(led: Ledger, entry_type: str, field: str, msg) -> object:
    return led.append(entry_type, {field: msg.wire()})


def test_genesis_is_signed_by_an_authority_and_bounded():
    g = genesis()
    again = Genesis.parse(g.wire())
    assert again.id == g.id and again.network == NET and AUTH.public_key in again.authorities
    env = decode(g.wire())
    tampered = encode({"payload": env["payload"][:-1] + bytes([env["payload"][-1] ^ 1]), "sig": env["sig"]})
    with pytest.raises(AdmissionError):
        Genesis.parse(tampered)
    body = dict(g.signed.body, founder=ident(91).public_key)  # the founder must be an authority
    with pytest.raises(AdmissionError) as e:
        Genesis.parse(sign(ident(91), "Genesis", NET, body).wire())
    assert e.value.code == AdmissionError.NOT_AUTHORITY
    too_many = [Member(bytes([i % 256, i // 256]) * 16, ("worker",)).to_body() for i in range(MAX_MEMBERS + 1)]
    with pytest.raises(AdmissionError, match="members"):
        Genesis.parse(sign(AUTH, "Genesis", NET, dict(g.signed.body, members=too_many)).wire())
    bad_role = [dict(Member(GW.public_key, ("gateway",)).to_body(), roles=["root"])]
    with pytest.raises(AdmissionError, match="roles"):
        Genesis.parse(sign(AUTH, "Genesis", NET, dict(g.signed.body, members=bad_role)).wire())
    with pytest.raises(AdmissionError) as e:
        Genesis.parse(g.wire(), "another-network")
    assert e.value.code == AdmissionError.WRONG_NETWORK


def test_admission_state_roles_authorities_and_permanent_revocation(tmp_path):
    g = genesis()
    led = Ledger(tmp_path / "l.db", NET, GW)
    trainer, stranger = ident(50), ident(51)
    entry(led, "Admitted", "admission", make_admission(AUTH, NET, [Member(trainer.public_key, ("trainer",))]))
    entry(led, "Admitted", "admission", make_admission(stranger, NET, [Member(stranger.public_key, ("verifier",))]))
    s = AdmissionState.from_ledger(led, g)
    assert s.admitted(GW.public_key, "gateway") and not s.admitted(GW.public_key, "verifier")
    assert s.admitted(trainer.public_key, "trainer") and not s.initial(trainer.public_key)
    assert not s.admitted(stranger.public_key, "verifier")  # self-admission: not an authority
    assert s.initial(VERIFIERS[0].public_key)
    entry(led, "Revoked", "revocation", make_revocation(AUTH, NET, [VERIFIERS[0].public_key]))
    entry(led, "Admitted", "admission", make_admission(AUTH, NET, [Member(VERIFIERS[0].public_key, ("verifier",))]))
    s = AdmissionState.from_ledger(led, g)
    assert not s.admitted(VERIFIERS[0].public_key, "verifier")  # re-admission does not undo it
    assert s.ever_admitted(VERIFIERS[0].public_key, "verifier")
    assert AdmissionState(None).admitted(stranger.public_key, "gateway")  # an open network


def test_groups_link_one_authority_action_and_one_host_transitively(tmp_path):
    a, b, c, d = (ident(60 + i) for i in range(4))
    led = Ledger(tmp_path / "l.db", NET, GW)
    actions = (
        [Member(a.public_key, ("verifier",), "h1"), Member(b.public_key, ("verifier",))],
        [Member(c.public_key, ("verifier",), "h1")],
        [Member(d.public_key, ("verifier",), "h2")],
    )
    s = AdmissionState(genesis())
    for members in actions:
        assert s.add(entry(led, "Admitted", "admission", make_admission(AUTH, NET, members))) is None
    groups = s.groups([a.public_key, b.public_key, c.public_key, d.public_key, VERIFIERS[0].public_key])
    assert groups[a.public_key] == groups[b.public_key] == groups[c.public_key]  # action a-b, host a-c
    assert len({groups[d.public_key], groups[a.public_key], groups[VERIFIERS[0].public_key]}) == 3


def test_candidates_hold_at_most_one_probationary_and_one_per_group_where_the_pool_allows():
    honest = [bytes([i]) * 32 for i in range(1, 6)]
    sybils = [bytes([100 + i]) * 32 for i in range(6)]
    groups = {**{h: h for h in honest}, **{s: b"S" * 32 for s in sybils}}
    for t in range(50):
        tid = bytes([t]) * 32
        c = select_candidates(b"b" * 32, tid, honest + sybils, 3, groups, set(sybils[:3]))
        assert sum(1 for s in sybils if s in c) == 1 and len(c) == 6
    few = select_candidates(b"b" * 32, b"t" * 32, honest[:1] + sybils, 3, groups, set())
    assert len(few) == 3  # two groups for k = 3: just enough of the rest, in rank order
    # Reputation weighs: a demoted verifier is left out while the pool allows, and fills a gap
    # before a second member of one group does.
    assert honest[0] not in select_candidates(b"b" * 32, b"t" * 32, honest + sybils, 3, groups, set(), {honest[0]})
    gap = select_candidates(b"b" * 32, b"t" * 32, honest[:2] + sybils, 3, groups, set(), {honest[0]})
    assert honest[0] in gap and sum(1 for s in sybils if s in gap) == 1


def test_reputation_counts_only_admitted_gateways_for_tasks_they_accepted(tmp_path):
    """Why bullet 2, the reputation half: a stranger's self-signed reject certificates against an
    honest worker move nothing; an admitted gateway's do, whatever order entries arrive in."""
    g = genesis()
    stranger = ident(70)
    sl = Ledger(tmp_path / "s.db", NET, stranger)
    task = make_task(ident(3))
    result = make_result(WORKER, task)
    beacon = sl.commit().body["root"]
    vs = sorted(v.public_key for v in VERIFIERS)
    by_key = {v.public_key: v for v in VERIFIERS}
    chosen = effective_verifiers(rank(beacon, task.id, vs, WORKER.public_key), [], 3)
    votes = [make_vote(by_key[v], result, False) for v in chosen]
    for gw, led in ((stranger, sl), (GW, Ledger(tmp_path / "g.db", NET, GW))):
        c = certify(gw, NET, task, beacon, vs, result, votes)
        fin = led.append("TaskFinalized", {"certificate": c.wire()})
        acc = led.append("TaskAccepted", {"task": task.wire(), "beacon": beacon, "beacon_size": 0, "candidates": vs})
        rep = Reputation(NET, AdmissionState(g))
        for e in (fin, acc):  # the certificate first: it waits for its acceptance
            rep.add(e)
        score = rep.scores().get(WORKER.public_key, 0.5)
        assert (score < 0.5) == (gw is GW), gw
    bare = Reputation(NET, AdmissionState(g))
    bare.add(fin)  # an admitted gateway's certificate for a task it never accepted
    assert WORKER.public_key not in bare.scores()


def test_sybil_bound_holds_in_trials():
    """Fewer separately admitted identities than the bound never capture a majority (a few
    hundred trials here; bench/bench_trust.py runs thousands)."""
    k = 3
    need, graduated = needed_for_majority(k)
    assert (need, graduated) == (2, 1)
    attacks = [
        [AttackerGroup(graduated=20, probationary=0)],  # many identities, one authority action
        [AttackerGroup(0, 5), AttackerGroup(0, 5), AttackerGroup(0, 5)],  # many groups, all on probation
    ]
    for attacker in attacks:
        assert max_seats(attacker, k) < need
        t = run_trials(honest=6, attacker=attacker, k=k, trials=300, seed=1)
        assert t.captured == 0 and t.most_seats <= max_seats(attacker, k)
    enough = [AttackerGroup(1, 0), AttackerGroup(0, 1)]
    assert max_seats(enough, k) == need and run_trials(6, enough, k, 300, seed=1).captured > 0


def test_audit_checks_admission_of_candidates_and_lists_strangers(tmp_path):
    """An audited gateway ledger under a genesis: clean when every verifier is admitted; a
    candidate (and voter) never admitted is `not_admitted`, and the candidates no longer match
    what the gateway had to choose; a stranger's feed is listed, not judged."""
    for admitted, clean in ((VERIFIERS, True), (VERIFIERS[:3], False)):
        d = tmp_path / str(len(admitted))
        d.mkdir()
        led = Ledger(d / "ledger.db", NET, GW)
        led.append("Genesis", {"genesis": genesis(admitted).wire()})
        led.close()
        scen = build(d / "ledger.db", n_tasks=2)
        stranger = Ledger(d / "x.db", NET, ident(71))
        junk = stranger.append("Evidence", {"kind": "minority_vote", "subject": GW.public_key, "proof": {}})
        scen.ledger.ingest(junk.payload, junk.sig)
        scen.ledger.close()
        r = audit_ledger(d / "ledger.db")
        codes = {v.code for v in r.violations}
        assert r.genesis and ident(71).public_key.hex() in r.strangers
        assert (codes == set()) if clean else {"not_admitted", "bad_candidates"} <= codes, r.violations
    pinned = genesis(VERIFIERS[:2])
    r = audit_ledger(tmp_path / "4" / "ledger.db", pinned)
    assert "genesis_mismatch" in {v.code for v in r.violations}


@pytest.mark.slow
def test_network_cli_init_admit_revoke(tmp_path):
    """The authority's commands write verifiable signed files; bad input is one line, exit 2."""
    import json
    import stat

    from tests.helpers import run_cli
    from trustgen.consensus.admission import open_admission, open_revocation

    gen, auth = tmp_path / "genesis.bin", tmp_path / "authority"
    gw, v = ident(1).node_id, ident(10).node_id
    res = run_cli(
        "network", "init", "-o", str(gen), "--authority", str(auth), "--network", NET, "--probation", "3",
        "--member", f"{gw}:gateway", "--member", f"{v}:verifier,trainer:host-a", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((auth / "node.key").stat().st_mode) == 0o600
    g = Genesis.load(gen)
    assert g.probation == 3 and [m.roles for m in g.members] == [("gateway",), ("trainer", "verifier")]
    assert json.loads(res.stdout)["genesis"] == g.id.hex()
    later = ident(11).node_id
    adm, rev = tmp_path / "a.bin", tmp_path / "r.bin"
    res = run_cli(
        "network",
        "admit",
        "--genesis",
        str(gen),
        "--authority",
        str(auth),
        "--member",
        f"{later}:worker",
        "-o",
        str(adm),
    )
    assert res.returncode == 0, res.stderr
    assert open_admission(g, adm.read_bytes())[1][0].key == ident(11).public_key
    res = run_cli("network", "revoke", "--genesis", str(gen), "--authority", str(auth), "--key", later, "-o", str(rev))
    assert res.returncode == 0 and open_revocation(g, rev.read_bytes())[1] == [ident(11).public_key]
    other = tmp_path / "other"
    for args in (
        ["admit", "--genesis", str(gen), "--authority", str(other), "--member", f"{later}:worker", "-o", str(adm)],
        ["init", "-o", str(gen), "--authority", str(auth), "--member", f"{later}:root"],
    ):
        bad = run_cli("network", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr
