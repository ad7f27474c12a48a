"""Gossip: replicate every feed to every node, with membership and failure detection.

A node talks to each peer over one long-lived session (trustgen/gossip/session.py): a signed
handshake, then MAC-tagged frames, so a small entry is not outweighed by per-message signatures.
Two mechanisms run over it:
- Eager push (rumour spreading with announce/want): each round a node announces the entries it
  stored since its last round — its own and those it just received — to `fanout` random live
  peers as (feed, seq, hash) triples. A peer answers with the ranges it lacks, and only those
  entries are sent. Each node receives an entry's bytes about once; announcements are small.
- Anti-entropy: every `sync_every` rounds a node compares a digest of all its feed heads with one
  random peer; when they differ it pulls, in order, what it lacks and announces what the peer
  lacks. This repairs anything push missed: restarts, late joiners, healed partitions.

Everything received goes through `Ledger.ingest` (signature, hash link, sequence) before it is
stored; equivocation becomes evidence there. A peer that sends entries that fail validation is
marked, and after `BAN_AFTER` bad batches refused. Work is bounded per round, per request and per
frame; sessions are bounded per peer and in all; every sender is rate-limited.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import IngestError, Ledger
from trustgen.gossip import session
from trustgen.gossip.session import ClientSession, SessionError
from trustgen.net import grpc_options as opts
from trustgen.net.auth import RequestGuard, RpcError
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")

MAX_ITEMS = 256  # entries or triples per request
MAX_BYTES = 1 << 20  # entry bytes per push or pull reply
SUSPECT_AFTER, DEAD_AFTER, BAN_AFTER = 1, 3, 3
PROBE_DEAD_EVERY = 10  # rounds
WANT_TTL_S = 2.0  # do not ask twice for one range while a push is on its way
HOT_ROUNDS = 6  # an entry is re-announced while peers still want it, at most this many rounds
COLD_AFTER = 2  # ... and until this many rounds in a row found no peer that lacked it
RATE_PER_S, BURST = 200.0, 400.0  # requests per sender
MAX_SESSIONS, MAX_SESSIONS_PER_PEER = 1024, 4  # served sessions; a restarted peer may overlap its old one
MAX_STRANGER_SESSIONS = 256  # ... of which keys not (yet) known from the ledger may hold this many
SESSION_IDLE_S = 600.0  # a served session with no request for this long is closed
MAX_FRAME = MAX_BYTES + 64 * 1024
HASH_HINT = 8  # bytes of an entry's hash in announcements: enough to notice a fork
MAX_SEQ = 2**63 - 1
PEER_BUDGET_S = 15.0  # one peer's share of a round (requests have their own, shorter deadline)
MAX_FEED_IDS = 65536  # feeds a client may number in one session
FULL_HEADS_UPTO = 16  # feeds; with more, anti-entropy first narrows the difference down by bucket
MAX_BUCKETS, BUCKET_DIGEST = 1024, 8


@dataclass
class Peer:
    address: str
    key: bytes | None = None
    state: str = "alive"  # alive | suspect | dead | banned
    failures: int = 0


class Membership:
    """Known peers and their liveness: suspect after a failure, dead after DEAD_AFTER in a row,
    alive again on any success; banned after BAN_AFTER invalid batches."""

    def __init__(self, me: bytes, bootstrap: list[str] | None = None) -> None:
        self.me = me
        self.peers: dict[str, Peer] = {}
        self.strikes: dict[bytes, int] = {}  # invalid batches by sender key, known peer or not
        for a in bootstrap or []:
            self.add(a)

    def add(self, address: str, key: bytes | None = None) -> None:
        if key == self.me or not address:
            return
        p = self.peers.get(address)
        if p is None:
            # One address per key: a node that moved is known at its new address only.
            for old in [a for a, q in self.peers.items() if key is not None and q.key == key]:
                del self.peers[old]
            p = self.peers[address] = Peer(address, key)
        elif key is not None and p.key is None:
            p.key = key
        if key is not None and self.banned(key):
            p.state = "banned"

    def by_key(self, key: bytes) -> Peer | None:
        return next((p for p in self.peers.values() if p.key == key), None)

    def ok(self, address: str) -> None:
        p = self.peers.get(address)
        if p is not None and p.state != "banned":
            p.state, p.failures = "alive", 0

    def fail(self, address: str) -> None:
        p = self.peers.get(address)
        if p is not None and p.state != "banned":
            p.failures += 1
            p.state = "dead" if p.failures >= DEAD_AFTER else "suspect" if p.failures >= SUSPECT_AFTER else p.state

    def misbehaved(self, key: bytes) -> None:
        if len(self.strikes) >= 100_000 and key not in self.strikes:  # bounded: forget the oldest
            self.strikes.pop(next(iter(self.strikes)))
        self.strikes[key] = self.strikes.get(key, 0) + 1
        p = self.by_key(key)
        if self.strikes[key] == BAN_AFTER:
            if p is not None:
                p.state = "banned"
            log.warning("banned peer %s after %d invalid batches", p.address if p else key.hex()[:12], BAN_AFTER)

    def banned(self, key: bytes) -> bool:
        return self.strikes.get(key, 0) >= BAN_AFTER

    def live(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.state in ("alive", "suspect")]

    def dead(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.state == "dead"]

    def snapshot(self) -> dict[str, str]:
        return {a: p.state for a, p in self.peers.items()}


def heads_digest(heads: dict[bytes, tuple[int, bytes]]) -> bytes:
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


def bucket_digests(heads: dict[bytes, tuple[int, bytes]], count: int) -> list[bytes]:
    hs = [hashlib.sha256(b"trustgen/bucket/v1\0") for _ in range(count)]
    for feed in sorted(heads):
        seq, eh = heads[feed]
        hs[bucket_of(feed, count)].update(feed + seq.to_bytes(8, "big") + eh)
    return [h.digest()[:BUCKET_DIGEST] for h in hs]


class _Bucket:
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


def _op(**kw: Any) -> pb.GossipOp:
    return pb.GossipOp(**kw)


class Gossip:
    def __init__(
        self,
        identity: Identity,
        ledger: Ledger,
        peers: Peers,
        membership: Membership,
        fanout: int = 2,
        sync_every: int = 4,
        learn_peers: bool = True,
        seed: int | None = None,
        events: Any = None,
    ) -> None:
        self.identity, self.ledger, self.peers, self.members = identity, ledger, peers, membership
        self.fanout, self.sync_every, self.learn_peers = fanout, sync_every, learn_peers
        self.rng = random.Random(seed)
        self.events = events
        self.cursor = ledger.next_index()  # entries stored before start are synced by anti-entropy
        self.rounds = 0
        self.bytes_sent = 0  # every gossip frame this node wrote, as client or server, hellos included
        self._wanted: dict[tuple[bytes, int], float] = {}
        self._buckets: dict[bytes, _Bucket] = {}
        self._learn_cursor = 0
        self._hot: dict[tuple[bytes, int], list[Any]] = {}  # (feed, seq) -> [hash, rounds left, misses]
        self._holders: dict[tuple[bytes, int], set[bytes]] = {}  # (feed, seq) -> keys known to have it
        self._quiet_rounds = 0
        self._sessions: dict[str, ClientSession] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._served: dict[bytes, int] = {}  # open served sessions by client key
        self._open = self._strangers = 0  # served sessions, handshakes included; of unknown keys
        self._closing = asyncio.Event()

    def _count(self, n: int) -> None:
        self.bytes_sent += n

    # -- outgoing --------------------------------------------------------------------------------

    async def _session(self, peer: Peer) -> tuple[ClientSession, bool]:
        """The open session to `peer` (and whether it was already open), opening one if needed."""
        s = self._sessions.get(peer.address)
        if s is not None and not s.closed:
            return s, True
        async with self._opening.setdefault(peer.address, asyncio.Lock()):
            s = self._sessions.get(peer.address)
            if s is not None and not s.closed:
                return s, True
            s = await ClientSession.open(
                self.peers.stub(peer.address, "Gossip"), self.identity, self.peers.network, peer.key, self._count
            )
            self.members.add(peer.address, s.peer_key)  # a bootstrap address's key is learnt here
            self._sessions[peer.address] = s
            return s, False

    async def _request(
        self, peer: Peer, op: pb.GossipOp | Callable[[ClientSession], pb.GossipOp], expect: str
    ) -> pb.GossipOp | None:
        """Send one request to `peer`; its answer, or None after noting the failure. A session
        that was already open gets one retry on a fresh session: the peer may have restarted or
        closed an idle session."""
        for attempt in (0, 1):
            reused = False
            try:
                s, reused = await self._session(peer)
                reply = await s.request(op, opts.DEADLINE_GOSSIP)
                if reply.WhichOneof("op") != expect:
                    raise SessionError(f"expected {expect}, got {reply.WhichOneof('op')}")
            except (TimeoutError, grpc.aio.AioRpcError, SessionError) as e:
                self._drop(peer.address)
                ended = isinstance(e, SessionError) and "ended the session" in str(e)
                if attempt == 0 and reused and (ended or not isinstance(e, SessionError)):
                    continue
                self._failed(peer, e)
                return None
            self.members.ok(peer.address)
            return reply
        return None

    def _failed(self, peer: Peer, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError) and e.code() not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            log.info("gossip with %s refused: %s %s", peer.address, e.code().name, e.details())
        if isinstance(e, SessionError) and peer.key is not None and "another key" not in str(e):
            log.info("gossip peer %s broke the protocol: %s", peer.address, e)
            self.members.misbehaved(peer.key)
        self.members.fail(peer.address)

    def _drop(self, address: str) -> None:
        s = self._sessions.pop(address, None)
        if s is not None:
            s.close()

    async def connect(self) -> int:
        """Open sessions to every live peer now rather than on first use; returns how many are open."""
        await asyncio.gather(*(self._session_or_none(p) for p in self.members.live()))
        return sum(1 for s in self._sessions.values() if not s.closed)

    async def _session_or_none(self, peer: Peer) -> None:
        try:
            await self._session(peer)
        except (TimeoutError, grpc.aio.AioRpcError, SessionError) as e:
            self._failed(peer, e)

    def _new_entries(self) -> list[tuple[bytes, int, bytes]]:
        rows = self.ledger.positions(self.cursor, MAX_ITEMS)
        if rows:
            self.cursor = rows[-1][3] + 1
        return [(f, s, h) for f, s, h, _ in rows]

    async def round(self) -> None:
        """One gossip round: announce hot entries (rumour mongering with feedback: an entry stays
        hot while some peer it is announced to still wants it); repair by anti-entropy with one
        peer every few quiet rounds, and probe one dead peer now and then."""
        self.rounds += 1
        if self.learn_peers:
            self._learn()
        for f, s, h in self._new_entries():
            self._hot[(f, s)] = [h, HOT_ROUNDS, 0]
        live = self.members.live()
        if self._hot and live:
            have = [(f, s, v[0]) for (f, s), v in list(self._hot.items())[:MAX_ITEMS]]
            # Announce only to peers not already known to hold all of it: the peer we got an
            # entry from, and peers that announced it to us or that we announced it to, do.
            news_for = {
                p.address: [x for x in have if p.key is None or p.key not in self._holders.get(x[:2], ())] for p in live
            }
            candidates = [p for p in live if news_for[p.address]]
            targets = self.rng.sample(candidates, min(self.fanout, len(candidates)))
            wanted = await asyncio.gather(
                *(self._bounded(p, self._announce(p, news_for[p.address]), []) for p in targets)
            )
            for f, s, _ in have:
                entry = self._hot[(f, s)]
                still_news = any(lo <= s <= hi for w in wanted for (wf, lo, hi) in w if wf == f)
                entry[1] -= 1
                entry[2] = 0 if still_news else entry[2] + 1
                if entry[2] >= COLD_AFTER or entry[1] <= 0 or not candidates:
                    del self._hot[(f, s)]
                    self._holders.pop((f, s), None)
            self._quiet_rounds = 0
        else:
            self._quiet_rounds += 1
        # Anti-entropy sends every head when digests differ: keep it for quiet times, when it
        # repairs what push missed, but run it at least every 4 * sync_every rounds regardless.
        if live and (
            (self._quiet_rounds >= self.sync_every and self.rounds % self.sync_every == 0)
            or self.rounds % (4 * self.sync_every) == 0
        ):
            peer = self.rng.choice(live)
            await self._bounded(peer, self._sync(peer), None)
        if self.rounds % PROBE_DEAD_EVERY == 0 and self.members.dead():
            peer = self.rng.choice(self.members.dead())
            await self._bounded(peer, self._sync(peer), None)

    async def _bounded(self, peer: Peer, work: Any, default: Any) -> Any:
        """Run one peer's share of a round within PEER_BUDGET_S: a slow peer (each answer just
        inside the request deadline) costs a round this long at most, and counts as failing."""
        try:
            return await asyncio.wait_for(work, PEER_BUDGET_S)
        except TimeoutError:
            log.info("gossip with %s ran over its %.1f s budget", peer.address, PEER_BUDGET_S)
            self._drop(peer.address)
            self.members.fail(peer.address)
            return default

    async def _announce(self, peer: Peer, have: list[tuple[bytes, int, bytes]]) -> list[tuple[bytes, int, int]]:
        """Announce; push what the peer wants; return the (feed, lo, hi) ranges it wanted."""
        used: list[ClientSession] = []

        def build(s: ClientSession) -> pb.GossipOp:
            used.append(s)
            items = []
            for f, seq, h in have:
                n, new = s.feed_id(f)
                items.append(pb.Pos(feed=f if new else b"", feed_id=n, seq=seq, hash=h[:HASH_HINT]))
            return _op(have=pb.Have(items=items))

        reply = await self._request(peer, build, "want")
        if reply is None:
            return []
        if peer.key is not None:  # it has these now, is fetching them elsewhere, or gets them below
            for f, seq, _ in have:
                self._note_holder(peer.key, f, seq)
        announced = used[-1].announced
        wants = [
            (announced[r.feed_id - 1], r.from_seq, r.to_seq)
            for r in reply.want.ranges[:MAX_ITEMS]
            if 1 <= r.feed_id <= len(announced) and 1 <= r.from_seq <= r.to_seq <= MAX_SEQ
        ]
        await self._push_ranges(peer, wants)
        return wants

    async def _push_ranges(self, peer: Peer, ranges: list[tuple[bytes, int, int]]) -> None:
        batch: list[pb.Entry] = []
        size = 0
        for feed, lo, hi in ranges[:MAX_ITEMS]:
            for payload, sig in self.ledger.entries(feed, lo, min(hi - lo + 1, MAX_ITEMS)):
                if len(batch) >= MAX_ITEMS or size + len(payload) + len(sig) > MAX_BYTES:
                    break
                batch.append(pb.Entry(payload=payload, sig=sig))
                size += len(payload) + len(sig)
        if batch:
            await self._request(peer, _op(push=pb.Entries(entries=batch)), "ack")

    async def _sync(self, peer: Peer) -> None:
        """Anti-entropy with one peer: compare the digest of all heads; if they differ, narrow
        down by bucket (many feeds), then pull what we lack and push what the peer lacks."""
        mine = self.ledger.heads()
        reply = await self._request(peer, _op(digest=heads_digest(mine)), "heads")
        if reply is None or reply.heads.same:
            return
        theirs, scope = reply.heads.heads, None
        count = reply.heads.bucket_count
        if count:
            if count > MAX_BUCKETS or len(reply.heads.bucket_digests) != count:
                return
            scope = [i for i, d in enumerate(bucket_digests(mine, count)) if d != reply.heads.bucket_digests[i]]
            got = (
                await self._request(peer, _op(heads_of=pb.HeadsOf(bucket_count=count, buckets=scope)), "heads")
                if scope
                else None
            )
            if got is None:
                return
            theirs = got.heads.heads
        their_seq = {p.feed: p.seq for p in theirs[: 4 * MAX_ITEMS] if len(p.feed) == 32 and 1 <= p.seq <= MAX_SEQ}
        lacking = [(f, mine.get(f, (0, b""))[0] + 1, s) for f, s in their_seq.items() if s > mine.get(f, (0, b""))[0]]
        for feed, start, end in lacking[:16]:  # bounded pulls per repair
            got = await self._request(peer, _op(pull=pb.Range(feed=feed, from_seq=start, to_seq=end)), "entries")
            if got is None:
                return
            self._ingest_batch(got.entries.entries, peer.key)
        in_scope = set(scope) if scope is not None else None
        surplus = [
            (f, their_seq.get(f, 0) + 1, s)
            for f, (s, _) in mine.items()
            if s > their_seq.get(f, 0) and (in_scope is None or bucket_of(f, count) in in_scope)
        ]
        if surplus:
            await self._push_ranges(peer, surplus[:MAX_ITEMS])

    def _note_holder(self, key: bytes, feed: bytes, seq: int) -> None:
        if len(self._holders) >= 100_000:  # bounded: keep only what is still being spread
            self._holders = {k: v for k, v in self._holders.items() if k in self._hot}
        self._holders.setdefault((feed, seq), set()).add(key)

    def _learn(self) -> None:
        """Peers from NodeJoined entries of any feed (address, key), stored since last round."""
        for e in self.ledger.iter_entries(since=self._learn_cursor, entry_type="NodeJoined"):
            self.members.add(e.body["address"], e.feed)
        self._learn_cursor = self.ledger.next_index()

    # -- incoming ------------------------------------------------------------------------------

    async def serve(self, frames: AsyncIterator[pb.GossipFrame], guard: RequestGuard) -> AsyncIterator[pb.GossipFrame]:
        """One served session: handshake, then answer each request in order. Raises RpcError
        with the status that ends the stream."""
        if self._open >= MAX_SESSIONS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions")
        self._open += 1  # handshakes count too: each holds a slot for up to the hello timeout
        try:
            opened = await session.accept(frames, guard, self.identity, self.peers.network, self._count)
            if opened is None:
                return
            sender, framer, accept = opened
            if self.members.banned(sender):
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid entries")
            if self._served.get(sender, 0) >= MAX_SESSIONS_PER_PEER:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions from this peer")
            # Keys we have not learnt from the ledger share a smaller pool, so a crowd of fresh
            # keys cannot take every slot from known peers.
            stranger = self.members.by_key(sender) is None
            if stranger and self._strangers >= MAX_STRANGER_SESSIONS:
                raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many gossip sessions from unknown peers")
            self._served[sender] = self._served.get(sender, 0) + 1
            self._strangers += stranger
            feeds: list[bytes] = []  # the client's feed numbers on this session (index + 1)
            try:
                yield accept
                async for op in session.frames_in(frames, framer, SESSION_IDLE_S, MAX_FRAME, self._closing):
                    self._limit(sender)
                    if self.members.banned(sender):
                        raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid entries")
                    yield framer.seal(self.answer(sender, op, feeds))
            finally:
                self._strangers -= stranger
                self._served[sender] -= 1
                if not self._served[sender]:
                    del self._served[sender]
        finally:
            self._open -= 1

    def answer(self, sender: bytes, op: pb.GossipOp, feeds: list[bytes]) -> pb.GossipOp:
        """The answer to one request of a session; `feeds` is the session's feed numbering."""
        kind = op.WhichOneof("op")
        if kind == "have":
            return self.on_have(sender, op.have, feeds)
        if kind == "push":
            return self.on_push(sender, op.push)
        if kind == "digest":
            return self.on_sync(op.digest)
        if kind == "pull":
            return self.on_pull(op.pull)
        if kind == "heads_of":
            return self.on_heads_of(op.heads_of)
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"{kind} is an answer, not a request")

    def _limit(self, sender: bytes) -> None:
        b = self._buckets.setdefault(sender, _Bucket())
        if not b.take():
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "gossip rate limit")

    def on_have(self, sender: bytes, have: pb.Have, feeds: list[bytes]) -> pb.GossipOp:
        if len(have.items) > MAX_ITEMS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_ITEMS} announced entries")
        now = time.monotonic()
        want: dict[bytes, list[int]] = {}  # feed -> [lo, hi, number]
        for item in have.items:
            feed = self._announced_feed(item, feeds)
            seq = item.seq
            self._note_holder(sender, feed, seq)
            head, _ = self.ledger.head(feed)
            if seq <= head:
                stored = self.ledger.get(feed, seq)
                if stored is not None and stored.hash[:HASH_HINT] != item.hash:  # a fork: fetch it to prove it
                    want.setdefault(feed, [seq, seq, item.feed_id])
                continue
            if self._wanted.get((feed, seq), 0) > now:
                continue
            lo, hi, _ = want.get(feed, [head + 1, seq, 0])
            want[feed] = [min(lo, head + 1), max(hi, seq), item.feed_id]
        for feed, (lo, hi, _) in want.items():
            for s in range(lo, min(hi, lo + MAX_ITEMS) + 1):
                self._wanted[(feed, s)] = now + WANT_TTL_S
        if len(self._wanted) > 100_000:
            self._wanted = {k: t for k, t in self._wanted.items() if t > now}
        return _op(want=pb.Want(ranges=[pb.Range(feed_id=n, from_seq=lo, to_seq=hi) for lo, hi, n in want.values()]))

    @staticmethod
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

    def _ingest_batch(self, entries: Any, sender: bytes | None) -> dict[str, int]:
        counts = {"stored": 0, "duplicate": 0, "equivocation": 0, "refused": 0}
        for item in entries:
            try:
                counts[self.ledger.ingest(item.payload, item.sig)] += 1
            except IngestError as e:
                counts["refused"] += 1
                log.info("refused an entry from %s: %s", sender.hex()[:12] if sender else "?", e.code)
        if counts["refused"] and sender is not None:
            self.members.misbehaved(sender)
        if counts["equivocation"] and self.events is not None:
            self.events.publish("equivocation", reported_by=self.identity.node_id)
        return counts

    def on_push(self, sender: bytes, push: pb.Entries) -> pb.GossipOp:
        if len(push.entries) > MAX_ITEMS:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_ITEMS} entries in one push")
        return _op(ack=pb.Ack(**self._ingest_batch(push.entries, sender)))

    def on_sync(self, digest: bytes) -> pb.GossipOp:
        heads = self.ledger.heads()
        if digest == heads_digest(heads):
            return _op(heads=pb.Heads(same=True))
        if len(heads) <= FULL_HEADS_UPTO:
            return _op(heads=pb.Heads(heads=[pb.Pos(feed=f, seq=s, hash=h) for f, (s, h) in sorted(heads.items())]))
        count = bucket_count(len(heads))
        return _op(heads=pb.Heads(bucket_count=count, bucket_digests=bucket_digests(heads, count)))

    def on_heads_of(self, q: pb.HeadsOf) -> pb.GossipOp:
        count = q.bucket_count
        if not 1 <= count <= MAX_BUCKETS or len(q.buckets) > count or any(b >= count for b in q.buckets):
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"heads_of needs 1 <= bucket_count <= {MAX_BUCKETS} and buckets below it",
            )
        wanted = set(q.buckets)
        heads = [
            pb.Pos(feed=f, seq=s, hash=h)
            for f, (s, h) in sorted(self.ledger.heads().items())
            if bucket_of(f, count) in wanted
        ]
        return _op(heads=pb.Heads(heads=heads[: 4 * MAX_ITEMS]))

    def on_pull(self, r: pb.Range) -> pb.GossipOp:
        if len(r.feed) != 32 or not 1 <= r.from_seq <= r.to_seq <= MAX_SEQ:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "pull needs a 32-byte feed and 1 <= from_seq <= to_seq")
        rows = self.ledger.entries(r.feed, r.from_seq, min(r.to_seq - r.from_seq + 1, MAX_ITEMS))
        out, size = [], 0
        for payload, sig in rows:
            if size + len(payload) + len(sig) > MAX_BYTES:
                break
            out.append(pb.Entry(payload=payload, sig=sig))
            size += len(payload) + len(sig)
        return _op(entries=pb.Entries(entries=out))

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # one bad round must not stop replication
                log.exception("gossip round failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s * self.rng.uniform(0.8, 1.2))
            except TimeoutError:
                pass

    def close(self) -> None:
        """End served sessions (so a server stop need not wait out its grace period) and close
        our own."""
        self._closing.set()
        for address in list(self._sessions):
            self._drop(address)
