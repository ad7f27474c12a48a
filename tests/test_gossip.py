"""Gossip over real gRPC servers on loopback: convergence, restarts, late joiners, a real
network split (TCP links cut and restored), hostile peers, and blob fetches past a liar."""

import asyncio
import os

import grpc
import pytest

from tests.netproxy import Proxy
from tests.swarm import NET, Swarm
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob
from trustgen.gossip.blobs import CHUNK, BlobStore
from trustgen.gossip.session import ClientSession
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb


def burst(swarm: Swarm, per_node: int, tag: str) -> None:
    for node in swarm.nodes.values():
        for k in range(per_node):
            node.ledger.append("NodeJoined", {"address": node.address, "roles": [f"{tag}{k}"]})


def test_random_graph_converges_after_a_burst(tmp_path):
    async def main():
        s = Swarm(tmp_path)
        try:
            await s.start_many(8, links=1, seed=3)
            await s.until_converged()
            burst(s, 5, "burst")
            await s.until_converged(40)  # raises if not converged within 40 rounds
            heads = s.heads(0)
            assert len(heads) == 8 and all(seq == 6 for seq, _ in heads.values())
        finally:
            await s.close()

    asyncio.run(main())


def test_restarted_node_catches_up_and_late_joiner_gets_everything(tmp_path):
    async def main():
        s = Swarm(tmp_path)
        try:
            await s.start_many(6, links=2, seed=1)
            await s.until_converged()
            gone = s.nodes[2].address
            await s.stop(2)  # its server really goes away: peers see refused connections
            burst(s, 3, "while-down")
            await s.rounds(6)
            # Peers are picked at random, so not every node has tried it; but some have, and
            # they no longer count it as alive.
            seen = [n.membership.snapshot().get(gone) for n in s.nodes.values()]
            assert any(st in ("suspect", "dead") for st in seen), seen
            await s.until_converged(among=[i for i in s.nodes])
            await s.start(2, [s.nodes[0].address])  # same data dir and key, new port
            await s.until_converged(60)
            assert s.heads(2) == s.heads(0)
            await s.start(9, [s.nodes[5].address])  # a brand-new node
            await s.until_converged(60)
            assert len(s.heads(9)) == 7
        finally:
            await s.close()

    asyncio.run(main())


def test_split_network_heals(tmp_path):
    """Two halves whose cross links go through TCP proxies; cutting the proxies really splits
    the network, both halves keep appending, and they converge once the links return."""

    async def main():
        s = Swarm(tmp_path, learn_peers=False)
        a, b = [0, 1, 2, 3], [4, 5, 6, 7]
        proxies = []
        try:
            for i in a + b:
                await s.start(i)
            proxy_of = {}
            for i in a + b:
                p = await Proxy(int(s.nodes[i].address.rsplit(":", 1)[1])).start()
                proxies.append(p)
                proxy_of[i] = p.address
            for i in a + b:
                same = a if i in a else b
                for j in a + b:
                    if j != i:
                        s.nodes[i].membership.add(s.nodes[j].address if j in same else proxy_of[j])
            await s.until_converged()
            for p in proxies:
                await p.cut()
            for i in a + b:
                s.nodes[i].ledger.append("NodeJoined", {"address": s.nodes[i].address, "roles": ["split"]})
            await s.rounds(8)
            await s.until_converged(among=a)
            await s.until_converged(among=b)
            assert s.heads(0) != s.heads(4)  # the halves really were apart
            for p in proxies:
                await p.heal()
            r = await s.until_converged(100, pause_s=0.05)
            assert all(seq == 2 for seq, _ in s.heads(0).values()) and len(s.heads(0)) == 8
            return r
        finally:
            for p in proxies:
                await p.cut()
            await s.close()

    asyncio.run(main())


def test_hostile_peer_is_refused_evidence_recorded_and_banned(tmp_path):
    async def main():
        s = Swarm(tmp_path)
        try:
            await s.start_many(4, links=2, seed=2)
            await s.until_converged()
            liar = Identity.generate()
            feed_a = Ledger(tmp_path / "liar-a.db", NET, liar)
            feed_b = Ledger(tmp_path / "liar-b.db", NET, liar)
            a1 = feed_a.append("NodeJoined", {"address": "127.0.0.1:9", "roles": ["worker"]})
            a2 = feed_a.append("NodeJoined", {"address": "127.0.0.1:9", "roles": ["worker", "x"]})
            b1 = feed_b.append("NodeJoined", {"address": "127.0.0.1:9", "roles": ["verifier"]})  # a fork of a1
            target = s.nodes[0]
            peers = Peers(liar, NET, insecure=True)
            target.membership.add("127.0.0.1:9", liar.public_key)
            sess = await ClientSession.open(peers.stub(target.address, "Gossip"), liar, NET, target.identity.public_key)

            async def push(entries):
                op = pb.GossipOp(push=pb.Entries(entries=[pb.Entry(payload=p, sig=g) for p, g in entries]))
                return (await sess.request(op, timeout=5)).ack

            assert (await push([(a1.payload, os.urandom(64))])).refused == 1  # forged signature
            assert (await push([(a2.payload, a2.sig)])).refused == 1  # reordered: seq 2 before 1
            assert (await push([(a1.payload, a1.sig)])).stored == 1
            assert (await push([(b1.payload, b1.sig)])).equivocation == 1
            evidence = [e for e in target.ledger.iter_entries() if e.type == "Evidence"]
            assert len(evidence) == 1 and evidence[0].body["subject"] == liar.public_key
            await push([(os.urandom(50), os.urandom(64))])  # third invalid batch: banned
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await push([(a2.payload, a2.sig)])
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as e:  # and no new session either
                await ClientSession.open(peers.stub(target.address, "Gossip"), liar, NET)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert target.membership.snapshot()["127.0.0.1:9"] == "banned"
            await peers.close()
            # Honest nodes still converge, evidence included.
            await s.until_converged(40)
            assert all(any(e.type == "Evidence" for e in s.nodes[i].ledger.iter_entries()) for i in s.nodes)
        finally:
            await s.close()

    asyncio.run(main())


def test_blob_fetch_survives_a_peer_serving_corrupt_chunks(tmp_path):
    from trustgen.net import transport
    from trustgen.net.auth import RequestGuard
    from trustgen.node.servicers import BlobsServicer
    from trustgen.rpc import trustgen_pb2_grpc as rpc

    class CorruptBlobs(BlobsServicer):
        """A malicious peer: a valid manifest, then one flipped byte in chunk 2."""

        async def Fetch(self, request, context):
            async for chunk in super().Fetch(request, context):
                if chunk.index == 2:
                    data = bytearray(chunk.data)
                    data[100] ^= 0xFF
                    chunk = pb.Chunk(index=chunk.index, data=bytes(data))
                yield chunk

    async def serve(store, cls):
        srv = transport.server()
        rpc.add_BlobsServicer_to_server(cls(store, RequestGuard(NET)), srv)
        port = transport.add_port(srv, "127.0.0.1:0", insecure=True)
        await srv.start()
        return srv, f"127.0.0.1:{port}"

    async def main():
        data = os.urandom(5 * CHUNK + 1234)
        stores = [BlobStore(tmp_path / f"s{i}") for i in range(3)]
        digest = [st.put(data) for st in stores][0]
        bad_srv, bad = await serve(stores[0], CorruptBlobs)
        good_srv, good = await serve(stores[1], BlobsServicer)
        empty_srv, empty = await serve(BlobStore(tmp_path / "empty"), BlobsServicer)
        peers = Peers(Identity.generate(), NET, insecure=True)
        try:
            mine = BlobStore(tmp_path / "mine")
            got, dropped = await fetch_blob(peers, digest, [empty, bad, good], mine)
            assert got == data and dropped == [bad] and mine.get(digest) == data  # empty: skipped, not blamed
            with pytest.raises(BlobFetchError):
                await fetch_blob(peers, digest, [bad, empty])
            with pytest.raises(BlobFetchError):
                await fetch_blob(peers, "00" * 32, [good])
            # Over a size limit: refused at the manifest (which binds the size), nobody blamed.
            with pytest.raises(BlobFetchError):
                await fetch_blob(peers, digest, [good], max_size=len(data) - 1)
            assert (await fetch_blob(peers, digest, [good], max_size=len(data)))[0] == data
        finally:
            await peers.close()
            for srv in (bad_srv, good_srv, empty_srv):
                await srv.stop(0)

    asyncio.run(main())


def test_a_slow_peer_cannot_stall_gossip(tmp_path, monkeypatch, caplog):
    """A peer that answers every request late (after the handshake, so it looks alive) is marked
    failing and the honest peer still gets everything; one that answers each request just in time
    but has much to send is cut off at its budget for the round."""
    from trustgen.gossip import rounds
    from trustgen.gossip.gossip import Gossip
    from trustgen.gossip.membership import Membership
    from trustgen.net import grpc_options, transport
    from trustgen.net.auth import RequestGuard
    from trustgen.node.servicers import GossipServicer
    from trustgen.rpc import trustgen_pb2_grpc as rpc

    monkeypatch.setattr(grpc_options, "DEADLINE_GOSSIP", 0.5)
    monkeypatch.setattr(rounds, "PEER_BUDGET_S", 1.0)

    class SlowGossip(GossipServicer):
        delay = 30.0

        async def Session(self, request_iterator, context):
            first = True
            async for frame in super().Session(request_iterator, context):
                if not first:
                    await asyncio.sleep(self.delay)
                first = False
                yield frame

    async def main():
        s = Swarm(tmp_path)
        me = Identity.generate()
        slow_ledger = Ledger(tmp_path / "slow.db", NET, me)
        slow_ledger.append("NodeJoined", {"address": "127.0.0.1:9", "roles": []})
        slow_peers = Peers(me, NET, insecure=True)
        g = Gossip(me, slow_ledger, slow_peers, Membership(me.public_key))
        srv = transport.server()
        servicer = SlowGossip(g, RequestGuard(NET))
        rpc.add_GossipServicer_to_server(servicer, srv)
        slow = f"127.0.0.1:{transport.add_port(srv, '127.0.0.1:0', insecure=True)}"
        await srv.start()
        try:
            a, b = await s.start(0), await s.start(1)
            a.membership.add(slow)
            a.membership.add(b.address)
            a.ledger.append("NodeJoined", {"address": a.address, "roles": ["news"]})
            b.ledger.append("NodeJoined", {"address": b.address, "roles": ["news"]})
            for _ in range(8):
                await asyncio.wait_for(a.gossip.round(), 10)  # a hang would fail here
                await b.gossip.round()
            assert a.membership.snapshot()[slow] in ("suspect", "dead")
            for feed in (a.identity.public_key, b.identity.public_key):
                assert a.ledger.head(feed) == b.ledger.head(feed)
            # Just in time for each request (0.35 s < 0.5 s), but five feeds to pull: over budget.
            servicer.delay = 0.35
            for k in range(4):
                other = Ledger(tmp_path / f"other{k}.db", NET, Identity.generate())
                e = other.append("NodeJoined", {"address": f"127.0.0.1:{10 + k}", "roles": []})
                slow_ledger.ingest(e.payload, e.sig)
            caplog.set_level("INFO", logger="trustgen.node")
            await asyncio.wait_for(a.gossip.sync(slow), 10)
            assert "ran over its 1.0 s budget" in caplog.text
            assert a.gossip.client.session_with(slow) is None  # dropped: its answers no longer pair up
        finally:
            g.close()
            await srv.stop(0)
            await slow_peers.close()
            await s.close()

    asyncio.run(main())
