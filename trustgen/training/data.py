"""Deterministic data: windows of a data set, the held-out split, and per-trainer selection.

Which samples trainer n uses at step t is `H(job ‖ step ‖ trainer ‖ i) mod |train|` for
i < batch, so a verifier recomputes any trainer's batch from the job id, the step number and
the trainer's public key alone. The held-out split is a hash of the data set digest and the
window index, fixed for the data set whatever the job (docs/training.md).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from trustgen.consensus.domains import TRAIN_SELECT as SELECT_DOMAIN
from trustgen.consensus.domains import TRAIN_SPLIT as SPLIT_DOMAIN
from trustgen.errors import UsageError


def _u64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def is_heldout(dataset_digest: str, index: int, permille: int) -> bool:
    return _u64(SPLIT_DOMAIN + dataset_digest.encode() + struct.pack(">Q", index)) % 1000 < permille


@dataclass(frozen=True)
class Split:
    """Indices of the training and held-out samples of a data set, and the evaluation subset."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    eval: tuple[int, ...]


def split(dataset_digest: str, count: int, permille: int, eval_count: int) -> Split:
    held = tuple(i for i in range(count) if is_heldout(dataset_digest, i, permille))
    train = tuple(i for i in range(count) if not is_heldout(dataset_digest, i, permille))
    if not train or not held:
        # The data set is the job author's input: a usage error, reported as one line.
        raise UsageError(f"the data set has {count} samples: too few for a training and a held-out part")
    return Split(train=train, heldout=held, eval=held[:eval_count])


def select(job_id: bytes, step: int, trainer: bytes, batch: int, train: tuple[int, ...]) -> list[int]:
    """The sample indices trainer `trainer` uses at (global) step `step`."""
    head = SELECT_DOMAIN + job_id + struct.pack(">Q", step) + trainer
    return [train[_u64(head + struct.pack(">I", i)) % len(train)] for i in range(batch)]
