"""Anti-entropy: compare all feed heads with one peer by digest and, with many feeds, narrow the
difference down by bucket, so a repair sends the heads of the feeds that differ, not of all.

Both ends are here as functions of the heads: the answers a server gives, and what a client
concludes from them (what to pull, what to push). The requests themselves go in rounds.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from itertools import islice

import grpc

from trustgen.gossip.wire import MAX_ITEMS, MAX_SEQ, op
from trustgen.net.auth import RpcError
from trustgen.rpc import trustgen_pb2 as pb

FULL_HEADS_UPTO = 16  # feeds; with more, anti-entropy first narrows the difference down by bucket
MAX_BUCKETS, BUCKET_DIGEST = 1024, 8
MAX_HEADS = 4 * MAX_ITEMS  # heads in one answer

Heads = dict[bytes, tuple[int, bytes]]  # feed -> (seq, entry hash) of its last entry
Range = tuple[bytes, int, int]  # (feed, from_seq, to_seq)


def heads_digest(heads: Heads) -> bytes:
    h = hashlib.sha256(b"trustgen/heads/v1\0")
    for feed in sorted(heads):
        seq, eh = heads[feed]
        h.update(feed + seq.to_bytes(8, "big") + eh)
    return h.digest()


def bucket_of(feed: bytes, count: int) -> int:
    return int.from_bytes(feed[:4], "big") % count


def bucket_count(n_feeds: int) -> int:
    """About four feeds a bucket: one new entry in flight makes one bucket's heads cross."""
    n = 4
    while n * 4 < n_feeds and n < MAX_BUCKETS:
        n *= 2
    return n


def bucket_digests(heads: Heads, count: int) -> list[bytes]:
    hs = [hashlib.sha256(b"trustgen/bucket/v1\0") for _ in range(count)]
    for feed in sorted(heads):
        seq, eh = heads[feed]
        hs[bucket_of(feed, count)].update(feed + seq.to_bytes(8, "big") + eh)
    return [h.digest()[:BUCKET_DIGEST] for h in hs]


# -- server ----------------------------------------------------------------------------------------


def answer_digest(heads: Heads, digest: bytes) -> pb.GossipOp:
    """`same` if the client's digest matches ours; else every head (few feeds) or a digest per bucket."""
    if digest == heads_digest(heads):
        return op(heads=pb.Heads(same=True))
    if len(heads) <= FULL_HEADS_UPTO:
        return op(heads=pb.Heads(heads=[pb.Pos(feed=f, seq=s, hash=h) for f, (s, h) in sorted(heads.items())]))
    count = bucket_count(len(heads))
    return op(heads=pb.Heads(bucket_count=count, bucket_digests=bucket_digests(heads, count)))


def answer_heads_of(heads: Heads, q: pb.HeadsOf) -> pb.GossipOp:
    """The heads of the feeds in the buckets the client asks for."""
    count = q.bucket_count
    if not 1 <= count <= MAX_BUCKETS or len(q.buckets) > count or any(b >= count for b in q.buckets):
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"heads_of needs 1 <= bucket_count <= {MAX_BUCKETS} and buckets below it",
        )
    wanted = set(q.buckets)
    out = [pb.Pos(feed=f, seq=s, hash=h) for f, (s, h) in sorted(heads.items()) if bucket_of(f, count) in wanted]
    return op(heads=pb.Heads(heads=out[:MAX_HEADS]))


# -- client ----------------------------------------------------------------------------------------


def differing_buckets(mine: Heads, theirs: pb.Heads) -> list[int] | None:
    """The buckets whose digests differ from the peer's; None if its bucket answer is invalid."""
    count = theirs.bucket_count
    if count > MAX_BUCKETS or len(theirs.bucket_digests) != count:
        return None
    return [i for i, d in enumerate(bucket_digests(mine, count)) if d != theirs.bucket_digests[i]]


def their_seqs(positions: Iterable[pb.Pos]) -> dict[bytes, int]:
    """The peer's head sequence by feed, from the well-formed positions of its (bounded) answer."""
    return {p.feed: p.seq for p in islice(positions, MAX_HEADS) if len(p.feed) == 32 and 1 <= p.seq <= MAX_SEQ}


def lacking(mine: Heads, theirs: dict[bytes, int]) -> list[Range]:
    """The ranges the peer has and we do not."""
    return [(f, mine.get(f, (0, b""))[0] + 1, s) for f, s in theirs.items() if s > mine.get(f, (0, b""))[0]]


def surplus(mine: Heads, theirs: dict[bytes, int], buckets: list[int] | None, count: int) -> list[Range]:
    """The ranges we have and the peer does not, among the feeds of `buckets` (all if None)."""
    scope = set(buckets) if buckets is not None else None
    return [
        (f, theirs.get(f, 0) + 1, s)
        for f, (s, _) in mine.items()
        if s > theirs.get(f, 0) and (scope is None or bucket_of(f, count) in scope)
    ]
