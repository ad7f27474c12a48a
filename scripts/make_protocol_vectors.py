"""Write docs/protocol_vectors.json: test vectors for every rule in docs/protocol.md, made by the
node's own code (encoding, signing, ledger, Merkle, assignment, tally, sessions, sampling noise,
fingerprints, digests, training) from fixed keys, times and inputs, so the file is byte-identical on every run.

python scripts/make_protocol_vectors.py            # rewrite docs/protocol_vectors.json
python scripts/make_protocol_vectors.py --out F    # write elsewhere (the drift test compares)

scripts/check_protocol_vectors.py is a second implementation that re-derives every vector from
the file alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import struct
import sys
import tempfile
import tomllib
import zlib
from typing import Any
from unittest import mock

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nacl.bindings  # noqa: E402
import nacl.public  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import scipy.fftpack  # noqa: E402
import torch  # noqa: E402

from trustgen.consensus import challenge as tchallenge  # noqa: E402
from trustgen.consensus import domains, merkle  # noqa: E402
from trustgen.consensus.assignment import effective_verifiers, rank  # noqa: E402
from trustgen.consensus.audit import audit_ledger  # noqa: E402
from trustgen.consensus.encoding import decode, encode  # noqa: E402
from trustgen.consensus.finality import certify  # noqa: E402
from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.consensus.ledger import Entry, Ledger, leaf_data  # noqa: E402
from trustgen.consensus.messages import MessageError, Signed, open_payload, sign  # noqa: E402
from trustgen.consensus.tally import tally  # noqa: E402
from trustgen.engines import sampling  # noqa: E402
from trustgen.engines.determinism import ExecutionProfile  # noqa: E402
from trustgen.engines.outputs import image_digest, read_png, text_digest  # noqa: E402
from trustgen.engines.params import ImageParams, TextParams  # noqa: E402
from trustgen.engines.registry import model_digest  # noqa: E402
from trustgen.engines.sampling import filter_logits, gumbel_noise_rows, sample_scores, sample_token  # noqa: E402
from trustgen.errors import UsageError  # noqa: E402
from trustgen.gossip import session  # noqa: E402
from trustgen.gossip.antientropy import bucket_digests, heads_digest  # noqa: E402
from trustgen.gossip.blobs import CHUNK, blob_digest, chunk_hashes  # noqa: E402
from trustgen.net import auth  # noqa: E402
from trustgen.net.peers import full_method  # noqa: E402
from trustgen.rpc import trustgen_pb2 as pb  # noqa: E402
from trustgen.training import aggregate, diloco, spsa, spsa_rounds  # noqa: E402
from trustgen.training import data as tdata  # noqa: E402
from trustgen.training.checks import check_arithmetic  # noqa: E402
from trustgen.training.job import SpsaState, UpdateError, by_trainer, checkpoint_digest  # noqa: E402
from trustgen.training.records import updates_digest  # noqa: E402
from trustgen.training.rounds import (  # noqa: E402
    Verdict,
    challenges,
    check_coin,
    round_decisions,
    round_target,
)
from trustgen.training.spec import from_dict, open_job, sign_job  # noqa: E402
from trustgen.training.tensors import TensorError, tensor_digest, to_bytes  # noqa: E402
from trustgen.verifier.compare import distance  # noqa: E402
from trustgen.verifier.fingerprints import image_fingerprint, text_fingerprint  # noqa: E402
from trustgen.verifier.vote import VoteValue  # noqa: E402

OUT = ROOT / "docs" / "protocol_vectors.json"
NETWORK = "trustgen-vectors"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms: every time in the vectors counts from here
# Image results carry the fingerprint library's version; pinned here so that the vectors do not
# change with the installed imagehash release (it is a label, compared for equality only).
IMAGE_LIB = "imagehash-4.3.2/pillow-13"

KEY_SEEDS = {
    "gateway": 1,
    "worker": 2,
    "client": 3,
    **{f"verifier{i}": 10 + i for i in range(5)},
    "author": 4,  # a training job's author, who also coordinates it and signs its checkpoints
    "authority": 5,  # the network's admission authority (genesis founder)
    **{f"trainer{i}": 32 + i for i in range(3)},
}
KEYS = {name: Identity.from_seed(bytes([b]) * 32) for name, b in KEY_SEEDS.items()}
NAME_OF = {k.public_key: name for name, k in KEYS.items()}


def tj(v: Any) -> Any:
    """A value as tagged JSON: bytes as {"$bytes": hex}; JSON numbers with a point are floats."""
    if isinstance(v, (bytes, bytearray)):
        return {"$bytes": bytes(v).hex()}
    if isinstance(v, dict):
        assert set(v) != {"$bytes"}, "a map with the single key $bytes would read back as bytes"
        return {k: tj(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [tj(x) for x in v]
    if isinstance(v, float):
        assert math.isfinite(v)
    return v


def hexes(items: list[bytes]) -> list[str]:
    return [b.hex() for b in items]


def message_vector(name: str, msg: Signed) -> dict[str, Any]:
    assert decode(msg.payload[4:])[3] == msg.body
    return {
        "name": name,
        "type": msg.type,
        "signer": NAME_OF[msg.signer],
        "body": tj(msg.body),
        "payload": msg.payload.hex(),
        "sig": msg.sig.hex(),
        "id": msg.id.hex(),
        "wire": msg.wire().hex(),
    }


def admission_vectors() -> list[dict[str, Any]]:
    """A genesis, an admission of two verifiers in one authority action, and a revocation."""
    auth = KEYS["authority"]

    def member(name: str, roles: list[str], host: str = "") -> dict[str, Any]:
        return {"key": KEYS[name].public_key, "roles": roles, "host": host, "cert": ""}

    initial = [member("gateway", ["gateway"]), member("worker", ["worker"])]
    initial += [member(f"verifier{i}", ["verifier"], f"host{i}") for i in range(3)]
    genesis = sign(
        auth,
        "Genesis",
        NETWORK,
        {"founder": auth.public_key, "authorities": [auth.public_key], "members": initial, "probation": 5, "time": T0},
    )
    later = [member("verifier3", ["verifier"], "host3"), member("trainer0", ["trainer"])]
    admission = sign(auth, "Admission", NETWORK, {"authority": auth.public_key, "members": later, "time": T0 + 1})
    revocation = sign(
        auth,
        "Revocation",
        NETWORK,
        {"authority": auth.public_key, "keys": [KEYS["verifier3"].public_key], "time": T0 + 2},
    )
    return [
        message_vector("genesis", genesis),
        message_vector("admission", admission),
        message_vector("revocation", revocation),
    ]


# -- encoding ------------------------------------------------------------------------------------


def encoding_vectors() -> dict[str, Any]:
    nested_ok: Any = []
    for _ in range(32):  # 33 lists: the innermost sits at depth 32, the deepest allowed
        nested_ok = [nested_ok]
    valid = [
        ("none", None),
        ("false", False),
        ("true", True),
        ("int zero", 0),
        ("int -1", -1),
        ("int min", -(2**63)),
        ("int max", 2**63 - 1),
        ("float 1.5", 1.5),
        ("float -0.0", -0.0),
        ("float 0.1", 0.1),
        ("float smallest subnormal", 5e-324),
        ("float max", 1.7976931348623157e308),
        ("float that is an integer", 3.0),
        ("empty bytes", b""),
        ("bytes", bytes(range(8))),
        ("empty str", ""),
        ("str non-ascii", "é✓😀"),
        ("empty list", []),
        ("list of mixed", [1, "a", None, [True, b"\xff"]]),
        ("empty map", {}),
        ("map keys sorted by UTF-8 bytes", {"b": 1, "a": 2, "aa": 3, "B": 4, "": 5}),
        ("map keys above the BMP sort after U+FF61 (UTF-8 order, not UTF-16)", {"😀": 1, "｡": 2, "é": 3}),
        ("nested maps", {"outer": {"z": [], "y": {"x": 0.25}}}),
        ("33 nested lists (maximum depth)", nested_ok),
    ]
    out_valid = []
    for name, v in valid:
        b = encode(v)
        assert encode(decode(b)) == b
        out_valid.append({"name": name, "value": tj(v), "hex": b.hex()})
    too_deep = b"\x07\x00\x00\x00\x01" * 34 + b"\x07\x00\x00\x00\x00"
    invalid = [
        ("truncated int", encode(1)[:-1], "8 bytes must follow tag 0x03"),
        ("trailing byte", encode({"a": 1}) + b"\x00", "bytes after the value"),
        (
            "unsorted keys",
            b"\x08\x00\x00\x00\x02" + encode("b") + encode(1) + encode("a") + encode(1),
            "keys out of order",
        ),
        ("duplicate key", b"\x08\x00\x00\x00\x02" + encode("a") + encode(1) + encode("a") + encode(2), "keys repeat"),
        ("map key not a string", b"\x08\x00\x00\x00\x01" + encode(b"a") + encode(1), "keys must use tag 0x06"),
        ("NaN", b"\x04" + bytes.fromhex("7ff8000000000000"), "floats must be finite"),
        ("infinity", b"\x04" + bytes.fromhex("7ff0000000000000"), "floats must be finite"),
        ("unknown tag", b"\x09", "tags are 0x00..0x08"),
        ("invalid UTF-8", b"\x06\x00\x00\x00\x01\xff", "strings must be UTF-8"),
        ("overlong UTF-8", b"\x06\x00\x00\x00\x02\xc0\xaf", "strings must be UTF-8 (no overlong forms)"),
        ("UTF-8 surrogate", b"\x06\x00\x00\x00\x03\xed\xa0\x80", "strings must be UTF-8 (no surrogates)"),
        ("length beyond the data", b"\x05\x00\x00\x00\x05ab", "length runs past the end"),
        ("length over 64 MiB", b"\x05\x04\x00\x00\x01", "lengths and counts are at most 2^26"),
        ("35 nested lists", too_deep, "more than 32 levels of nesting"),
        ("empty input", b"", "no value"),
    ]
    out_invalid = []
    for name, b, why in invalid:
        try:
            decode(b)
        except ValueError:
            out_invalid.append({"name": name, "hex": b.hex(), "why": why})
        else:
            raise AssertionError(f"the decoder accepted the invalid vector {name!r}")
    return {"valid": out_valid, "invalid": out_invalid}


# -- outputs, blobs, models ------------------------------------------------------------------------


def test_image() -> np.ndarray:
    """32 x 32 RGB: a red disc on a blue-to-green gradient (the embedded image model's size)."""
    y, x = np.mgrid[0:32, 0:32]
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[..., 1] = (x * 8).astype(np.uint8)
    img[..., 2] = (255 - y * 6).astype(np.uint8)
    disc = (x - 12) ** 2 + (y - 18) ** 2 <= 49
    img[disc] = (220, 30, 40)
    return img


def png_stored(pixels: np.ndarray) -> bytes:
    """A PNG whose deflate stream uses stored blocks: the same bytes whatever zlib is installed."""
    h, w, c = pixels.shape
    raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h))
    blocks = [raw[i : i + 65535] for i in range(0, len(raw), 65535)] or [b""]
    z = b"\x78\x01"
    for i, blk in enumerate(blocks):
        z += bytes([1 if i == len(blocks) - 1 else 0]) + struct.pack("<HH", len(blk), len(blk) ^ 0xFFFF) + blk
    z += struct.pack(">I", zlib.adler32(raw))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, {3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", z) + chunk(b"IEND", b"")


def blob_bytes(length: int) -> bytes:
    return bytes((31 * i + 7) % 256 for i in range(length))


def manifest_vector() -> dict[str, Any]:
    files = [
        ("config.json", b'{"n_layer": 4}\n'),
        ("model.safetensors", bytes(range(256)) * 3),
        ("tokenizer/vocab.json", '{"é": 0}'.encode()),
        ("tokenizer/merges.txt", b""),
        ("README.md", b"skipped by name\n"),
        (".hidden", b"skipped: starts with a dot\n"),
        (".cache/blob", b"skipped: in a directory that starts with a dot\n"),
    ]
    with tempfile.TemporaryDirectory() as d:
        for rel, data in files:
            p = pathlib.Path(d) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        digest = model_digest(pathlib.Path(d))
    return {"files": [{"path": rel, "content": data.hex()} for rel, data in files], "digest": digest}


def output_vectors(pixels: np.ndarray, png: bytes) -> dict[str, Any]:
    texts = [[], [0], [464, 318, 257, 1332, 13, 0, 50, 2], [2**32 - 1, 1, 65536]]
    blobs = []
    for n in (0, 1, CHUNK, 150_000):
        data = blob_bytes(n)
        blobs.append({"length": n, "chunks": hexes(chunk_hashes(data)), "digest": blob_digest(data)})
    assert np.array_equal(read_png(png), pixels)
    small = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    return {
        "text": [{"token_ids": t, "digest": text_digest(t)} for t in texts],
        "image": [
            {
                "height": a.shape[0],
                "width": a.shape[1],
                "channels": a.shape[2],
                "pixels": a.tobytes().hex(),
                "digest": image_digest(a),
            }
            for a in (pixels, small)
        ],
        "blob_rule": "byte i of a blob of length n is (31 * i + 7) mod 256",
        "blobs": blobs,
        "png": {"pixels_of": 0, "png": png.hex(), "digest": blob_digest(png)},
        "model_manifest": manifest_vector(),
    }


# -- fingerprints --------------------------------------------------------------------------------


def fingerprint_vectors(pixels: np.ndarray) -> dict[str, Any]:
    minhashes = []
    for tokens, num_perm, seed, shingle in (
        ([464, 318, 257, 1332, 13, 0, 50, 2], 128, 1, 3),
        ([7, 7, 7, 7, 7], 128, 1, 3),
        ([5, 6], 128, 1, 3),
        ([], 128, 1, 3),
        (list(range(40)), 16, 7, 2),
        ([2**32 - 1, 0, 2**31], 8, 2**32 - 1, 1),
    ):
        minhashes.append({"token_ids": tokens, "fingerprint": text_fingerprint(tokens, num_perm, seed, shingle)})
    phashes = []
    for name, img in (("disc", pixels), ("gradient", test_image()[::-1].copy())):
        rgb_hash = image_fingerprint(img, "phash_rgb")["hash"]
        gray = image_fingerprint(img, "phash")
        # Bits are "value > median": keep every DCT value clear of its median, so a second
        # implementation's rounding cannot flip a bit.
        for chan in [np.asarray(PIL.Image.fromarray(img).convert("L"))] + [img[..., i] for i in range(3)]:
            low = scipy.fftpack.dct(scipy.fftpack.dct(chan.astype(np.float64), axis=0), axis=1)[:8, :8]
            assert np.min(np.abs(low - np.median(low))) > 1e-6, name
        phashes.append(
            {
                "name": name,
                "height": 32,
                "width": 32,
                "pixels": img.tobytes().hex(),
                "phash": gray["hash"],
                "phash_rgb": rgb_hash,
            }
        )
    return {"minhash": minhashes, "phash": phashes}


# -- sampling --------------------------------------------------------------------------------------


def sampling_vectors() -> dict[str, Any]:
    noise = []
    for seed, position, vocab in ((0, 0, 6), (0, 1, 6), (1, 0, 6), (42, 7, 6), (2**63 - 1, 1023, 4)):
        key = sampling._keys(seed, [position])
        with np.errstate(over="ignore"):
            words = sampling._mix(key + np.arange(1, vocab + 1, dtype=np.uint64) * sampling._GOLDEN)
        # g to 12 significant digits: the last bits of a float64 log differ between libm and
        # NumPy builds (see docs/protocol.md), and the file must not differ with them.
        g = [float(f"{x:.12g}") for x in gumbel_noise_rows(seed, [position], vocab)[0].tolist()]
        noise.append(
            {
                "seed": seed,
                "position": position,
                "vocab": vocab,
                "key": f"{int(key[0]):016x}",
                "words": [f"{int(w):016x}" for w in words],
                "g": g,
            }
        )
    logits = [0.5, 2.25, -1.0, 1.75, 0.0, 3.0, 2.5, -0.5, 1.0, 0.25, 2.0, -2.0, 1.5, 0.75, 2.75, -0.25]
    selection = []
    for seed, position, temperature, top_k, top_p in (
        (0, 0, 1.0, 0, 1.0),
        (7, 3, 0.7, 5, 1.0),
        (11, 2, 1.3, 0, 0.8),
        (123, 9, 0.5, 4, 0.9),
        (2**40, 100, 2.0, 3, 0.5),
    ):
        x = torch.tensor(logits, dtype=torch.float64)
        kept = [i for i, v in enumerate(filter_logits(x, temperature, top_k, top_p).tolist()) if v != float("-inf")]
        # Keep the nucleus clear of its edge: the mass above each token must not sit on top_p.
        xs = torch.sort(filter_logits(x, temperature, top_k, 1.0), descending=True).values
        above = torch.cumsum(torch.softmax(xs, dim=0), dim=0) - torch.softmax(xs, dim=0)
        assert top_p == 1.0 or float(torch.min(torch.abs(above - top_p))) > 1e-6
        s = sorted(sample_scores(x, seed, position, temperature, top_k, top_p).tolist(), reverse=True)
        assert s[0] - s[1] > 1e-6, "the vector must not sit on a tie"
        selection.append(
            {
                "logits": logits,
                "seed": seed,
                "position": position,
                "temperature": temperature,
                "top_k": top_k,
                "top_p": top_p,
                "kept": kept,
                "token": sample_token(x, seed, position, temperature, top_k, top_p),
            }
        )
    return {"noise": noise, "selection": selection}


# -- Merkle ----------------------------------------------------------------------------------------


def merkle_vectors() -> dict[str, Any]:
    data = [f"leaf {i}".encode() for i in range(11)]
    leaves = [merkle.leaf_hash(d) for d in data]
    roots = [{"size": n, "root": merkle.root(leaves[:n]).hex()} for n in range(len(leaves) + 1)]
    inclusion = []
    for index, size in ((0, 1), (0, 2), (1, 2), (2, 3), (4, 7), (6, 7), (0, 8), (5, 8), (3, 11), (10, 11)):
        proof = merkle.inclusion_proof(index, leaves[:size])
        assert merkle.verify_inclusion(index, size, leaves[index], proof, merkle.root(leaves[:size]))
        inclusion.append({"index": index, "size": size, "proof": hexes(proof)})
    consistency = []
    for old, new in ((1, 2), (1, 8), (2, 8), (3, 7), (4, 8), (5, 11), (6, 8), (7, 11), (8, 11)):
        proof = merkle.consistency_proof(old, leaves[:new])
        assert merkle.verify_consistency(old, new, merkle.root(leaves[:old]), merkle.root(leaves[:new]), proof)
        consistency.append({"old_size": old, "new_size": new, "proof": hexes(proof)})
    return {
        "leaf_data": hexes(data),
        "leaves": hexes(leaves),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
    }


# -- messages, the ledger, assignment and tally ------------------------------------------------------


PROFILE = ExecutionProfile(
    device="cpu",
    device_name="cpu:x86_64",
    dtype="float32",
    threads=2,
    deterministic=True,
    flags={"use_deterministic_algorithms": True, "tf32_matmul": False, "float32_matmul_precision": "highest"},
    versions={"torch": "2.13.0", "transformers": "5.1.0", "diffusers": "0.36.0", "python": "3.11.7"},
).to_dict()


def make_task(kind: str, params: dict[str, Any], model: str, nonce: bytes) -> Signed:
    client = KEYS["client"]
    body = {
        "client": client.public_key,
        "kind": kind,
        "model": model,
        "params": params,
        "workers": 1,
        "verifiers": 3,
        "nonce": nonce,
        "expiry": T0 + 3_600_000,
    }
    return sign(client, "Task", NETWORK, body)


def make_result(task: Signed, output: dict[str, Any], digest: str, fp: dict[str, Any]) -> Signed:
    worker = KEYS["worker"]
    body = {
        "worker": worker.public_key,
        "task_id": task.id,
        "model_digest": task.body["model"],
        "output_digest": digest,
        "output": output,
        "fingerprint": fp,
        "profile": PROFILE,
    }
    return sign(worker, "Result", NETWORK, body)


def make_request(signer: str, method: str, args: dict[str, Any], n: int) -> Signed:
    """A Request exactly as net/auth.make_request builds it, with its nonce and clock fixed."""
    ident = KEYS[signer]
    with (
        mock.patch.object(auth.os, "urandom", lambda k: bytes([n]) * k),
        mock.patch.object(auth.time, "time", lambda: (T0 + 1000 * n) / 1000),
    ):
        req = auth.make_request(ident, NETWORK, method, args)
    body = decode(req.payload[4:])[3]
    return Signed("Request", NETWORK, body, req.payload, req.signature)


def scenario(pixels: np.ndarray, png: bytes, model: str) -> dict[str, Any]:
    """A gateway's ledger: joins, commitments, a text task accepted by majority (one verifier
    skipped for a missed deadline, recorded before the certificate, one in the minority), an
    image task rejected (the skipped verifier demoted out of its candidates), the skipped verifier
    restored, a third task failed, and an equivocation."""
    msgs: list[dict[str, Any]] = []
    verifiers = [KEYS[f"verifier{i}"] for i in range(5)]
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        led = Ledger(tmp / "ledger.db", NETWORK, KEYS["gateway"])
        clock = iter(range(T0, T0 + 10**9, 250))
        log: list[Entry] = []

        def append(kind: str, body: dict[str, Any]) -> Entry:
            e = led.append(kind, body, time_ms=next(clock))
            log.append(e)
            return e

        def foreign(who: Identity, kind: str, body: dict[str, Any], store: bool = True) -> Entry:
            own = Ledger(tmp / f"{who.node_id[:8]}.db", NETWORK, who)
            e = own.append(kind, body, time_ms=next(clock))
            own.close()
            if store:
                assert led.ingest(e.payload, e.sig) == "stored"
                log.append(e)
            return e

        def commit() -> Entry:
            # What Ledger.commit() appends, at a fixed time.
            leaves = [merkle.leaf_hash(leaf_data(e.feed, e.seq, e.hash)) for e in log]
            return append("Commitment", {"size": len(leaves), "root": merkle.root(leaves)})

        append("NodeJoined", {"address": "127.0.0.1:7000", "roles": ["gateway"]})
        # What the worker serves, before it joins: [kind, digest, name] per model, budgets per kind.
        foreign(
            KEYS["worker"],
            "Serves",
            {
                "models": [["image", model, "tiny-image"], ["text", model, "tiny-text"]],
                "limits": {"image": 1310720, "text": 32768},
            },
        )
        foreign(KEYS["worker"], "NodeJoined", {"address": "127.0.0.1:7001", "roles": ["worker"]})
        for i, v in enumerate(verifiers):
            foreign(v, "NodeJoined", {"address": f"127.0.0.1:71{i:02d}", "roles": ["verifier"]})
        candidates = sorted(v.public_key for v in verifiers)
        by_key = {v.public_key: v for v in verifiers}
        assignments = []

        # Task 1: text, sampled; the first-ranked verifier times out (skipped), one votes reject.
        beacon1 = commit()
        text_params = TextParams(
            prompt="a verifiable sentence",
            max_new_tokens=8,
            decoding="sample",
            seed=7,
            temperature=0.8,
            top_k=50,
            top_p=0.95,
        ).to_dict()
        task1 = make_task("text", text_params, model, b"\x01" * 16)
        append(
            "TaskAccepted",
            {
                "task": task1.wire(),
                "beacon": beacon1.body["root"],
                "beacon_size": beacon1.body["size"],
                "candidates": candidates,
            },
        )
        tokens = [464, 318, 257, 1332, 13, 0, 50, 2]
        fp = text_fingerprint(tokens)
        result1 = make_result(
            task1,
            {"token_ids": tokens, "text": "The network checks every token.", "finish_reason": "length"},
            text_digest(tokens),
            fp,
        )
        committed1 = append("ResultCommitted", {"result": result1.wire()})
        ranking1 = rank(beacon1.body["root"], task1.id, candidates, KEYS["worker"].public_key)
        skipped1 = [ranking1[0]]
        # Asked when the result was committed; the next entry (250 ms later) records the miss.
        skip_body = {"task_id": task1.id, "result_id": result1.id, "verifier": skipped1[0], "reason": "deadline"}
        append("VerifierSkipped", {**skip_body, "asked": committed1.time, "deadline_ms": 250})
        chosen1 = effective_verifiers(ranking1, skipped1, 3)
        votes1 = []
        for j, v in enumerate(chosen1):
            ok = j != 2
            value = VoteValue(
                ok,
                "prefill",
                0.0 if ok else 3.4375,
                1e-3 if ok else 1e-3 - 3.4375,
                "every token is consistent" if ok else "token is not the seeded sample: 3.438 below the best",
                None if ok else 4,
                fp,
            )
            votes1.append(sign(by_key[v], "Vote", NETWORK, value.vote_body(v, task1.id, result1.id)))
        cert1 = certify(KEYS["gateway"], NETWORK, task1, beacon1.body["root"], candidates, result1, votes1, skipped1)
        for v in votes1:
            append("VoteCast", {"vote": v.wire()})
        append("TaskFinalized", {"certificate": cert1.wire()})
        minority = votes1[2]
        append(
            "Evidence",
            {
                "kind": "minority_vote",
                "subject": minority.signer,
                "proof": {"certificate": cert1.wire(), "vote": minority.wire()},
            },
        )
        assignments.append(("text task, first-ranked verifier skipped", beacon1, task1, candidates, ranking1, skipped1))

        # Task 2: image; every verifier rejects the result (the worker altered a patch). The
        # verifier that missed its deadline is demoted: not a candidate while four others are.
        candidates2 = [k for k in candidates if k != skipped1[0]]
        beacon2 = commit()
        image_params = ImageParams(prompt="a red circle on a blue background", seed=3).to_dict()
        task2 = make_task("image", image_params, model, b"\x02" * 16)
        append(
            "TaskAccepted",
            {
                "task": task2.wire(),
                "beacon": beacon2.body["root"],
                "beacon_size": beacon2.body["size"],
                "candidates": candidates2,
            },
        )
        altered = pixels.copy()
        altered[8:24, 8:24] = 255 - altered[8:24, 8:24]
        ifp = {**image_fingerprint(altered, "phash"), "lib": IMAGE_LIB}
        result2 = make_result(
            task2, {"png_digest": blob_digest(png), "height": 32, "width": 32}, image_digest(altered), ifp
        )
        append("ResultCommitted", {"result": result2.wire()})
        ranking2 = rank(beacon2.body["root"], task2.id, candidates2, KEYS["worker"].public_key)
        chosen2 = effective_verifiers(ranking2, [], 3)
        own_fp = {**image_fingerprint(pixels, "phash_rgb"), "lib": IMAGE_LIB}
        dist = distance(own_fp, {**image_fingerprint(altered, "phash_rgb"), "lib": IMAGE_LIB})
        votes2 = [
            sign(
                by_key[v],
                "Vote",
                NETWORK,
                VoteValue(
                    False, "phash", dist, 8.0 - dist, f"perceptual distance {dist:.0f} exceeds 8", None, own_fp
                ).vote_body(v, task2.id, result2.id),
            )
            for v in chosen2
        ]
        cert2 = certify(KEYS["gateway"], NETWORK, task2, beacon2.body["root"], candidates2, result2, votes2, [])
        for v in votes2:
            append("VoteCast", {"vote": v.wire()})
        append("TaskFinalized", {"certificate": cert2.wire()})
        append(
            "Evidence",
            {"kind": "rejected_result", "subject": KEYS["worker"].public_key, "proof": {"certificate": cert2.wire()}},
        )
        assignments.append(("image task, nobody skipped", beacon2, task2, candidates2, ranking2, []))
        # The demoted verifier answers a health probe: restored. Task 3 lists every verifier again,
        # and fails (it expired with no result): its one terminal state.
        append("VerifierRestored", {"verifier": skipped1[0]})
        beacon3 = commit()
        task3 = make_task("text", text_params, model, b"\x03" * 16)
        body3 = {"beacon": beacon3.body["root"], "beacon_size": beacon3.body["size"], "candidates": candidates}
        append("TaskAccepted", {"task": task3.wire(), **body3})
        append("TaskFailed", {"task_id": task3.id, "reason": "expired", "detail": "no worker available"})
        with_worker = sorted(candidates + [KEYS["worker"].public_key])
        ranking3 = rank(beacon2.body["root"], task2.id, with_worker, KEYS["worker"].public_key)
        assignments.append(
            ("the worker is a candidate too: it never verifies itself", beacon2, task2, with_worker, ranking3, [])
        )

        # An equivocation: verifier4 signs two different entries at seq 2; the gateway stores
        # one and records both as evidence.
        v4 = KEYS["verifier4"]
        a = foreign(v4, "Commitment", {"size": 1, "root": merkle.root([merkle.leaf_hash(b"a")])})
        b = sign(
            v4,
            "LedgerEntry",
            NETWORK,
            {**a_body(a), "body": {"size": 1, "root": merkle.root([merkle.leaf_hash(b"b")])}},
        )
        append(
            "Evidence",
            {
                "kind": "equivocation",
                "subject": v4.public_key,
                "proof": {"a_payload": a.payload, "a_sig": a.sig, "b_payload": b.payload, "b_sig": b.sig},
            },
        )
        commit()
        led.close()
        report = audit_ledger(tmp / "ledger.db")
        assert report.ok and len(report.equivocations) == 1 and report.tasks_checked == 2, report.to_dict()
        heads = Ledger(tmp / "ledger.db", NETWORK).heads()

    msgs += [message_vector("text task", task1), message_vector("image task", task2)]
    msgs += [message_vector("text result", result1), message_vector("image result", result2)]
    msgs += [message_vector("accept vote", votes1[0]), message_vector("reject vote (prefill)", votes1[2])]
    msgs += [message_vector("reject vote (phash)", votes2[0])]
    msgs += [message_vector("accepting certificate", cert1), message_vector("rejecting certificate", cert2)]

    entries = [
        {
            "name": f"{e.type} {NAME_OF[e.feed]} #{e.seq}",
            "signer": NAME_OF[e.feed],
            "seq": e.seq,
            "prev": e.prev.hex(),
            "time": e.time,
            "type": e.type,
            "body": tj(e.body),
            "payload": e.payload.hex(),
            "sig": e.sig.hex(),
            "hash": e.hash.hex(),
        }
        for e in log
    ]
    ledger = {
        "owner": "gateway",
        "log": entries,
        "leaves": hexes([merkle.leaf_hash(leaf_data(e.feed, e.seq, e.hash)) for e in log]),
        "heads": [{"feed": f.hex(), "seq": s, "hash": h.hex()} for f, (s, h) in sorted(heads.items())],
    }
    assign_out = []
    for name, beacon, task, cands, ranking, skipped in assignments:
        keyed = [hashlib.sha256(domains.ASSIGN + beacon.body["root"] + task.id + v).hexdigest() for v in ranking]
        assign_out.append(
            {
                "name": name,
                "beacon": beacon.body["root"].hex(),
                "task_id": task.id.hex(),
                "candidates": hexes(cands),
                "worker": KEYS["worker"].public_key.hex(),
                "ranking": hexes(ranking),
                "sort_keys": keyed,
                "k": 3,
                "skipped": hexes(skipped),
                "effective": hexes(effective_verifiers(ranking, skipped, 3)),
            }
        )
    tallies = []
    vs = [v.public_key for v in verifiers]
    for name, votes, eff, k in (
        ("3 of 3 accept", {vs[0]: True, vs[1]: True, vs[2]: True}, vs[:3], 3),
        ("2 of 3 accept", {vs[0]: True, vs[1]: False, vs[2]: True}, vs[:3], 3),
        ("2 of 3 reject, one missing", {vs[0]: False, vs[1]: False}, vs[:3], 3),
        ("1 accept of 3 so far", {vs[0]: True}, vs[:3], 3),
        ("votes outside the effective set do not count", {vs[0]: True, vs[3]: True, vs[4]: True}, vs[:3], 3),
        ("3 of 5 accept", {vs[0]: True, vs[1]: True, vs[2]: True, vs[3]: False}, vs, 5),
        ("2 accept 2 reject of 5", {vs[0]: True, vs[1]: True, vs[2]: False, vs[3]: False}, vs, 5),
    ):
        t = tally(votes, eff, k)
        tallies.append(
            {
                "name": name,
                "k": k,
                "effective": hexes(eff),
                "votes": [{"verifier": v.hex(), "accept": a} for v, a in votes.items()],
                "decision": t.decision,
                "accepts": t.accepts,
                "rejects": t.rejects,
            }
        )
    hb = {f: sh for f, sh in heads.items()}
    gossip = {
        "heads": ledger["heads"],
        "heads_digest": heads_digest(hb).hex(),
        "bucket_count": 4,
        "buckets": [int.from_bytes(f[:4], "big") % 4 for f in sorted(hb)],
        "bucket_digests": hexes(bucket_digests(hb, 4)),
    }
    return {
        "messages": msgs,
        "ledger": ledger,
        "assignment": assign_out,
        "tally": tallies,
        "gossip_digests": gossip,
        "_task1": task1,
        "_result1": result1,
        "_log": log,
    }


def a_body(e: Entry) -> dict[str, Any]:
    return {"feed": e.feed, "seq": e.seq, "prev": e.prev, "time": e.time, "type": e.type}


def request_vectors(task: Signed, result: Signed, log: list[Entry]) -> list[dict[str, Any]]:
    calls = [
        ("client", "Gateway", "Submit", {"task": task.wire()}),
        ("client", "Gateway", "Status", {"task_id": task.id}),
        ("client", "Gateway", "Watch", {"task_id": task.id}),
        (
            "worker",
            "Gateway",
            "Join",
            {"entries": [[e.payload, e.sig] for e in log if e.feed == KEYS["worker"].public_key]},
        ),
        ("gateway", "Worker", "Execute", {"task": task.wire()}),
        (
            "gateway",
            "Verifier",
            "Check",
            {
                "task": task.wire(),
                "result": result.wire(),
                "output": b"",
                "beacon": hashlib.sha256(b"challenge").digest(),
                "beacon_size": 7,
                "sources": ["127.0.0.1:7001"],
            },
        ),
        ("gateway", "Blobs", "Manifest", {"digest": blob_digest(b"")}),
        ("gateway", "Blobs", "Fetch", {"digest": blob_digest(b""), "from_index": 0}),
    ]
    out = []
    for n, (signer, service, method, args) in enumerate(calls, start=1):
        req = make_request(signer, full_method(service, method), args, n)
        out.append(message_vector(f"request {service}/{method}", req))
    return out


# -- gossip session ----------------------------------------------------------------------------------


def session_vector() -> dict[str, Any]:
    client, server = KEYS["worker"], KEYS["gateway"]
    c_eph = nacl.public.PrivateKey(hashlib.sha256(b"trustgen vectors: client ephemeral").digest())
    s_eph = nacl.public.PrivateKey(hashlib.sha256(b"trustgen vectors: server ephemeral").digest())
    nonce = bytes(range(16))
    hello = sign(
        client,
        "Request",
        NETWORK,
        {
            "sender": client.public_key,
            "method": session.METHOD,
            "nonce": nonce,
            "time": T0,
            "args": {"eph": bytes(c_eph.public_key)},
        },
    )
    accept = sign(
        server,
        "GossipAccept",
        NETWORK,
        {"server": server.public_key, "client_nonce": nonce, "eph": bytes(s_eph.public_key)},
    )
    key = session._shared_key(c_eph, bytes(s_eph.public_key), hello.payload, accept.payload)
    assert key == session._shared_key(s_eph, bytes(c_eph.public_key), hello.payload, accept.payload)
    secret = nacl.bindings.crypto_scalarmult(bytes(c_eph), bytes(s_eph.public_key))
    feed = KEYS["verifier0"].public_key
    ops = [
        (True, pb.GossipOp(digest=hashlib.sha256(b"heads").digest())),
        (False, pb.GossipOp(heads=pb.Heads(same=True))),
        (True, pb.GossipOp(pull=pb.Range(feed=feed, from_seq=1, to_seq=2))),
        (False, pb.GossipOp(entries=pb.Entries())),
        (True, pb.GossipOp(have=pb.Have(items=[pb.Pos(feed=feed, seq=1, hash=b"\xab" * 8, feed_id=1)]))),
    ]
    sides = {True: session.Framer(key, client=True), False: session.Framer(key, client=False)}
    frames, counts = [], {True: 0, False: 0}
    for from_client, op in ops:
        frame = sides[from_client].seal(op)
        frames.append(
            {
                "from": "client" if from_client else "server",
                "direction": "C" if from_client else "S",
                "number": counts[from_client],
                "body": frame.body.hex(),
                "tag": frame.tag.hex(),
            }
        )
        counts[from_client] += 1
        assert sides[not from_client].open(frame) == op
    return {
        "client": "worker",
        "server": "gateway",
        "client_eph_private": bytes(c_eph).hex(),
        "client_eph_public": bytes(c_eph.public_key).hex(),
        "server_eph_private": bytes(s_eph).hex(),
        "server_eph_public": bytes(s_eph.public_key).hex(),
        "hello": message_vector("session hello", hello),
        "accept": message_vector("session accept", accept),
        "x25519_secret": secret.hex(),
        "transcript": (hashlib.sha256(hello.payload).digest() + hashlib.sha256(accept.payload).digest()).hex(),
        "session_key": key.hex(),
        "frames": frames,
    }


# -- training ----------------------------------------------------------------------------------------

DATASET = "sha256:" + hashlib.sha256(b"trustgen vectors: data set").hexdigest()


def tensor_list(ts: dict[str, torch.Tensor], raw: bool = False) -> list[dict[str, Any]]:
    """A tensor set as JSON, in name order: dtype, shape and the row-major values (and, with
    `raw`, the little-endian bytes the digest covers)."""
    out = []
    for name in sorted(ts):
        t = ts[name].contiguous()
        v: dict[str, Any] = {
            "name": name,
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "values": t.flatten().tolist(),
        }
        if raw:
            v["raw"] = t.reshape(-1).view(torch.uint8).numpy().tobytes().hex() if t.numel() else ""  # 0-dim too
        out.append(v)
    return out


def base_params() -> dict[str, torch.Tensor]:
    return {
        "h.0.w": torch.tensor([[0.5, -0.25, 1.0], [0.125, -2.0, 0.75]]),
        "h.0.b": torch.tensor([0.0, -0.5]),
    }


def inner_states(base: dict[str, torch.Tensor], k: int, steps: int) -> list[dict[str, torch.Tensor]]:
    """Inner states 1..steps of trainer k: fixed values in the layout of a real state (p/, m/, v/
    per parameter), chosen so that the int8 delta has no value on a rounding tie."""
    out = []
    for h in range(1, steps + 1):
        state = {}
        for n, p in base.items():
            step = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)
            delta = ((step + 1) ** 2 + 5 * k) * (h / 64) * (-1) ** k
            state["p/" + n] = p + delta
            state["m/" + n] = delta / 10
            state["v/" + n] = (delta / 10) ** 2
        out.append(state)
    return out


def scalar_vectors() -> list[dict[str, Any]]:
    """Per-sample values as computed (NaN, infinities and huge values among them), as signed
    (after spsa.finite) and the byte spsa.scalar gives them."""
    nan, inf = float("nan"), float("inf")
    cases = [
        ("the mean of four", [1.5, 0.75, 1.875, 0.875], 0.25),
        ("an exact sum, not a left-to-right one", [1e16, 1.0, -1e16, 1.0], 0.25),
        ("a NaN sample counts as 0", [nan, 0.5, 0.5, 0.5], 0.25),
        ("infinities and huge values clamp to 1e30 and cancel", [inf, -1e300, 2.5, 0.0], 0.25),
        ("one blown-up sample saturates the byte", [-inf, 1.0], 0.25),
        ("a tie rounds to even", [0.125, 0.125], 0.25),
        ("-0.0 stays -0.0", [-0.0], 0.25),
        ("a batch of eight", [0.3172, -1.204, 2.718281828, 0.1, -0.2, 0.3, 5e-324, -3.3], 0.05),
        ("a small value beside cancelling huge ones counts", [40.0, 1e29, -1e29], 0.25),
    ]
    out = []
    for name, raw, scale in cases:
        diffs = [spsa.finite(d) for d in raw]
        q = spsa.scalar(diffs, scale)
        if name.startswith("an exact sum"):
            assert spsa.quantise(sum(diffs) / len(diffs), scale) != q, "the vector must tell fsum from sum"
        out.append(
            {"name": name, "raw": [struct.pack(">d", d).hex() for d in raw], "diffs": diffs, "scale": scale, "q": q}
        )
    return out


def trimmed_k_vectors() -> list[dict[str, Any]]:
    """Values the trimmed mean cuts from each side, per trim, for trainer counts up to 64."""
    ns = [*range(1, 13), 20, 33, 64]
    return [
        {"trim": trim, "n": ns, "k": [aggregate.trimmed_k(n, trim) for n in ns]}
        for trim in (0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.34, 0.49)
    ]


F32 = np.float32
SCALE_MAX = float(F32(diloco.MAX_DELTA_ABS / diloco.QMAX))  # the largest binary32 scale a blob may carry
assert SCALE_MAX <= diloco.MAX_DELTA_ABS / diloco.QMAX < float(np.nextafter(F32(SCALE_MAX), F32(1e9)))


def delta_blob_vectors(base: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Delta blobs for the parameters `base` that a receiver accepts (with what they decode to)
    or refuses (with why): the bounds on scales and values, non-finite values, a wrong layout.
    Each is run through the node's diloco.decode_delta."""

    def f32(*v: float) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32)

    def i8(*v: int) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int8)

    w_q = i8(1, 0, -1, 2, -2, 127).reshape(2, 3)
    just_over = float(np.nextafter(F32(SCALE_MAX), F32(1e9)))
    over_1e6 = float(np.nextafter(F32(1e6), F32(2e6)))
    int8 = {"q/h.0.b": i8(127, -127), "s/h.0.b": f32(SCALE_MAX)[0], "q/h.0.w": w_q, "s/h.0.w": f32(0.5)[0]}
    flt = {"f/h.0.b": f32(1e6, -1e6), "f/h.0.w": f32(0.25, -0.0, 5e-45, 3.0, -1.5, 0.0).reshape(2, 3)}
    cases: list[tuple[str, str, dict[str, torch.Tensor], str | None]] = [
        ("int8: the largest scale (127 of it decodes to exactly 1e6)", "int8", int8, None),
        ("int8: a scale of -0.0 is a zero scale", "int8", {**int8, "s/h.0.w": f32(-0.0)[0]}, None),
        ("float32: values of ±1e6 and a subnormal", "float32", flt, None),
        ("int8: a negative scale", "int8", {**int8, "s/h.0.w": f32(-0.5)[0]}, "scale"),
        ("int8: the next binary32 scale above 1e6/127", "int8", {**int8, "s/h.0.b": f32(just_over)[0]}, "scale"),
        ("int8: a NaN scale", "int8", {**int8, "s/h.0.w": f32(math.nan)[0]}, "not_finite"),
        ("int8: an infinite scale", "int8", {**int8, "s/h.0.b": f32(math.inf)[0]}, "not_finite"),
        ("float32: a NaN value", "float32", {**flt, "f/h.0.b": f32(1.0, math.nan)}, "not_finite"),
        ("float32: a value of -infinity", "float32", {**flt, "f/h.0.b": f32(-math.inf, 1.0)}, "not_finite"),
        ("float32: the next binary32 above 1e6", "float32", {**flt, "f/h.0.b": f32(over_1e6, 0.0)}, "too_large"),
        ("int8: a scale missing", "int8", {k: v for k, v in int8.items() if k != "s/h.0.w"}, "layout"),
        ("int8: an extra tensor", "int8", {**int8, "q/h.0.c": i8(1)}, "layout"),
        ("int8: values of the wrong shape", "int8", {**int8, "q/h.0.w": w_q.reshape(3, 2)}, "layout"),
        (
            "int8: a scale stored as float64",
            "int8",
            {**int8, "s/h.0.w": torch.tensor(0.5, dtype=torch.float64)},
            "layout",
        ),
        ("float32: a blob in the int8 layout", "float32", int8, "layout"),
    ]
    # Which rule the node's decode_delta (and tensors.from_bytes under it) refuses a blob by.
    because = {
        "tensors missing": "layout",
        ", expected ": "layout",
        "non-finite": "not_finite",
        "negative or out of range": "scale",
        "not finite or exceeds": "too_large",
    }
    blobs = []
    for name, fmt, ts, reason in cases:
        blob = to_bytes(ts)
        v: dict[str, Any] = {"name": name, "format": fmt, "blob": blob.hex()}
        try:
            decoded = diloco.decode_delta(blob, base, fmt, "vector")
        except TensorError as e:
            got = [r for k, r in because.items() if k in str(e)]
            assert got == [reason], (name, str(e))
            v.update(accept=False, reason=reason)
        else:
            assert reason is None, f"the node accepts the refused blob {name!r}"
            v.update(accept=True, decoded=tensor_list(decoded))
        blobs.append(v)
    return {
        "params": [{"name": n, "dtype": "float32", "shape": list(base[n].shape)} for n in sorted(base)],
        "max_abs": diloco.MAX_DELTA_ABS,
        "blobs": blobs,
    }


def refused_spec_vectors(spsa_input: dict[str, Any], diloco_input: dict[str, Any]) -> list[dict[str, Any]]:
    """Job files (TOML) the node's spec parser refuses: each differs from a valid job in one place."""

    def toml(raw: dict[str, Any]) -> str:
        return "".join(
            f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()) for section, table in raw.items()
        )

    def text(v: Any) -> str:  # a TOML value
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(text(x) for x in v) + "]"
        return repr(v)

    def job(raw: dict[str, Any], section: str, change: dict[str, str]) -> str:
        tables = {s: {k: text(v) for k, v in t.items()} for s, t in raw.items()}
        tables[section] = {**tables[section], **change}
        return toml(tables)

    cases = [
        ("inner_steps above 4096", job(diloco_input, "algorithm", {"inner_steps": "4097"})),
        ("a NaN learning rate", job(spsa_input, "algorithm", {"lr": "nan"})),
        ("an infinite clipping radius", job(diloco_input, "algorithm", {"clip": "inf"})),
        ("an unknown field in [trainers]", job(spsa_input, "trainers", {"weights": "[1, 1, 1]"})),
        ("an unknown field in [data]", job(spsa_input, "data", {"shuffle": "true"})),
        ("a boolean where an int belongs", job(spsa_input, "algorithm", {"batch": "true"})),
        (
            "a trainer listed twice",
            job(diloco_input, "trainers", {"keys": text([KEYS["trainer0"].public_key.hex()] * 2)}),
        ),
    ]
    valid = from_dict(tomllib.loads(job(spsa_input, "algorithm", {})))
    assert valid.data == from_dict(spsa_input).data, "the TOML form of a vector job must be the same job"
    out = []
    for name, doc in cases:
        try:
            from_dict(tomllib.loads(doc))
        except UsageError:
            out.append({"name": name, "toml": doc})
        else:
            raise AssertionError(f"the node accepts the refused job file {name!r}")
    return out


def refused_job_vectors(spec_data: dict[str, Any]) -> list[dict[str, Any]]:
    """Validly signed TrainingJob messages whose spec a receiver refuses (the node's open_job):
    `invalid` (no job file gives it), `not_canonical` (the job file it comes from gives other
    bytes) or `wrong_network` (it names a network other than the one it is signed on)."""
    author = KEYS["author"]
    algo = spec_data["algorithm"]
    cases = [
        ("a float field signed as an int", {**spec_data, "algorithm": {**algo, "lr": 1}}, "not_canonical"),
        (
            "a field left out (its default not filled in)",
            {**spec_data, "algorithm": {k: v for k, v in algo.items() if k != "eval_every"}},
            "not_canonical",
        ),
        ("a spec version of 2", {**spec_data, "version": 2}, "invalid"),
        ("steps of 0", {**spec_data, "algorithm": {**algo, "steps": 0}}, "invalid"),
        ("trainer keys as hex text", {**spec_data, "trainers": [k.hex() for k in spec_data["trainers"]]}, "invalid"),
        (
            "a spec naming another network",
            {**spec_data, "job": {**spec_data["job"], "network": "trustgen-other"}},
            "wrong_network",
        ),
    ]
    because = {"is invalid": "invalid", "canonical form": "not_canonical", "but its spec names": "wrong_network"}
    out = []
    for name, spec, reason in cases:
        signed = sign(author, "TrainingJob", NETWORK, {"author": author.public_key, "spec": spec})
        try:
            open_job(signed.wire(), NETWORK)
        except MessageError as e:
            got = [r for k, r in because.items() if k in str(e)]
            assert got == [reason], (name, str(e))
        else:
            raise AssertionError(f"the node accepts the refused job {name!r}")
        out.append({"name": name, "signer": "author", "wire": signed.wire().hex(), "reason": reason})
    return out


def refused_update_vectors(spec: Any, params: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Validly signed SpsaUpdates that the coordinator and a replayer refuse when applied at a step
    (the node's SpsaState.apply), each with the code the replay reports."""
    t0, t1 = KEYS["trainer0"], KEYS["trainer1"]
    job_id = spec.id
    good = [1.2906, 0.7713, 2.0412, 0.8969]  # their byte is 5 at scale 0.25

    def update(who: Identity, step: int, q: int, diffs: list[Any]) -> Signed:
        return sign(
            who, "SpsaUpdate", NETWORK, {"trainer": who.public_key, "job": job_id, "step": step, "q": q, "diffs": diffs}
        )

    cases = [
        ("a byte its samples do not give", [update(t0, 0, 6, good)], "wrong_scalar"),
        ("three samples where the batch is four", [update(t0, 0, 5, good[:3])], "wrong_scalar"),
        ("a sample beyond ±1e30", [update(t0, 0, 127, [1e31, 1.0, 1.0, 1.0])], "wrong_scalar"),
        ("an int among the samples", [update(t0, 0, 5, [*good[:3], 1])], "wrong_scalar"),
        ("a byte of 128", [update(t0, 0, 128, [1e3] * 4)], "out_of_range"),
        ("an update for step 1 at step 0", [update(t0, 1, 5, good)], "wrong_step"),
        (
            "two updates from one trainer in one step",
            [update(t1, 0, 0, [0.0] * 4), update(t0, 0, 5, good), update(t0, 0, 0, [0.0] * 4)],
            "duplicate",
        ),
    ]
    z = {n: torch.zeros_like(p) for n, p in params.items()}
    out = []
    for name, ups, code in cases:
        state = SpsaState(spec, {n: p.clone() for n, p in params.items()}, step=0)
        try:
            state.apply(ups, z)
        except UpdateError as e:
            assert e.code == code, (name, e.code, str(e))
        else:
            raise AssertionError(f"the node applies the refused updates {name!r}")
        out.append(
            {
                "name": name,
                "step": 0,
                "updates": [{"signer": NAME_OF[u.signer], "body": tj(u.body), "wire": u.wire().hex()} for u in ups],
                "code": code,
            }
        )
    return out


def training_vectors(model: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    author = KEYS["author"]
    trainers = [KEYS[f"trainer{i}"] for i in range(3)]
    common = {
        "model": {"base": "tiny-text", "digest": model},
        "data": {"source": "stdlib-docs", "digest": DATASET, "block": 32, "heldout_permille": 250, "eval_windows": 3},
    }
    inputs = {
        "spsa job": {
            "job": {"name": "vectors-spsa", "network": NETWORK, "seed": 11},
            **common,
            "profile": {"threads": 2},
            # lr given as an integer: a float field takes an integer and stores it as a float
            "algorithm": {"name": "spsa", "steps": 3, "batch": 4, "lr": 1, "scale": 0.25, "eval_every": 1},
            "trainers": {"keys": [t.public_key.hex() for t in trainers]},
        },
        "diloco job": {
            "job": {"name": "vectors-diloco", "network": NETWORK},
            **common,
            "algorithm": {"name": "diloco", "rounds": 2, "inner_steps": 3, "batch": 2, "aggregator": "median"},
            "trainers": {"keys": [t.public_key.hex() for t in trainers[:2]]},
        },
    }
    msgs: list[dict[str, Any]] = []
    jobs, specs = [], {}
    for name, raw in inputs.items():
        spec = from_dict(raw)
        specs[name] = spec
        signed = sign_job(author, spec)
        msgs.append(message_vector(f"training {name}", signed))
        jobs.append(
            {
                "name": name,
                "input": raw,
                "spec": tj(spec.data),
                "canonical": spec.canonical_bytes().hex(),
                "id": spec.id.hex(),
                "message": f"training {name}",
            }
        )
    spsa_id, diloco_id = specs["spsa job"].id, specs["diloco job"].id

    splits = []
    for count, permille, eval_count in ((40, 250, 3), (24, 100, 8)):
        sp = tdata.split(DATASET, count, permille, eval_count)
        draws = [tdata._u64(tdata.SPLIT_DOMAIN + DATASET.encode() + struct.pack(">Q", i)) % 1000 for i in range(count)]
        splits.append(
            {
                "dataset_digest": DATASET,
                "count": count,
                "heldout_permille": permille,
                "eval_windows": eval_count,
                "draws": draws,
                "train": list(sp.train),
                "heldout": list(sp.heldout),
                "eval": list(sp.eval),
            }
        )
    train = splits[0]["train"]
    selects = []
    for job_id, step, t, batch in (
        (spsa_id, 0, 0, 4),
        (spsa_id, 1, 1, 4),
        (diloco_id, 5, 1, 2),
        (spsa_id, 2**40, 2, 8),
    ):
        key = trainers[t].public_key
        selects.append(
            {
                "job": job_id.hex(),
                "step": step,
                "trainer": key.hex(),
                "batch": batch,
                "train": train,
                "indices": tdata.select(job_id, step, key, batch, tuple(train)),
            }
        )
    seeds = []
    for step in (0, 1, 2, 2**32):
        head = hashlib.sha256(spsa.Z_DOMAIN + spsa_id + struct.pack(">Q", step)).digest()
        seed = int.from_bytes(head[:8], "big") >> 1
        # what spsa.direction seeds torch's generator with
        g = torch.Generator().manual_seed(seed)
        assert g.initial_seed() == seed
        seeds.append({"job": spsa_id.hex(), "step": step, "seed": seed})
    quant = []
    for g, scale in (
        (0.0, 0.25),
        (-0.0, 0.25),
        (0.3, 0.25),
        (0.125, 0.25),
        (0.375, 0.25),
        (0.625, 0.25),
        (-0.625, 0.25),
        (31.6, 0.25),
        (31.9, 0.25),
        (-1e300, 0.25),
        (5e-324, 0.25),
        (float("nan"), 0.25),
        (-3.0e-4, 1e-4),
        (float("inf"), 0.25),
        (float("-inf"), 0.25),
        (1e308, 1e-9),  # g / scale overflows to infinity: saturates like any out-of-range value
        (126.5 * 0.25, 0.25),  # a tie below the bound rounds to even (126), not up to the bound
    ):
        quant.append({"g": struct.pack(">d", g).hex(), "scale": scale, "q": spsa.quantise(g, scale)})
    scalars = scalar_vectors()

    base = base_params()
    mixed = {
        "z": torch.tensor([[1.5, -2.0], [0.1, 3.0e38]]),
        "a.weight": torch.tensor([0.1, -0.0, 5e-324], dtype=torch.float64),
        "é": torch.tensor([-128, -1, 0, 127], dtype=torch.int8),
        "empty": torch.zeros(0),
        "ids": torch.tensor([-(2**63), 2**63 - 1], dtype=torch.int64),
        "half": torch.tensor([0.5, 65504.0], dtype=torch.float16),
        "bf": torch.tensor([1.0, -0.5], dtype=torch.bfloat16),
    }
    zero_dim = {"loss": torch.tensor(2.5), "count": torch.tensor(-3, dtype=torch.int64)}
    states = {k: inner_states(base, k, 3) for k in range(2)}
    digests = [
        {"name": "tensor set", "domain": "TENSORS", "tensors": tensor_list(mixed, raw=True), "digest": mixed},
        {"name": "no tensors", "domain": "TENSORS", "tensors": [], "digest": {}},
        {
            "name": "0-dimensional tensors",
            "domain": "TENSORS",
            "tensors": tensor_list(zero_dim, raw=True),
            "digest": zero_dim,
        },
        {"name": "checkpoint", "domain": "TRAIN_CHECKPOINT", "tensors": tensor_list(base, raw=True), "digest": base},
        {
            "name": "inner state",
            "domain": "TRAIN_INNER_STATE",
            "step": 2,
            "tensors": tensor_list(states[0][1], raw=True),
            "digest": states[0][1],
        },
    ]
    for d in digests:
        ts = d["digest"]
        if d["domain"] == "TRAIN_CHECKPOINT":
            d["digest"] = checkpoint_digest(ts).hex()
        elif d["domain"] == "TRAIN_INNER_STATE":
            d["digest"] = diloco.state_digest(ts, d["step"]).hex()
        else:
            d["digest"] = tensor_digest(ts).hex()

    # -- signed updates, a local-SGD round, checkpoints
    spsa_spec = specs["spsa job"]
    spsa_ups = []
    # Each trainer's per-sample values (batch 4): trainer1 had a sample whose loss blew up (its
    # value saturated to -DMAX by spsa.finite), which saturates its byte.
    for t, diffs, want in zip(
        trainers,
        ([1.2906, 0.7713, 2.0412, 0.8969], [-spsa.DMAX, 0.42, -3.75, 0.0], [0.0625, -0.1171875, 0.0302, -0.0041]),
        (5, -127, 0),
    ):
        q = spsa.scalar(diffs, spsa_spec.algorithm["scale"])
        assert q == want, (q, want)
        body = {"trainer": t.public_key, "job": spsa_id, "step": 0, "q": q, "diffs": diffs}
        u = sign(t, "SpsaUpdate", NETWORK, body)
        assert check_arithmetic(spsa_spec, u) is None, "the node's verifier rejects a vector's arithmetic"
        spsa_ups.append(u)
    for t, u in zip(trainers, spsa_ups):
        msgs.append(message_vector(f"spsa update {NAME_OF[t.public_key]}", u))
    hp = specs["diloco job"].algorithm
    rnd, inner = 0, hp["inner_steps"]
    round_trainers, delta_ups = [], []
    for k in range(2):
        t = trainers[k]
        final = states[k][-1]
        delta = diloco.delta_of(final, base)
        blob = diloco.encode_delta(delta, "int8")
        for d in delta.values():
            ratio = (d / (float(d.abs().max()) / diloco.QMAX)).double()
            assert float((ratio - ratio.floor() - 0.5).abs().min()) > 1e-3, "a delta value sits on a rounding tie"
        body = {
            "trainer": t.public_key,
            "job": diloco_id,
            "round": rnd,
            "base": checkpoint_digest(base),
            "delta": hashlib.sha256(blob).digest(),
            "states": [diloco.state_digest(st, h) for h, st in enumerate(states[k], 1)],
        }
        u = sign(t, "DeltaUpdate", NETWORK, body)
        delta_ups.append(u)
        msgs.append(message_vector(f"delta update {NAME_OF[t.public_key]}", u))
        round_trainers.append(
            {
                "trainer": NAME_OF[t.public_key],
                "message": f"delta update {NAME_OF[t.public_key]}",
                "states": [tensor_list(st) for st in states[k]],
                "state_digests": hexes(body["states"]),
                "delta": tensor_list(delta),
                "blob": blob.hex(),
                "blob_digest": body["delta"].hex(),
                "decoded": tensor_list(diloco.decode_delta(blob, base, "int8", "vector")),
            }
        )
    in_order = by_trainer(delta_ups)
    round_id = updates_digest(in_order)
    f32_delta = diloco.delta_of(states[0][-1], base)
    f32_blob = diloco.encode_delta(f32_delta, "float32")
    round_vec = {
        "job": diloco_id.hex(),
        "round": rnd,
        "inner_steps": inner,
        "delta_format": hp["delta_format"],
        "base": tensor_list(base),
        "base_digest": checkpoint_digest(base).hex(),
        "trainers": round_trainers,
        "updates_in_order": [f"delta update {NAME_OF[u.signer]}" for u in in_order],
        "updates_digest": round_id.hex(),
        "challenges": [
            {"trainer": NAME_OF[u.signer], "inner": diloco.challenge(diloco_id, rnd, u.signer, round_id, inner)}
            for u in in_order
        ],
        "float32_blob": {
            "trainer": "trainer0",
            "blob": f32_blob.hex(),
            "decoded": tensor_list(diloco.decode_delta(f32_blob, base, "float32", "vector")),
        },
    }
    checkpoints = []
    for name, job_id, step, updates, loss in (
        ("training checkpoint (diloco, step 0)", diloco_id, 0, [], 3.375),
        ("training checkpoint (spsa, step 1)", spsa_id, 1, by_trainer(spsa_ups), 3.25),
    ):
        cp = sign(
            author,
            "TrainingCheckpoint",
            NETWORK,
            {
                "publisher": author.public_key,
                "job": job_id,
                "step": step,
                "digest": checkpoint_digest(base),
                "updates": updates_digest(updates),
                "heldout_loss": loss,
            },
        )
        msgs.append(message_vector(name, cp))
        checkpoints.append(
            {
                "message": name,
                "tensors": "checkpoint",
                "updates": [
                    f"{'spsa' if u.type == 'SpsaUpdate' else 'delta'} update {NAME_OF[u.signer]}" for u in updates
                ],
            }
        )
    net_round, net_msgs = network_round_vectors(specs["diloco job"], in_order, round_id)
    msgs.extend(net_msgs)
    updates_out = [
        {"name": "no updates", "ids": [], "digest": updates_digest([]).hex()},
        {
            "name": "the spsa updates of step 0, in trainer key order",
            "ids": hexes([u.id for u in by_trainer(spsa_ups)]),
            "digest": updates_digest(by_trainer(spsa_ups)).hex(),
        },
        {"name": "the round's delta updates", "ids": hexes([u.id for u in in_order]), "digest": round_id.hex()},
    ]
    return (
        {
            "jobs": jobs,
            "split": splits,
            "select": selects,
            "spsa_seed": seeds,
            "quantise": quant,
            "scalar": scalars,
            "tensor_digests": digests,
            "round": round_vec,
            "network_round": net_round,
            "updates_digests": updates_out,
            "checkpoints": checkpoints,
            "trimmed_k": trimmed_k_vectors(),
            "delta_blobs": delta_blob_vectors(base),
            "refused_specs": refused_spec_vectors(inputs["spsa job"], inputs["diloco job"]),
            "refused_jobs": refused_job_vectors(specs["spsa job"].data),
            "refused_updates": refused_update_vectors(spsa_spec, base),
        },
        msgs,
    )


def network_round_vectors(spec: Any, in_order: list[Signed], rid: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Round 0 of the diloco job on the network (docs/protocol.md §15.7): round targets, the
    verifier ranking with the round's beacon, check coins, one verifier's UpdateCheck and its
    CheckpointVote, and the strict-majority decisions of three checks."""
    job_id, hp = spec.id, spec.algorithm
    beacon = hashlib.sha256(b"vectors: the beacon of round 0").digest()
    candidates = sorted(KEYS[f"verifier{i}"].public_key for i in range(5))
    targets = [{"job": job_id.hex(), "round": r, "target": round_target(job_id, r).hex()} for r in (0, 1, 2**40)]
    ranking = rank(beacon, round_target(job_id, 0), candidates)
    skipped = [ranking[1]]
    eff = effective_verifiers(ranking, skipped, 3)
    coins = []
    for p in (0.5, 0.0, 1.0, 0.25):
        for u in in_order:
            h = hashlib.sha256(domains.TRAIN_CHECK_COIN + job_id + struct.pack(">Q", 0) + u.signer + rid).digest()
            draw = int.from_bytes(h[:8], "big")
            coins.append(
                {
                    "job": job_id.hex(),
                    "round": 0,
                    "trainer": NAME_OF[u.signer],
                    "updates_digest": rid.hex(),
                    "probability": p,
                    "draw": draw,
                    "checked": check_coin(job_id, 0, u.signer, rid, p),
                }
            )
    assert hp["check_probability"] == 0.5
    inner = challenges(spec, 0, in_order)
    # Three verifiers' verdicts on the two updates: all accept the first; the second is rejected
    # by two of three (a strict majority of k = 3), so the round accepts only the first.
    msgs, checks = [], []
    for n, v in enumerate(eff):
        name = NAME_OF[v]
        verdicts = [
            Verdict(in_order[0].id, True, "", inner[in_order[0].id], 0.0001220703125, "").to_list(),
            Verdict(
                in_order[1].id,
                n == 2,
                "" if n == 2 else "failed_check",
                inner[in_order[1].id],
                0.0001220703125 if n == 2 else 0.75,
                "" if n == 2 else "the re-executed step is 0.75 of a step from the committed state",
            ).to_list(),
        ]
        verdicts.sort(key=lambda x: x[0])  # as the reference verifier orders them: by update id
        body = {"verifier": v, "job": job_id, "round": 0, "beacon": beacon, "verdicts": verdicts}
        c = sign(KEYS[name], "UpdateCheck", NETWORK, body)
        checks.append(c)
        msgs.append(message_vector(f"update check {name}", c))
    decisions = round_decisions(in_order, checks, eff, 3)
    vote_body = {
        "verifier": eff[0],
        "job": job_id,
        "round": 0,
        "digest": hashlib.sha256(b"vectors: a checkpoint digest").digest(),
        "state": hashlib.sha256(b"vectors: a state blob address").hexdigest(),
        "accept": True,
        "reason": "",
    }
    msgs.append(
        message_vector(
            f"checkpoint vote {NAME_OF[eff[0]]}", sign(KEYS[NAME_OF[eff[0]]], "CheckpointVote", NETWORK, vote_body)
        )
    )
    # SPSA on the network: step targets (their own tag) and each update's sampled challenge.
    step_targets = [
        {"job": job_id.hex(), "step": t, "target": spsa_rounds.step_target(job_id, t).hex()} for t in (0, 1, 2**40)
    ]
    samples = [
        {
            "job": job_id.hex(),
            "step": t,
            "trainer": NAME_OF[u.signer],
            "updates_digest": rid.hex(),
            "probability": p,
            "batch": 8,
            "challenge": spsa_rounds.challenge(job_id, t, u.signer, rid, p, 8),
        }
        for t in (0, 7)
        for p in (0.5, 1.0)
        for u in in_order
    ]
    vec = {
        "spsa_step_targets": step_targets,
        "spsa_samples": samples,
        "round_targets": targets,
        "assignment": {
            "job": job_id.hex(),
            "round": 0,
            "beacon": beacon.hex(),
            "candidates": [NAME_OF[c] for c in candidates],
            "ranking": [NAME_OF[c] for c in ranking],
            "skipped": [NAME_OF[c] for c in skipped],
            "k": 3,
            "effective": [NAME_OF[c] for c in eff],
        },
        "check_coins": coins,
        "updates": [f"delta update {NAME_OF[u.signer]}" for u in in_order],
        "checks": [f"update check {NAME_OF[v]}" for v in eff],
        "decisions": [decisions[u.id] for u in in_order],
    }
    assert vec["decisions"] == ["accept", "reject"], vec["decisions"]
    return vec, msgs


# -- payloads a receiver must refuse ------------------------------------------------------------------


def refused_vectors() -> list[dict[str, Any]]:
    """Validly signed payloads that are not valid messages: each is refused by the node's
    open_payload with the code given (and must be by every implementation)."""
    t0 = KEYS["trainer0"]
    spsa_body = {"trainer": t0.public_key, "job": b"\x07" * 32, "step": 0, "q": 5, "diffs": [1.0, 1.5]}
    without_diffs = {k: v for k, v in spsa_body.items() if k != "diffs"}  # the SpsaUpdate of before diffs
    cp_body = {
        "publisher": KEYS["author"].public_key,
        "job": b"\x07" * 32,
        "step": 1,
        "digest": b"\x08" * 32,
        "updates": b"\x09" * 32,
        "heldout_loss": 3,
    }
    cases = [
        ("version encoded as true", "SpsaUpdate", ["SpsaUpdate", NETWORK, True, spsa_body], "malformed"),
        ("version encoded as the float 1.0", "SpsaUpdate", ["SpsaUpdate", NETWORK, 1.0, spsa_body], "malformed"),
        ("version 2", "SpsaUpdate", ["SpsaUpdate", NETWORK, 2, spsa_body], "unsupported_version"),
        ("another network", "SpsaUpdate", ["SpsaUpdate", "trustgen-other", 1, spsa_body], "wrong_network"),
        ("opened as another type", "DeltaUpdate", ["SpsaUpdate", NETWORK, 1, spsa_body], "wrong_type"),
        (
            "an int field encoded as true",
            "SpsaUpdate",
            ["SpsaUpdate", NETWORK, 1, {**spsa_body, "step": True}],
            "malformed",
        ),
        (
            "a float field encoded as an int",
            "TrainingCheckpoint",
            ["TrainingCheckpoint", NETWORK, 1, cp_body],
            "malformed",
        ),
        ("an unknown field", "SpsaUpdate", ["SpsaUpdate", NETWORK, 1, {**spsa_body, "extra": 0}], "malformed"),
        ("a header of five elements", "SpsaUpdate", ["SpsaUpdate", NETWORK, 1, spsa_body, None], "malformed"),
        ("a missing field (no diffs)", "SpsaUpdate", ["SpsaUpdate", NETWORK, 1, without_diffs], "malformed"),
    ]
    out = []
    for name, open_as, header, code in cases:
        signer = KEYS["author"] if header[0] == "TrainingCheckpoint" else t0
        payload = domains.SIGNED_MAGIC + encode(header)
        sig = signer.sign(payload)
        try:
            open_payload(payload, sig, open_as, NETWORK)
        except MessageError as e:
            assert e.code == code, (name, e.code, e)
        else:
            raise AssertionError(f"the node accepted the refused vector {name!r}")
        out.append(
            {
                "name": name,
                "open_as": open_as,
                "signer": NAME_OF[signer.public_key],
                "payload": payload.hex(),
                "sig": sig.hex(),
                "code": code,
            }
        )
    return out


# -- the file --------------------------------------------------------------------------------------


def trajectory_vectors(task: Signed) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The challenge and audit-draw rules (docs/protocol.md §17), and a trajectory-committing
    image Result with a trajectory Vote whose steps are the challenge of its beacon."""
    challenges = []
    for i, (n, c) in enumerate(((1, 2), (2, 2), (6, 2), (20, 2), (20, 4), (50, 3))):
        beacon, root = hashlib.sha256(b"beacon %d" % i).digest(), hashlib.sha256(b"root %d" % i).digest()
        digest = "sha256:" + hashlib.sha256(b"image %d" % i).hexdigest()
        chosen = tchallenge.challenge(beacon, root, digest, n, c)
        challenges.append(
            {"beacon": beacon.hex(), "root": root.hex(), "output_digest": digest, "steps": n, "c": c, "chosen": chosen}
        )
    draws = []
    for i in range(6):
        beacon, tid = hashlib.sha256(b"draw %d" % i).digest(), hashlib.sha256(b"task %d" % i).digest()
        for f in (0.1, 0.5):
            draws.append(
                {
                    "beacon": beacon.hex(),
                    "task_id": tid.hex(),
                    "fraction": f,
                    "regenerate": tchallenge.audit_draw(beacon, tid, f),
                }
            )
    digest = "sha256:" + hashlib.sha256(b"trajectory image").hexdigest()
    commit = {"scheme": tchallenge.SCHEME, "root": hashlib.sha256(b"trajectory root").hexdigest(), "steps": 20}
    commit["blob"] = blob_digest(b"trajectory tensors")
    output = {"png_digest": blob_digest(b"png"), "height": 32, "width": 32, "trajectory": commit}
    result = make_result(task, output, digest, {})
    beacon = next(
        b
        for b in (hashlib.sha256(b"challenge %d" % i).digest() for i in range(100))
        if not tchallenge.audit_draw(b, task.id)
    )
    steps = tchallenge.challenge(beacon, bytes.fromhex(commit["root"]), digest, 20, tchallenge.CHECKS)
    checks = {
        "beacon": beacon,
        "beacon_size": 42,
        "steps": steps,
        "output_rel_l2": [0.0] * len(steps),
        "chain_rel_l2": 0.0,
        "pixel_distance": 0.0,
    }
    vid = KEYS["verifier1"].public_key
    value = VoteValue(True, "trajectory", 0.0, 0.0, "steps re-executed: bit-identical", None, {}, {}, checks)
    vote = sign(KEYS["verifier1"], "Vote", NETWORK, value.vote_body(vid, task.id, result.id))
    msgs = [message_vector("trajectory Result", result), message_vector("trajectory Vote", vote)]
    doc = {
        "checks": tchallenge.CHECKS,
        "audit_fraction": tchallenge.AUDIT_FRACTION,
        "challenges": challenges,
        "audit_draws": draws,
        "vote": {"result": result.wire().hex(), "vote": vote.wire().hex()},
    }
    return doc, msgs


def build() -> dict[str, Any]:
    pixels = test_image()
    png = png_stored(pixels)
    outputs = output_vectors(pixels, png)
    model = outputs["model_manifest"]["digest"]
    scen = scenario(pixels, png, model)
    requests = request_vectors(scen["_task1"], scen["_result1"], scen["_log"])
    training, training_msgs = training_vectors(model)
    trajectory, trajectory_msgs = trajectory_vectors(scen["_task1"])
    return {
        "about": "Test vectors for docs/protocol.md, written by scripts/make_protocol_vectors.py from the node's own "
        "code; scripts/check_protocol_vectors.py re-derives every one from this file alone.",
        "conventions": {
            "hex": "byte strings are lowercase hex",
            "values": "signed values are tagged JSON: null, true, false; a number with a point or exponent is a "
            "float (IEEE-754 double), without one an int (int64); a string is a str; an array is a list; "
            'an object with the single key "$bytes" is a byte string (its value in hex); any other object is a map',
            "keys": "each key is the Ed25519 key whose 32-byte seed is the given byte repeated 32 times",
        },
        "network": NETWORK,
        "domains": {name: tag.hex() for name, tag in domains.ALL.items()},
        "keys": {
            name: {"seed": (bytes([b]) * 32).hex(), "public": KEYS[name].public_key.hex()}
            for name, b in KEY_SEEDS.items()
        },
        "encoding": encoding_vectors(),
        "messages": scen["messages"] + requests + training_msgs + admission_vectors() + trajectory_msgs,
        "refused": refused_vectors(),
        "ledger": scen["ledger"],
        "merkle": merkle_vectors(),
        "assignment": scen["assignment"],
        "tally": scen["tally"],
        "session": session_vector(),
        "gossip_digests": scen["gossip_digests"],
        "sampling": sampling_vectors(),
        "outputs": outputs,
        "fingerprints": fingerprint_vectors(pixels),
        "training": training,
        "trajectory": trajectory,
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args()
    args.out.write_text(render(build()), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
