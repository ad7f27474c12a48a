"""What the client and server sides of gossip share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import IngestError, Ledger, parse_entry
from trustgen.consensus.messages import MessageError
from trustgen.gossip.membership import Membership
from trustgen.gossip.rumours import Rumours
from trustgen.logs import PeerLog
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")
REFUSALS = PeerLog(log)  # a peer sending bad entries gets one line a minute


class Replica:
    """This node's identity, ledger and peers, its view of membership, the rumours it spreads,
    the bytes it sends; and `ingest`, the one way entries received from a peer are stored."""

    def __init__(
        self, identity: Identity, ledger: Ledger, peers: Peers, members: Membership, events: Any = None
    ) -> None:
        self.identity, self.ledger, self.peers, self.members = identity, ledger, peers, members
        self.events = events
        self.rumours = Rumours()
        self.bytes_sent = 0  # every gossip frame this node wrote, as client or server, hellos included
        # Under a genesis, which feeds this node keeps: called once per batch, it returns the
        # predicate for that batch (None: every feed). A stranger's entries are not stored.
        self.admits: Callable[[], Callable[[bytes], bool]] | None = None

    def count(self, n: int) -> None:
        self.bytes_sent += n

    def ingest(self, entries: Iterable[pb.Entry], sender: bytes | None) -> dict[str, int]:
        """Store a batch through Ledger.ingest (signature, hash link, sequence); a sender whose
        batch had invalid entries gets a strike, and an equivocation is announced."""
        counts = {"stored": 0, "duplicate": 0, "equivocation": 0, "refused": 0}
        admits = self.admits() if self.admits is not None else None
        strangers = 0
        # One durable transaction for the batch (one fsync, not one per entry): each entry is
        # still checked on its own, and a refused one stores nothing (Ledger.ingest refuses before
        # it writes); a storage fault rolls the batch back, and gossip offers it again.
        with self.ledger.batch():
            for item in entries:
                if admits is not None and not self._admitted(admits, item):
                    strangers += 1  # not the sender's fault: it may know an admission we lack yet
                    continue
                try:
                    counts[self.ledger.ingest(item.payload, item.sig)] += 1
                except IngestError as e:
                    counts["refused"] += 1
                    who = sender.hex()[:12] if sender else "?"
                    REFUSALS.warning(who, "refused an entry from %s: %s", who, e.code)
        if strangers:
            log.debug("skipped %d entries of feeds not admitted here", strangers)
        if counts["refused"] and sender is not None:
            self.members.misbehaved(sender)
        if counts["equivocation"] and self.events is not None:
            self.events.publish("equivocation", reported_by=self.identity.node_id)
        return counts

    def _admitted(self, admits: Callable[[bytes], bool], item: pb.Entry) -> bool:
        try:  # the signature is checked by Ledger.ingest; here only the feed matters
            feed = parse_entry(item.payload, item.sig, self.ledger.network, verify_signature=False).feed
        except MessageError:
            return True  # malformed: Ledger.ingest refuses it, and the sender gets its strike
        return admits(feed)
