"""The per-task fixed costs cut for network throughput (issue 17): each saving keeps its check.

Signature verification cache, the offset decoder, fewer durable transactions (gossip batches,
the gateway's per-task appends), hash-only lookups and type-filtered followers, the MinHash
permutation cache, and the opt-in node profiler the figures come from.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest

from trustgen.consensus import identity as ident_mod
from trustgen.consensus import liveness
from trustgen.consensus.admission import AdmissionState
from trustgen.consensus.encoding import EncodingError, decode, encode
from trustgen.consensus.identity import Identity, verify
from trustgen.consensus.ledger import ENTRY_SCHEMAS, Ledger
from trustgen.consensus.reputation import Reputation
from trustgen.gossip.membership import Membership
from trustgen.gossip.replica import Replica
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.verifier import fingerprints

NET = "trustgen-test"


# -- the signature cache (consensus/identity.py) --------------------------------------------------


def test_cached_digest_does_not_admit_a_forged_signature() -> None:
    """The cache remembers (key, digest, signature) triples: a verified message does not make
    another signature over it, another signer's claim, or another message pass."""
    a, b = Identity.generate(), Identity.generate()
    msg = b"trustgen cache probe " + os.urandom(8)
    sig = a.sign(msg)
    assert verify(a.public_key, msg, sig)
    assert verify(a.public_key, msg, sig)  # now from the cache
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify(a.public_key, msg, forged)
    assert not verify(b.public_key, msg, sig)  # same digest and signature, another key
    assert not verify(a.public_key, msg + b"!", sig)  # same key and signature, another message
    assert not verify(a.public_key, msg, b.sign(msg))
    assert not verify(a.public_key[:31], msg, sig) and not verify(a.public_key, msg, sig[:63])


def test_signature_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ident_mod, "_CACHE_MAX", 8)
    monkeypatch.setattr(ident_mod, "_VERIFIED", type(ident_mod._VERIFIED)())
    me = Identity.generate()
    msgs = [os.urandom(16) for _ in range(20)]
    for m in msgs:
        assert verify(me.public_key, m, me.sign(m))
    assert len(ident_mod._VERIFIED) == 8
    assert verify(me.public_key, msgs[0], me.sign(msgs[0]))  # evicted: checked again, still valid


# -- the offset decoder (consensus/encoding.py) ---------------------------------------------------


def _value(rng: random.Random, depth: int = 0) -> object:
    kinds = ["none", "bool", "int", "float", "bytes", "str"] + (["list", "dict"] if depth < 4 else [])
    k = rng.choice(kinds)
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "int":
        return rng.randrange(-(2**63), 2**63)
    if k == "float":
        return rng.uniform(-1e6, 1e6)
    if k == "bytes":
        return rng.randbytes(rng.randrange(40))
    if k == "str":
        return "".join(rng.choice("aé€z\u2603") for _ in range(rng.randrange(12)))
    if k == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {f"k{rng.randrange(1000)}": _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_decoder_round_trips_and_refuses_every_truncation_and_extension() -> None:
    rng = random.Random(17)
    for _ in range(200):
        v = _value(rng)
        data = encode(v)
        assert decode(data) == v and encode(decode(data)) == data
        assert type(decode(bytearray(data))) is type(v)  # bytes come back as bytes, whatever came in
        for cut in range(len(data)):
            with pytest.raises(EncodingError):
                decode(data[:cut])
        with pytest.raises(EncodingError, match="trailing"):
            decode(data + b"\x00")


def test_decoder_refuses_non_canonical_forms() -> None:
    for bad in (
        b"\x08\x00\x00\x00\x02\x06\x00\x00\x00\x01b\x00\x06\x00\x00\x00\x01a\x00",  # keys unsorted
        b"\x08\x00\x00\x00\x02\x06\x00\x00\x00\x01a\x00\x06\x00\x00\x00\x01a\x00",  # duplicate key
        b"\x08\x00\x00\x00\x01\x05\x00\x00\x00\x01a\x00",  # key not a string
        b"\x04\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
        b"\x06\x00\x00\x00\x01\xff",  # invalid UTF-8
        b"\x05\xff\xff\xff\xff",  # length over MAX_LEN
        b"\x09",  # unknown tag
        b"\x07\x00\x00\x00\x01" * 40 + b"\x00",  # nesting too deep
    ):
        with pytest.raises(EncodingError):
            decode(bad)


# -- fewer durable transactions, lighter lookups (ledger, gossip replica, gateway followers) -------


def _feed(tmp: pathlib.Path, n: int) -> tuple[Identity, list[tuple[bytes, bytes]]]:
    me = Identity.generate()
    src = Ledger(tmp / "src.db", NET, me)
    for i in range(n):
        src.append("TaskFailed", {"task_id": bytes([i]) * 32, "reason": "expired", "detail": ""})
    return me, src.entries(me.public_key)


def test_gossip_batch_is_one_transaction_and_still_checks_each_entry(tmp_path: pathlib.Path) -> None:
    me, rows = _feed(tmp_path, 4)
    sink = Ledger(tmp_path / "sink.db", NET, Identity.generate())
    replica = Replica(sink.identity, sink, Peers(sink.identity, NET, insecure=True), Membership(b"x" * 32))
    commits = []
    sink.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    forged = pb.Entry(payload=rows[1][0], sig=bytes(64))
    batch = [pb.Entry(payload=rows[0][0], sig=rows[0][1]), forged] + [pb.Entry(payload=p, sig=s) for p, s in rows[1:]]
    sender = Identity.generate().public_key
    counts = replica.ingest(batch, sender)
    assert counts == {"stored": 4, "duplicate": 0, "equivocation": 0, "refused": 1}
    assert commits == ["COMMIT"]  # one fsync for the batch, not one per entry
    assert sink.head(me.public_key)[0] == 4 and [r[1] for r in sink.entries(me.public_key)] == [r[1] for r in rows]
    assert replica.members.strikes.get(sender) == 1  # the forged entry still costs its sender a strike


def test_hash_at_and_type_filters(tmp_path: pathlib.Path) -> None:
    me, rows = _feed(tmp_path, 3)
    led = Ledger(tmp_path / "src.db", NET, me)
    led.append("VerifierRestored", {"verifier": b"v" * 32})
    assert led.hash_at(me.public_key, 2) == led.get(me.public_key, 2).hash  # type: ignore[union-attr]
    assert led.hash_at(me.public_key, 9) is None
    assert [e.type for e in led.iter_entries(types=("VerifierRestored",))] == ["VerifierRestored"]
    assert len(list(led.iter_entries(types=("TaskFailed", "VerifierRestored")))) == 4
    assert [e.seq for e in led.iter_entries(since=1, entry_type="TaskFailed")] == [2, 3]


def test_reputation_fed_types_name_every_entry_type_it_reads() -> None:
    """The gateway feeds its reputation only Reputation.FED_TYPES: every entry type named in the
    code that reads entries (reputation, admission, liveness) must be in it."""
    sources = "".join(inspect.getsource(x) for x in (Reputation, AdmissionState.add, liveness.Unresponsive))
    named = {t for t in re.findall(r'"([A-Z][A-Za-z]+)"', sources) if t in ENTRY_SCHEMAS}
    assert named and named <= set(Reputation.FED_TYPES)


# -- the MinHash permutation cache (verifier/fingerprints.py) -------------------------------------


def test_minhash_permutations_cached_read_only_and_unchanged() -> None:
    import datasketch

    ids = list(range(3, 70))
    fresh = datasketch.MinHash(num_perm=128, seed=1, scheme=fingerprints.MINHASH_SCHEME, hashfunc=fingerprints._hash64)
    fresh.update_batch(fingerprints.shingles(ids, 3))
    fp = fingerprints.text_fingerprint(ids)
    assert fp["minhash"] == fresh.hashvalues.astype("<u8").tobytes().hex()
    perms = fingerprints._permutations(128, 1, fingerprints.MINHASH_SCHEME)
    assert perms is fingerprints._permutations(128, 1, fingerprints.MINHASH_SCHEME)
    with pytest.raises(ValueError):
        perms[0, 0] = 0
    assert fingerprints.minhash_from(fp).jaccard(fresh) == 1.0
    for seed in range(40):  # seeds come from fingerprint records: the cache stays bounded
        fingerprints._permutations(4, seed, fingerprints.MINHASH_SCHEME)
    assert fingerprints._cached_permutations.cache_info().currsize <= 16
    # A record's num_perm is the peer's: large ones are drawn each time, never pinned in the cache.
    before = fingerprints._cached_permutations.cache_info()
    big = fingerprints.MAX_CACHED_PERM + 1
    assert fingerprints._permutations(big, 7, fingerprints.MINHASH_SCHEME) is None
    assert fingerprints._cached_permutations.cache_info() == before
    record = fingerprints.text_fingerprint(ids, num_perm=big)
    assert fingerprints.minhash_from(record).jaccard(fingerprints.minhash(ids, num_perm=big)) == 1.0


# -- the opt-in profiler (node/profiling.py) ------------------------------------------------------


def test_profiler_covers_threads_and_clears_on_signal(tmp_path: pathlib.Path) -> None:
    code = """
import os, pstats, signal, threading
from trustgen.node import profiling
assert profiling.install()
def before(): return sum(i * i for i in range(20000))
def during(): return sum(i * i for i in range(20000))
before()
os.kill(os.getpid(), signal.SIGUSR1)
t = threading.Thread(target=during); t.start(); t.join()
os.kill(os.getpid(), signal.SIGUSR2)
names = {k[2] for k in pstats.Stats(f"{os.environ['TRUSTGEN_PROFILE_DIR']}/{os.getpid()}.prof").stats}
print("during" in names, "before" in names)
"""
    env = {**os.environ, "TRUSTGEN_PROFILE_DIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]  # the thread's work is in, the work before the clear is not


# -- a message's id and wire form, computed once (consensus/messages.py) -------------------------


def test_signed_id_and_wire_are_computed_once_and_follow_the_payload() -> None:
    import dataclasses

    from trustgen.consensus.messages import message_id, open_wire, sign

    me = Identity.generate()
    body = {"sender": me.public_key, "method": "m", "nonce": os.urandom(16), "time": 1, "args": {}}
    msg = sign(me, "Request", NET, body)
    assert msg.wire() is msg.wire() and msg.id is msg.id
    assert msg.id == message_id(msg.payload) and open_wire(msg.wire(), "Request", NET) == msg
    other = sign(me, "Request", NET, body | {"nonce": os.urandom(16)})
    moved = dataclasses.replace(msg, payload=other.payload, sig=other.sig)
    assert moved.id == other.id and moved.wire() == other.wire() != msg.wire()
