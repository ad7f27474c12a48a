"""The client side of gossip: each round, announce hot entries and push what peers want; now and
then repair by anti-entropy with one peer, and probe a dead one. Requests go over one reused
session per peer, and each peer's share of a round is bounded in time."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from trustgen.gossip import antientropy
from trustgen.gossip.membership import Peer
from trustgen.gossip.replica import Replica
from trustgen.gossip.rumours import Announcement
from trustgen.gossip.session import ClientSession, SessionCode, SessionError
from trustgen.gossip.wire import HASH_HINT, MAX_BYTES, MAX_ITEMS, MAX_SEQ, op
from trustgen.net import grpc_options as opts
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")

PROBE_DEAD_EVERY = 10  # rounds
PEER_BUDGET_S = 15.0  # one peer's share of a round (requests have their own, shorter deadline)
MAX_PULLS = 16  # ranges pulled in one anti-entropy repair

T = TypeVar("T")
Request = pb.GossipOp | Callable[[ClientSession], pb.GossipOp]


class Rounds:
    def __init__(
        self, replica: Replica, fanout: int = 2, sync_every: int = 4, learn_peers: bool = True, seed: int | None = None
    ) -> None:
        self.r = replica
        self.fanout, self.sync_every, self.learn_peers = fanout, sync_every, learn_peers
        self.rng = random.Random(seed)
        self.n_rounds = 0
        self.cursor = replica.ledger.next_index()  # entries stored before start are synced by anti-entropy
        self._learn_cursor = 0
        self._quiet_rounds = 0
        self._sessions: dict[str, ClientSession] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    # -- sessions ----------------------------------------------------------------------------------

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
                self.r.peers.stub(peer.address, "Gossip"), self.r.identity, self.r.peers.network, peer.key, self.r.count
            )
            self.r.members.add(peer.address, s.peer_key)  # a bootstrap address's key is learnt here
            self._sessions[peer.address] = s
            return s, False

    async def _request(self, peer: Peer, request: Request, expect: str) -> pb.GossipOp | None:
        """Send one request to `peer`; its answer, or None after noting the failure. A session
        that was already open gets one retry on a fresh session: the peer may have restarted or
        closed an idle session."""
        for attempt in (0, 1):
            reused = False
            try:
                s, reused = await self._session(peer)
                reply = await s.request(request, opts.DEADLINE_GOSSIP)
                if reply.WhichOneof("op") != expect:
                    raise SessionError(SessionCode.UNEXPECTED, f"expected {expect}, got {reply.WhichOneof('op')}")
            except (TimeoutError, grpc.aio.AioRpcError, SessionError) as e:
                self._drop(peer.address)
                ended = isinstance(e, SessionError) and e.code is SessionCode.ENDED_BY_PEER
                if attempt == 0 and reused and (ended or not isinstance(e, SessionError)):
                    continue
                self._failed(peer, e)
                return None
            self.r.members.ok(peer.address)
            return reply
        return None

    def _failed(self, peer: Peer, e: BaseException) -> None:
        if isinstance(e, grpc.aio.AioRpcError) and e.code() not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            log.info("gossip with %s refused: %s %s", peer.address, e.code().name, e.details())
        # A node at an address that now has another key did nothing wrong; any other session
        # failure is the peer breaking the protocol.
        if isinstance(e, SessionError) and peer.key is not None and e.code is not SessionCode.WRONG_KEY:
            log.info("gossip peer %s broke the protocol: %s", peer.address, e)
            self.r.members.misbehaved(peer.key)
        self.r.members.fail(peer.address)

    def _drop(self, address: str) -> None:
        s = self._sessions.pop(address, None)
        if s is not None:
            s.close()

    def open_sessions(self) -> int:
        return sum(1 for s in self._sessions.values() if not s.closed)

    def session_with(self, address: str) -> ClientSession | None:
        """The session held to `address`, or None. A session the peer ended is still held (and
        reports not `closed`) until a request on it finds out; one that failed is dropped."""
        return self._sessions.get(address)

    async def connect(self) -> int:
        """Open sessions to every live peer now rather than on first use; returns how many are open."""
        await asyncio.gather(*(self._session_or_none(p) for p in self.r.members.live()))
        return self.open_sessions()

    async def _session_or_none(self, peer: Peer) -> None:
        try:
            await self._session(peer)
        except (TimeoutError, grpc.aio.AioRpcError, SessionError) as e:
            self._failed(peer, e)

    def close(self) -> None:
        for address in list(self._sessions):
            self._drop(address)

    # -- a round -----------------------------------------------------------------------------------

    async def round(self) -> None:
        """One gossip round: announce hot entries (rumour mongering with feedback: an entry stays
        hot while some peer it is announced to still wants it); repair by anti-entropy with one
        peer every few quiet rounds, and probe one dead peer now and then."""
        self.n_rounds += 1
        if self.learn_peers:
            self._learn()
        rumours = self.r.rumours
        for f, s, h in self._new_entries():
            rumours.start(f, s, h)
        live = self.r.members.live()
        if rumours.hot and live:
            have = rumours.announcements()
            # Announce only to peers not already known to hold all of it.
            news_for = {p.address: rumours.news_for(p.key, have) for p in live}
            candidates = [p for p in live if news_for[p.address]]
            targets = self.rng.sample(candidates, min(self.fanout, len(candidates)))
            wanted = await asyncio.gather(
                *(self._bounded(p, self._announce(p, news_for[p.address]), []) for p in targets)
            )
            rumours.settle(have, wanted, reached=bool(candidates))
            self._quiet_rounds = 0
        else:
            self._quiet_rounds += 1
        # Anti-entropy sends every head when digests differ: keep it for quiet times, when it
        # repairs what push missed, but run it at least every 4 * sync_every rounds regardless.
        if live and (
            (self._quiet_rounds >= self.sync_every and self.n_rounds % self.sync_every == 0)
            or self.n_rounds % (4 * self.sync_every) == 0
        ):
            peer = self.rng.choice(live)
            await self._bounded(peer, self._sync(peer), None)
        if self.n_rounds % PROBE_DEAD_EVERY == 0 and self.r.members.dead():
            peer = self.rng.choice(self.r.members.dead())
            await self._bounded(peer, self._sync(peer), None)

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

    def _new_entries(self) -> list[Announcement]:
        rows = self.r.ledger.positions(self.cursor, MAX_ITEMS)
        if rows:
            self.cursor = rows[-1][3] + 1
        return [(f, s, h) for f, s, h, _ in rows]

    def _learn(self) -> None:
        """Peers from NodeJoined entries of any feed (address, key), stored since last round."""
        for e in self.r.ledger.iter_entries(since=self._learn_cursor, entry_type="NodeJoined"):
            self.r.members.add(e.body["address"], e.feed)
        self._learn_cursor = self.r.ledger.next_index()

    async def _bounded(self, peer: Peer, work: Awaitable[T], default: T) -> T:
        """Run one peer's share of a round within PEER_BUDGET_S: a slow peer (each answer just
        inside the request deadline) costs a round this long at most, and counts as failing."""
        try:
            return await asyncio.wait_for(work, PEER_BUDGET_S)
        except TimeoutError:
            log.info("gossip with %s ran over its %.1f s budget", peer.address, PEER_BUDGET_S)
            self._drop(peer.address)
            self.r.members.fail(peer.address)
            return default

    # -- push ------------------------------------------------------------------------------------

    async def _announce(self, peer: Peer, have: list[Announcement]) -> list[tuple[bytes, int, int]]:
        """Announce; push what the peer wants; return the (feed, lo, hi) ranges it wanted."""
        used: list[ClientSession] = []

        def build(s: ClientSession) -> pb.GossipOp:
            used.append(s)
            items = []
            for f, seq, h in have:
                n, new = s.feed_id(f)
                items.append(pb.Pos(feed=f if new else b"", feed_id=n, seq=seq, hash=h[:HASH_HINT]))
            return op(have=pb.Have(items=items))

        reply = await self._request(peer, build, "want")
        if reply is None:
            return []
        if peer.key is not None:  # it has these now, is fetching them elsewhere, or gets them below
            for f, seq, _ in have:
                self.r.rumours.note_holder(peer.key, f, seq)
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
            for payload, sig in self.r.ledger.entries(feed, lo, min(hi - lo + 1, MAX_ITEMS)):
                if len(batch) >= MAX_ITEMS or size + len(payload) + len(sig) > MAX_BYTES:
                    break
                batch.append(pb.Entry(payload=payload, sig=sig))
                size += len(payload) + len(sig)
        if batch:
            await self._request(peer, op(push=pb.Entries(entries=batch)), "ack")

    # -- anti-entropy ------------------------------------------------------------------------------

    async def sync(self, address: str) -> None:
        """Anti-entropy with the member at `address` now, within its PEER_BUDGET_S, as a round
        does now and then; a failure marks the peer as a round would. KeyError if `address` is
        not a member."""
        peer = self.r.members.peers[address]
        await self._bounded(peer, self._sync(peer), None)

    async def _sync(self, peer: Peer) -> None:
        """Anti-entropy with one peer: compare the digest of all heads; if they differ, narrow
        down by bucket (many feeds), then pull what we lack and push what the peer lacks."""
        mine = self.r.ledger.heads()
        reply = await self._request(peer, op(digest=antientropy.heads_digest(mine)), "heads")
        if reply is None or reply.heads.same:
            return
        theirs, scope = reply.heads.heads, None
        count = reply.heads.bucket_count
        if count:
            scope = antientropy.differing_buckets(mine, reply.heads)
            if scope is None:
                return
            got = (
                await self._request(peer, op(heads_of=pb.HeadsOf(bucket_count=count, buckets=scope)), "heads")
                if scope
                else None
            )
            if got is None:
                return
            theirs = got.heads.heads
        their_seq = antientropy.their_seqs(theirs)
        for feed, start, end in antientropy.lacking(mine, their_seq)[:MAX_PULLS]:
            got = await self._request(peer, op(pull=pb.Range(feed=feed, from_seq=start, to_seq=end)), "entries")
            if got is None:
                return
            self.r.ingest(got.entries.entries, peer.key)
        surplus = antientropy.surplus(mine, their_seq, scope, count)
        if surplus:
            await self._push_ranges(peer, surplus[:MAX_ITEMS])
