"""RFC 6962 Merkle tree hashes, inclusion and consistency proofs (verification per RFC 9162)."""

from __future__ import annotations

import hashlib

from trustgen.consensus.domains import MERKLE_LEAF, MERKLE_NODE

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(MERKLE_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(MERKLE_NODE + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The peaks of the complete subtrees over the leaves appended so far: the root of the
    prefix in O(log n), and O(1) amortised per appended leaf (RFC 6962's tree, folded right to
    left over the peaks)."""

    def __init__(self) -> None:
        self.size = 0
        self.peaks: list[tuple[int, bytes]] = []  # (height, hash), left to right

    def append(self, leaf: bytes) -> None:
        height, h = 0, leaf
        while self.peaks and self.peaks[-1][0] == height:
            h = node_hash(self.peaks.pop()[1], h)
            height += 1
        self.peaks.append((height, h))
        self.size += 1

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        acc = self.peaks[-1][1]
        for _, h in reversed(self.peaks[:-1]):
            acc = node_hash(h, acc)
        return acc


def root(leaves: list[bytes]) -> bytes:
    """Merkle tree hash over leaf hashes (already hashed with `leaf_hash`)."""
    r = CompactRange()
    for leaf in leaves:
        r.append(leaf)
    return r.root()


def inclusion_proof(index: int, leaves: list[bytes]) -> list[bytes]:
    return Tree(leaves).inclusion_proof(index)


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], expected_root: bytes) -> bool:
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [root(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [root(leaves[:k])]


def consistency_proof(old_size: int, leaves: list[bytes]) -> list[bytes]:
    if not 0 < old_size <= len(leaves):
        raise ValueError("old size out of range")
    return _subproof(old_size, leaves, True)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    if old_size == new_size:
        return old_root == new_root and not proof
    if not 0 < old_size < new_size:
        return False
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        proof = [old_root] + list(proof)
    if not proof:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class Tree:
    """A tree built once (bottom-up; an odd last node is carried up, as RFC 6962's split
    implies), answering root and inclusion proofs in O(log n)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.levels = [list(leaves)]
        while len(self.levels[-1]) > 1:
            lv = self.levels[-1]
            nxt = [node_hash(lv[i], lv[i + 1]) for i in range(0, len(lv) - 1, 2)]
            if len(lv) % 2:
                nxt.append(lv[-1])
            self.levels.append(nxt)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.levels[0] else EMPTY_ROOT

    def inclusion_proof(self, index: int) -> list[bytes]:
        if not 0 <= index < len(self.levels[0]):
            raise ValueError("leaf index out of range")
        proof = []
        for lv in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(lv):
                proof.append(lv[sib])
            index //= 2
        return proof


def roots_at(leaves: list[bytes], sizes: list[int]) -> dict[int, bytes]:
    """Roots of the prefixes of `leaves` of each requested size, in one pass."""
    want = set(s for s in sizes if 0 <= s <= len(leaves))
    r = CompactRange()
    out = {0: EMPTY_ROOT} if 0 in want else {}
    for leaf in leaves:
        r.append(leaf)
        if r.size in want:
            out[r.size] = r.root()
    return out
