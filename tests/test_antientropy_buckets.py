"""Bucketed anti-entropy between real gossip nodes (gRPC on loopback): with more than 16 feeds a
repair compares bucket digests first and exchanges the heads of the differing buckets only.

The nodes' ledgers differ before they start, so push (which announces only entries stored after
start) cannot repair them: only anti-entropy can."""

from __future__ import annotations

import asyncio
import pathlib

from tests.swarm import NET, Swarm
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import ZERO, Ledger, entry_hash
from trustgen.consensus.messages import sign
from trustgen.gossip.session import ClientSession
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb

N_FEEDS = 1000


def entry(who: Identity, seq: int, prev: bytes) -> tuple[bytes, bytes, bytes]:
    """(payload, sig, hash) of entry `seq` of `who`'s feed."""
    body = {"address": "", "roles": [f"r{seq}"]}
    msg = sign(
        who,
        "LedgerEntry",
        NET,
        {"feed": who.public_key, "seq": seq, "prev": prev, "time": seq, "type": "NodeJoined", "body": body},
    )
    return msg.payload, msg.sig, entry_hash(msg.payload, msg.sig)


def store(path: pathlib.Path, entries: list[tuple[bytes, bytes, bytes]]) -> None:
    led = Ledger(path, NET)
    with led.batch():
        for payload, sig, _ in entries:
            assert led.ingest(payload, sig) == "stored"
    led.close()


def gossip_bytes(node) -> float:
    return node.metrics.registry.get_sample_value("trustgen_gossip_bytes_sent")


def full_heads_size(heads: dict) -> int:
    """What one answer carrying every head would take (the path used up to 16 feeds)."""
    return pb.GossipOp(heads=pb.Heads(heads=[pb.Pos(feed=f, seq=s, hash=h) for f, (s, h) in heads.items()])).ByteSize()


def test_many_feeds_differing_in_a_few_converge_by_bucket(tmp_path):
    feeds = [Identity.generate() for _ in range(N_FEEDS + 1)]
    firsts = [entry(f, 1, ZERO) for f in feeds]
    common = firsts[:N_FEEDS]
    only_0 = [entry(feeds[0], 2, firsts[0][2]), entry(feeds[1], 2, firsts[1][2])]  # newer heads on two feeds
    only_1 = [entry(feeds[2], 2, firsts[2][2]), firsts[N_FEEDS]]  # a newer head, and a feed 0 never saw

    async def main():
        s = Swarm(tmp_path, learn_peers=False)
        for i, extra in ((0, only_0), (1, only_1)):
            s.config(i)  # creates the node's key
            store(tmp_path / f"n{i}" / "ledger.db", common + extra)
        try:
            a = await s.start(0)
            b = await s.start(1, [a.address])
            a.membership.add(b.address)

            # Past 16 feeds a node answers a differing digest with bucket digests, not heads.
            me = Identity.generate()
            peers = Peers(me, NET, insecure=True)
            session = await ClientSession.open(peers.stub(b.address, "Gossip"), me, NET)
            answer = (await session.request(pb.GossipOp(digest=bytes(32)), timeout=10)).heads
            session.close()
            await peers.close()
            assert not answer.same and not answer.heads
            assert answer.bucket_count >= 128 and len(answer.bucket_digests) == answer.bucket_count

            reference = full_heads_size(b.ledger.heads())
            before = gossip_bytes(a) + gossip_bytes(b)
            rounds = await s.until_converged(40)
            spent = gossip_bytes(a) + gossip_bytes(b) - before
            return rounds, spent, reference, s.heads(0)
        finally:
            await s.close()

    rounds, spent, reference, heads = asyncio.run(main())
    assert len(heads) == N_FEEDS + 3  # every feed, and both nodes' own
    for i in (0, 1, 2):
        assert heads[feeds[i].public_key][0] == 2
    assert heads[feeds[N_FEEDS].public_key][0] == 1
    # The whole repair, both nodes' frames together (handshakes, announcements of their own
    # NodeJoined, digests, the differing buckets' heads, the entries), costs less than a quarter of
    # what one answer carrying every head would.
    assert reference > 60_000 and spent < reference / 4, (spent, reference, rounds)
