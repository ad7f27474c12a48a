"""Verification by re-execution: the paper's baseline and the fallback for every task kind.

Text: re-generate and require the exact same token ids (the first differing position is
reported). Images: re-generate from the same seed and compare perceptual hashes of the two
decoded pixel arrays under the calibrated Hamming threshold.
"""

from __future__ import annotations

import numpy as np

from trustgen.engines.params import ImageParams, TextParams
from trustgen.verifier.compare import distance
from trustgen.verifier.fingerprints import image_fingerprint, text_fingerprint
from trustgen.verifier.vote import VoteValue, reject


def regenerate_text(engine, p: TextParams, tokens: list[int]) -> VoteValue:
    own = engine.generate(p).token_ids
    fp = text_fingerprint(own)
    if own == tokens:
        return VoteValue(True, "regenerate", 0.0, 0.0, "identical tokens", None, fp)
    pos = next((i for i, (a, b) in enumerate(zip(own, tokens)) if a != b), min(len(own), len(tokens)))
    d = distance(fp, text_fingerprint(tokens)) if tokens else 1.0
    return reject(
        "regenerate", f"tokens differ from re-generation ({len(tokens)} claimed, {len(own)} re-generated)", pos, d, fp
    )


def regenerate_image(
    engine, p: ImageParams, pixels: np.ndarray, threshold: float, algo: str = "phash_rgb"
) -> VoteValue:
    own = engine.generate(p).pixels
    fp = image_fingerprint(own, algo)
    if pixels.shape != own.shape:
        return reject("phash", f"image is {pixels.shape}, re-generation is {own.shape}", fingerprint=fp)
    d = distance(fp, image_fingerprint(pixels, algo))
    exact = bool(np.array_equal(own, pixels))
    if d <= threshold:
        why = "bit-identical pixels" if exact else f"perceptual distance {d:.0f} within {threshold:.0f}"
        return VoteValue(True, "phash", d, threshold - d, why, None, fp)
    return VoteValue(False, "phash", d, threshold - d, f"perceptual distance {d:.0f} exceeds {threshold:.0f}", None, fp)
