"""History of accepted outputs, to catch a worker replaying an earlier output for a new task.

Text: datasketch MinHashLSH over the outputs' MinHash fingerprints (candidates), confirmed by the
estimated Jaccard similarity. Images: an exact linear scan of all accepted 64-bit perceptual
hashes with the bulk Hamming kernel (about 10^9 comparisons/s: a million stored images cost ~1 ms
a query, simpler and exact compared with multi-index hashing at this scale).

The index holds no state of its own that matters: a verifier node rebuilds it at start from the
results its ledger shows as accepted (`VerifierRole.rebuild_history`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from datasketch import MinHashLSH

from trustgen.verifier.bulk import within
from trustgen.verifier.compare import jaccard
from trustgen.verifier.fingerprints import check_compatible, minhash_from


@dataclass(frozen=True)
class Replay:
    earlier_task: str
    similarity: float  # Jaccard for text; 1 - hamming/bits for images
    distance: float


class HistoryIndex:
    def __init__(self, text_threshold: float = 0.8, image_threshold: int = 6, num_perm: int = 128) -> None:
        self.text_threshold = text_threshold
        self.image_threshold = image_threshold
        self._lsh = MinHashLSH(threshold=text_threshold, num_perm=num_perm)
        self._text: dict[str, dict[str, Any]] = {}
        self._image_keys: list[str] = []
        self._image_hashes: list[int] = []
        self._image_ref: dict[str, Any] | None = None
        self._image_set: set[str] = set()

    def __len__(self) -> int:
        return len(self._text) + len(self._image_keys)

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._text or task_id in self._image_set

    def text_fingerprint(self, task_id: str) -> dict[str, Any] | None:
        """The fingerprint held for the text output accepted for `task_id`; None when there is
        none (an unknown task, or an image: images keep only their hash)."""
        return self._text.get(task_id)

    def add(self, task_id: str, fp: dict[str, Any]) -> None:
        if fp["kind"] == "text":
            if task_id in self._text:
                return
            self._lsh.insert(task_id, minhash_from(fp))
            self._text[task_id] = fp
        else:
            if task_id in self._image_set:
                return
            if self._image_ref is None:
                self._image_ref = fp
            check_compatible(self._image_ref, fp)
            self._image_set.add(task_id)
            self._image_keys.append(task_id)
            self._image_hashes.append(int(fp["hash"], 16))

    def find_replay(self, task_id: str, fp: dict[str, Any]) -> Replay | None:
        """The most similar earlier output of another task, if it is too similar."""
        if fp["kind"] == "text":
            best: Replay | None = None
            for other in self._lsh.query(minhash_from(fp)):
                if other == task_id:
                    continue
                j = jaccard(fp, self._text[other])
                if j >= self.text_threshold and (best is None or j > best.similarity):
                    best = Replay(other, j, 1.0 - j)
            return best
        if not self._image_hashes:
            return None
        assert self._image_ref is not None  # the first image added set it
        check_compatible(self._image_ref, fp)
        close = within(
            np.array([int(fp["hash"], 16)], dtype=np.uint64),
            np.array(self._image_hashes, dtype=np.uint64),
            self.image_threshold,
        )
        hits = [(int(d), self._image_keys[int(i)]) for _, i, d in close if self._image_keys[int(i)] != task_id]
        if not hits:
            return None
        d, other = min(hits)
        return Replay(other, 1.0 - d / fp["bits"], float(d))
