"""Bulk Hamming comparison over arrays of 64-bit hashes.

XOR and popcount (`np.bitwise_count`) run on cache-sized tiles, and tiles are spread over a
thread pool: NumPy's ufunc loops release the GIL, so threads give real parallelism without a
compiled extension. Used by the image history index (exact linear scan) and calibration.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Q_TILE = 32
D_TILE = 4096


def as_hashes(values) -> np.ndarray:
    """uint64 array from ints, hex strings or an array."""
    if isinstance(values, np.ndarray):
        return np.ascontiguousarray(values, dtype=np.uint64)
    return np.array([int(v, 16) if isinstance(v, str) else int(v) for v in values], dtype=np.uint64)


def _threads(threads: int | None) -> int:
    return max(1, threads or len(os.sched_getaffinity(0)))


def _tiles(nq: int) -> list[tuple[int, int]]:
    return [(i, min(i + Q_TILE, nq)) for i in range(0, nq, Q_TILE)]


def _run(fn, nq: int, threads: int | None) -> None:
    tiles = _tiles(nq)
    n = _threads(threads)
    if n == 1 or len(tiles) == 1:
        for t in tiles:
            fn(*t)
        return
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda t: fn(*t), tiles))


def _scan(q: np.ndarray, d: np.ndarray, threads: int | None, on_tile) -> None:
    """Call on_tile(a, s, counts) for every tile: counts[i, j] = popcount(q[a + i] ^ d[s + j])."""
    if len(d) == 0:
        return

    def work(a: int, b: int) -> None:
        x = np.empty((b - a, min(D_TILE, len(d))), dtype=np.uint64)
        c = np.empty(x.shape, dtype=np.uint8)
        for s in range(0, len(d), D_TILE):
            chunk = d[s : s + D_TILE]
            xs, cs = x[:, : len(chunk)], c[:, : len(chunk)]
            np.bitwise_xor(q[a:b, None], chunk[None, :], out=xs)
            np.bitwise_count(xs, out=cs)
            on_tile(a, s, cs)

    _run(work, len(q), threads)


def nearest(queries: np.ndarray, db: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the minimum Hamming distance to `db` and the index where it occurs
    (lowest index on ties)."""
    q, d = as_hashes(queries), as_hashes(db)
    if len(d) == 0:
        raise ValueError("empty database")
    best = np.full(len(q), 255, dtype=np.uint8)
    where = np.zeros(len(q), dtype=np.int64)

    def tile(a: int, s: int, cs: np.ndarray) -> None:  # tiles of one query block run in order
        m = cs.min(axis=1)
        rows = np.nonzero(m < best[a : a + len(m)])[0]
        if len(rows):
            best[a + rows] = m[rows]
            where[a + rows] = s + cs[rows].argmin(axis=1)

    _scan(q, d, threads, tile)
    return best, where


def within(queries: np.ndarray, db: np.ndarray, threshold: int, threads: int | None = None) -> np.ndarray:
    """All (query index, db index, distance) with distance <= threshold, as an (n, 3) array."""
    q, d = as_hashes(queries), as_hashes(db)
    found: list[np.ndarray] = []

    def tile(a: int, s: int, cs: np.ndarray) -> None:
        # Matches are rare: a row minimum first, the full scan only of rows that match.
        rows = np.nonzero(cs.min(axis=1) <= threshold)[0]
        if len(rows):
            ri, di = np.nonzero(cs[rows] <= threshold)
            qi = rows[ri]
            found.append(np.stack([qi + a, di + s, cs[qi, di].astype(np.int64)], axis=1))

    _scan(q, d, threads, tile)
    if not found:
        return np.zeros((0, 3), dtype=np.int64)
    out = np.concatenate(found)
    return out[np.lexsort((out[:, 1], out[:, 0]))]
