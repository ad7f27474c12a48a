"""A client checks the final answer itself: a lying gateway cannot pass off a forged certificate
(wrong majority, votes that do not count, another key's signature, another task or worker)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.consensus_fixtures import NET, ident, make_result, make_task, make_vote
from trustgen.consensus import merkle
from trustgen.consensus.assignment import rank
from trustgen.consensus.encoding import encode
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed, sign
from trustgen.node.client import SubmitError, check_final
from trustgen.rpc import trustgen_pb2 as pb

GATEWAY = ident(1)
WORKER = ident(2)
CLIENT = ident(3)
VERIFIERS = [ident(10 + i) for i in range(5)]
SYBILS = [ident(70 + i) for i in range(3)]  # keys the gateway controls; never candidates
BY_KEY = {v.public_key: v for v in VERIFIERS + SYBILS}
TASK = make_task(CLIENT, nonce=b"client-task", k=3)
RESULT = make_result(WORKER, TASK)
CANDIDATES = sorted(v.public_key for v in VERIFIERS)
ASSIGNED = rank(merkle.EMPTY_ROOT, TASK.id, CANDIDATES, WORKER.public_key)[:3]


def votes(accepts: list[bool], result: Signed = RESULT, keys: list[bytes] = ASSIGNED) -> list[Signed]:
    return [make_vote(BY_KEY[k], result, a) for k, a in zip(keys, accepts)]


def honest_cert(vs: list[Signed]) -> Signed:
    return certify(GATEWAY, NET, TASK, merkle.EMPTY_ROOT, CANDIDATES, RESULT, vs)


def resign(cert: Signed, signer: Identity = GATEWAY, **changes: Any) -> Signed:
    return sign(signer, "Certificate", NET, dict(cert.body, **changes))


def status(cert: Signed, vs: list[Signed], result: Signed = RESULT) -> pb.TaskStatus:
    return pb.TaskStatus(
        task_id=TASK.id,
        state="final",
        result=result.wire(),
        votes=[v.wire() for v in vs],
        certificate=cert.wire(),
        decision=cert.body["decision"],
    )


def check(st: pb.TaskStatus) -> dict[str, Any]:
    return check_final(st, TASK, GATEWAY.public_key, NET)


def test_honest_certificates_pass():
    vs = votes([True, True, False])
    out = check(status(honest_cert(vs), vs))
    assert out["decision"] == "accept" and out["worker"] == WORKER.public_key.hex()
    assert out["result_id"] == RESULT.id.hex() and len(out["votes"]) == 3
    rejected = votes([False, False, True])
    assert check(status(honest_cert(rejected), rejected))["decision"] == "reject"


def test_wrong_majority():
    vs = votes([False, False, True])
    lie = resign(honest_cert(vs), decision="accept")
    with pytest.raises(SubmitError, match="says accept but its votes say reject"):
        check(status(lie, vs))


def test_votes_of_unassigned_verifiers_do_not_count():
    assigned = votes([False, False])
    sybil = votes([True, True], keys=[s.public_key for s in SYBILS[:2]])
    # The assigned verifiers listed truthfully, the sybils' accepts slipped in beside them.
    lie = resign(honest_cert(votes([False, False, True])), decision="accept", votes=[v.wire() for v in sybil])
    with pytest.raises(SubmitError, match="says accept"):
        check(status(lie, assigned + sybil))


def test_verifier_list_padded_past_k():
    # Three assigned rejects, outvoted by two extra "verifiers" appended to the list.
    rejects = votes([False, False, False])
    sybil = votes([True, True], keys=[s.public_key for s in SYBILS[:2]])
    padded = ASSIGNED + [s.public_key for s in SYBILS[:2]]
    lie = resign(honest_cert(rejects), decision="accept", verifiers=padded, votes=[v.wire() for v in rejects + sybil])
    with pytest.raises(SubmitError, match="more verifiers than the task asked for"):
        check(status(lie, rejects + sybil))


def test_votes_for_another_result_do_not_count():
    other = make_result(WORKER, TASK, digest="sha256:" + "ee" * 32)  # e.g. an earlier, rejected attempt
    for_other = votes([True, True, True], result=other)
    lie = resign(honest_cert(votes([True, True, True])), votes=[v.wire() for v in for_other])
    with pytest.raises(SubmitError, match="no majority"):
        check(status(lie, for_other))


def test_certificate_signed_by_another_key():
    vs = votes([True, True, True])
    cert = honest_cert(vs)
    other = ident(4)
    theirs = resign(cert, signer=other, gateway=other.public_key)  # a valid certificate, not our gateway's
    with pytest.raises(SubmitError, match="not signed by the gateway"):
        check(status(theirs, vs))
    # Our gateway's name on it, another key's signature: the signature itself fails.
    forged = pb.TaskStatus()
    forged.CopyFrom(status(cert, vs))
    forged.certificate = encode({"payload": cert.payload, "sig": other.sign(cert.payload)})
    with pytest.raises(SubmitError, match="invalid final answer"):
        check(forged)


def test_certificate_for_another_task_or_worker():
    vs = votes([True, True, True])
    cert = honest_cert(vs)
    with pytest.raises(SubmitError, match="another task or result"):
        check(status(resign(cert, task_id=make_task(CLIENT, nonce=b"other").id), vs))
    # The right result, but the certificate credits another node with it.
    with pytest.raises(SubmitError, match="another task or result"):
        check(status(resign(cert, worker=ident(5).public_key), vs))


def test_a_final_answer_without_a_majority():
    lie = resign(honest_cert(votes([True, True, True])), decision="pending", votes=[])
    with pytest.raises(SubmitError, match="no majority"):
        check(status(lie, []))
