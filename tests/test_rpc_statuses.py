"""Hostile bytes and storage faults get precise gRPC statuses from a real node on a loopback port:
undecodable requests INVALID_ARGUMENT (not UNKNOWN, no traceback per message), a full or
unwritable ledger RESOURCE_EXHAUSTED or UNAVAILABLE, and the node keeps serving."""

import logging
import sqlite3

import grpc
import pytest

from tests.consensus_fixtures import ident
from tests.test_rpc_inprocess import NET, InProcessNode
from trustgen.consensus.messages import sign
from trustgen.net.auth import make_request
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

GARBAGE = [b"\x0a\xff", b"\x0f", b"\xff" * 11, b"\x0a\x05ab"]  # each fails protobuf decoding


@pytest.fixture()
def gw(tmp_path):
    with InProcessNode(tmp_path) as n:
        yield n


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def _still_serving(gw) -> None:
    assert rpc.NodeStub(gw.channel).Info(pb.InfoRequest(), timeout=5).roles == ["gateway"]


def test_undecodable_bytes_are_invalid_argument_without_tracebacks(gw, caplog):
    caplog.set_level(logging.DEBUG)
    unary = ["/trustgen.v1.Gateway/Submit", "/trustgen.v1.Gateway/Status", "/trustgen.v1.Blobs/Manifest"]
    unary.append("/trustgen.v1.Node/Info")  # unguarded by auth, decoded all the same
    for path in unary:
        call = gw.channel.unary_unary(path)  # no serializer: the bytes go out as they are
        for data in GARBAGE:
            assert _code(lambda: call(data, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT, (path, data)
    for path in ["/trustgen.v1.Gateway/Watch", "/trustgen.v1.Blobs/Fetch"]:
        call = gw.channel.unary_stream(path)
        for data in GARBAGE:
            assert _code(lambda: list(call(data, timeout=10))) == grpc.StatusCode.INVALID_ARGUMENT, (path, data)
    session = gw.channel.stream_stream("/trustgen.v1.Gossip/Session")
    for data in GARBAGE:
        assert _code(lambda: list(session(iter([data]), timeout=10))) == grpc.StatusCode.INVALID_ARGUMENT
    _still_serving(gw)
    # Well-formed requests still reach the handlers and are judged on their content.
    status = rpc.GatewayStub(gw.channel).Status
    req = make_request(ident(60), NET, "/trustgen.v1.Gateway/Status", {"task_id": b"\x01" * 32})
    assert _code(lambda: status(req, timeout=10)) == grpc.StatusCode.NOT_FOUND
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if "undecodable request" in r.getMessage()]
    assert lines and len(lines) <= len(unary) + 3  # one line per method for this one peer, not per message


def _join(gw) -> grpc.StatusCode:
    """A Join that passes every check (the gateway's own key, a new entry of its own feed, its own
    address, whose Info answers for that key), so only storing the entry can fail: a join stores
    nothing before everything is checked. A healthy ledger answers OK, a faulty one its storage
    status."""
    me = gw.node.identity
    seq, prev = gw.node.ledger.head(me.public_key)
    body = {"address": gw.address, "roles": ["worker"]}
    e = sign(
        me,
        "LedgerEntry",
        NET,
        {"feed": me.public_key, "seq": seq + 1, "prev": prev, "time": 0, "type": "NodeJoined", "body": body},
    )
    req = make_request(me, NET, "/trustgen.v1.Gateway/Join", {"entries": [[e.payload, e.sig]]})
    try:
        rpc.GatewayStub(gw.channel).Join(req, timeout=10)
    except grpc.RpcError as err:
        assert "Traceback" not in (err.details() or "")
        return err.code()
    return grpc.StatusCode.OK


def test_full_ledger_is_resource_exhausted(gw, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    assert _join(gw) == grpc.StatusCode.OK
    db = gw.node.ledger.db
    # SQLite's own size cap, set to the pages in use: the next page it needs fails SQLITE_FULL,
    # the same "database or disk is full" a full filesystem gives.
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    codes = {_join(gw) for _ in range(8)}  # the first few may still fit in free pages
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    _still_serving(gw)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_unwritable_ledger_is_unavailable(gw, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    assert _join(gw) == grpc.StatusCode.OK
    ledger = gw.node.ledger
    # The ledger's connection replaced by a read-only one: every write fails in SQLite itself.
    ro = sqlite3.connect(f"file:{ledger.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    old, ledger.db = ledger.db, ro
    old.close()
    assert _join(gw) == grpc.StatusCode.UNAVAILABLE
    _still_serving(gw)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
