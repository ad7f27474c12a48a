"""Rumour mongering with feedback: which entries are being spread, and who already holds them.

An entry is hot from the round after it is stored. Each round announces it to a few peers; it
stays hot while some peer it is announced to still wants it, for at most HOT_ROUNDS rounds, and
cools after COLD_AFTER rounds in a row in which no peer lacked it. Peers known to hold an entry
(we got it from them, they announced it to us, or we announced it to them) are not told again.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustgen.gossip.wire import MAX_ITEMS, Position

HOT_ROUNDS = 6  # an entry is re-announced while peers still want it, at most this many rounds
COLD_AFTER = 2  # ... and until this many rounds in a row found no peer that lacked it
MAX_HOLDER_POSITIONS = 100_000  # past this, holders are kept only for entries still hot

Announcement = tuple[bytes, int, bytes]  # (feed, seq, entry hash)


@dataclass
class Hot:
    """One entry being spread."""

    hash: bytes
    rounds_left: int
    misses: int = 0  # rounds in a row in which no peer it was announced to wanted it


class Rumours:
    def __init__(self) -> None:
        self.hot: dict[Position, Hot] = {}
        self.holders: dict[Position, set[bytes]] = {}  # keys known to have each entry

    def start(self, feed: bytes, seq: int, entry_hash: bytes) -> None:
        self.hot[(feed, seq)] = Hot(entry_hash, HOT_ROUNDS)

    def announcements(self) -> list[Announcement]:
        """This round's announcements: the hot entries, oldest first, at most MAX_ITEMS."""
        return [(f, s, h.hash) for (f, s), h in list(self.hot.items())[:MAX_ITEMS]]

    def news_for(self, key: bytes | None, have: list[Announcement]) -> list[Announcement]:
        """What of `have` the peer with `key` is not known to hold (all of it if its key is unknown)."""
        return [x for x in have if key is None or key not in self.holders.get(x[:2], ())]

    def note_holder(self, key: bytes, feed: bytes, seq: int) -> None:
        if len(self.holders) >= MAX_HOLDER_POSITIONS:  # bounded: keep only what is still being spread
            self.holders = {k: v for k, v in self.holders.items() if k in self.hot}
        self.holders.setdefault((feed, seq), set()).add(key)

    def settle(self, have: list[Announcement], wanted: list[list[tuple[bytes, int, int]]], reached: bool) -> None:
        """After announcing `have`: count a round for each entry, reset its misses if a peer wanted
        it (`wanted`: the (feed, lo, hi) ranges each peer asked for), and drop the entries that
        cooled, ran out of rounds, or had no peer left to tell (`reached` false)."""
        for f, s, _ in have:
            entry = self.hot[(f, s)]
            still_news = any(lo <= s <= hi for w in wanted for (wf, lo, hi) in w if wf == f)
            entry.rounds_left -= 1
            entry.misses = 0 if still_news else entry.misses + 1
            if entry.misses >= COLD_AFTER or entry.rounds_left <= 0 or not reached:
                del self.hot[(f, s)]
                self.holders.pop((f, s), None)
