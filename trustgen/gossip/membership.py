"""Known peers and their liveness (failure detection), and bans for sending invalid entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("trustgen.node")

SUSPECT_AFTER, DEAD_AFTER, BAN_AFTER = 1, 3, 3
MAX_STRIKE_KEYS = 100_000  # senders whose invalid batches are counted; the oldest is forgotten first


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
        if len(self.strikes) >= MAX_STRIKE_KEYS and key not in self.strikes:
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
