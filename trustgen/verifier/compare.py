"""Comparators: Hamming distance for perceptual hashes, Jaccard estimates for MinHash, and a
decision against a threshold with its margin (how far inside or outside the threshold)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from trustgen.verifier.fingerprints import FingerprintError, check_compatible, minhash_from


@dataclass(frozen=True)
class Decision:
    accept: bool
    distance: float
    threshold: float
    margin: float  # threshold - distance: positive inside, negative outside

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hamming_hex(a: str, b: str) -> int:
    if len(a) != len(b):
        raise FingerprintError("hashes of different sizes")
    try:
        return (int(a, 16) ^ int(b, 16)).bit_count()
    except ValueError:
        raise FingerprintError("hash is not hexadecimal") from None


def jaccard(a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(minhash_from(a).jaccard(minhash_from(b)))


def distance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Hamming bits for images; 1 - estimated Jaccard for text."""
    check_compatible(a, b)
    if a["kind"] == "image":
        return float(hamming_hex(a["hash"], b["hash"]))
    return 1.0 - jaccard(a, b)


def decide(dist: float, threshold: float) -> Decision:
    return Decision(accept=dist <= threshold, distance=dist, threshold=threshold, margin=threshold - dist)


def compare(a: dict[str, Any], b: dict[str, Any], threshold: float) -> Decision:
    return decide(distance(a, b), threshold)
