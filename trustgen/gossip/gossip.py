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

One module a job: membership.py (liveness, bans), rumours.py (what is being pushed, who holds
it), antientropy.py (heads digests and buckets), rounds.py (the client side), serving.py (the
server side), replica.py (what both sides share). `Gossip` is the one object the daemon holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.gossip.membership import Membership
from trustgen.gossip.replica import Replica
from trustgen.gossip.rounds import Rounds
from trustgen.gossip.serving import Server
from trustgen.net.auth import RequestGuard
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb


class Gossip:
    """A node's gossip: `client` runs the rounds, `server` answers peers' sessions."""

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
        self.replica = Replica(identity, ledger, peers, membership, events)
        self.client = Rounds(self.replica, fanout, sync_every, learn_peers, seed)
        self.server = Server(self.replica)

    @property
    def bytes_sent(self) -> int:
        return self.replica.bytes_sent

    async def round(self) -> None:
        await self.client.round()

    async def connect(self) -> int:
        """Open sessions to every live peer now rather than on first use; returns how many are open."""
        return await self.client.connect()

    async def sync(self, address: str) -> None:
        """Anti-entropy with one member now (see Rounds.sync)."""
        await self.client.sync(address)

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        await self.client.run(interval_s, stop)

    def serve(self, frames: AsyncIterator[pb.GossipFrame], guard: RequestGuard) -> AsyncIterator[pb.GossipFrame]:
        """One served session (see Server.serve)."""
        return self.server.serve(frames, guard)

    def close(self) -> None:
        """End served sessions (so a server stop need not wait out its grace period) and close
        our own."""
        self.server.close()
        self.client.close()
