"""Content-addressed blob store on disk (outputs; later checkpoints)."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re

_NAME = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # atomic: a reader never sees half a blob
        return digest

    def path(self, digest: str) -> pathlib.Path | None:
        if not _NAME.match(digest):
            return None
        p = self.root / digest
        return p if p.exists() else None

    def get(self, digest: str) -> bytes | None:
        p = self.path(digest)
        if p is None:
            return None
        data = p.read_bytes()
        # Never serve a blob that rotted on disk.
        return data if hashlib.sha256(data).hexdigest() == digest else None
