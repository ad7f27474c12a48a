"""Cross-checks between audited ledgers: every replica of every feed against the others.

One ledger alone cannot show what was cut off the end of its log; other nodes' replicas can.
Feeds are hash chains, so two replicas of a feed agree up to the shorter one's head exactly when
they hold the same entry at that seq: each pair is compared at one seq from per-feed indexes
(and a binary search finds where a fork begins), never entry by entry.

- A node's own ledger must hold every entry of its own feed that any replica holds (it wrote
  them): otherwise `truncated_feed`, and the missing commitments are re-checked against its log
  (`truncated_log` when they cover more log than it holds, `bad_commitment` when their root
  does not match it).
- A replica of another node's feed that ends early is listed as `behind`, not a violation: it is
  what a node gossip has not caught up yet looks like.
- Replicas that differ at one seq are an equivocation of the feed's author: a finding.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from trustgen.consensus import merkle
from trustgen.consensus.ledger import Entry, leaf_data


@dataclass
class Replica:
    """What the cross-check needs of one audited ledger (its valid entries only)."""

    path: str
    owner: bytes | None
    chains: dict[bytes, dict[int, tuple[bytes, str]]]  # feed -> seq -> (entry hash, type), first stored
    commitments: dict[bytes, dict[int, tuple[int, bytes]]]  # feed -> seq -> (size, root)
    log: list[tuple[bytes, int, bytes]]  # (feed, seq, hash) by log position, as stored
    heads: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def of(cls, path: str, owner: bytes | None, entries: list[Entry], log: list[tuple[bytes, int, bytes]]) -> Replica:
        chains: dict[bytes, dict[int, tuple[bytes, str]]] = defaultdict(dict)
        commitments: dict[bytes, dict[int, tuple[int, bytes]]] = defaultdict(dict)
        for e in entries:
            chains[e.feed].setdefault(e.seq, (e.hash, e.type))
            if e.type == "Commitment":
                commitments[e.feed].setdefault(e.seq, (e.body["size"], e.body["root"]))
        return cls(path, owner, dict(chains), dict(commitments), log)

    def __post_init__(self) -> None:
        self.heads = {f: max(c) for f, c in self.chains.items()}
        if self.owner is not None:
            self.heads.setdefault(self.owner, 0)  # a node owes its own feed even when it holds none of it


@dataclass
class CrossFindings:
    """Findings by index of the replica they are about."""

    violations: list[tuple[int, str, str, str]] = field(default_factory=list)  # (replica, where, code, detail)
    forks: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    behind: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def _seqs(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def fork_point(a: dict[int, tuple[bytes, str]], b: dict[int, tuple[bytes, str]], top: int) -> int | None:
    """The first seq where two replicas of a feed differ, looking up to `top` (the shorter head);
    None when they agree there (and so, by the hash chain, everywhere before)."""
    if top == 0 or a.get(top) is None or b.get(top) is None or a[top][0] == b[top][0]:
        return None  # a replica with a hole at `top` has its own missing_entry violation
    lo, hi = 1, top
    while lo < hi:
        mid = (lo + hi) // 2
        if a.get(mid) is not None and a.get(mid) == b.get(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def holds_now(path: str, feed: bytes, seq: int, h: bytes) -> bool:
    """Whether the ledger at `path` holds this entry now. Ledgers are read one after the other,
    and a live node may append to its feed (and gossip it) after its own ledger was read."""
    try:
        db = sqlite3.connect(f"file:{pathlib.Path(path).resolve()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT hash FROM entries WHERE feed = ? AND seq = ?", (feed, seq)).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False  # gone or unreadable since: what was read is what counts
    return row is not None and row[0] == h


def cross_check(replicas: list[Replica]) -> CrossFindings:
    out = CrossFindings()
    holders: dict[bytes, list[int]] = defaultdict(list)
    for i, r in enumerate(replicas):
        for feed in r.heads:
            holders[feed].append(i)
    for feed, idxs in holders.items():
        if len(idxs) > 1:
            _check_feed(feed, idxs, replicas, out)
    return out


def _check_feed(feed: bytes, idxs: list[int], replicas: list[Replica], out: CrossFindings) -> None:
    head = {i: replicas[i].heads[feed] for i in idxs}
    furthest = {i: i for i in idxs}  # per replica, the longest replica on the same branch
    forked: set[tuple[int, int]] = set()
    for a, b in combinations(idxs, 2):
        ca, cb = replicas[a].chains.get(feed, {}), replicas[b].chains.get(feed, {})
        seq = fork_point(ca, cb, min(head[a], head[b]))
        for x, y in ((a, b), (b, a)):
            if seq is None:
                if head[y] > head[furthest[x]]:
                    furthest[x] = y
            elif (x, seq) not in forked:
                forked.add((x, seq))
                other = replicas[y]
                finding = {
                    "feed": feed.hex(),
                    "seq": seq,
                    "reported_by": (other.owner or b"").hex(),
                    "replica": other.path,
                }
                out.forks.append((x, finding))
    for i in idxs:
        j = furthest[i]
        if head[j] <= head[i]:
            continue
        if replicas[i].owner == feed:  # the node wrote these entries itself: it must hold them
            if not holds_now(replicas[i].path, feed, head[j], replicas[j].chains[feed][head[j]][0]):
                _truncated(feed, replicas[i], i, replicas[j], out)
        else:
            out.behind.append(
                (i, {"feed": feed.hex(), "seq": head[i], "replica": replicas[j].path, "replica_seq": head[j]})
            )


def _truncated(feed: bytes, mine: Replica, i: int, holder: Replica, out: CrossFindings) -> None:
    """`mine` is `feed`'s own node and lacks the end of its feed that `holder` replicated."""
    lo, hi = mine.heads[feed] + 1, holder.heads[feed]
    chain = holder.chains[feed]
    kinds = Counter(chain[s][1] for s in range(lo, hi + 1) if s in chain)
    what = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items()))
    out.violations.append(
        (
            i,
            f"feed {feed.hex()[:16]} seq {_seqs(lo, hi)}",
            "truncated_feed",
            f"entries {_seqs(lo, hi)} of this node's own feed are missing; {holder.path} holds them ({what})",
        )
    )
    # The missing commitments attest to this node's log: they must still hold of it.
    lost = sorted((s, c) for s, c in holder.commitments.get(feed, {}).items() if lo <= s <= hi)
    if not lost:
        return
    leaves = [merkle.leaf_hash(leaf_data(f, s, h)) for f, s, h in mine.log]
    roots = merkle.roots_at(leaves, [size for _, (size, _) in lost])
    short = False
    for seq, (size, root) in lost:
        where = f"feed {feed.hex()[:16]} seq {seq}"
        if size > len(leaves):
            if not short:  # the first such commitment says it; later ones cover even more
                short = True
                out.violations.append(
                    (
                        i,
                        where,
                        "truncated_log",
                        f"commitment {seq} of this node ({holder.path} holds it) covers {size} log positions; "
                        f"this ledger holds {len(leaves)}",
                    )
                )
        elif roots[size] != root:
            out.violations.append(
                (
                    i,
                    where,
                    "bad_commitment",
                    f"commitment {seq} of this node, held by {holder.path}, does not match this ledger's "
                    f"first {size} log entries",
                )
            )
