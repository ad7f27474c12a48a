"""A second implementation of the trustgen protocol (docs/protocol.md), written from the document
and not from the node's code: it imports nothing from trustgen, only the standard library and
PyNaCl. It re-derives every vector in docs/protocol_vectors.json from the file alone and exits 1
naming the first vector that does not match.

python scripts/check_protocol_vectors.py [VECTORS.json]
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import struct
import sys
import tomllib
import zlib
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing

DEFAULT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol_vectors.json"

# Domain tags (docs/protocol.md, "Domain tags").
DOMAINS = {
    "SIGNED_MAGIC": b"TGv1",
    "MESSAGE_ID": b"trustgen/id/v1\x00",
    "ENTRY_HASH": b"trustgen/entry/v1\x00",
    "MERKLE_LEAF": b"\x00",
    "MERKLE_NODE": b"\x01",
    "ASSIGN": b"trustgen/assign/v1\x00",
    "GOSSIP_SESSION": b"trustgen-gsv1",
    "GOSSIP_HEADS": b"trustgen/heads/v1\x00",
    "GOSSIP_BUCKET": b"trustgen/bucket/v1\x00",
    "GUMBEL_NOISE": b"trustgen/gumbel/v1",
    "TEXT_OUTPUT": b"trustgen/text-output/v1\x00",
    "IMAGE_OUTPUT": b"trustgen/image-output/v1\x00",
    "MODEL_MANIFEST": b"trustgen/model-manifest/v1\n",
    "TRAINING_JOB": b"trustgen/training-job/v1\x00",
    "TRAIN_SPLIT": b"trustgen/train/split/v1\x00",
    "TRAIN_SELECT": b"trustgen/train/select/v1\x00",
    "TRAIN_SPSA_Z": b"trustgen/train/spsa-z/v1\x00",
    "TENSORS": b"trustgen/tensors/v1\x00",
    "TRAIN_INNER_STATE": b"trustgen/train/inner-state/v1\x00",
    "TRAIN_CHECKPOINT": b"trustgen/train/checkpoint/v1\x00",
    "TRAIN_CHALLENGE": b"trustgen/train/challenge/v1\x00",
    "TRAIN_UPDATES": b"trustgen/train/updates/v1\x00",
    "TRAIN_ROUND": b"trustgen/train/round/v1\x00",
    "TRAIN_CHECK_COIN": b"trustgen/train/check-coin/v1\x00",
    "TRAIN_STEP": b"trustgen/train/step/v1\x00",
    "TRAJECTORY_LEAF": b"trustgen/trajectory-leaf/v1\x00",
    "TRAJECTORY_CHALLENGE": b"trustgen/trajectory-challenge/v1\x00",
    "VERIFY_AUDIT": b"trustgen/verify-audit/v1\x00",
}
D = DOMAINS
U64 = (1 << 64) - 1
ZERO32 = bytes(32)


class Mismatch(Exception):
    """A vector that this implementation derives differently."""


def expect(ok: bool, what: str) -> None:
    if not ok:
        raise Mismatch(what)


def same(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise Mismatch(f"{what}: derived {short(got)}, the vector says {short(want)}")


def short(v: Any) -> str:
    s = v.hex() if isinstance(v, bytes) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def unhex(s: str) -> bytes:
    return bytes.fromhex(s)


# -- canonical encoding ---------------------------------------------------------------------------

MAX_DEPTH, MAX_LEN = 32, 1 << 26


class BadEncoding(Exception):
    pass


def from_tagged(v: Any) -> Any:
    """Tagged JSON (see the file's conventions) to a value."""
    if isinstance(v, dict):
        if list(v) == ["$bytes"]:
            return unhex(v["$bytes"])
        return {k: from_tagged(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_tagged(x) for x in v]
    return v


def enc(v: Any, depth: int = 0) -> bytes:
    if depth > MAX_DEPTH:
        raise BadEncoding("too deep")
    if v is None:
        return b"\x00"
    if isinstance(v, bool):
        return b"\x02" if v else b"\x01"
    if isinstance(v, int):
        if not -(1 << 63) <= v < (1 << 63):
            raise BadEncoding("int out of range")
        return b"\x03" + (v & U64).to_bytes(8, "big")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadEncoding("non-finite")
        return b"\x04" + struct.pack(">d", v)
    if isinstance(v, bytes):
        return b"\x05" + len(v).to_bytes(4, "big") + v
    if isinstance(v, str):
        b = v.encode("utf-8")
        return b"\x06" + len(b).to_bytes(4, "big") + b
    if isinstance(v, list):
        return b"\x07" + len(v).to_bytes(4, "big") + b"".join(enc(x, depth + 1) for x in v)
    if isinstance(v, dict):
        items = sorted((k.encode("utf-8"), x) for k, x in v.items())
        body = b"".join(b"\x06" + len(k).to_bytes(4, "big") + k + enc(x, depth + 1) for k, x in items)
        return b"\x08" + len(items).to_bytes(4, "big") + body
    raise BadEncoding(f"no encoding for {type(v).__name__}")


def dec(data: bytes) -> Any:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(data) - pos:
            raise BadEncoding("truncated")
        pos += n
        return data[pos - n : pos]

    def length() -> int:
        n = int.from_bytes(take(4), "big")
        if n > MAX_LEN:
            raise BadEncoding("length too large")
        return n

    def utf8(b: bytes) -> str:
        try:
            return b.decode("utf-8")  # strict: refuses overlong forms and surrogates
        except UnicodeDecodeError:
            raise BadEncoding("bad UTF-8") from None

    def value(depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise BadEncoding("too deep")
        tag = take(1)[0]
        if tag == 0:
            return None
        if tag in (1, 2):
            return tag == 2
        if tag == 3:
            n = int.from_bytes(take(8), "big")
            return n - (1 << 64) if n >> 63 else n
        if tag == 4:
            f = struct.unpack(">d", take(8))[0]
            if not math.isfinite(f):
                raise BadEncoding("non-finite float")
            return f
        if tag == 5:
            return take(length())
        if tag == 6:
            return utf8(take(length()))
        if tag == 7:
            return [value(depth + 1) for _ in range(length())]
        if tag == 8:
            out: dict[str, Any] = {}
            last = None
            for _ in range(length()):
                if take(1) != b"\x06":
                    raise BadEncoding("key is not a string")
                k = take(length())
                if last is not None and k <= last:
                    raise BadEncoding("keys unsorted or repeated")
                last = k
                out[utf8(k)] = value(depth + 1)
            return out
        raise BadEncoding(f"unknown tag {tag}")

    v = value(0)
    if pos != len(data):
        raise BadEncoding("trailing bytes")
    return v


def typed_equal(a: Any, b: Any) -> bool:
    """Equality that tells 1 from 1.0 from True, and -0.0 from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(typed_equal(a[k], b[k]) for k in a)
    return a == b


# -- signed messages -------------------------------------------------------------------------------

B32 = "bytes32"
SCHEMAS: dict[str, dict[str, str]] = {
    "Task": dict(
        client=B32, kind="str", model="str", params="map", workers="int", verifiers="int", nonce="bytes", expiry="int"
    ),
    "Result": dict(
        worker=B32, task_id=B32, model_digest="str", output_digest="str", output="map", fingerprint="map", profile="map"
    ),
    "Vote": dict(
        verifier=B32,
        task_id=B32,
        result_id=B32,
        accept="bool",
        method="str",
        distance="float",
        margin="float",
        reason="str",
        fingerprint="map",
        checks="map",
    ),
    "Certificate": dict(
        gateway=B32,
        task_id=B32,
        result_id=B32,
        worker=B32,
        decision="str",
        beacon=B32,
        verifiers="list",
        skipped="list",
        votes="list",
    ),
    "LedgerEntry": dict(feed=B32, seq="int", prev=B32, time="int", type="str", body="map"),
    "Request": dict(sender=B32, method="str", nonce="bytes", time="int", args="map"),
    "GossipAccept": dict(server=B32, client_nonce="bytes", eph=B32),
    "TrainingJob": dict(author=B32, spec="map"),
    "SpsaUpdate": dict(trainer=B32, job=B32, step="int", q="int", diffs="list"),
    "DeltaUpdate": dict(trainer=B32, job=B32, round="int", base=B32, delta=B32, states="list"),
    "TrainingCheckpoint": dict(publisher=B32, job=B32, step="int", digest=B32, updates=B32, heldout_loss="float"),
    "UpdateCheck": dict(verifier=B32, job=B32, round="int", beacon=B32, verdicts="list"),
    "CheckpointVote": dict(verifier=B32, job=B32, round="int", digest=B32, state="str", accept="bool", reason="str"),
    "Genesis": dict(founder=B32, authorities="list", members="list", probation="int", time="int"),
    "Admission": dict(authority=B32, members="list", time="int"),
    "Revocation": dict(authority=B32, keys="list", time="int"),
}
SIGNER = {
    "Task": "client",
    "Result": "worker",
    "Vote": "verifier",
    "Certificate": "gateway",
    "LedgerEntry": "feed",
    "Request": "sender",
    "GossipAccept": "server",
    "TrainingJob": "author",
    "SpsaUpdate": "trainer",
    "DeltaUpdate": "trainer",
    "TrainingCheckpoint": "publisher",
    "UpdateCheck": "verifier",
    "CheckpointVote": "verifier",
    "Genesis": "founder",
    "Admission": "authority",
    "Revocation": "authority",
}
ENTRY_BODIES: dict[str, dict[str, str]] = {
    "NodeJoined": dict(address="str", roles="list"),
    "Serves": dict(models="list", limits="map"),
    "TaskAccepted": dict(task="bytes", beacon=B32, beacon_size="int", candidates="list"),
    "ResultCommitted": dict(result="bytes"),
    "VoteCast": dict(vote="bytes"),
    "TaskFinalized": dict(certificate="bytes"),
    "TaskFailed": dict(task_id=B32, reason="str", detail="str"),
    "VerifierSkipped": dict(task_id=B32, result_id=B32, verifier=B32, reason="str", asked="int", deadline_ms="int"),
    "VerifierRestored": dict(verifier=B32),
    "Evidence": dict(kind="str", subject=B32, proof="map"),
    "Commitment": dict(size="int", root=B32),
    "TrainingJobAccepted": dict(job="bytes", beacon=B32, beacon_size="int", candidates="list", k="int"),
    "TrainingUpdate": dict(update="bytes", blob="str"),
    "UpdateCheck": dict(check="bytes"),
    "CheckpointProposed": dict(checkpoint="bytes", round="int", state="str", accepted="list"),
    "CheckpointFinalized": dict(
        checkpoint="bytes", round="int", state="str", beacon=B32, verifiers="list", skipped="list", votes="list"
    ),
    "Genesis": dict(genesis="bytes"),
    "Admitted": dict(admission="bytes"),
    "Revoked": dict(revocation="bytes"),
}
_TYPES: dict[str, Callable[[Any], bool]] = {
    B32: lambda v: isinstance(v, bytes) and len(v) == 32,
    "bytes": lambda v: isinstance(v, bytes),
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "map": lambda v: isinstance(v, dict),
}


def fields_ok(schema: dict[str, str], body: Any, what: str) -> None:
    expect(isinstance(body, dict) and set(body) == set(schema), f"{what}: fields are not exactly {sorted(schema)}")
    for k, t in schema.items():
        expect(_TYPES[t](body[k]), f"{what}.{k} is not a {t}")


def signing_payload(msg_type: str, network: str, body: dict[str, Any]) -> bytes:
    return D["SIGNED_MAGIC"] + enc([msg_type, network, 1, body])


def sig_ok(key: bytes, payload: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(key).verify(payload, sig)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


def open_signed(payload: bytes, sig: bytes, msg_type: str, network: str, what: str) -> dict[str, Any]:
    """Parse and verify a signed payload as `msg_type`; return its body."""
    expect(payload[:4] == D["SIGNED_MAGIC"], f"{what}: no magic")
    try:
        head = dec(payload[4:])
    except BadEncoding as e:
        raise Mismatch(f"{what}: payload is not canonical ({e})") from None
    expect(isinstance(head, list) and len(head) == 4, f"{what}: header is not [type, network, version, body]")
    t, net, version, body = head
    # typed_equal: the version is the integer 1, never `true` (which Python's == takes for 1).
    expect(typed_equal([t, net, version], [msg_type, network, 1]), f"{what}: header is {t!r}/{net!r}/v{version!r}")
    fields_ok(SCHEMAS[msg_type], body, what)
    expect(sig_ok(body[SIGNER[msg_type]], payload, sig), f"{what}: signature does not verify")
    return body


def open_wire(wire: bytes, msg_type: str, network: str, what: str) -> tuple[dict[str, Any], bytes]:
    """(body, id) of a message in its wire form."""
    try:
        env = dec(wire)
    except BadEncoding as e:
        raise Mismatch(f"{what}: wire is not canonical ({e})") from None
    expect(isinstance(env, dict) and set(env) == {"payload", "sig"}, f"{what}: wire is not {{payload, sig}}")
    expect(isinstance(env["payload"], bytes) and isinstance(env["sig"], bytes), f"{what}: wire fields not bytes")
    body = open_signed(env["payload"], env["sig"], msg_type, network, what)
    return body, msg_id(env["payload"])


def msg_id(payload: bytes) -> bytes:
    return hashlib.sha256(D["MESSAGE_ID"] + payload).digest()


# -- the parts of a body typed only as map or list ----------------------------------------------------

TEXT_PARAMS = dict(
    prompt="str",
    max_new_tokens="int",
    decoding="str",
    num_beams="int",
    seed="int",
    temperature="float",
    top_k="int",
    top_p="float",
    chat="bool",
)
IMAGE_PARAMS = dict(prompt="str", seed="int", steps="int", guidance="float", height="int", width="int", scheduler="str")
TEXT_FP = dict(
    kind="str",
    token_digest="str",
    num_perm="int",
    seed="int",
    shingle="int",
    scheme="str",
    hashfunc="str",
    minhash="str",
    lib="str",
)
IMAGE_FP = dict(kind="str", algo="str", bits="int", hash="str", lib="str")
PROFILE = dict(
    device="str", device_name="str", dtype="str", threads="int", deterministic="bool", flags="map", versions="map"
)


def check_params(kind: str, params: dict[str, Any], what: str) -> None:
    schema = TEXT_PARAMS if kind == "text" else IMAGE_PARAMS
    expect("prompt" in params and set(params) <= set(schema), f"{what}: params fields")
    for k, v in params.items():
        ok = _TYPES[schema[k]](v) or (schema[k] == "float" and _TYPES["int"](v))
        expect(ok, f"{what}: params.{k} is not a {schema[k]}")
    if kind == "text":
        expect(params.get("decoding", "greedy") in ("greedy", "beam", "sample"), f"{what}: decoding")
        expect(1 <= params.get("max_new_tokens", 64) <= 1024, f"{what}: max_new_tokens")
        expect(0 <= params.get("seed", 0) < 1 << 63, f"{what}: seed")
        expect(0 < params.get("temperature", 1.0) <= 100 and 0 < params.get("top_p", 1.0) <= 1, f"{what}: temperature")
    else:
        expect(all(8 <= params.get(s, 32) <= 1024 and params.get(s, 32) % 8 == 0 for s in ("height", "width")), what)
        expect(
            params.get("scheduler", "ddim") in ("ddim", "euler", "euler_ancestral", "dpmsolver", "pndm", "ddpm"), what
        )


def check_fingerprint(fp: dict[str, Any], what: str) -> None:
    if not fp:
        return
    if fp.get("kind") == "text":
        fields_ok(TEXT_FP, fp, what)
        expect(len(fp["minhash"]) == 16 * fp["num_perm"], f"{what}: minhash length")
    else:
        fields_ok(IMAGE_FP, fp, what)
        expect(fp["kind"] == "image" and len(fp["hash"]) * 4 == fp["bits"], f"{what}: image fingerprint")


def check_body_parts(msg_type: str, body: dict[str, Any], network: str, what: str) -> None:
    """Rules docs/protocol.md gives for the fields the schema types only as map or list."""
    if msg_type == "Task":
        expect(body["kind"] in ("text", "image"), f"{what}: kind")
        check_params(body["kind"], body["params"], what)
        expect(body["workers"] == 1 and body["verifiers"] in (1, 3, 5, 7, 9), f"{what}: workers/verifiers")
        expect(body["model"].startswith("sha256:") and len(body["model"]) == 71, f"{what}: model digest")
    elif msg_type == "Result":
        out = body["output"]
        if "token_ids" in out:
            fields_ok(dict(token_ids="list", text="str", finish_reason="str"), out, what + ".output")
            expect(body["output_digest"] == text_digest(out["token_ids"]), f"{what}: output_digest of token_ids")
            expect(out["finish_reason"] in ("eos", "length"), f"{what}: finish_reason")
        elif "trajectory" in out:
            fields_ok(dict(png_digest="str", height="int", width="int", trajectory="map"), out, what + ".output")
            check_commitment(out["trajectory"], what + ".output.trajectory")
        else:
            fields_ok(dict(png_digest="str", height="int", width="int"), out, what + ".output")
        check_fingerprint(body["fingerprint"], what + ".fingerprint")
        fields_ok(PROFILE, body["profile"], what + ".profile")
    elif msg_type == "Vote":
        expect(body["method"] in ("prefill", "regenerate", "phash", "trajectory"), f"{what}: method")
        check_fingerprint(body["fingerprint"], what + ".fingerprint")
        if body["method"] == "trajectory":
            fields_ok(TRAJ_CHECKS, body["checks"], what + ".checks")
            expect(all(_TYPES["int"](j) and j >= 0 for j in body["checks"]["steps"]), f"{what}: steps")
        else:
            expect(body["checks"] == {}, f"{what}: checks of a {body['method']} vote must be empty")
    elif msg_type == "Certificate":
        expect(body["decision"] in ("accept", "reject"), f"{what}: decision")
        for field in ("verifiers", "skipped"):
            expect(all(_TYPES[B32](v) for v in body[field]), f"{what}: {field}")
        for i, v in enumerate(body["votes"]):
            vote, _ = open_wire(v, "Vote", network, f"{what}.votes[{i}]")
            expect(vote["task_id"] == body["task_id"] and vote["result_id"] == body["result_id"], f"{what}: vote")
    elif msg_type == "Request":
        check_request_args(body["method"], body["args"], network, what)
        expect(len(body["nonce"]) >= 8, f"{what}: nonce shorter than 8 bytes")
    elif msg_type == "TrainingJob":
        check_canonical_spec(body["spec"], network, what)
    elif msg_type == "SpsaUpdate":
        expect(body["step"] >= 0 and -127 <= body["q"] <= 127, f"{what}: step or byte out of range")
        d = body["diffs"]
        expect(all(_TYPES["float"](x) and abs(x) <= DMAX for x in d), f"{what}: diffs are not floats within ±1e30")
    elif msg_type == "DeltaUpdate":
        expect(body["round"] >= 0 and len(body["states"]) >= 1, f"{what}: round or states")
        expect(all(_TYPES[B32](d) for d in body["states"]), f"{what}: states are not 32-byte digests")
    elif msg_type == "TrainingCheckpoint":
        expect(body["step"] >= 0, f"{what}: step")
    elif msg_type == "UpdateCheck":
        expect(body["round"] >= 0, f"{what}: round")
        for v in body["verdicts"]:
            expect(verdict_ok(v), f"{what}: a verdict is not [update id, accept, code, inner step, distance, reason]")
    elif msg_type == "CheckpointVote":
        expect(body["round"] >= 0 and len(body["reason"]) <= MAX_REASON, f"{what}: round or reason")
        expect(len(body["state"]) == 64 and all(c in "0123456789abcdef" for c in body["state"]), f"{what}: state")


MAX_REASON = 300


# -- trajectory commitments (§17) --------------------------------------------------------------------

TRAJ_SCHEME = "trustgen/trajectory/v1"
TRAJ_CHECKS = dict(
    beacon=B32, beacon_size="int", steps="list", output_rel_l2="list", chain_rel_l2="float", pixel_distance="float"
)


def is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_commitment(c: dict[str, Any], what: str) -> None:
    fields_ok(dict(scheme="str", root="str", steps="int", blob="str"), c, what)
    expect(c["scheme"] == TRAJ_SCHEME and is_hex64(c["root"]) and is_hex64(c["blob"]), f"{what}: scheme/root/blob")
    expect(1 <= c["steps"] <= 400, f"{what}: steps")


def traj_challenge(beacon: bytes, root: bytes, digest: str, n: int, c: int) -> list[int]:
    """Partial Fisher-Yates shuffle of 0..n-1 keyed by sha256(tag, beacon, root, digest, u32le i)."""
    idx = list(range(n))
    for i in range(min(c, n)):
        h = hashlib.sha256(D["TRAJECTORY_CHALLENGE"] + beacon + root + digest.encode() + struct.pack("<I", i)).digest()
        j = i + int.from_bytes(h[:8], "little") % (n - i)
        idx[i], idx[j] = idx[j], idx[i]
    return sorted(idx[: min(c, n)])


def audit_draw(beacon: bytes, task_id: bytes, fraction: float) -> bool:
    h = hashlib.sha256(D["VERIFY_AUDIT"] + beacon + task_id).digest()
    return int.from_bytes(h[:8], "little") < fraction * 2**64


def check_trajectory(t: dict[str, Any], network: str) -> None:
    for c in t["challenges"]:
        got = traj_challenge(unhex(c["beacon"]), unhex(c["root"]), c["output_digest"], c["steps"], c["c"])
        same(got, c["chosen"], f"challenge of {c['steps']} steps, c = {c['c']}")
    for d in t["audit_draws"]:
        same(audit_draw(unhex(d["beacon"]), unhex(d["task_id"]), d["fraction"]), d["regenerate"], "audit draw")
    result, rid = open_wire(unhex(t["vote"]["result"]), "Result", network, "trajectory result")
    vote, _ = open_wire(unhex(t["vote"]["vote"]), "Vote", network, "trajectory vote")
    expect(vote["result_id"] == rid and vote["task_id"] == result["task_id"], "trajectory vote: result")
    ch, commit = vote["checks"], result["output"]["trajectory"]
    expect(not audit_draw(ch["beacon"], vote["task_id"], t["audit_fraction"]), "trajectory vote on an audit-drawn task")
    want = traj_challenge(ch["beacon"], unhex(commit["root"]), result["output_digest"], commit["steps"], t["checks"])
    same(ch["steps"], want, "trajectory vote: steps are the beacon's challenge")


def verdict_ok(v: Any) -> bool:
    """A verdict (docs/protocol.md §15.7): [update id (32 bytes), accept, code, inner step, distance, reason]."""
    types = (B32, "bool", "str", "int", "float", "str")
    return (
        isinstance(v, list)
        and len(v) == 6
        and all(_TYPES[t](x) for t, x in zip(types, v))
        and v[3] >= 0
        and len(v[5]) <= MAX_REASON
    )


def check_request_args(method: str, args: dict[str, Any], network: str, what: str) -> None:
    if method in ("/trustgen.v1.Gateway/Submit", "/trustgen.v1.Worker/Execute"):
        fields_ok(dict(task="bytes"), args, what + ".args")
        open_wire(args["task"], "Task", network, what + ".args.task")
    elif method in ("/trustgen.v1.Gateway/Status", "/trustgen.v1.Gateway/Watch"):
        fields_ok(dict(task_id=B32), args, what + ".args")
    elif method == "/trustgen.v1.Gateway/Join":
        fields_ok(dict(entries="list"), args, what + ".args")
        expect(1 <= len(args["entries"]) <= 1000, f"{what}: 1..1000 entries")
        for pair in args["entries"]:
            expect(isinstance(pair, list) and len(pair) == 2, f"{what}: entries are [payload, sig]")
            open_signed(pair[0], pair[1], "LedgerEntry", network, what + ".args.entries")
    elif method == "/trustgen.v1.Verifier/Check":
        fields_ok(
            dict(task="bytes", result="bytes", output="bytes", beacon=B32, beacon_size="int", sources="list"),
            args,
            what + ".args",
        )
        expect(all(isinstance(a, str) for a in args["sources"]), f"{what}: sources are addresses")
        task, task_id = open_wire(args["task"], "Task", network, what + ".args.task")
        result, _ = open_wire(args["result"], "Result", network, what + ".args.result")
        expect(result["task_id"] == task_id, f"{what}: result is for another task")
    elif method == "/trustgen.v1.Blobs/Manifest":
        fields_ok(dict(digest="str"), args, what + ".args")
    elif method == "/trustgen.v1.Blobs/Fetch":
        fields_ok(dict(digest="str", from_index="int"), args, what + ".args")
    elif method == "/trustgen.v1.Gossip/Session":
        fields_ok(dict(eph=B32), args, what + ".args")
    else:
        raise Mismatch(f"{what}: unknown method {method}")


def check_message(v: dict[str, Any], network: str, keys: dict[str, bytes]) -> bytes:
    what = f"message {v['name']!r}"
    body = from_tagged(v["body"])
    key = keys[v["signer"]]
    same(body[SIGNER[v["type"]]], key, f"{what}: signer field")
    fields_ok(SCHEMAS[v["type"]], body, what)
    payload = signing_payload(v["type"], network, body)
    same(payload, unhex(v["payload"]), f"{what}: payload")
    sig = SIGNING_KEYS[v["signer"]].sign(payload).signature  # Ed25519 signatures are deterministic
    same(sig, unhex(v["sig"]), f"{what}: signature")
    expect(typed_equal(dec(payload[4:])[3], body), f"{what}: payload does not decode to the body")
    same(msg_id(payload), unhex(v["id"]), f"{what}: id")
    same(enc({"payload": payload, "sig": sig}), unhex(v["wire"]), f"{what}: wire")
    open_signed(payload, sig, v["type"], network, what)
    check_body_parts(v["type"], body, network, what)
    return body


def check_refused(v: dict[str, Any], network: str, keys: dict[str, bytes]) -> None:
    """A validly signed payload that is not a valid `open_as` message on the network: refused."""
    what = f"refused payload {v['name']!r}"
    payload, sig = unhex(v["payload"]), unhex(v["sig"])
    expect(sig_ok(keys[v["signer"]], payload, sig), f"{what}: the signature itself must verify")
    try:
        open_signed(payload, sig, v["open_as"], network, what)
    except Mismatch:
        return
    raise Mismatch(f"{what}: accepted as a {v['open_as']}, but it must be refused ({v['code']})")


# -- Merkle trees (RFC 6962 definitions, verification as RFC 9162) ---------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(D["MERKLE_LEAF"] + data).digest()


def node_hash(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(D["MERKLE_NODE"] + a + b).digest()


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = split(n)
    if m <= k:
        return subproof(m, leaves[:k], whole) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> bool:
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(m: int, n: int, old: bytes, new: bytes, proof: list[bytes]) -> bool:
    if m == n:
        return old == new and not proof
    if not 0 < m < n:
        return False
    if m & (m - 1) == 0:
        proof = [old] + proof
    if not proof:
        return False
    fn, sn = m - 1, n - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old and sr == new


def check_merkle(m: dict[str, Any]) -> None:
    data = [unhex(x) for x in m["leaf_data"]]
    leaves = [leaf_hash(x) for x in data]
    same([x.hex() for x in leaves], m["leaves"], "merkle leaves")
    for r in m["roots"]:
        same(mth(leaves[: r["size"]]).hex(), r["root"], f"merkle root of size {r['size']}")
    for p in m["inclusion"]:
        i, n, what = p["index"], p["size"], f"merkle inclusion proof ({p['index']}, {p['size']})"
        proof = path(i, leaves[:n])
        same([x.hex() for x in proof], p["proof"], what)
        expect(verify_inclusion(i, n, leaves[i], proof, mth(leaves[:n])), f"{what} does not verify")
        expect(not verify_inclusion(i, n, leaf_hash(b"another leaf"), proof, mth(leaves[:n])), what)
    for p in m["consistency"]:
        a, b, what = p["old_size"], p["new_size"], f"merkle consistency proof ({p['old_size']}, {p['new_size']})"
        proof = subproof(a, leaves[:b], True)
        same([x.hex() for x in proof], p["proof"], what)
        expect(verify_consistency(a, b, mth(leaves[:a]), mth(leaves[:b]), proof), f"{what} does not verify")
        expect(not verify_consistency(a, b, mth(leaves[: a - 1]), mth(leaves[:b]), proof), what)


# -- assignment, tally, ledger -----------------------------------------------------------------------


def ranking(beacon: bytes, task_id: bytes, candidates: list[bytes], worker: bytes) -> list[bytes]:
    pool = {c for c in candidates if c != worker}
    return sorted(pool, key=lambda v: hashlib.sha256(D["ASSIGN"] + beacon + task_id + v).digest())


def effective(rank: list[bytes], skipped: list[bytes], k: int) -> list[bytes]:
    return [v for v in rank if v not in skipped][:k]


def decide(votes: dict[bytes, bool], eff: list[bytes], k: int) -> tuple[str, int, int]:
    counted = [votes[v] for v in eff if v in votes]
    acc, rej = counted.count(True), counted.count(False)
    return ("accept" if 2 * acc > k else "reject" if 2 * rej > k else "pending"), acc, rej


def check_assignment(a: dict[str, Any]) -> None:
    what = f"assignment {a['name']!r}"
    beacon, task_id = unhex(a["beacon"]), unhex(a["task_id"])
    r = ranking(beacon, task_id, [unhex(c) for c in a["candidates"]], unhex(a["worker"]))
    same([v.hex() for v in r], a["ranking"], f"{what}: ranking")
    keys = [hashlib.sha256(D["ASSIGN"] + beacon + task_id + v).hexdigest() for v in r]
    same(keys, a["sort_keys"], f"{what}: sort keys")
    same([v.hex() for v in effective(r, [unhex(s) for s in a["skipped"]], a["k"])], a["effective"], what)


def check_tally(t: dict[str, Any]) -> None:
    votes = {unhex(v["verifier"]): v["accept"] for v in t["votes"]}
    got = decide(votes, [unhex(v) for v in t["effective"]], t["k"])
    same(got, (t["decision"], t["accepts"], t["rejects"]), f"tally {t['name']!r}")


def entry_hash(payload: bytes, sig: bytes) -> bytes:
    return hashlib.sha256(D["ENTRY_HASH"] + payload + sig).digest()


def check_ledger(led: dict[str, Any], network: str, keys: dict[str, bytes]) -> None:
    """Each entry re-signed and re-hashed, chains, commitments, assignments and decisions, and
    evidence: the audit of docs/protocol.md, section "Verifying a ledger"."""
    owner = keys[led["owner"]]
    heads: dict[bytes, tuple[int, bytes]] = {}
    log: list[tuple[bytes, int, bytes]] = []
    commitments: dict[tuple[int, bytes], int] = {}
    verifier_joins: dict[bytes, int] = {}
    accepted: dict[bytes, tuple[dict[str, Any], dict[str, Any]]] = {}
    results: dict[bytes, dict[str, Any]] = {}
    live = Liveness()
    for i, v in enumerate(led["log"]):
        what = f"ledger entry {i} ({v['name']})"
        feed = keys[v["signer"]]
        seq, prev_hash = heads.get(feed, (0, ZERO32))
        same(v["seq"], seq + 1, f"{what}: seq")
        same(unhex(v["prev"]), prev_hash, f"{what}: prev")
        body = from_tagged(v["body"])
        fields_ok(ENTRY_BODIES[v["type"]], body, what)
        signed = {"feed": feed, "seq": v["seq"], "prev": prev_hash, "time": v["time"], "type": v["type"], "body": body}
        payload = signing_payload("LedgerEntry", network, signed)
        same(payload, unhex(v["payload"]), f"{what}: payload")
        sig = unhex(v["sig"])
        expect(sig_ok(feed, payload, sig), f"{what}: signature does not verify")
        same(SIGNING_KEYS[v["signer"]].sign(payload).signature, sig, f"{what}: signature")
        h = entry_hash(payload, sig)
        same(h, unhex(v["hash"]), f"{what}: entry hash")
        heads[feed] = (v["seq"], h)
        log.append((feed, v["seq"], h))
        t = v["type"]
        if t == "NodeJoined" and "verifier" in body["roles"]:
            verifier_joins.setdefault(feed, i)
        elif t == "Serves":
            check_serves(body, what)
        elif t == "Commitment" and feed == owner:
            expect(body["size"] <= i, f"{what}: commitment covers entries not yet stored")
            same(body["root"], mth(leaf_list(log[: body["size"]])), f"{what}: commitment root")
            commitments.setdefault((body["size"], body["root"]), i)
        elif t == "TaskAccepted":
            task, task_id = open_wire(body["task"], "Task", network, what + " task")
            expect(commitments.get((body["beacon_size"], body["beacon"]), i) < i, f"{what}: beacon")
            joined = {f for f, j in verifier_joins.items() if j < body["beacon_size"]}
            want = open_candidates(joined, live.unresponsive if feed == owner else set(), body, task, task_id)
            expect(body["candidates"] == want, f"{what}: candidates differ from the verifiers due")
            accepted[task_id] = (body, task)
        elif t == "ResultCommitted":
            res, rid = open_wire(body["result"], "Result", network, what + " result")
            results[rid] = res
            live.result_time.setdefault(rid, v["time"])
        elif t == "VoteCast":
            open_wire(body["vote"], "Vote", network, what + " vote")
        elif t == "TaskFinalized":
            c = check_certificate(body["certificate"], feed, accepted, results, network, what, live, i)
            if c["decision"] == "accept":
                live.end(c["task_id"], what)
        elif t == "TaskFailed":
            expect(body["task_id"] in accepted, f"{what}: failure of a task never accepted")
            expect(body["reason"] in FAILURE_REASONS and len(body["detail"]) <= 512, f"{what}: failure reason")
            live.end(body["task_id"], what)
        elif t == "VerifierSkipped":
            expect(body["task_id"] in accepted, f"{what}: skip for a task never accepted")
            expect(body["verifier"] in accepted[body["task_id"]][0]["candidates"], f"{what}: skipped a non-candidate")
            live.skips.setdefault((body["task_id"], body["result_id"], body["verifier"]), (i, v["time"], body))
            if body["reason"] in ("deadline", "unavailable"):
                live.unresponsive.add(body["verifier"])
        elif t == "VerifierRestored":
            live.unresponsive.discard(body["verifier"])
        elif t == "Evidence":
            check_evidence(body, feed, network, what)
    same([x.hex() for x in leaf_list(log)], led["leaves"], "ledger leaves")
    want = [{"feed": f.hex(), "seq": s, "hash": h.hex()} for f, (s, h) in sorted(heads.items())]
    same(want, led["heads"], "ledger heads")


FAILURE_REASONS = ("expired", "refused", "rejected")
SKIP_REASONS = ("deadline", "unavailable", "bad_vote", "not_admitted")


class Liveness:
    """The owner's liveness facts so far (section 7.4): skip records, who is unresponsive, which
    tasks have ended."""

    def __init__(self) -> None:
        self.skips: dict[tuple[bytes, bytes, bytes], tuple[int, int, dict[str, Any]]] = {}
        self.result_time: dict[bytes, int] = {}
        self.unresponsive: set[bytes] = set()
        self.ended: set[bytes] = set()

    def end(self, task_id: bytes, what: str) -> None:
        expect(task_id not in self.ended, f"{what}: a second terminal state")
        self.ended.add(task_id)

    def justify(self, task_id: bytes, result_id: bytes, verifier: bytes, before: int, what: str) -> None:
        got = self.skips.get((task_id, result_id, verifier))
        expect(got is not None and got[0] < before, f"{what}: skipped {short(verifier)} without a prior record")
        assert got is not None
        _, when, b = got
        expect(b["reason"] in SKIP_REASONS and 0 < b["deadline_ms"] <= 3_600_000, f"{what}: skip record")
        expect(b["asked"] >= self.result_time.get(result_id, b["asked"]), f"{what}: asked before the result")
        if b["reason"] == "deadline":
            expect(when >= b["asked"] + b["deadline_ms"], f"{what}: miss recorded before the deadline")


def open_candidates(joined: set[bytes], demoted: set[bytes], acc: dict[str, Any], task: dict[str, Any], tid: bytes):
    """Section 9 in an open network: every verifier known except the demoted (unresponsive) ones,
    short of k topped up with demoted ones in rank order; sorted."""
    k = task["verifiers"]
    ranked = sorted(joined, key=lambda v: hashlib.sha256(D["ASSIGN"] + acc["beacon"] + tid + v).digest())
    taken = [v for v in ranked if v not in demoted]
    taken += [v for v in ranked if v in demoted][: max(0, k - len(taken))]
    return sorted(taken)


def check_serves(body: dict[str, Any], what: str) -> None:
    """A worker's offer (docs/protocol.md, section 7): at most 16 [kind, digest, name] triples of
    non-empty strings of at most 256 characters, and a cost limit in [0, 2^62] per known kind."""
    kinds = ("image", "text")
    expect(len(body["models"]) <= 16, f"{what}: more than 16 models")
    for m in body["models"]:
        ok = isinstance(m, list) and len(m) == 3 and all(isinstance(x, str) and 0 < len(x) <= 256 for x in m)
        expect(ok and m[0] in kinds, f"{what}: a model is not [kind, digest, name]")
    for k, v in body["limits"].items():
        ok = k in kinds and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**62
        expect(ok, f"{what}: a limit is not a known kind's cost in [0, 2^62]")


def leaf_list(log: list[tuple[bytes, int, bytes]]) -> list[bytes]:
    return [leaf_hash(f + s.to_bytes(8, "big") + h) for f, s, h in log]


def check_certificate(
    wire: bytes, feed: bytes, accepted: dict, results: dict, network: str, what: str, live: Liveness, at: int
) -> dict[str, Any]:
    c, _ = open_wire(wire, "Certificate", network, what + " certificate")
    expect(c["gateway"] == feed, f"{what}: certificate signed by another node")
    expect(c["task_id"] in accepted, f"{what}: task never accepted")
    acc, task = accepted[c["task_id"]]
    res = results.get(c["result_id"])
    expect(res is not None and res["task_id"] == c["task_id"] and res["worker"] == c["worker"], f"{what}: result")
    r = ranking(acc["beacon"], c["task_id"], acc["candidates"], c["worker"])
    eff = effective(r, c["skipped"], task["verifiers"])
    same(c["verifiers"], eff, f"{what}: effective verifiers")
    expect(set(c["skipped"]) <= set(r), f"{what}: skipped verifiers were never candidates")
    for k in c["skipped"]:
        live.justify(c["task_id"], c["result_id"], k, at, what)
    votes: dict[bytes, bool] = {}
    for raw in c["votes"]:
        vote, _ = open_wire(raw, "Vote", network, what + " vote")
        expect(vote["verifier"] in eff and vote["verifier"] not in votes, f"{what}: vote from outside or twice")
        votes[vote["verifier"]] = vote["accept"]
    same(decide(votes, eff, task["verifiers"])[0], c["decision"], f"{what}: decision")
    return c


def check_evidence(body: dict[str, Any], feed: bytes, network: str, what: str) -> None:
    p, kind = body["proof"], body["kind"]
    if kind == "equivocation":
        a = open_signed(p["a_payload"], p["a_sig"], "LedgerEntry", network, what + " a")
        b = open_signed(p["b_payload"], p["b_sig"], "LedgerEntry", network, what + " b")
        expect(a["feed"] == b["feed"] == body["subject"] and a["seq"] == b["seq"], f"{what}: not one (feed, seq)")
        expect(entry_hash(p["a_payload"], p["a_sig"]) != entry_hash(p["b_payload"], p["b_sig"]), what)
        return
    c, _ = open_wire(p["certificate"], "Certificate", network, what + " certificate")
    expect(c["gateway"] == feed, f"{what}: certificate is not the accuser's")
    if kind == "rejected_result":
        expect(c["decision"] == "reject" and c["worker"] == body["subject"], f"{what}: does not convict")
    elif kind == "minority_vote":
        vote, _ = open_wire(p["vote"], "Vote", network, what + " vote")
        late = vote["verifier"] in c["verifiers"] and (vote["task_id"], vote["result_id"]) == (
            c["task_id"],
            c["result_id"],
        )
        expect((p["vote"] in c["votes"] or late) and vote["verifier"] == body["subject"], f"{what}: not its vote")
        expect(vote["accept"] != (c["decision"] == "accept"), f"{what}: the vote agrees with the decision")
    else:
        raise Mismatch(f"{what}: unknown evidence kind {kind}")


# -- gossip ---------------------------------------------------------------------------------------------


def check_session(s: dict[str, Any], network: str, keys: dict[str, bytes]) -> None:
    hello = check_message(s["hello"], network, keys)
    accept = check_message(s["accept"], network, keys)
    same((s["hello"]["signer"], s["accept"]["signer"]), (s["client"], s["server"]), "session ends")
    expect(hello["method"] == "/trustgen.v1.Gossip/Session", "session hello: method")
    expect(accept["client_nonce"] == hello["nonce"], "session accept: not bound to the hello's nonce")
    for side in ("client", "server"):
        pub = nacl.bindings.crypto_scalarmult_base(unhex(s[f"{side}_eph_private"]))
        same(pub.hex(), s[f"{side}_eph_public"], f"session {side} ephemeral key")
    same(hello["args"]["eph"].hex(), s["client_eph_public"], "session hello eph")
    same(accept["eph"].hex(), s["server_eph_public"], "session accept eph")
    secret = nacl.bindings.crypto_scalarmult(unhex(s["client_eph_private"]), unhex(s["server_eph_public"]))
    same(secret, nacl.bindings.crypto_scalarmult(unhex(s["server_eph_private"]), unhex(s["client_eph_public"])), "dh")
    same(secret.hex(), s["x25519_secret"], "session X25519 secret")
    transcript = hashlib.sha256(unhex(s["hello"]["payload"])).digest()
    transcript += hashlib.sha256(unhex(s["accept"]["payload"])).digest()
    same(transcript.hex(), s["transcript"], "session transcript")
    key = hashlib.blake2b(secret + transcript, digest_size=32, person=D["GOSSIP_SESSION"]).digest()
    same(key.hex(), s["session_key"], "session key")
    counters = {"C": 0, "S": 0}
    for i, f in enumerate(s["frames"]):
        d = f["direction"]
        same({"client": "C", "server": "S"}.get(f["from"]), d, f"session frame {i} direction")
        same(f["number"], counters[d], f"session frame {i} number")
        counters[d] += 1
        msg = d.encode() + f["number"].to_bytes(8, "big") + unhex(f["body"])
        tag = hashlib.blake2b(msg, key=key, digest_size=16, person=D["GOSSIP_SESSION"]).digest()
        same(tag.hex(), f["tag"], f"session frame {i} tag")


def check_gossip_digests(g: dict[str, Any]) -> None:
    heads = sorted((unhex(h["feed"]), h["seq"], unhex(h["hash"])) for h in g["heads"])
    h = hashlib.sha256(D["GOSSIP_HEADS"])
    for feed, seq, eh in heads:
        h.update(feed + seq.to_bytes(8, "big") + eh)
    same(h.hexdigest(), g["heads_digest"], "gossip heads digest")
    n = g["bucket_count"]
    buckets = [hashlib.sha256(D["GOSSIP_BUCKET"]) for _ in range(n)]
    same([int.from_bytes(f[:4], "big") % n for f, _, _ in heads], g["buckets"], "gossip buckets")
    for feed, seq, eh in heads:
        buckets[int.from_bytes(feed[:4], "big") % n].update(feed + seq.to_bytes(8, "big") + eh)
    same([b.digest()[:8].hex() for b in buckets], g["bucket_digests"], "gossip bucket digests")


# -- sampling -------------------------------------------------------------------------------------------

GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def splitmix_final(x: int) -> int:
    x = ((x ^ (x >> 30)) * MIX1) & U64
    x = ((x ^ (x >> 27)) * MIX2) & U64
    return x ^ (x >> 31)


def noise_key(seed: int, position: int) -> int:
    msg = D["GUMBEL_NOISE"] + struct.pack("<QQ", seed, position)
    return int.from_bytes(hashlib.blake2b(msg, digest_size=8).digest(), "little")


def gumbel(seed: int, position: int, vocab: int) -> tuple[int, list[int], list[float]]:
    key = noise_key(seed, position)
    words = [splitmix_final((key + (i + 1) * GOLDEN) & U64) for i in range(vocab)]
    g = [-math.log(-math.log(((w >> 11) + 0.5) * 2.0**-53)) for w in words]
    return key, words, g


def close(a: float, b: float) -> bool:
    # -ln(-ln u) goes through two logs that are not correctly rounded everywhere, and the file
    # gives g to 12 significant digits: the words are exact, g agrees to 1e-11.
    return abs(a - b) <= 1e-11 * max(1.0, abs(a))


def select(logits: list[float], seed: int, position: int, temperature: float, top_k: int, top_p: float):
    x = [v / temperature for v in logits]
    ninf = float("-inf")
    if 0 < top_k < len(x):
        kth = sorted(x, reverse=True)[top_k - 1]
        x = [v if v >= kth else ninf for v in x]
    if top_p < 1.0:
        order = sorted(range(len(x)), key=lambda i: -x[i])  # stable: ties keep index order
        top = x[order[0]]
        weights = [math.exp(x[i] - top) if x[i] != ninf else 0.0 for i in order]
        total = sum(weights)
        above = 0.0
        for i, w in zip(order, weights):
            if above >= top_p:
                x[i] = ninf
            above += w / total
    kept = [i for i, v in enumerate(x) if v != ninf]
    _, _, g = gumbel(seed, position, len(x))
    scores = [v + n for v, n in zip(x, g)]
    return kept, max(range(len(x)), key=lambda i: scores[i])


def check_sampling(s: dict[str, Any]) -> None:
    for v in s["noise"]:
        what = f"sampling noise (seed {v['seed']}, position {v['position']})"
        key, words, g = gumbel(v["seed"], v["position"], v["vocab"])
        same(f"{key:016x}", v["key"], f"{what}: key")
        same([f"{w:016x}" for w in words], v["words"], f"{what}: words")
        expect(len(g) == len(v["g"]) and all(close(a, b) for a, b in zip(g, v["g"])), f"{what}: noise {g}")
    for v in s["selection"]:
        what = f"sampling selection (seed {v['seed']}, position {v['position']})"
        kept, token = select(v["logits"], v["seed"], v["position"], v["temperature"], v["top_k"], v["top_p"])
        same(kept, v["kept"], f"{what}: kept tokens")
        same(token, v["token"], f"{what}: token")


# -- outputs, blobs, models, fingerprints ----------------------------------------------------------------


def u32le(ids: list[int]) -> bytes:
    return b"".join(i.to_bytes(4, "little") for i in ids)


def text_digest(ids: list[int]) -> str:
    return "sha256:" + hashlib.sha256(D["TEXT_OUTPUT"] + u32le(ids)).hexdigest()


def blob_chunks(data: bytes) -> list[bytes]:
    step = 64 * 1024
    return [leaf_hash(data[i : i + step]) for i in range(0, max(len(data), 1), step)]


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB rows of an 8-bit RGB PNG whose rows all use filter 0."""
    expect(png[:8] == b"\x89PNG\r\n\x1a\n", "png signature")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(png):
        n = int.from_bytes(png[pos : pos + 4], "big")
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + n]
        expect(zlib.crc32(kind + data) == int.from_bytes(png[pos + 8 + n : pos + 12 + n], "big"), "png chunk crc")
        if kind == b"IHDR":
            w, h = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
            expect(data[8:10] == b"\x08\x02", "png: 8-bit RGB")
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    raw = zlib.decompress(idat)
    rows = [raw[r * (1 + 3 * w) : (r + 1) * (1 + 3 * w)] for r in range(h)]
    expect(all(row[0] == 0 for row in rows), "png: filter 0 rows")
    return w, h, b"".join(row[1:] for row in rows)


def check_outputs(o: dict[str, Any]) -> None:
    for v in o["text"]:
        same(text_digest(v["token_ids"]), v["digest"], f"text digest of {v['token_ids']}")
    for i, v in enumerate(o["image"]):
        header = struct.pack("<III", v["height"], v["width"], v["channels"])
        pixels = unhex(v["pixels"])
        expect(len(pixels) == v["height"] * v["width"] * v["channels"], f"image {i}: pixel count")
        got = "sha256:" + hashlib.sha256(D["IMAGE_OUTPUT"] + header + pixels).hexdigest()
        same(got, v["digest"], f"image digest {i}")
    for v in o["blobs"]:
        data = bytes((31 * i + 7) % 256 for i in range(v["length"]))
        chunks = blob_chunks(data)
        same([c.hex() for c in chunks], v["chunks"], f"blob of {v['length']} bytes: chunks")
        same(mth(chunks).hex(), v["digest"], f"blob of {v['length']} bytes: digest")
    png = unhex(o["png"]["png"])
    same(mth(blob_chunks(png)).hex(), o["png"]["digest"], "png blob digest")
    img = o["image"][o["png"]["pixels_of"]]
    w, h, rgb = png_pixels(png)
    same((w, h, rgb.hex()), (img["width"], img["height"], img["pixels"]), "png pixels")
    check_manifest(o["model_manifest"])


def check_manifest(m: dict[str, Any]) -> None:
    skip = {".DS_Store", "README.md", ".gitattributes"}
    lines = []
    for f in m["files"]:
        parts = f["path"].split("/")
        if any(p.startswith(".") for p in parts) or parts[-1] in skip:
            continue
        data = unhex(f["content"])
        lines.append(f"{f['path']}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    order = sorted(range(len(lines)), key=lambda i: lines[i].split(b"\0")[0].decode())
    digest = hashlib.sha256(D["MODEL_MANIFEST"] + b"".join(lines[i] for i in order)).hexdigest()
    same("sha256:" + digest, m["digest"], "model manifest digest")


class MT19937:
    """The Mersenne Twister, seeded with one 32-bit word (init_genrand)."""

    def __init__(self, seed: int) -> None:
        self.mt = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            self.mt.append((1812433253 * (self.mt[-1] ^ (self.mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self.i = 624

    def next32(self) -> int:
        if self.i == 624:
            mt = self.mt
            for k in range(624):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7FFFFFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def next64(self) -> int:
        hi = self.next32()
        return (hi << 32) | self.next32()


def fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & U64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & U64
    return h ^ (h >> 33)


def minhash(ids: list[int], num_perm: int, seed: int, k: int) -> str:
    mt = MT19937(seed)
    a = [((mt.next64() & ((1 << 63) - 1)) * 2 + 1) & U64 for _ in range(num_perm)]
    b = [mt.next64() for _ in range(num_perm)]
    shingles = [u32le(ids)] if len(ids) <= k else [u32le(ids[i : i + k]) for i in range(len(ids) - k + 1)]
    hs = [fmix64(int.from_bytes(hashlib.sha256(s).digest()[:8], "little")) for s in shingles]
    mins = [min((a[j] * h + b[j]) & U64 for h in hs) for j in range(num_perm)]
    return b"".join(m.to_bytes(8, "little") for m in mins).hex()


def phash(gray: list[list[int]]) -> str:
    """pHash of a 32 x 32 grey image: the top-left 8 x 8 of its unnormalised 2-D DCT-II,
    each bit 'coefficient > median', row by row, as 16 hex digits."""
    n = 32
    c = [[2 * math.cos(math.pi * k * (2 * j + 1) / (2 * n)) for j in range(n)] for k in range(8)]
    t = [[sum(c[k][r] * gray[r][col] for r in range(n)) for col in range(n)] for k in range(8)]
    low = [[sum(t[k][col] * c[m][col] for col in range(n)) for m in range(8)] for k in range(8)]
    flat = [v for row in low for v in row]
    s = sorted(flat)
    med = (s[31] + s[32]) / 2
    return f"{int(''.join('1' if v > med else '0' for v in flat), 2):016x}"


def check_fingerprints(f: dict[str, Any]) -> None:
    for v in f["minhash"]:
        fp, ids = v["fingerprint"], v["token_ids"]
        what = f"minhash of {ids[:8]}{'...' if len(ids) > 8 else ''}"
        mh = minhash(ids, fp["num_perm"], fp["seed"], fp["shingle"])
        want = {
            "kind": "text",
            "token_digest": text_digest(ids),
            "num_perm": fp["num_perm"],
            "seed": fp["seed"],
            "shingle": fp["shingle"],
            "scheme": "affine64",
            "hashfunc": "sha256-64le",
            "minhash": mh,
            "lib": "datasketch-2",
        }
        same(want, fp, what)
    for v in f["phash"]:
        px = unhex(v["pixels"])
        expect((v["height"], v["width"], len(px)) == (32, 32, 32 * 32 * 3), f"phash of {v['name']}: 32 x 32 RGB")
        rgb = [[px[3 * (32 * y + x) : 3 * (32 * y + x) + 3] for x in range(32)] for y in range(32)]
        gray = [[(p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16 for p in row] for row in rgb]
        same(phash(gray), v["phash"], f"phash of {v['name']}")
        per_channel = "".join(phash([[p[ch] for p in row] for row in rgb]) for ch in range(3))
        same(per_channel, v["phash_rgb"], f"phash_rgb of {v['name']}")


# -- training (docs/protocol.md section 15) ---------------------------------------------------------

# Job spec fields: (type, default or None when required, lowest, highest, choices).
SPEC_SECTIONS: dict[str, dict[str, tuple[str, Any, Any, Any, tuple[str, ...]]]] = {
    "job": {
        "name": ("str", "job", None, None, ()),
        "network": ("str", "trustgen-local", None, None, ()),
        "seed": ("int", 0, 0, 1 << 62, ()),
    },
    "model": {
        "base": ("str", None, None, None, ()),
        "digest": ("str", None, None, None, ()),
        "init": ("str", "pretrained", None, None, ("pretrained", "fresh")),
        "objective": ("str", "causal-lm", None, None, ("causal-lm", "textual-inversion", "unet-denoise")),
        "token": ("str", "<new>", None, None, ()),
        "init_token": ("str", "shape", None, None, ()),
    },
    "data": {
        "source": ("str", None, None, None, ()),
        "digest": ("str", None, None, None, ()),
        "block": ("int", 64, 8, 4096, ()),
        "heldout_permille": ("int", 100, 1, 500, ()),
        "eval_windows": ("int", 64, 1, 100_000, ()),
        "captions": ("str", "a {token}", None, None, ()),
    },
    "profile": {
        "dtype": ("str", "float32", None, None, ("float32", "float64")),
        "threads": ("int", 1, 1, 256, ()),
        "device": ("str", "cpu", None, None, ()),
        "deterministic": ("bool", True, None, None, ()),
    },
}
SPEC_ALGORITHMS: dict[str, dict[str, tuple[str, Any, Any, Any, tuple[str, ...]]]] = {
    "spsa": {
        "steps": ("int", 200, 1, 1_000_000, ()),
        "batch": ("int", 8, 1, 1024, ()),
        "lr": ("float", 1e-4, 0.0, 10.0, ()),
        "eps": ("float", 1e-3, 1e-8, 1.0, ()),
        "scale": ("float", 0.5, 1e-9, 1e6, ()),
        "eval_every": ("int", 25, 1, 1_000_000, ()),
        "check_probability": ("float", 0.1, 0.0, 1.0, ()),
        "direction": ("str", "full", None, None, ("full", "tensor-power")),
        "direction_power": ("float", 0.0, 0.0, 1.0, ()),
    },
    "diloco": {
        "rounds": ("int", 6, 1, 100_000, ()),
        "inner_steps": ("int", 16, 1, 4096, ()),
        "batch": ("int", 8, 1, 1024, ()),
        "inner_lr": ("float", 1e-3, 0.0, 10.0, ()),
        "weight_decay": ("float", 0.0, 0.0, 1.0, ()),
        "outer_lr": ("float", 0.7, 0.0, 10.0, ()),
        "outer_momentum": ("float", 0.9, 0.0, 0.999, ()),
        "aggregator": (
            "str",
            "trimmed-mean",
            None,
            None,
            ("trimmed-mean", "screened-trimmed-mean", "median", "centred-clip", "mean"),
        ),
        "trim": ("float", 0.2, 0.0, 0.49, ()),
        "clip": ("float", 1.0, 1e-9, 1e9, ()),
        "check_probability": ("float", 0.5, 0.0, 1.0, ()),
        "delta_format": ("str", "int8", None, None, ("int8", "float32")),
    },
}
MAX_TRAINERS = 64
# Fields added after jobs were signed: left out of the canonical map at their default (§15.1), so
# the ids of jobs signed before them do not change.
OMIT_AT_DEFAULT = {("algorithm", "direction"), ("algorithm", "direction_power")}


def spec_section(name: str, fields: dict[str, tuple], raw: Any) -> dict[str, Any]:
    raw = {} if raw is None else raw
    expect(isinstance(raw, dict) and set(raw) <= set(fields), f"job spec [{name}]: not a table of known fields")
    out = {}
    for k, (typ, default, lo, hi, choices) in fields.items():
        v = raw.get(k)
        if v is None:
            expect(default is not None, f"job spec {name}.{k} is required")
            v = default
        if typ == "float" and _TYPES["int"](v):
            v = float(v)
        expect(_TYPES[typ](v), f"job spec {name}.{k} is not a {typ}")
        expect(typ != "float" or math.isfinite(v), f"job spec {name}.{k} = {v} is not finite")
        expect((lo is None or v >= lo) and (hi is None or v <= hi), f"job spec {name}.{k} = {v} out of bounds")
        expect(not choices or v in choices, f"job spec {name}.{k} = {v!r} is not one of {choices}")
        expect(not isinstance(v, str) or len(v) <= 4096, f"job spec {name}.{k} is too long")
        if (name, k) in OMIT_AT_DEFAULT and typed_equal(v, default):
            continue
        out[k] = v
    return out


def spec_from_input(raw: Any) -> dict[str, Any]:
    """The canonical spec map of a job file (TOML tables as a map): defaults filled in, integers in
    float fields made floats, trainer keys as bytes, the spec version added."""
    expect(isinstance(raw, dict) and set(raw) <= {*SPEC_SECTIONS, "algorithm", "trainers"}, "job spec: sections")
    spec: dict[str, Any] = {name: spec_section(name, f, raw.get(name)) for name, f in SPEC_SECTIONS.items()}
    algo = raw.get("algorithm")
    expect(isinstance(algo, dict) and algo.get("name") in SPEC_ALGORITHMS, "job spec: algorithm.name")
    rest = {k: v for k, v in algo.items() if k != "name"}
    spec["algorithm"] = {"name": algo["name"], **spec_section("algorithm", SPEC_ALGORITHMS[algo["name"]], rest)}
    expect(spec["profile"]["device"].split(":")[0] in ("cpu", "cuda"), "job spec: profile.device")
    expect(all(spec[s]["digest"].startswith("sha256:") for s in ("model", "data")), "job spec: digests")
    trainers = raw.get("trainers", {})
    expect(isinstance(trainers, dict) and set(trainers) <= {"keys"}, "job spec: [trainers] holds only keys")
    keys = trainers.get("keys", [])
    expect(isinstance(keys, list) and len(keys) <= MAX_TRAINERS, "job spec: trainers.keys")
    expect(all(isinstance(k, str) for k in keys), "job spec: a trainer key is not hex text")
    spec["trainers"] = [unhex(k) for k in keys]
    expect(all(len(k) == 32 for k in spec["trainers"]), "job spec: a trainer key is not 32 bytes")
    expect(len(set(spec["trainers"])) == len(keys), "job spec: a trainer key is listed twice")
    spec["version"] = 1
    return spec


def spec_refusal(spec: Any, network: str) -> str | None:
    """Why a signed spec is refused, or None: `invalid` when its job-file form (trainers back as
    hex keys, version dropped) is no valid job, `not_canonical` when that job's canonical map
    differs from the signed one in any byte (an int where a float belongs, a default left out),
    `wrong_network` when it names a network other than the one it is signed on."""
    if not (isinstance(spec, dict) and typed_equal(spec.get("version"), 1)):
        return "invalid"
    if not (isinstance(spec.get("trainers"), list) and all(isinstance(k, bytes) for k in spec["trainers"])):
        return "invalid"
    as_input = {k: v for k, v in spec.items() if k not in ("trainers", "version")}
    as_input["trainers"] = {"keys": [k.hex() for k in spec["trainers"]]}
    try:
        mine = spec_from_input(as_input)
    except (Mismatch, ValueError, TypeError, AttributeError):
        return "invalid"
    if enc(mine) != enc(spec):  # bytes: 1 and 1.0 encode differently
        return "not_canonical"
    return None if spec["job"]["network"] == network else "wrong_network"


def check_canonical_spec(spec: Any, network: str, what: str) -> None:
    """A spec as signed: it must be exactly what its own job-file form gives (canonical)."""
    why = spec_refusal(spec, network)
    expect(why is None, f"{what}: the spec is refused ({why})")


def job_id(spec: dict[str, Any]) -> bytes:
    return hashlib.sha256(D["TRAINING_JOB"] + enc(spec)).digest()


def u64_of(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def split_draw(dataset: str, index: int) -> int:
    return u64_of(D["TRAIN_SPLIT"] + dataset.encode() + index.to_bytes(8, "big")) % 1000


def select_samples(job: bytes, step: int, trainer: bytes, batch: int, train: list[int]) -> list[int]:
    head = D["TRAIN_SELECT"] + job + step.to_bytes(8, "big") + trainer
    return [train[u64_of(head + i.to_bytes(4, "big")) % len(train)] for i in range(batch)]


DMAX = 1e30


def quantise(g: float, scale: float) -> int:
    if g != g:
        return 0
    x = g / scale
    if abs(x) >= 127:  # infinities too (an infinite g, or a quotient that overflows)
        return 127 if x > 0 else -127
    return round(x)  # to nearest, ties to even


def finite(d: float) -> float:
    """A per-sample value as signed: NaN -> 0.0, beyond ±1e30 (infinities too) -> ±1e30."""
    if d != d:
        return 0.0
    return DMAX if d > DMAX else -DMAX if d < -DMAX else d


def scalar(diffs: list[float], scale: float) -> int:
    """The byte per-sample values commit to: their exact sum (a rational, so no rounding on the
    way) rounded once to binary64, divided by their count in binary64, quantised."""
    expect(len(diffs) > 0, "a scalar of no samples")
    exact = sum((Fraction(d) for d in diffs), Fraction(0))
    total = exact.numerator / exact.denominator  # int / int: correctly rounded, ties to even
    return quantise(total / len(diffs), scale)  # (the sign of a zero sum cannot change the byte)


def check_arithmetic(body: dict[str, Any], spec: dict[str, Any], what: str) -> None:
    """An SpsaUpdate's byte is the scalar of its committed values, one per sample of the batch."""
    hp = spec["algorithm"]
    same(len(body["diffs"]), hp["batch"], f"{what}: committed samples")
    expect(all(_TYPES["float"](d) and abs(d) <= DMAX for d in body["diffs"]), f"{what}: samples within ±1e30")
    same(scalar(body["diffs"], hp["scale"]), body["q"], f"{what}: byte of its diffs")


def update_refusal(updates: list[dict[str, Any]], step: int, spec: dict[str, Any]) -> str | None:
    """Why a step's SpsaUpdates cannot be applied at `step` (the code a replay reports), or None:
    checked in order, update by update: its step, one update per trainer, the byte's range, then
    its arithmetic (every update, not a sample of them)."""
    hp, seen = spec["algorithm"], set()
    for b in updates:
        if b["step"] != step:
            return "wrong_step"
        if b["trainer"] in seen:
            return "duplicate"
        if not -127 <= b["q"] <= 127:
            return "out_of_range"
        d = b["diffs"]
        if len(d) != hp["batch"] or not all(_TYPES["float"](x) and abs(x) <= DMAX for x in d):
            return "wrong_scalar"
        if scalar(d, hp["scale"]) != b["q"]:
            return "wrong_scalar"
        seen.add(b["trainer"])
    return None


def trimmed_k(n: int, trim: float) -> int:
    """Values the trimmed mean cuts from each side of n: floor(trim * n) with the product in
    binary64, at least 1 when trim > 0 and n >= 3, at most (n - 1) // 2 (one value always stays)."""
    k = math.floor(trim * n)
    if trim > 0 and n >= 3:
        k = max(1, k)
    return min(k, (n - 1) // 2)


def f32(x: float) -> float:
    """x rounded to the nearest binary32 (ties to even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


_PACK = {"float64": "<d", "float32": "<f", "float16": "<e", "int64": "<q", "int32": "<i", "int16": "<h", "int8": "b"}


def tensor_raw(t: dict[str, Any]) -> bytes:
    n = 1
    for d in t["shape"]:
        n *= d
    expect(len(t["values"]) == n, f"tensor {t['name']}: {len(t['values'])} values for shape {t['shape']}")
    if t["dtype"] == "bfloat16":  # the high half of the binary32 (the vectors use exact values)
        words = [struct.pack("<f", v) for v in t["values"]]
        expect(all(w[:2] == b"\0\0" for w in words), f"tensor {t['name']}: not exact in bfloat16")
        return b"".join(w[2:] for w in words)
    return b"".join(struct.pack(_PACK[t["dtype"]], v) for v in t["values"])


def tensor_set_digest(prefix: bytes, tensors: list[dict[str, Any]]) -> bytes:
    h = hashlib.sha256(prefix)
    for t in sorted(tensors, key=lambda t: t["name"]):  # code point order = UTF-8 byte order
        raw = tensor_raw(t)
        head = f"{t['name']}\0{t['dtype']}\0{','.join(map(str, t['shape']))}\0".encode()
        h.update(len(head).to_bytes(4, "big") + head + len(raw).to_bytes(8, "big") + raw)
    return h.digest()


def state_digest(state: list[dict[str, Any]], step: int) -> bytes:
    return tensor_set_digest(D["TRAIN_INNER_STATE"] + step.to_bytes(8, "big"), state)


def safetensors(tensors: list[tuple[str, str, list[int], bytes]]) -> bytes:
    """(name, dtype code, shape, raw) as safetensors bytes, laid out as section 15.5 says."""
    rank = {"F32": 1, "I8": 0}
    order = sorted(tensors, key=lambda t: (-rank[t[1]], t[0].encode()))
    parts, data = [], b""
    for name, dtype, shape, raw in order:
        info = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        parts.append(json.dumps(name, ensure_ascii=False) + ":" + json.dumps(info, separators=(",", ":")))
        data += raw
    header = ("{" + ",".join(parts) + "}").encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data


MAX_DELTA_ABS = 1e6
ST_DTYPES = {"F64": ("<d", 8), "F32": ("<f", 4), "F16": ("<e", 2), "I64": ("<q", 8), "I32": ("<i", 4), "I8": ("b", 1)}


class BadBlob(Exception):
    pass


def read_safetensors(blob: bytes) -> dict[str, tuple[str, list[int], list[Any]]]:
    """name -> (dtype code, shape, row-major values) of a safetensors blob: u64le(N), an N-byte JSON
    header, then the data section, which the tensors' offsets must cover exactly, in order."""
    if len(blob) < 8:
        raise BadBlob("shorter than its header length")
    n = int.from_bytes(blob[:8], "little")
    if n > len(blob) - 8:
        raise BadBlob("header longer than the blob")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadBlob("header is not JSON") from None
    if not isinstance(header, dict):
        raise BadBlob("header is not an object")
    data = blob[8 + n :]
    header.pop("__metadata__", None)
    out, spans = {}, []
    for name, info in header.items():
        if not (isinstance(info, dict) and info.get("dtype") in ST_DTYPES):
            raise BadBlob(f"tensor {name}: unknown dtype")
        shape, (b, e) = info["shape"], info["data_offsets"]
        fmt, size = ST_DTYPES[info["dtype"]]
        count = math.prod(shape)
        if not (0 <= b <= e <= len(data) and e - b == count * size):
            raise BadBlob(f"tensor {name}: offsets do not fit its shape")
        out[name] = (info["dtype"], shape, [struct.unpack_from(fmt, data, b + i * size)[0] for i in range(count)])
        spans.append((b, e))
    end = 0
    for b, e in sorted(spans):
        if b != end:
            raise BadBlob("tensors overlap or leave a gap")
        end = e
    if end != len(data):
        raise BadBlob("bytes after the last tensor")
    return out


def decode_delta(blob: bytes, params: dict[str, list[int]], fmt: str) -> tuple[str | None, dict[str, list[float]]]:
    """(why refused or None, the delta per float32 parameter) of a delta blob, section 15.5's rules in
    order: the layout (exactly the format's tensors, dtypes and shapes), every F32 value finite,
    every int8 scale within [0, 1e6/127], every decoded value within ±1e6."""
    try:
        got = read_safetensors(blob)
    except BadBlob:
        return "layout", {}
    if fmt == "float32":
        want = {"f/" + n: ("F32", shape) for n, shape in params.items()}
    else:
        want = {k: v for n, shape in params.items() for k, v in (("q/" + n, ("I8", shape)), ("s/" + n, ("F32", [])))}
    if set(got) != set(want) or any(list(got[k][:2]) != list(want[k]) for k in want):
        return "layout", {}
    if not all(math.isfinite(x) for dt, _, vals in got.values() if dt == "F32" for x in vals):
        return "not_finite", {}
    if fmt == "float32":
        out = {n: got["f/" + n][2] for n in params}
    else:
        if not all(0.0 <= got["s/" + n][2][0] <= MAX_DELTA_ABS / 127 for n in params):
            return "scale", {}
        out = {n: [f32(q * got["s/" + n][2][0]) for q in got["q/" + n][2]] for n in params}
    if not all(abs(x) <= MAX_DELTA_ABS for vals in out.values() for x in vals):
        return "too_large", {}
    return None, out


def bits(values: list[float]) -> list[str]:
    """Floats as their binary64 bytes, so that -0.0 and 0.0 differ."""
    return [struct.pack(">d", v).hex() for v in values]


def int8_delta(values: list[float]) -> tuple[list[int], float]:
    """q and the scale of one float32 tensor's delta."""
    amax = max((abs(v) for v in values), default=0.0)
    if amax == 0:
        return [0] * len(values), 0.0
    s = f32(amax / 127)
    return [max(-127, min(127, round(f32(v / s)))) for v in values], s


def check_round(r: dict[str, Any], by_name: dict[str, dict[str, Any]], keys: dict[str, bytes]) -> None:
    base = {t["name"]: t for t in r["base"]}
    expect(all(t["dtype"] == "float32" for t in base.values()), "training round: float32 parameters")
    base_digest = tensor_set_digest(D["TRAIN_CHECKPOINT"], r["base"])
    same(base_digest.hex(), r["base_digest"], "training round: base checkpoint digest")
    for tr in r["trainers"]:
        what = f"training round, {tr['trainer']}"
        digests = [state_digest(st, h).hex() for h, st in enumerate(tr["states"], 1)]
        same(digests, tr["state_digests"], f"{what}: inner state digests")
        final = {t["name"]: t for t in tr["states"][-1]}
        delta, st_int8, st_f32, decoded = [], [], [], []
        for n in sorted(base):
            d = [f32(a - b) for a, b in zip(final["p/" + n]["values"], base[n]["values"])]
            shape = base[n]["shape"]
            delta.append({"name": n, "dtype": "float32", "shape": shape, "values": d})
            q, scale = int8_delta(d)
            st_int8.append(("q/" + n, "I8", shape, struct.pack(f"{len(q)}b", *q)))
            st_int8.append(("s/" + n, "F32", [], struct.pack("<f", scale)))
            st_f32.append(("f/" + n, "F32", shape, struct.pack(f"<{len(d)}f", *d)))
            decoded.append({"name": n, "dtype": "float32", "shape": shape, "values": [f32(x * scale) for x in q]})
        same(delta, tr["delta"], f"{what}: delta")
        blob = safetensors(st_int8)
        same(blob.hex(), tr["blob"], f"{what}: int8 delta blob")
        same(hashlib.sha256(blob).hexdigest(), tr["blob_digest"], f"{what}: delta blob digest")
        same(decoded, tr["decoded"], f"{what}: decoded delta")
        why, back = decode_delta(blob, {n: base[n]["shape"] for n in base}, "int8")
        expect(why is None, f"{what}: its own int8 blob is refused ({why})")
        same([bits(back[n]) for n in sorted(base)], [bits(t["values"]) for t in decoded], f"{what}: blob decoding")
        if tr["trainer"] == r["float32_blob"]["trainer"]:
            same(safetensors(st_f32).hex(), r["float32_blob"]["blob"], f"{what}: float32 delta blob")
            same(delta, r["float32_blob"]["decoded"], f"{what}: decoded float32 delta")
        body = from_tagged(by_name[tr["message"]]["body"])
        want = {
            "trainer": keys[tr["trainer"]],
            "job": unhex(r["job"]),
            "round": r["round"],
            "base": base_digest,
            "delta": hashlib.sha256(blob).digest(),
            "states": [unhex(d) for d in digests],
        }
        expect(typed_equal(body, want), f"{what}: the DeltaUpdate does not commit to this round")
    ups = sorted((by_name[tr["message"]] for tr in r["trainers"]), key=lambda m: keys[m["signer"]])
    same([m["name"] for m in ups], r["updates_in_order"], "training round: updates in trainer key order")
    digest = updates_digest([msg_id(unhex(m["payload"])) for m in ups])
    same(digest.hex(), r["updates_digest"], "training round: updates digest")
    for c in r["challenges"]:
        head = D["TRAIN_CHALLENGE"] + unhex(r["job"]) + r["round"].to_bytes(8, "big") + keys[c["trainer"]] + digest
        same(1 + u64_of(head) % r["inner_steps"], c["inner"], f"training challenge of {c['trainer']}")


def round_target(job: bytes, rnd: int) -> bytes:
    return hashlib.sha256(D["TRAIN_ROUND"] + job + rnd.to_bytes(8, "big")).digest()


def coin_draw(job: bytes, rnd: int, trainer: bytes, updates: bytes) -> int:
    return u64_of(D["TRAIN_CHECK_COIN"] + job + rnd.to_bytes(8, "big") + trainer + updates)


def check_network_round(
    n: dict[str, Any], r: dict[str, Any], by_name: dict[str, dict[str, Any]], keys: dict[str, bytes], specs: dict
) -> None:
    """§15.7: round targets, the round's verifier assignment, check coins, the verdicts of the
    assigned verifiers over the round's updates and the strict-majority decisions."""
    for v in n["spsa_step_targets"]:
        got = hashlib.sha256(D["TRAIN_STEP"] + unhex(v["job"]) + v["step"].to_bytes(8, "big")).hexdigest()
        same(got, v["target"], f"SPSA step target {v['step']}")
    for c in n["spsa_samples"]:
        # the check coin's hash with the step for the round; its next 8 bytes pick the sample
        h = hashlib.sha256(
            D["TRAIN_CHECK_COIN"]
            + unhex(c["job"])
            + c["step"].to_bytes(8, "big")
            + keys[c["trainer"]]
            + unhex(c["updates_digest"])
        ).digest()
        checked = int.from_bytes(h[:8], "big") / 2.0**64 < c["probability"]
        want = 1 + int.from_bytes(h[8:16], "big") % c["batch"] if checked else 0
        same(want, c["challenge"], f"SPSA sample challenge of {c['trainer']} at step {c['step']}")
    for v in n["round_targets"]:
        same(round_target(unhex(v["job"]), v["round"]).hex(), v["target"], f"training round target {v['round']}")
    a = n["assignment"]
    job = unhex(a["job"])
    cands = [keys[c] for c in a["candidates"]]
    expect(cands == sorted(cands), "training network round: candidates are not sorted")
    ranked = ranking(unhex(a["beacon"]), round_target(job, a["round"]), cands, b"")
    same([keys[c] for c in a["ranking"]], ranked, "training network round: ranking")
    eff = effective(ranked, [keys[c] for c in a["skipped"]], a["k"])
    same([keys[c] for c in a["effective"]], eff, "training network round: effective verifiers")
    for c in n["check_coins"]:
        what = f"training check coin of {c['trainer']} at probability {c['probability']}"
        draw = coin_draw(unhex(c["job"]), c["round"], keys[c["trainer"]], unhex(c["updates_digest"]))
        same(draw, c["draw"], f"{what}: draw")
        same(draw / 2.0**64 < c["probability"], c["checked"], f"{what}: checked")
    ups = [by_name[name] for name in n["updates"]]
    same(n["updates"], r["updates_in_order"], "training network round: updates in trainer key order")
    ids = [msg_id(unhex(m["payload"])) for m in ups]
    rid = updates_digest(ids)
    spec = specs[job]
    inner_steps = spec["algorithm"]["inner_steps"]
    p = spec["algorithm"]["check_probability"]
    per: dict[bytes, dict[bytes, bool]] = {i: {} for i in ids}
    for name in n["checks"]:
        what = f"training network round: {name}"
        body = from_tagged(by_name[name]["body"])
        same((body["job"], body["round"], body["beacon"]), (job, a["round"], unhex(a["beacon"])), f"{what}: round")
        expect(body["verifier"] in eff, f"{what}: not an effective verifier")
        by_id = {v[0]: v for v in body["verdicts"]}
        same(sorted(by_id), sorted(ids), f"{what}: verdicts do not cover the round's updates, each once")
        expect(len(by_id) == len(body["verdicts"]), f"{what}: two verdicts on one update")
        for m in ups:
            v = by_id[msg_id(unhex(m["payload"]))]
            trainer = keys[m["signer"]]
            head = D["TRAIN_CHALLENGE"] + job + a["round"].to_bytes(8, "big") + trainer + rid
            challenged = 1 + u64_of(head) % inner_steps
            checked = coin_draw(job, a["round"], trainer, rid) / 2.0**64 < p
            # accepted: re-executed exactly when the coin says so; rejected: at most the challenge
            want = {challenged if checked else 0} if v[1] else {0, challenged}
            expect(v[3] in want, f"{what}: inner step {v[3]} for {m['signer']}")
            per[v[0]][body["verifier"]] = v[1]
    decisions = [decide(per[i], eff, a["k"])[0] for i in ids]
    same(decisions, n["decisions"], "training network round: decisions")


def updates_digest(ids: list[bytes]) -> bytes:
    return hashlib.sha256(D["TRAIN_UPDATES"] + enc(ids)).digest()


def check_training(t: dict[str, Any], messages: list[dict[str, Any]], keys: dict[str, bytes], net: str) -> None:
    by_name = {m["name"]: m for m in messages}
    specs = {}
    for j in t["jobs"]:
        what = f"training job {j['name']!r}"
        spec = spec_from_input(j["input"])
        expect(typed_equal(spec, from_tagged(j["spec"])), f"{what}: spec")
        same(enc(spec).hex(), j["canonical"], f"{what}: canonical bytes")
        same(job_id(spec).hex(), j["id"], f"{what}: id")
        expect(typed_equal(from_tagged(by_name[j["message"]]["body"])["spec"], spec), f"{what}: signed spec")
        specs[job_id(spec)] = spec
    for m in messages:  # every training message names a job of the vectors, and its trainers sign updates
        if m["type"] in ("SpsaUpdate", "DeltaUpdate", "TrainingCheckpoint", "UpdateCheck", "CheckpointVote"):
            body = from_tagged(m["body"])
            spec = specs.get(body["job"])
            expect(spec is not None, f"message {m['name']!r}: unknown job")
            if m["type"] in ("SpsaUpdate", "DeltaUpdate"):
                expect(keys[m["signer"]] in spec["trainers"], f"message {m['name']!r}: not a trainer of the job")
            if m["type"] == "SpsaUpdate":
                check_arithmetic(body, spec, f"message {m['name']!r}")
    for sp in t["split"]:
        what = f"training split of {sp['count']} windows"
        draws = [split_draw(sp["dataset_digest"], i) for i in range(sp["count"])]
        same(draws, sp["draws"], f"{what}: draws")
        held = [i for i, d in enumerate(draws) if d < sp["heldout_permille"]]
        same([i for i, d in enumerate(draws) if d >= sp["heldout_permille"]], sp["train"], f"{what}: train")
        same((held, held[: sp["eval_windows"]]), (sp["heldout"], sp["eval"]), f"{what}: held-out and eval")
    for v in t["select"]:
        got = select_samples(unhex(v["job"]), v["step"], unhex(v["trainer"]), v["batch"], v["train"])
        same(got, v["indices"], f"training selection at step {v['step']}")
    for v in t["spsa_seed"]:
        head = D["TRAIN_SPSA_Z"] + unhex(v["job"]) + v["step"].to_bytes(8, "big")
        same(u64_of(head) >> 1, v["seed"], f"training SPSA seed at step {v['step']}")
    for v in t["quantise"]:
        g = struct.unpack(">d", unhex(v["g"]))[0]
        same(quantise(g, v["scale"]), v["q"], f"training quantise {g!r} / {v['scale']!r}")
    for v in t["scalar"]:
        what = f"training scalar {v['name']!r}"
        raw = [struct.unpack(">d", unhex(h))[0] for h in v["raw"]]
        signed = [finite(d) for d in raw]
        # bit for bit (struct), so that -0.0 and 0.0 differ
        same([struct.pack(">d", d).hex() for d in signed], [struct.pack(">d", d).hex() for d in v["diffs"]], what)
        same(scalar(signed, v["scale"]), v["q"], f"{what}: byte")
    tensor_digests = {}
    for v in t["tensor_digests"]:
        what = f"training tensor digest {v['name']!r}"
        for x in v["tensors"]:
            same(tensor_raw(x).hex(), x["raw"], f"{what}: bytes of {x['name']}")
        prefix = D[v["domain"]] + (v["step"].to_bytes(8, "big") if v["domain"] == "TRAIN_INNER_STATE" else b"")
        same(tensor_set_digest(prefix, v["tensors"]).hex(), v["digest"], what)
        tensor_digests[v["name"]] = unhex(v["digest"])
    check_round(t["round"], by_name, keys)
    check_network_round(t["network_round"], t["round"], by_name, keys, specs)
    for v in t["updates_digests"]:
        same(updates_digest([unhex(i) for i in v["ids"]]).hex(), v["digest"], f"training updates digest {v['name']!r}")
    for c in t["checkpoints"]:
        what = f"training checkpoint {c['message']!r}"
        body = from_tagged(by_name[c["message"]]["body"])
        same(body["digest"], tensor_digests[c["tensors"]], f"{what}: digest")
        ids = [msg_id(unhex(by_name[n]["payload"])) for n in c["updates"]]
        same(body["updates"], updates_digest(ids), f"{what}: updates")
    for row in t["trimmed_k"]:
        got = [trimmed_k(n, row["trim"]) for n in row["n"]]
        same(got, row["k"], f"training trimmed_k at trim {row['trim']!r} for n = {row['n']}")
    check_delta_blobs(t["delta_blobs"])
    for v in t["refused_specs"]:
        what = f"training refused job file {v['name']!r}"
        try:
            spec_from_input(tomllib.loads(v["toml"]))
        except Mismatch:
            continue
        raise Mismatch(f"{what}: accepted, but it must be refused")
    for v in t["refused_jobs"]:
        what = f"training refused job {v['name']!r}"
        body, _ = open_wire(unhex(v["wire"]), "TrainingJob", net, what)
        same(body["author"], keys[v["signer"]], f"{what}: signer")
        why = spec_refusal(body["spec"], net)
        expect(why is not None, f"{what}: its spec is accepted, but it must be refused ({v['reason']})")
        same(why, v["reason"], f"{what}: reason")
    for v in t["refused_updates"]:
        what = f"training refused updates {v['name']!r}"
        bodies = []
        for u in v["updates"]:
            body, _ = open_wire(unhex(u["wire"]), "SpsaUpdate", net, what)
            expect(typed_equal(body, from_tagged(u["body"])) and body["trainer"] == keys[u["signer"]], what)
            bodies.append(body)
        spec = specs.get(bodies[0]["job"])
        expect(spec is not None and all(b["job"] == bodies[0]["job"] for b in bodies), f"{what}: unknown job")
        why = update_refusal(bodies, v["step"], spec)
        expect(why is not None, f"{what}: applied, but they must be refused ({v['code']})")
        same(why, v["code"], f"{what}: code")


def check_delta_blobs(d: dict[str, Any]) -> None:
    same(d["max_abs"], MAX_DELTA_ABS, "training delta blobs: the bound on values")
    expect(all(p["dtype"] == "float32" for p in d["params"]), "training delta blobs: float32 parameters")
    params = {p["name"]: p["shape"] for p in d["params"]}
    for v in d["blobs"]:
        what = f"training delta blob {v['name']!r}"
        why, decoded = decode_delta(unhex(v["blob"]), params, v["format"])
        if not v["accept"]:
            expect(why is not None, f"{what}: accepted, but it must be refused ({v['reason']})")
            same(why, v["reason"], f"{what}: reason")
            continue
        expect(why is None, f"{what}: refused ({why}), but it must be accepted")
        want = [{"name": n, "dtype": "float32", "shape": params[n], "values": decoded[n]} for n in sorted(params)]
        same([bits(x["values"]) for x in want], [bits(x["values"]) for x in v["decoded"]], f"{what}: decoded")
        expect(all(typed_equal(a, b) for a, b in zip(want, v["decoded"])), f"{what}: decoded layout")


# -- encoding vectors ---------------------------------------------------------------------------------


def check_encoding(e: dict[str, Any]) -> None:
    for v in e["valid"]:
        value = from_tagged(v["value"])
        same(enc(value).hex(), v["hex"], f"encoding {v['name']!r}")
        try:
            back = dec(unhex(v["hex"]))
        except BadEncoding as err:
            raise Mismatch(f"encoding {v['name']!r}: refused ({err})") from None
        expect(typed_equal(back, value), f"encoding {v['name']!r}: decodes to another value")
    for v in e["invalid"]:
        try:
            dec(unhex(v["hex"]))
        except BadEncoding:
            continue
        raise Mismatch(f"invalid encoding {v['name']!r}: accepted")


# -- main ---------------------------------------------------------------------------------------------

SIGNING_KEYS: dict[str, nacl.signing.SigningKey] = {}


def check(doc: dict[str, Any]) -> int:
    """Check every vector; return how many were checked."""
    same({k: bytes.fromhex(v) for k, v in doc["domains"].items()}, DOMAINS, "domain tags")
    keys = {}
    for name, k in doc["keys"].items():
        SIGNING_KEYS[name] = nacl.signing.SigningKey(unhex(k["seed"]))
        keys[name] = bytes(SIGNING_KEYS[name].verify_key)
        same(keys[name].hex(), k["public"], f"key {name}")
    net = doc["network"]
    n = 0
    steps: list[tuple[str, Callable[[], None]]] = [("encoding", lambda: check_encoding(doc["encoding"]))]
    for m in doc["messages"]:
        steps.append((f"message {m['name']!r}", lambda m=m: check_message(m, net, keys)))
    for v in doc["refused"]:
        steps.append((f"refused payload {v['name']!r}", lambda v=v: check_refused(v, net, keys)))
    steps += [
        ("ledger", lambda: check_ledger(doc["ledger"], net, keys)),
        ("merkle", lambda: check_merkle(doc["merkle"])),
        *[(f"assignment {a['name']!r}", lambda a=a: check_assignment(a)) for a in doc["assignment"]],
        *[(f"tally {t['name']!r}", lambda t=t: check_tally(t)) for t in doc["tally"]],
        ("session", lambda: check_session(doc["session"], net, keys)),
        ("gossip digests", lambda: check_gossip_digests(doc["gossip_digests"])),
        ("sampling", lambda: check_sampling(doc["sampling"])),
        ("outputs", lambda: check_outputs(doc["outputs"])),
        ("fingerprints", lambda: check_fingerprints(doc["fingerprints"])),
        ("training", lambda: check_training(doc["training"], doc["messages"], keys, net)),
        ("trajectory", lambda: check_trajectory(doc["trajectory"], net)),
    ]
    for name, step in steps:
        try:
            step()
        except Mismatch:
            raise
        except (ValueError, KeyError, TypeError, IndexError, BadEncoding) as e:  # a vector too broken to read
            raise Mismatch(f"{name}: unreadable ({type(e).__name__}: {e})") from None
        n += 1
    return n


def main() -> int:
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    doc = json.loads(path.read_text(encoding="utf-8"))
    try:
        n = check(doc)
    except Mismatch as e:
        print(f"MISMATCH {e}", file=sys.stderr)
        return 1
    print(f"ok: {n} vector groups in {path} re-derived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
