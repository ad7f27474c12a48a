"""Limits of the gossip protocol that both ends of a session hold each other to."""

from __future__ import annotations

from typing import Any

from trustgen.rpc import trustgen_pb2 as pb

MAX_ITEMS = 256  # entries or triples per request
MAX_BYTES = 1 << 20  # entry bytes per push or pull reply
HASH_HINT = 8  # bytes of an entry's hash in announcements: enough to notice a fork
MAX_SEQ = 2**63 - 1

Position = tuple[bytes, int]  # (feed, seq)


def op(**kw: Any) -> pb.GossipOp:
    return pb.GossipOp(**kw)
