"""Content-addressed blob store (outputs now, checkpoints later).

A blob's address is the RFC 6962 Merkle root over its 64 KiB chunks. A fetcher asks for the
chunk hashes first and checks that they hash to the address it wants, then checks every chunk
against its hash as it arrives: a peer serving one bad chunk is caught at that chunk, not after
the whole download, and the fetch continues from there with another peer.
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
from dataclasses import dataclass

from trustgen.consensus import merkle

CHUNK = 64 * 1024
_NAME = re.compile(r"^[0-9a-f]{64}$")


def chunk_hashes(data: bytes) -> list[bytes]:
    """Leaf hashes of the chunks (one empty chunk for empty data)."""
    return [merkle.leaf_hash(data[i : i + CHUNK]) for i in range(0, max(len(data), 1), CHUNK)]


def blob_digest(data: bytes) -> str:
    return merkle.root(chunk_hashes(data)).hex()


@dataclass(frozen=True)
class Manifest:
    digest: str
    size: int
    chunks: list[bytes]

    def valid(self) -> bool:
        n = max(1, -(-self.size // CHUNK))
        return len(self.chunks) == n and merkle.root(self.chunks).hex() == self.digest

    def chunk_ok(self, index: int, data: bytes) -> bool:
        if not 0 <= index < len(self.chunks):
            return False
        expected_len = min(CHUNK, self.size - index * CHUNK) if self.size else 0
        return len(data) == expected_len and merkle.leaf_hash(data) == self.chunks[index]


class BlobStore:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        digest = blob_digest(data)
        path = self.root / digest
        if not path.exists():
            # Unique per writer: two threads of one process may store the same blob at once.
            tmp = self.root / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: a reader never sees half a blob
        return digest

    def has(self, digest: str) -> bool:
        return bool(_NAME.match(digest)) and (self.root / digest).exists()

    def get(self, digest: str) -> bytes | None:
        if not self.has(digest):
            return None
        data = (self.root / digest).read_bytes()
        # Never serve a blob that rotted on disk.
        return data if blob_digest(data) == digest else None

    def manifest(self, digest: str) -> Manifest | None:
        data = self.get(digest)
        return None if data is None else Manifest(digest, len(data), chunk_hashes(data))

    def chunk(self, digest: str, index: int) -> bytes | None:
        data = self.get(digest)
        if data is None or not 0 <= index < max(1, -(-len(data) // CHUNK)):
            return None
        return data[index * CHUNK : (index + 1) * CHUNK]
