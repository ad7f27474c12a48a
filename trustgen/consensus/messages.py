"""Signed protocol messages: Task, Result, Vote, Certificate, LedgerEntry.

A message is a type tag, a network id and a body dict that follows the type's schema. Its
signature covers `signing_bytes(type, network, body)` exactly, and the signer's key is a body
field, so a signature can't be re-attributed. On the wire a message is the canonical encoding
of {payload, sig}; a receiver re-parses the payload, checks header, schema and signature, and
only then uses it. The message id is sha256 over the payload.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.domains import MESSAGE_ID
from trustgen.consensus.encoding import EncodingError, decode, encode, parse_signing_bytes, signing_bytes
from trustgen.consensus.identity import Identity, verify
from trustgen.errors import TrustgenError

VERSION = 1
B32 = "bytes32"

# field -> type name; every field is required, no others are allowed.
SCHEMAS: dict[str, dict[str, str]] = {
    "Task": {
        "client": B32,
        "kind": "str",
        "model": "str",
        "params": "dict",
        "workers": "int",
        "verifiers": "int",
        "nonce": "bytes",
        "expiry": "int",
    },
    "Result": {
        "worker": B32,
        "task_id": B32,
        "model_digest": "str",
        "output_digest": "str",
        "output": "dict",
        "fingerprint": "dict",
        "profile": "dict",
    },
    "Vote": {
        "verifier": B32,
        "task_id": B32,
        "result_id": B32,
        "accept": "bool",
        "method": "str",
        "distance": "float",
        "margin": "float",
        "reason": "str",
        "fingerprint": "dict",
        # {} except for a trajectory check: its beacon, steps and distances (consensus/challenge.py)
        "checks": "dict",
    },
    "Certificate": {
        "gateway": B32,
        "task_id": B32,
        "result_id": B32,
        "worker": B32,
        "decision": "str",
        "beacon": B32,
        "verifiers": "list",
        "skipped": "list",
        "votes": "list",
    },
    "LedgerEntry": {"feed": B32, "seq": "int", "prev": B32, "time": "int", "type": "str", "body": "dict"},
    # An authenticated RPC request (trustgen/net/auth.py).
    "Request": {"sender": B32, "method": "str", "nonce": "bytes", "time": "int", "args": "dict"},
    # A server's answer to a gossip session hello, bound to the client's nonce
    # (trustgen/gossip/session.py).
    "GossipAccept": {"server": B32, "client_nonce": "bytes", "eph": B32},
    # Training (trustgen/training/records.py): a job spec under its author's signature; one
    # SPSA byte; one local-SGD round's delta blob with the digests of every inner state; a
    # checkpoint with its held-out loss.
    "TrainingJob": {"author": B32, "spec": "dict"},
    # q: the signed byte; diffs: each sample's (L+ - L-) / 2 eps, which the byte must summarise
    "SpsaUpdate": {"trainer": B32, "job": B32, "step": "int", "q": "int", "diffs": "list"},
    "DeltaUpdate": {
        "trainer": B32,
        "job": B32,
        "round": "int",
        "base": B32,
        "delta": B32,
        "states": "list",
    },
    "TrainingCheckpoint": {
        "publisher": B32,
        "job": B32,
        "step": "int",
        "digest": B32,
        "updates": B32,
        "heldout_loss": "float",
    },
    # Training on the network (docs/training-network.md): a verifier's verdict on every update
    # of one round (verdicts: [update id, accept, code, inner step re-executed, distance,
    # reason], sorted by update id), and its vote on a proposed checkpoint it re-derived.
    "UpdateCheck": {"verifier": B32, "job": B32, "round": "int", "beacon": B32, "verdicts": "list"},
    "CheckpointVote": {
        "verifier": B32,
        "job": B32,
        "round": "int",
        "digest": B32,
        "state": "str",
        "accept": "bool",
        "reason": "str",
    },
    # Admission (trustgen/consensus/admission.py): a network's genesis, signed by its founder; an
    # authority's admission of members (key, roles, host, TLS pin) and revocation of keys.
    "Genesis": {"founder": B32, "authorities": "list", "members": "list", "probation": "int", "time": "int"},
    "Admission": {"authority": B32, "members": "list", "time": "int"},
    "Revocation": {"authority": B32, "keys": "list", "time": "int"},
}
SIGNER_FIELD = {
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
_PY = {"str": str, "int": int, "float": float, "bool": bool, "bytes": bytes, "dict": dict, "list": list}


class MessageError(TrustgenError):
    """A message that is malformed, of the wrong type or network, or wrongly signed; `code` says
    which (callers map codes to statuses; they never read the text)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_NETWORK = "wrong_network"
    WRONG_TYPE = "wrong_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    # Codes that mean "not from who it claims, or not for us": authentication failures.
    AUTH_CODES = frozenset({BAD_SIGNATURE, WRONG_NETWORK})

    def __init__(self, message: str, code: str = MALFORMED) -> None:
        super().__init__(message)
        self.code = code


def check_fields(name: str, schema: dict[str, str], body: Any) -> None:
    """`body` has exactly the fields of `schema`, each of its declared type."""
    if not isinstance(body, dict):
        raise MessageError(f"{name} body must be a map")
    if set(body) != set(schema):
        missing, extra = set(schema) - set(body), set(body) - set(schema)
        raise MessageError(f"{name}: missing fields {sorted(missing)}, unexpected {sorted(extra)}")
    for field, kind in schema.items():
        v = body[field]
        if kind == B32:
            ok = isinstance(v, bytes) and len(v) == 32
        elif kind == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, _PY[kind])
        if not ok:
            raise MessageError(f"{name}.{field} must be {kind}")


def check_schema(msg_type: str, body: dict[str, Any]) -> None:
    schema = SCHEMAS.get(msg_type)
    if schema is None:
        raise MessageError(f"unknown message type {msg_type!r}")
    check_fields(msg_type, schema, body)


def message_id(payload: bytes) -> bytes:
    return hashlib.sha256(MESSAGE_ID + payload).digest()


@dataclass(frozen=True)
class Signed:
    """A verified (or freshly signed) message."""

    type: str
    network: str
    body: dict[str, Any]
    payload: bytes
    sig: bytes

    # Both derive from the immutable payload and signature only, so each is computed once per
    # message: a task's id and a result's wire form are asked for at every step of every task.
    @functools.cached_property
    def id(self) -> bytes:
        return message_id(self.payload)

    @property
    def signer(self) -> bytes:
        return self.body[SIGNER_FIELD[self.type]]

    @functools.cached_property
    def _wire(self) -> bytes:
        return encode({"payload": self.payload, "sig": self.sig})

    def wire(self) -> bytes:
        return self._wire


def sign(identity: Identity, msg_type: str, network: str, body: dict[str, Any]) -> Signed:
    check_schema(msg_type, body)
    if body[SIGNER_FIELD[msg_type]] != identity.public_key:
        raise MessageError(f"{msg_type}.{SIGNER_FIELD[msg_type]} must be the signer's key")
    payload = signing_bytes(msg_type, network, body, VERSION)
    return Signed(msg_type, network, body, payload, identity.sign(payload))


def open_payload(payload: bytes, sig: bytes, msg_type: str, network: str) -> Signed:
    """Parse and verify a payload and its signature as `msg_type` on `network`."""
    msg = parse_payload(payload, sig, msg_type, network)
    if not verify(msg.signer, payload, sig):
        raise MessageError(f"{msg_type} signature is invalid", MessageError.BAD_SIGNATURE)
    return msg


def parse_payload(payload: bytes, sig: bytes, msg_type: str, network: str) -> Signed:
    """Parse a payload as `msg_type` on `network` WITHOUT checking the signature: only for
    callers that verify signatures separately (the audit, which verifies them in parallel)."""
    try:
        t, net, version, body = parse_signing_bytes(payload)
    except EncodingError as e:
        raise MessageError(f"malformed {msg_type}: {e}") from None
    if t != msg_type:
        raise MessageError(f"expected a {msg_type}, got a {t}", MessageError.WRONG_TYPE)
    if net != network:
        raise MessageError(f"{msg_type} is for network {net!r}, not {network!r}", MessageError.WRONG_NETWORK)
    if version != VERSION:
        raise MessageError(f"{msg_type} version {version} is not supported", MessageError.UNSUPPORTED_VERSION)
    check_schema(msg_type, body)
    return Signed(msg_type, network, body, payload, sig)


def open_wire(data: bytes, msg_type: str, network: str) -> Signed:
    """Decode a wire message, verifying everything before it is used."""
    try:
        env = decode(data)
    except EncodingError as e:
        raise MessageError(f"malformed {msg_type} envelope: {e}") from None
    if (
        not isinstance(env, dict)
        or set(env) != {"payload", "sig"}
        or not isinstance(env["payload"], bytes)
        or not isinstance(env["sig"], bytes)
    ):
        raise MessageError(f"malformed {msg_type} envelope")
    return open_payload(env["payload"], env["sig"], msg_type, network)
