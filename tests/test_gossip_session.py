"""Gossip sessions against real nodes on loopback ports: the hello is refused for everything
RequestGuard refuses, every later frame is bound to its session and place by its tag, a peer's
bad frames end only its own session with a precise status, and limits hold."""

import asyncio
import os
import random
import time

import grpc
import pytest

from tests.swarm import NET, Swarm
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import sign
from trustgen.gossip import serving
from trustgen.gossip.session import METHOD, ClientSession, Framer, SessionCode, SessionError
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc


def run(coro_fn, tmp_path, n=1):
    async def main():
        s = Swarm(tmp_path)
        try:
            for i in range(n):
                await s.start(i)
            return await coro_fn(s)
        finally:
            await s.close()

    return asyncio.run(main())


def stub(node):
    return rpc.GossipStub(grpc.aio.insecure_channel(node.address))


async def status_of(call) -> grpc.StatusCode:
    """Read until the server ends the stream; its final status."""
    try:
        while await asyncio.wait_for(call.read(), 10) is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def hello(identity, method=METHOD, network=NET, args=None):
    msg = sign(
        identity,
        "Request",
        network,
        {
            "sender": identity.public_key,
            "method": method,
            "nonce": os.urandom(16),
            "time": int(time.time() * 1000),
            "args": {"eph": os.urandom(32)} if args is None else args,
        },
    )
    return pb.GossipFrame(body=msg.payload, tag=msg.sig)


async def refused(st, *frames) -> grpc.StatusCode:
    call = st.Session()
    for f in frames:
        await call.write(f)
    return await status_of(call)


def test_hello_is_checked_like_any_signed_request(tmp_path):
    async def body(s):
        st, me = stub(s.nodes[0]), Identity.generate()
        h = hello(me)
        assert await refused(st, pb.GossipFrame(body=h.body)) == grpc.StatusCode.UNAUTHENTICATED  # unsigned
        assert await refused(st, pb.GossipFrame(body=h.body, tag=os.urandom(64))) == grpc.StatusCode.UNAUTHENTICATED
        assert await refused(st, hello(me, method="/trustgen.v1.Gateway/Submit")) == grpc.StatusCode.PERMISSION_DENIED
        assert await refused(st, hello(me, network="other-net")) == grpc.StatusCode.UNAUTHENTICATED
        assert await refused(st, hello(me, args={})) == grpc.StatusCode.INVALID_ARGUMENT
        assert await refused(st, hello(me, args={"eph": bytes(32)})) == grpc.StatusCode.INVALID_ARGUMENT  # low order
        assert (
            await refused(st, pb.GossipFrame(body=os.urandom(300), tag=os.urandom(64)))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        first = st.Session()
        await first.write(h)
        assert (await first.read()).body  # accepted...
        first.cancel()
        assert await refused(st, h) == grpc.StatusCode.ALREADY_EXISTS  # ...and never again
        # The node still serves an honest client.
        sess = await ClientSession.open(st, me, NET, s.nodes[0].identity.public_key)
        reply = await sess.request(pb.GossipOp(digest=b"x" * 32), 5)
        assert reply.WhichOneof("op") == "heads" and not reply.heads.same
        sess.close()

    run(body, tmp_path)


def test_frames_are_bound_to_their_session_and_place(tmp_path):
    async def body(s):
        node = s.nodes[0]
        st, me = stub(node), Identity.generate()
        before = node.ledger.heads()

        async def session():
            return await ClientSession.open(st, me, NET, node.identity.public_key)

        digest = pb.GossipOp(digest=bytes(32))
        # One byte flipped in transit.
        a = await session()
        f = a.framer.seal(digest)
        await a.call.write(pb.GossipFrame(body=f.body[:-1] + bytes([f.body[-1] ^ 1]), tag=f.tag))
        assert await status_of(a.call) == grpc.StatusCode.UNAUTHENTICATED
        # A frame replayed: the tag covers its number in the stream.
        a = await session()
        f = a.framer.seal(digest)
        await a.call.write(f)
        assert (await a.call.read()).tag
        await a.call.write(f)
        assert await status_of(a.call) == grpc.StatusCode.UNAUTHENTICATED
        # A frame sealed for another session.
        a, b = await session(), await session()
        await b.call.write(a.framer.seal(digest))
        assert await status_of(b.call) == grpc.StatusCode.UNAUTHENTICATED
        a.close()
        # Authentic frames with bad content.
        bad_ops = [
            pb.GossipOp(want=pb.Want()),  # an answer sent as a request
            pb.GossipOp(have=pb.Have(items=[pb.Pos(feed_id=7, seq=1, hash=bytes(8))])),  # never numbered
            pb.GossipOp(have=pb.Have(items=[pb.Pos(feed=bytes(32), feed_id=2, seq=1, hash=bytes(8))])),  # skips 1
            pb.GossipOp(have=pb.Have(items=[pb.Pos(feed=bytes(31), feed_id=1, seq=1, hash=bytes(8))])),
            pb.GossipOp(have=pb.Have(items=[pb.Pos(feed=bytes(32), feed_id=1, seq=0, hash=bytes(8))])),
            pb.GossipOp(pull=pb.Range(feed=bytes(32), from_seq=5, to_seq=2)),
            pb.GossipOp(heads_of=pb.HeadsOf(bucket_count=4, buckets=[4])),
        ]
        for op in bad_ops:
            a = await session()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await a.request(op, 5)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, op
        a = await session()
        await a.call.write(a.framer.seal_body(b"\xff\xff\xff"))
        assert await status_of(a.call) == grpc.StatusCode.INVALID_ARGUMENT  # a tagged body that is not an op
        # Oversized: over the gossip frame limit, and over the transport's message limit.
        for size in (serving.MAX_FRAME, 9 << 20):
            a = await session()
            big = pb.GossipOp(push=pb.Entries(entries=[pb.Entry(payload=bytes(size), sig=bytes(64))]))
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await a.request(big, 10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Nothing was stored, and an honest session works.
        assert node.ledger.heads() == before
        ok = await session()
        assert (
            await ok.request(pb.GossipOp(pull=pb.Range(feed=node.identity.public_key, from_seq=1, to_seq=1)), 5)
        ).entries.entries
        ok.close()

    run(body, tmp_path)


def test_client_refuses_a_server_that_is_not_the_expected_node(tmp_path):
    async def body(s):
        with pytest.raises(SessionError, match="another key") as wrong:
            await ClientSession.open(stub(s.nodes[0]), Identity.generate(), NET, os.urandom(32))
        assert wrong.value.code is SessionCode.WRONG_KEY
        with pytest.raises(grpc.aio.AioRpcError):  # another network: the server refuses the hello
            await ClientSession.open(stub(s.nodes[0]), Identity.generate(), "other-net")

    run(body, tmp_path)


def test_session_errors_say_what_went_wrong_by_code(tmp_path):
    """Callers decide on SessionError.code: a bad tag, a malformed body, a server that ended the
    session, a session already closed, and a node with another key each have their own."""

    async def body(s):
        a, b = s.nodes[0], s.nodes[1]
        sess = await ClientSession.open(stub(a), Identity.generate(), NET)
        server_side = Framer(sess.framer.key, client=False)  # seals what the client expects to open
        frame = server_side.seal(pb.GossipOp(heads=pb.Heads(same=True)))
        with pytest.raises(SessionError) as e:
            sess.framer.open(pb.GossipFrame(body=frame.body, tag=bytes(len(frame.tag))))
        assert e.value.code is SessionCode.BAD_TAG
        opened = sess.framer.open(frame)  # the authentic frame still opens, in its place
        assert opened.heads.same
        for garbage in (b"\xff\xff\xff", b""):  # not a GossipOp; no operation
            tagged = server_side.seal_body(garbage)  # authentic, in its place: the next frame
            with pytest.raises(SessionError) as e:
                sess.framer.open(tagged)
            assert e.value.code is SessionCode.MALFORMED
        # The server ends its sessions: the next request finds the stream over, the one after a closed session.
        live = await ClientSession.open(stub(a), Identity.generate(), NET)
        a.gossip.close()
        with pytest.raises(SessionError) as e:
            await live.request(pb.GossipOp(digest=bytes(32)), 5)
        assert e.value.code is SessionCode.ENDED_BY_PEER
        with pytest.raises(SessionError) as e:
            await live.request(pb.GossipOp(digest=bytes(32)), 5)
        assert e.value.code is SessionCode.CLOSED
        # An address whose node has another key is a failure to reach, not a protocol breach.
        b.membership.add(a.address, os.urandom(32))
        assert await b.gossip.connect() == 0
        assert b.membership.snapshot()[a.address] == "suspect" and not b.membership.strikes
        sess.close()

    run(body, tmp_path, n=2)


def test_rate_limit_and_session_caps(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "RATE_PER_S", 1.0)
    monkeypatch.setattr(serving, "BURST", 20.0)

    async def body(s):
        node = s.nodes[0]
        st = stub(node)
        me = Identity.generate()
        sess = await ClientSession.open(st, me, NET)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            for _ in range(40):
                await sess.request(pb.GossipOp(digest=bytes(32)), 5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        other = await ClientSession.open(st, Identity.generate(), NET)  # the limit is per sender
        await other.request(pb.GossipOp(digest=bytes(32)), 5)
        # Sessions per peer are capped; closing one makes room.
        peer = Identity.generate()
        held = [await ClientSession.open(st, peer, NET) for _ in range(serving.MAX_SESSIONS_PER_PEER)]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ClientSession.open(st, peer, NET)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held.pop().close()
        for _ in range(100):
            try:
                held.append(await ClientSession.open(st, peer, NET))
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)  # the server notices the cancellation shortly
        assert len(held) == serving.MAX_SESSIONS_PER_PEER

    run(body, tmp_path)


def test_unknown_keys_cannot_take_the_slots_of_known_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "MAX_STRANGER_SESSIONS", 2)

    async def body(s):
        a, b = s.nodes[0], s.nodes[1]
        st = stub(a)
        crowd = [await ClientSession.open(st, Identity.generate(), NET) for _ in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ClientSession.open(st, Identity.generate(), NET)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "unknown" in e.value.details()
        a.membership.add(b.address, b.identity.public_key)  # as if learnt from b's NodeJoined entry
        known = await ClientSession.open(st, b.identity, NET, a.identity.public_key)
        assert (await known.request(pb.GossipOp(digest=bytes(32)), 5)).WhichOneof("op") == "heads"
        for c in crowd:
            c.close()

    run(body, tmp_path, n=2)


def test_idle_session_closed_by_server_is_reopened_without_marking_the_peer(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "SESSION_IDLE_S", 0.3)

    async def body(s):
        a, b = s.nodes[0], s.nodes[1]
        a.membership.add(b.address)
        await a.gossip.connect()
        first = a.gossip.client.session_with(b.address)
        assert first is not None and first.peer_key == b.identity.public_key  # learnt in the handshake
        for _ in range(200):  # b closes the idle session
            if b.gossip.server.open_sessions() == 0:
                break
            await asyncio.sleep(0.05)
        assert b.gossip.server.open_sessions() == 0 and not first.closed  # a has not noticed yet
        b.ledger.append("NodeJoined", {"address": b.address, "roles": ["x"]})
        await a.gossip.sync(b.address)
        assert a.gossip.client.session_with(b.address) not in (None, first)
        assert a.membership.snapshot()[b.address] == "alive"
        assert a.ledger.head(b.identity.public_key) == b.ledger.head(b.identity.public_key)

    run(body, tmp_path, n=2)


def _random_op(rng: random.Random) -> pb.GossipOp:
    def blob():
        return rng.randbytes(rng.choice([0, 1, 8, 31, 32, 33]))

    def num():
        return rng.choice([0, 1, 2, 7, 2**32 - 1, 2**63, 2**64 - 1])

    def pos():
        return pb.Pos(feed=blob(), seq=num(), hash=blob(), feed_id=rng.choice([0, 1, 2, 2**32 - 1]))

    def rng_range():
        return pb.Range(feed=blob(), from_seq=num(), to_seq=num(), feed_id=rng.choice([0, 1, 5]))

    kind = rng.randrange(9)
    if kind == 0:
        return pb.GossipOp(have=pb.Have(items=[pos() for _ in range(rng.randrange(4))]))
    if kind == 1:
        return pb.GossipOp(
            push=pb.Entries(entries=[pb.Entry(payload=blob(), sig=blob()) for _ in range(rng.randrange(3))])
        )
    if kind == 2:
        return pb.GossipOp(digest=blob())
    if kind == 3:
        return pb.GossipOp(pull=rng_range())
    if kind == 4:
        return pb.GossipOp(
            heads_of=pb.HeadsOf(bucket_count=num() % 2**32, buckets=[num() % 2**32 for _ in range(rng.randrange(3))])
        )
    if kind == 5:
        return pb.GossipOp(want=pb.Want(ranges=[rng_range()]))
    if kind == 6:
        return pb.GossipOp(ack=pb.Ack(stored=1))
    if kind == 7:
        return pb.GossipOp(heads=pb.Heads(same=True))
    return pb.GossipOp(entries=pb.Entries())


def test_random_ops_never_crash_a_node(tmp_path):
    """Authentic sessions carrying random operations: every answer is an op or a deliberate
    status (never UNKNOWN or INTERNAL), and the node keeps serving."""
    allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED}

    async def body(s):
        node = s.nodes[0]
        st = stub(node)
        rng = random.Random(11)
        answered = refused_ = 0
        sess = None
        for _ in range(300):
            if sess is None or sess.closed:
                sess = await ClientSession.open(st, Identity.generate(), NET)
            try:
                reply = await sess.request(_random_op(rng), 5)
                assert reply.WhichOneof("op") in ("want", "ack", "heads", "entries")
                answered += 1
            except grpc.aio.AioRpcError as e:
                assert e.code() in allowed, e
                refused_ += 1
        assert answered and refused_
        assert (await node.gossip.connect()) == 0  # it knows no peers; and it still answers:
        ok = await ClientSession.open(st, Identity.generate(), NET)
        assert (await ok.request(pb.GossipOp(digest=bytes(32)), 5)).heads.heads

    run(body, tmp_path)
