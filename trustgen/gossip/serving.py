"""The server side of gossip: serve a session (handshake, then answer each request in order),
with sessions bounded per peer and in all, and every sender rate-limited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from trustgen.gossip import antientropy, session
from trustgen.gossip.replica import Replica
from trustgen.gossip.wire import HASH_HINT, MAX_BYTES, MAX_ITEMS, MAX_SEQ, Position, op
from trustgen.net.auth import RequestGuard, RpcError
from trustgen.rpc import trustgen_pb2 as pb

WANT_TTL_S = 2.0  # do not ask twice for one range while a push is on its way
RATE_PER_S, BURST = 200.0, 400.0  # requests per sender
MAX_SESSIONS, MAX_SESSIONS_PER_PEER = 1024, 4  # served sessions; a restarted peer may overlap its old one
MAX_STRANGER_SESSIONS = 256  # ... of which keys not (yet) known from the ledger may hold this many
SESSION_IDLE_S = 600.0  # a served session with no request for this long is closed
MAX_FRAME = MAX_BYTES + 64 * 1024
MAX_FEED_IDS = 65536  # feeds a client may number in one session
MAX_WANTED = 100_000  # pending wants remembered; past this, expired ones are forgotten


class RateBucket:
    """A token bucket: BURST requests at once, refilled at RATE_PER_S."""

    def __init__(self) -> None:
        self.tokens, self.t = BURST, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.t) * RATE_PER_S)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Want:
    """The range of one feed an announcement makes us ask for, under the client's feed number."""

    lo: int
    hi: int
    feed_id: int


class Server:
    def __init__(self, replica: Replica) -> None:
        self.r = replica
        self._wanted: dict[Position, float] = {}  # asked for, until this monotonic time
        self._buckets: dict[bytes, RateBucket] = {}
        self._served: dict[bytes, int] = {}  # open served sessions by client key
        self._open = self._strangers = 0  # served sessions, handshakes included; of unknown keys
        self._closing = asyncio.Event()

    def open_sessions(self) -> int:
        """Sessions being served now, handshakes in progress included."""
        return self._open

    def close(self) -> None:
        """End served sessions, so a server stop need not wait out its grace period."""
        self._closing.set()

    async def serve(self, frames: AsyncIterator[pb.GossipFrame], guard: RequestGuard) -> AsyncIterator[pb.GossipFrame]:
        """One served session: handshake, then answer each request in order. Raises RpcError
        with the status that ends the stream."""
        if self._open >= MAX_SESSIONS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions")
        self._open += 1  # handshakes count too: each holds a slot for up to the hello timeout
        try:
            opened = await session.accept(frames, guard, self.r.identity, self.r.peers.network, self.r.count)
            if opened is None:
                return
            sender, framer, accept = opened
            members = self.r.members
            if members.banned(sender):
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid entries")
            if self._served.get(sender, 0) >= MAX_SESSIONS_PER_PEER:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions from this peer")
            # Keys we have not learnt from the ledger share a smaller pool, so a crowd of fresh
            # keys cannot take every slot from known peers.
            stranger = members.by_key(sender) is None
            if stranger and self._strangers >= MAX_STRANGER_SESSIONS:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions from unknown peers")
            self._served[sender] = self._served.get(sender, 0) + 1
            self._strangers += stranger
            feeds: list[bytes] = []  # the client's feed numbers on this session (index + 1)
            try:
                yield accept
                async for request in session.frames_in(frames, framer, SESSION_IDLE_S, MAX_FRAME, self._closing):
                    self._limit(sender)
                    if members.banned(sender):
                        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid entries")
                    yield framer.seal(self.answer(sender, request, feeds))
            finally:
                self._strangers -= stranger
                self._served[sender] -= 1
                if not self._served[sender]:
                    del self._served[sender]
        finally:
            self._open -= 1

    def _limit(self, sender: bytes) -> None:
        b = self._buckets.setdefault(sender, RateBucket())
        if not b.take():
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "gossip rate limit")

    def answer(self, sender: bytes, request: pb.GossipOp, feeds: list[bytes]) -> pb.GossipOp:
        """The answer to one request of a session; `feeds` is the session's feed numbering."""
        kind = request.WhichOneof("op")
        if kind == "have":
            return self.on_have(sender, request.have, feeds)
        if kind == "push":
            return self.on_push(sender, request.push)
        if kind == "digest":
            return antientropy.answer_digest(self.r.ledger.heads(), request.digest)
        if kind == "pull":
            return self.on_pull(request.pull)
        if kind == "heads_of":
            return antientropy.answer_heads_of(self.r.ledger.heads(), request.heads_of)
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{kind} is an answer, not a request")

    def on_have(self, sender: bytes, have: pb.Have, feeds: list[bytes]) -> pb.GossipOp:
        """Answer an announcement with the ranges we lack (or that fork from ours), skipping those
        already asked for of another peer in the last WANT_TTL_S."""
        if len(have.items) > MAX_ITEMS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_ITEMS} announced entries")
        now = time.monotonic()
        ledger = self.r.ledger
        want: dict[bytes, _Want] = {}
        for item in have.items:
            feed = _announced_feed(item, feeds)
            seq = item.seq
            self.r.rumours.note_holder(sender, feed, seq)
            head, _ = ledger.head(feed)
            if seq <= head:
                stored = ledger.hash_at(feed, seq)  # the hash alone: re-parsing the entry cost more
                if stored is not None and stored[:HASH_HINT] != item.hash and feed not in want:
                    want[feed] = _Want(seq, seq, item.feed_id)  # a fork: fetch it to prove it
                continue
            if self._wanted.get((feed, seq), 0) > now:
                continue
            w = want.get(feed)
            if w is None:
                want[feed] = _Want(head + 1, seq, item.feed_id)
            else:
                w.lo, w.hi, w.feed_id = min(w.lo, head + 1), max(w.hi, seq), item.feed_id
        for feed, w in want.items():
            for s in range(w.lo, min(w.hi, w.lo + MAX_ITEMS) + 1):
                self._wanted[(feed, s)] = now + WANT_TTL_S
        if len(self._wanted) > MAX_WANTED:
            self._wanted = {k: t for k, t in self._wanted.items() if t > now}
        return op(want=pb.Want(ranges=[pb.Range(feed_id=w.feed_id, from_seq=w.lo, to_seq=w.hi) for w in want.values()]))

    def on_push(self, sender: bytes, push: pb.Entries) -> pb.GossipOp:
        if len(push.entries) > MAX_ITEMS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_ITEMS} entries in one push")
        return op(ack=pb.Ack(**self.r.ingest(push.entries, sender)))

    def on_pull(self, r: pb.Range) -> pb.GossipOp:
        if len(r.feed) != 32 or not 1 <= r.from_seq <= r.to_seq <= MAX_SEQ:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "pull needs a 32-byte feed and 1 <= from_seq <= to_seq")
        rows = self.r.ledger.entries(r.feed, r.from_seq, min(r.to_seq - r.from_seq + 1, MAX_ITEMS))
        out, size = [], 0
        for payload, sig in rows:
            if size + len(payload) + len(sig) > MAX_BYTES:
                break
            out.append(pb.Entry(payload=payload, sig=sig))
            size += len(payload) + len(sig)
        return op(entries=pb.Entries(entries=out))


def _announced_feed(item: pb.Pos, feeds: list[bytes]) -> bytes:
    """Check one announced position and resolve its feed number (registering a new one)."""
    if not 1 <= item.seq <= MAX_SEQ or len(item.hash) != HASH_HINT:
        raise RpcError(
            grpc.StatusCode.INVALID_ARGUMENT, f"an announcement needs 1 <= seq < 2^63 and a {HASH_HINT}-byte hash"
        )
    if item.feed:
        if len(item.feed) != 32 or item.feed_id != len(feeds) + 1:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a newly announced feed needs a 32-byte key and the next unused number",
            )
        if len(feeds) >= MAX_FEED_IDS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_FEED_IDS} feeds in one session")
        feeds.append(item.feed)
        return item.feed
    if not 1 <= item.feed_id <= len(feeds):
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"feed number {item.feed_id} was never announced")
    return feeds[item.feed_id - 1]
