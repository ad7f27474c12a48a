"""Protocol-level behaviour of a real gateway node served in-process on an ephemeral loopback
port: authentication, replay, size limits, malformed input, joins. No model is loaded."""

import asyncio
import os
import threading
import time

import grpc
import pytest

from tests.consensus_fixtures import ident
from trustgen.consensus.encoding import encode, signing_bytes
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.net.auth import make_request
from trustgen.node.client import make_task
from trustgen.node.config import NodeConfig
from trustgen.node.daemon import Node
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

NET = "trustgen-local"


class InProcessNode:
    def __init__(self, tmp_path, roles=("gateway",), **settings) -> None:
        d = tmp_path / "gw"
        Identity.generate().save(d)
        settings.setdefault("insecure", True)
        settings.setdefault("open_network", True)
        self.cfg = NodeConfig(name="gw", data_dir=d, roles=list(roles), metrics_port=-1, **settings)
        self.loop = asyncio.new_event_loop()
        self.node = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.node = Node(self.cfg)
        self.loop.run_until_complete(self.node.run(handle_signals=False))

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while (self.node is None or not self.node.address) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.address = self.node.address
        self.channel = grpc.insecure_channel(self.address)
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()
        self.loop.call_soon_threadsafe(self.node.stop)
        self.thread.join(10)


@pytest.fixture()
def gw(tmp_path):
    with InProcessNode(tmp_path) as n:
        yield n


def code_of(fn, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, timeout=10, **kw)
    return e.value.code()


def test_requests_are_authenticated_precisely(gw):
    stub = rpc.GatewayStub(gw.channel)
    me = ident(40)
    status_args = {"task_id": b"\x01" * 32}
    assert code_of(stub.Status, pb.SignedRequest()) == grpc.StatusCode.UNAUTHENTICATED
    good = make_request(me, NET, "/trustgen.v1.Gateway/Status", status_args)
    forged = pb.SignedRequest(payload=good.payload, signature=ident(41).sign(good.payload))
    assert code_of(stub.Status, forged) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        code_of(stub.Status, pb.SignedRequest(payload=b"TGv1\x99garbage", signature=b"x" * 64))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    wrong_method = make_request(me, NET, "/trustgen.v1.Gateway/Submit", status_args)
    assert code_of(stub.Status, wrong_method) == grpc.StatusCode.PERMISSION_DENIED
    other_net = make_request(me, "trustgen-elsewhere", "/trustgen.v1.Gateway/Status", status_args)
    assert code_of(stub.Status, other_net) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(stub.Status, good) == grpc.StatusCode.NOT_FOUND  # authenticated; no such task
    assert code_of(stub.Status, good) == grpc.StatusCode.ALREADY_EXISTS  # the same request again
    stale_body = {
        "sender": me.public_key,
        "method": "/trustgen.v1.Gateway/Status",
        "nonce": os.urandom(16),
        "time": int(time.time() * 1000) - 3_600_000,
        "args": status_args,
    }
    stale = signing_bytes("Request", NET, stale_body)
    assert (
        code_of(stub.Status, pb.SignedRequest(payload=stale, signature=me.sign(stale)))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    bad_id = make_request(me, NET, "/trustgen.v1.Gateway/Status", {"task_id": b"short"})
    assert code_of(stub.Status, bad_id) == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_and_malformed_submissions(gw):
    stub = rpc.GatewayStub(gw.channel)
    me = ident(42)
    huge = pb.SignedRequest(payload=b"\x00" * (9 * 1024 * 1024), signature=b"\x00" * 64)
    assert code_of(stub.Submit, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED
    garbage_task = make_request(me, NET, "/trustgen.v1.Gateway/Submit", {"task": b"\x08not a task"})
    assert code_of(stub.Submit, garbage_task) == grpc.StatusCode.INVALID_ARGUMENT
    task = make_task(me, NET, "text", "sha256:" + "ab" * 32, {"prompt": "hi", "max_new_tokens": 4})
    forged = encode({"payload": task.payload, "sig": ident(43).sign(task.payload)})
    req = make_request(me, NET, "/trustgen.v1.Gateway/Submit", {"task": forged})
    assert code_of(stub.Submit, req) == grpc.StatusCode.UNAUTHENTICATED
    bad_params = make_task(me, NET, "text", "sha256:" + "ab" * 32, {"prompt": "", "max_new_tokens": 4})
    req = make_request(me, NET, "/trustgen.v1.Gateway/Submit", {"task": bad_params.wire()})
    assert code_of(stub.Submit, req) == grpc.StatusCode.INVALID_ARGUMENT
    even = make_task(me, NET, "text", "sha256:" + "ab" * 32, {"prompt": "hi"}, verifiers=2)
    req = make_request(me, NET, "/trustgen.v1.Gateway/Submit", {"task": even.wire()})
    assert code_of(stub.Submit, req) == grpc.StatusCode.INVALID_ARGUMENT
    # The node is still serving; with no verifier registered even a well-formed task is refused
    # (it could not get the votes it asks for), and nothing is stored. Acceptance and idempotent
    # resubmission with a real verifier pool: tests/test_task_admission.py.
    info = rpc.NodeStub(gw.channel).Info(pb.InfoRequest(), timeout=5)
    assert info.roles == ["gateway"]
    good = make_task(me, NET, "text", "sha256:" + "ab" * 32, {"prompt": "hi", "max_new_tokens": 4})
    req = make_request(me, NET, "/trustgen.v1.Gateway/Submit", {"task": good.wire()})
    assert code_of(stub.Submit, req) == grpc.StatusCode.FAILED_PRECONDITION
    assert not [e for e in gw.node.ledger.iter_entries() if e.type == "TaskAccepted"]


def test_join_refuses_foreign_feeds_and_false_addresses(gw, tmp_path):
    stub = rpc.GatewayStub(gw.channel)
    node = ident(44)
    own = Ledger(tmp_path / "n.db", NET, node)
    e = own.append("NodeJoined", {"address": gw.address, "roles": ["worker"]})  # the gateway's address
    req = make_request(node, NET, "/trustgen.v1.Gateway/Join", {"entries": [[e.payload, e.sig]]})
    assert code_of(stub.Join, req) == grpc.StatusCode.PERMISSION_DENIED  # that address is another node
    other = Ledger(tmp_path / "o.db", NET, ident(45))
    e2 = other.append("NodeJoined", {"address": "127.0.0.1:1", "roles": ["worker"]})
    req = make_request(node, NET, "/trustgen.v1.Gateway/Join", {"entries": [[e2.payload, e2.sig]]})
    assert code_of(stub.Join, req) == grpc.StatusCode.PERMISSION_DENIED  # someone else's feed
    assert gw.node.ledger.head(ident(45).public_key)[0] == 0  # and nothing of it was stored
    req = make_request(node, NET, "/trustgen.v1.Gateway/Join", {"entries": [[b"x", b"y"]]})
    assert code_of(stub.Join, req) == grpc.StatusCode.INVALID_ARGUMENT
    unreachable = Ledger(tmp_path / "u.db", NET, ident(46))
    e3 = unreachable.append("NodeJoined", {"address": "127.0.0.1:1", "roles": ["verifier"]})
    req = make_request(ident(46), NET, "/trustgen.v1.Gateway/Join", {"entries": [[e3.payload, e3.sig]]})
    assert code_of(stub.Join, req) == grpc.StatusCode.FAILED_PRECONDITION


def test_health_and_reflection(gw):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    h = health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"trustgen.v1.Gateway", "trustgen.v1.Node", "grpc.health.v1.Health"} <= names


def test_tls_when_configured_and_plaintext_only_when_asked(tmp_path):
    import subprocess

    from trustgen.errors import UsageError

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(UsageError, match="insecure"):
        NodeConfig(name="x", data_dir=tmp_path / "x", roles=["gateway"])  # neither TLS nor insecure
    node = InProcessNode(tmp_path, insecure=False, tls_cert=str(cert), tls_key=str(key))
    node.thread.start()
    deadline = time.monotonic() + 20
    while (node.node is None or not node.node.address) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(node.node.address, creds) as ch:
            info = rpc.NodeStub(ch).Info(pb.InfoRequest(), timeout=10)
            assert info.roles == ["gateway"]
        with grpc.insecure_channel(node.node.address) as ch:
            with pytest.raises(grpc.RpcError) as e:
                rpc.NodeStub(ch).Info(pb.InfoRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        node.loop.call_soon_threadsafe(node.node.stop)
        node.thread.join(10)


def _random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-(2**63), 2**63)
    if kind == 1:
        return rng.randbytes(rng.choice([0, 1, 8, 32, 33, 200]))
    if kind == 2:
        return "".join(rng.choice("abc/\x00é") for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([True, False, None, 1.5, -0.0])
    if kind == 4:
        return rng.randrange(-3, 300)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["task", "task_id", "entries", "have", "digest", "feed", "from_seq", "limit", "from_index", "x"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _random_args(rng) -> dict:
    keys = ["task", "task_id", "entries", "have", "digest", "feed", "from_seq", "limit", "from_index", "x"]
    return {rng.choice(keys): _random_value(rng, 1) for _ in range(rng.randrange(4))}


def test_random_signed_requests_never_crash_a_node(gw):
    """Every method, fed validly signed requests with random argument structures: each answer is
    a deliberate status (never UNKNOWN or INTERNAL), and the node keeps serving."""
    import random

    rng = random.Random(7)
    me = ident(50)
    allowed = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    methods = {"Gateway": ["Submit", "Status", "Join"], "Blobs": ["Manifest"]}
    stubs = {"Gateway": rpc.GatewayStub(gw.channel), "Blobs": rpc.BlobsStub(gw.channel)}
    answered, seen = 0, set()
    for _ in range(40):
        for service, names in methods.items():
            for name in names:
                args = _random_args(rng)
                req = make_request(me, NET, f"/trustgen.v1.{service}/{name}", args)
                try:
                    getattr(stubs[service], name)(req, timeout=10)
                    answered += 1
                except grpc.RpcError as e:
                    assert e.code() in allowed, (service, name, args, e.code(), e.details())
                    seen.add(e.code())
    for name, stub_name in (("Watch", "Gateway"), ("Fetch", "Blobs")):
        for _ in range(20):
            req = make_request(me, NET, f"/trustgen.v1.{stub_name}/{name}", _random_args(rng))
            try:
                list(getattr(stubs[stub_name], name)(req, timeout=10))
            except grpc.RpcError as e:
                assert e.code() in allowed, (name, e.code(), e.details())
    assert rpc.NodeStub(gw.channel).Info(pb.InfoRequest(), timeout=5).roles == ["gateway"]
    # The requests got past authentication into the handlers, which refused them precisely.
    assert answered or {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= seen
