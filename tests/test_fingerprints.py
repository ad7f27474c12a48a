import numpy as np
import pytest

from trustgen.verifier.bulk import nearest, within
from trustgen.verifier.compare import compare, distance, hamming_hex
from trustgen.verifier.fingerprints import FingerprintError, image_fingerprint, minhash_from, text_fingerprint
from trustgen.verifier.history import HistoryIndex


def _img(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    return base


def test_image_fingerprints_are_self_describing():
    for algo in ("phash", "dhash", "whash"):
        fp = image_fingerprint(_img(0), algo)
        assert fp["algo"] == algo and fp["bits"] == 64 and len(fp["hash"]) == 16
        assert "imagehash" in fp["lib"] and "pillow" in fp["lib"]
    big = image_fingerprint(_img(0), "phash", hash_size=16)
    assert big["bits"] == 256
    with pytest.raises(FingerprintError, match="bits"):
        distance(image_fingerprint(_img(0)), big)
    with pytest.raises(FingerprintError, match="algo"):
        distance(image_fingerprint(_img(0), "phash"), image_fingerprint(_img(0), "dhash"))


def test_image_distance_small_for_noise_large_for_other_images():
    a = _img(1)
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    fa = image_fingerprint(a)
    assert distance(fa, image_fingerprint(a)) == 0
    assert distance(fa, image_fingerprint(noisy)) <= 4
    assert distance(fa, image_fingerprint(_img(2))) > 16
    d = compare(fa, image_fingerprint(noisy), threshold=10)
    assert d.accept and d.margin == 10 - d.distance


def test_text_fingerprint_roundtrip_without_pickle():
    fp = text_fingerprint(list(range(100)))
    assert fp["scheme"] == "affine64" and fp["num_perm"] == 128 and fp["seed"] == 1
    m = minhash_from(fp)
    assert m.hashvalues.dtype == np.uint64 and len(m.hashvalues) == 128
    assert distance(fp, text_fingerprint(list(range(100)))) == 0.0
    near = distance(fp, text_fingerprint(list(range(100)) + [5]))
    far = distance(fp, text_fingerprint(list(range(500, 600))))
    assert near < 0.1 and far > 0.9
    bad = dict(fp, minhash=fp["minhash"][:-16])
    with pytest.raises(FingerprintError):
        minhash_from(bad)
    with pytest.raises(FingerprintError, match="num_perm"):
        distance(fp, text_fingerprint(list(range(100)), num_perm=64))


def test_bulk_hamming_matches_naive():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 2**63, 70, dtype=np.uint64)
    d = rng.integers(0, 2**63, 9000, dtype=np.uint64)
    d[1234] = q[5] ^ np.uint64(0b1011)  # distance 3
    d[8000] = q[60]  # distance 0
    naive = np.bitwise_count(q[:, None] ^ d[None, :])
    for threads in (1, 2):
        best, where = nearest(q, d, threads=threads)
        assert (best == naive.min(axis=1)).all()
        assert (where == naive.argmin(axis=1)).all()  # lowest index on ties, like argmin
        hits = within(q, d, 8, threads=threads)
        qi, di = np.nonzero(naive <= 8)
        assert hits[:, :2].tolist() == sorted([a, b] for a, b in zip(qi.tolist(), di.tolist()))
        assert [5, 1234, 3] in hits.tolist() and [60, 8000, 0] in hits.tolist()
    assert hamming_hex("ff00", "0f00") == 4


def test_history_flags_replays_for_other_tasks_only():
    h = HistoryIndex()
    tokens = list(range(40, 120))
    h.add("task-a", text_fingerprint(tokens))
    h.add("task-b", text_fingerprint(list(range(300, 380))))
    r = h.find_replay("task-c", text_fingerprint(tokens))
    assert r is not None and r.earlier_task == "task-a" and r.similarity > 0.95
    assert h.find_replay("task-a", text_fingerprint(tokens)) is None  # its own output
    assert h.find_replay("task-d", text_fingerprint(list(range(1000, 1080)))) is None
    img = image_fingerprint(_img(7))
    h.add("img-1", img)
    h.add("img-2", image_fingerprint(_img(8)))
    r = h.find_replay("img-3", img)
    assert r is not None and r.earlier_task == "img-1" and r.distance == 0
    assert h.find_replay("img-4", image_fingerprint(_img(9))) is None
