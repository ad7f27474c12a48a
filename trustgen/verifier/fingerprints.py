"""Locality-sensitive fingerprints of outputs, self-describing so incompatible ones are never
compared: every record names its algorithm, size, parameters and library versions.

Images: perceptual hashes (pHash by default; dHash and wavelet hash as options) of the decoded
uint8 pixel array. Text: the exact token digest plus a MinHash over token shingles (datasketch,
affine64 scheme, a fixed SHA-256-derived hash function), serialised as little-endian uint64 hex,
never pickled.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import datasketch
import imagehash
import numpy as np
import PIL
from PIL import Image

from trustgen.engines.outputs import text_digest
from trustgen.errors import TrustgenError


def _phash_rgb(img: Image.Image, hash_size: int = 8) -> str:
    """pHash of each colour channel, concatenated: a grayscale hash cannot see a change of
    colour at equal brightness (a red circle for a green one)."""
    return "".join(str(imagehash.phash(ch, hash_size=hash_size)) for ch in img.convert("RGB").split())


IMAGE_ALGOS = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash, "phash_rgb": _phash_rgb}
_CHANNELS = {"phash_rgb": 3}
IMAGE_LIB = f"imagehash-{imagehash.__version__}/pillow-{PIL.__version__.split('.')[0]}"
MINHASH_SCHEME = "affine64"
MINHASH_HASHFUNC = "sha256-64le"
TEXT_LIB = f"datasketch-{datasketch.__version__.split('.')[0]}"


class FingerprintError(TrustgenError):
    """Fingerprints that are malformed or of incompatible kinds."""


def image_fingerprint(pixels: np.ndarray, algo: str = "phash", hash_size: int = 8) -> dict[str, Any]:
    if algo not in IMAGE_ALGOS:
        raise FingerprintError(f"unknown image hash {algo!r}; choose one of {', '.join(IMAGE_ALGOS)}")
    h = IMAGE_ALGOS[algo](Image.fromarray(pixels), hash_size=hash_size)
    return {
        "kind": "image",
        "algo": algo,
        "bits": hash_size * hash_size * _CHANNELS.get(algo, 1),
        "hash": str(h),
        "lib": IMAGE_LIB,
    }


def _hash64(b: bytes) -> int:
    return int.from_bytes(hashlib.sha256(b).digest()[:8], "little")


def shingles(token_ids: list[int], k: int) -> list[bytes]:
    ids = np.asarray(token_ids, dtype="<u4")
    if len(ids) <= k:
        return [ids.tobytes()]
    return [ids[i : i + k].tobytes() for i in range(len(ids) - k + 1)]


# A record's num_perm is bounded only by its message size: a peer sending large ones must not
# pin megabytes in the cache, so only sizes up to this are kept (the shipped default is 128).
MAX_CACHED_PERM = 1024


@functools.lru_cache(maxsize=16)
def _cached_permutations(num_perm: int, seed: int, scheme: str) -> np.ndarray:
    perms = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
    perms.setflags(write=False)
    return perms


def _permutations(num_perm: int, seed: int, scheme: str) -> np.ndarray | None:
    """datasketch draws a MinHash's permutations from its seed on every construction (~0.2 ms, on
    every check and every history lookup); they depend only on these three. Read-only, so the
    cached array cannot be changed by a caller; None (drawn by datasketch) past MAX_CACHED_PERM."""
    if not isinstance(num_perm, int) or num_perm > MAX_CACHED_PERM:
        return None
    return _cached_permutations(num_perm, seed, scheme)


def minhash(token_ids: list[int], num_perm: int = 128, seed: int = 1, shingle: int = 3) -> datasketch.MinHash:
    m = datasketch.MinHash(
        num_perm=num_perm,
        seed=seed,
        scheme=MINHASH_SCHEME,
        hashfunc=_hash64,
        permutations=_permutations(num_perm, seed, MINHASH_SCHEME),
    )
    m.update_batch(shingles(token_ids, shingle))
    return m


def text_fingerprint(token_ids: list[int], num_perm: int = 128, seed: int = 1, shingle: int = 3) -> dict[str, Any]:
    m = minhash(token_ids, num_perm, seed, shingle)
    return {
        "kind": "text",
        "token_digest": text_digest(token_ids),
        "num_perm": num_perm,
        "seed": seed,
        "shingle": shingle,
        "scheme": MINHASH_SCHEME,
        "hashfunc": MINHASH_HASHFUNC,
        "minhash": m.hashvalues.astype("<u8").tobytes().hex(),
        "lib": TEXT_LIB,
    }


def minhash_from(fp: dict[str, Any]) -> datasketch.MinHash:
    """Rebuild a MinHash from a fingerprint record (validated; never unpickled)."""
    try:
        values = np.frombuffer(bytes.fromhex(fp["minhash"]), dtype="<u8")
        if len(values) != fp["num_perm"]:
            raise ValueError("length")
        return datasketch.MinHash(
            num_perm=fp["num_perm"],
            seed=fp["seed"],
            scheme=fp["scheme"],
            hashvalues=values.astype(np.uint64),
            permutations=_permutations(fp["num_perm"], fp["seed"], fp["scheme"]),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise FingerprintError(f"malformed text fingerprint ({e})") from None


_IMAGE_KEYS = ("kind", "algo", "bits", "lib")
_TEXT_KEYS = ("kind", "num_perm", "seed", "shingle", "scheme", "hashfunc", "lib")


def check_compatible(a: dict[str, Any], b: dict[str, Any]) -> None:
    kind = a.get("kind")
    keys = _IMAGE_KEYS if kind == "image" else _TEXT_KEYS if kind == "text" else None
    if keys is None:
        raise FingerprintError(f"unknown fingerprint kind {kind!r}")
    diff = [k for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise FingerprintError(f"incompatible fingerprints: {', '.join(diff)} differ")
