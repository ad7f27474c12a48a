"""Gossip: replicate every feed to every node, with membership and failure detection.

Two mechanisms, both over authenticated gRPC:
- Eager push (rumour spreading with announce/want): each round a node announces the entries it
  stored since its last round — its own and those it just received — to `fanout` random live
  peers as (feed, seq, hash) triples. A peer answers with the ranges it lacks, and only those
  entries are sent. Each node receives an entry's bytes about once; announcements are small.
- Anti-entropy: every `sync_every` rounds a node compares a digest of all its feed heads with one
  random peer; when they differ it pulls, in order, what it lacks and announces what the peer
  lacks. This repairs anything push missed: restarts, late joiners, healed partitions.

Everything received goes through `Ledger.ingest` (signature, hash link, sequence) before it is
stored; equivocation becomes evidence there. A peer that sends entries that fail validation is
marked, and after `BAN_AFTER` bad batches ignored. Work is bounded per round and per request,
and every sender is rate-limited.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from trustgen.consensus.encoding import EncodingError, decode, encode
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import IngestError, Ledger
from trustgen.consensus.messages import Signed
from trustgen.node import grpc_options as opts
from trustgen.node.auth import RpcError
from trustgen.node.peers import Peers

log = logging.getLogger("trustgen.node")

MAX_ITEMS = 256  # entries or triples per request
MAX_BYTES = 1 << 20  # entry bytes per push or pull reply
SUSPECT_AFTER, DEAD_AFTER, BAN_AFTER = 1, 3, 3
PROBE_DEAD_EVERY = 10  # rounds
WANT_TTL_S = 2.0  # do not ask twice for one range while a push is on its way
HOT_ROUNDS = 6  # an entry is re-announced while peers still want it, at most this many rounds
COLD_AFTER = 2  # ... and until this many rounds in a row found no peer that lacked it
RATE_PER_S, BURST = 200.0, 400.0


@dataclass
class Peer:
    address: str
    key: bytes | None = None
    state: str = "alive"  # alive | suspect | dead | banned
    failures: int = 0
    bad: int = 0
    last_ok: float = 0.0


class Membership:
    """Known peers and their liveness: suspect after a failure, dead after DEAD_AFTER in a row,
    alive again on any success; banned after BAN_AFTER invalid batches."""

    def __init__(self, me: bytes, bootstrap: list[str] | None = None) -> None:
        self.me = me
        self.peers: dict[str, Peer] = {}
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
            self.peers[address] = Peer(address, key)
        elif key is not None and p.key is None:
            p.key = key

    def by_key(self, key: bytes) -> Peer | None:
        return next((p for p in self.peers.values() if p.key == key), None)

    def ok(self, address: str) -> None:
        p = self.peers.get(address)
        if p is not None and p.state != "banned":
            p.state, p.failures, p.last_ok = "alive", 0, time.monotonic()

    def fail(self, address: str) -> None:
        p = self.peers.get(address)
        if p is not None and p.state != "banned":
            p.failures += 1
            p.state = "dead" if p.failures >= DEAD_AFTER else "suspect" if p.failures >= SUSPECT_AFTER else p.state

    def misbehaved(self, key: bytes) -> None:
        p = self.by_key(key)
        if p is not None:
            p.bad += 1
            if p.bad >= BAN_AFTER:
                p.state = "banned"
                log.warning("banned peer %s after %d invalid batches", p.address, p.bad)

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


class Gossip:
    def __init__(self, identity: Identity, ledger: Ledger, peers: Peers, membership: Membership,
                 fanout: int = 2, sync_every: int = 4, learn_peers: bool = True, seed: int | None = None,
                 events: Any = None) -> None:
        self.identity, self.ledger, self.peers, self.members = identity, ledger, peers, membership
        self.fanout, self.sync_every, self.learn_peers = fanout, sync_every, learn_peers
        self.rng = random.Random(seed)
        self.events = events
        self.cursor = ledger.size()  # entries already stored before start are synced by anti-entropy
        self.rounds = 0
        self.replied_bytes = 0
        self._wanted: dict[tuple[bytes, int], float] = {}
        self._buckets: dict[bytes, _Bucket] = {}
        self._learn_cursor = 0
        self._hot: dict[tuple[bytes, int], list[Any]] = {}  # (feed, seq) -> [hash, rounds left, misses]
        self._quiet_rounds = 0

    # -- outgoing --------------------------------------------------------------------------------

    async def _call(self, peer: Peer, method: str, args: dict[str, Any]) -> dict[str, Any] | None:
        try:
            reply = await self.peers.call(peer.address, "Gossip", method, args, timeout=opts.DEADLINE_GOSSIP)
            data = decode(reply.data)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.members.fail(peer.address)
            return None
        except EncodingError:
            self.members.fail(peer.address)
            return None
        self.members.ok(peer.address)
        return data if isinstance(data, dict) else None

    def _new_entries(self) -> list[list[Any]]:
        rows = self.ledger.db.execute(
            "SELECT feed, seq, hash, log_index FROM entries WHERE log_index >= ? ORDER BY log_index LIMIT ?",
            (self.cursor, MAX_ITEMS)).fetchall()
        if rows:
            self.cursor = rows[-1][3] + 1
        return [[f, s, h] for f, s, h, _ in rows]

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
            have = [[f, s, v[0]] for (f, s), v in list(self._hot.items())[:MAX_ITEMS]]
            targets = self.rng.sample(live, min(self.fanout, len(live)))
            wanted = await asyncio.gather(*(self._announce(p, have) for p in targets))
            for f, s, _ in have:
                entry = self._hot[(f, s)]
                still_news = any(lo <= s <= hi for w in wanted for (wf, lo, hi) in w if wf == f)
                entry[1] -= 1
                entry[2] = 0 if still_news else entry[2] + 1
                if entry[2] >= COLD_AFTER or entry[1] <= 0:
                    del self._hot[(f, s)]
            self._quiet_rounds = 0
        else:
            self._quiet_rounds += 1
        # Anti-entropy sends every head when digests differ: keep it for quiet times, when it
        # repairs what push missed, but run it at least every 4 * sync_every rounds regardless.
        if live and ((self._quiet_rounds >= self.sync_every and self.rounds % self.sync_every == 0)
                     or self.rounds % (4 * self.sync_every) == 0):
            await self._sync(self.rng.choice(live))
        if self.rounds % PROBE_DEAD_EVERY == 0 and self.members.dead():
            await self._sync(self.rng.choice(self.members.dead()))

    async def _announce(self, peer: Peer, have: list[list[Any]]) -> list[tuple[bytes, int, int]]:
        """Announce; push what the peer wants; return the (feed, lo, hi) ranges it wanted."""
        reply = await self._call(peer, "Announce", {"have": have})
        if reply is None:
            return []
        wants = [tuple(w) for w in reply.get("want", []) if isinstance(w, list) and len(w) == 3
                 and isinstance(w[0], bytes) and isinstance(w[1], int) and isinstance(w[2], int)]
        await self._push_ranges(peer, [list(w) for w in wants])
        return wants

    async def _push_ranges(self, peer: Peer, wants: Any) -> None:
        batch: list[list[bytes]] = []
        size = 0
        for w in wants[:MAX_ITEMS] if isinstance(wants, list) else []:
            if not (isinstance(w, list) and len(w) == 3 and isinstance(w[0], bytes)
                    and isinstance(w[1], int) and isinstance(w[2], int)):
                continue
            feed, lo, hi = w
            for payload, sig in self.ledger.entries(feed, max(1, lo), max(0, min(hi - lo + 1, MAX_ITEMS))):
                if len(batch) >= MAX_ITEMS or size + len(payload) > MAX_BYTES:
                    break
                batch.append([payload, sig])
                size += len(payload) + len(sig)
        if batch:
            await self._call(peer, "Push", {"entries": batch})

    async def _sync(self, peer: Peer) -> None:
        mine = self.ledger.heads()
        reply = await self._call(peer, "Sync", {"digest": heads_digest(mine)})
        if reply is None or reply.get("same") is True:
            return
        theirs = reply.get("heads")
        if not isinstance(theirs, list):
            return
        their_seq = {item[0]: item[1] for item in theirs[: 4 * MAX_ITEMS]
                     if isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                     and isinstance(item[1], int)}
        lacking = [(f, mine.get(f, (0, b""))[0] + 1) for f, s in their_seq.items() if s > mine.get(f, (0, b""))[0]]
        for feed, start in lacking[:16]:  # bounded pulls per repair
            got = await self._call(peer, "Pull", {"feed": feed, "from_seq": start, "limit": MAX_ITEMS})
            if got is not None:
                self._ingest_batch(got.get("entries"), peer.key)
        surplus = [[f, their_seq.get(f, 0) + 1, s] for f, (s, _) in mine.items() if s > their_seq.get(f, 0)]
        if surplus:
            await self._push_ranges(peer, surplus[:MAX_ITEMS])

    def _learn(self) -> None:
        """Peers from NodeJoined entries of any feed (address, key), stored since last round."""
        for e in self.ledger.iter_entries(since=self._learn_cursor, entry_type="NodeJoined"):
            self.members.add(e.body["address"], e.feed)
        self._learn_cursor = self.ledger.next_index()

    # -- incoming (called by the servicer, after the request was authenticated) ---------------

    def _limit(self, req: Signed) -> None:
        b = self._buckets.setdefault(req.body["sender"], _Bucket())
        if not b.take():
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "gossip rate limit")

    def on_announce(self, req: Signed) -> bytes:
        self._limit(req)
        have = req.body["args"].get("have")
        if not isinstance(have, list):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "have must be a list")
        now = time.monotonic()
        want: dict[bytes, list[int]] = {}
        for item in have[:MAX_ITEMS]:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                    and isinstance(item[1], int) and isinstance(item[2], bytes)):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "have items are [feed, seq, hash]")
            feed, seq, h = item
            head, _ = self.ledger.head(feed)
            if seq <= head:
                stored = self.ledger.get(feed, seq)
                if stored is not None and stored.hash != h:  # a fork: fetch it to prove it
                    want.setdefault(feed, [seq, seq])
                continue
            if self._wanted.get((feed, seq), 0) > now:
                continue
            lo, hi = want.get(feed, [head + 1, seq])
            want[feed] = [min(lo, head + 1), max(hi, seq)]
        for feed, (lo, hi) in want.items():
            for s in range(lo, min(hi, lo + MAX_ITEMS) + 1):
                self._wanted[(feed, s)] = now + WANT_TTL_S
        if len(self._wanted) > 100_000:
            self._wanted = {k: t for k, t in self._wanted.items() if t > now}
        return self._reply({"want": [[f, lo, hi] for f, (lo, hi) in want.items()]})

    def _ingest_batch(self, entries: Any, sender: bytes | None) -> dict[str, int]:
        counts = {"stored": 0, "duplicate": 0, "equivocation": 0, "refused": 0}
        if not isinstance(entries, list):
            return counts
        for item in entries[:MAX_ITEMS]:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
                counts["refused"] += 1
                continue
            try:
                counts[self.ledger.ingest(item[0], item[1])] += 1
            except IngestError as e:
                counts["refused"] += 1
                log.info("refused an entry from %s: %s", sender.hex()[:12] if sender else "?", e.code)
        if counts["refused"] and sender is not None:
            self.members.misbehaved(sender)
        if counts["equivocation"] and self.events is not None:
            self.events.publish("equivocation", reported_by=self.identity.node_id)
        return counts

    def on_push(self, req: Signed) -> bytes:
        self._limit(req)
        sender = req.body["sender"]
        peer = self.members.by_key(sender)
        if peer is not None and peer.state == "banned":
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid entries")
        return self._reply(self._ingest_batch(req.body["args"].get("entries"), sender))

    def on_sync(self, req: Signed) -> bytes:
        self._limit(req)
        heads = self.ledger.heads()
        if req.body["args"].get("digest") == heads_digest(heads):
            return self._reply({"same": True})
        return self._reply({"heads": [[f, s, h] for f, (s, h) in sorted(heads.items())]})

    def on_pull(self, req: Signed) -> bytes:
        self._limit(req)
        a = req.body["args"]
        feed, start, limit = a.get("feed"), a.get("from_seq"), a.get("limit")
        if not (isinstance(feed, bytes) and isinstance(start, int) and isinstance(limit, int)):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "pull needs feed, from_seq, limit")
        rows, size, out = self.ledger.entries(feed, max(1, start), max(0, min(limit, MAX_ITEMS))), 0, []
        for payload, sig in rows:
            if size + len(payload) > MAX_BYTES:
                break
            out.append([payload, sig])
            size += len(payload) + len(sig)
        return self._reply({"entries": out})

    def _reply(self, obj: dict[str, Any]) -> bytes:
        data = encode(obj)
        self.replied_bytes += len(data)
        return data

    @property
    def bytes_sent(self) -> int:
        """Requests this node sent plus replies it served, over the gossip service."""
        return self.peers.sent_bytes.get("Gossip", 0) + self.replied_bytes

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # one bad round must not stop replication
                log.exception("gossip round failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s * self.rng.uniform(0.8, 1.2))
            except asyncio.TimeoutError:
                pass
