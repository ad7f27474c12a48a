"""Admission: who may take part in a network, and in which roles.

A network starts from a genesis: a message signed by its founder naming the admission
authorities and the initial members (key, roles, host, optional TLS certificate pin). An
authority admits more keys with a signed Admission (one authority action; every key in it shares
that action) and removes keys with a signed Revocation. Both are carried in ledger entries
(`Admitted`, `Revoked`) of any feed: they are self-authenticating, so who carries them does not
matter. `AdmissionState` answers "is key K admitted for role R" from the genesis and the entries
it was fed, in any order: admissions add roles, revocations are permanent.

`AdmissionState(None)` is an open network (every key admitted): what a gateway configured with
`open_network = true` runs, for single-process tests and development only.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from trustgen.consensus.encoding import EncodingError, decode, parse_signing_bytes
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Entry, Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.errors import TrustgenError

ROLES = ("gateway", "worker", "verifier", "trainer")
MAX_MEMBERS = 1024  # per genesis or admission: bounds what one message makes a node hold
MAX_AUTHORITIES = 64
MAX_HOST = 253  # a DNS name's length
DEFAULT_PROBATION = 5  # agreements with the majority before a verifier admitted later leaves probation
MAX_PROBATION = 1000
_CERT_PIN = re.compile(r"^([0-9a-f]{64})?$")


class AdmissionError(TrustgenError):
    """A genesis, admission or revocation that does not hold; `code` says why."""

    MALFORMED = "malformed"
    NOT_AUTHORITY = "not_authority"
    WRONG_NETWORK = "wrong_network"

    def __init__(self, message: str, code: str = MALFORMED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Member:
    key: bytes
    roles: tuple[str, ...]
    host: str = ""  # who runs it where, as the authority attests; "" when not stated
    cert: str = ""  # cert_pin of the member's TLS certificate, or ""

    def to_body(self) -> dict[str, Any]:
        return {"key": self.key, "roles": list(self.roles), "host": self.host, "cert": self.cert}

    @classmethod
    def from_body(cls, m: Any) -> Member:
        if not isinstance(m, dict) or set(m) != {"key", "roles", "host", "cert"}:
            raise AdmissionError("a member is a map of key, roles, host, cert")
        key, roles, host, cert = m["key"], m["roles"], m["host"], m["cert"]
        if not (isinstance(key, bytes) and len(key) == 32):
            raise AdmissionError("member key must be 32 bytes")
        if not (isinstance(roles, list) and roles and len(roles) <= len(ROLES) and all(r in ROLES for r in roles)):
            raise AdmissionError(f"member roles must be some of {', '.join(ROLES)}")
        if not (isinstance(host, str) and len(host) <= MAX_HOST):
            raise AdmissionError(f"member host must be a string of at most {MAX_HOST} characters")
        if not (isinstance(cert, str) and _CERT_PIN.match(cert)):
            raise AdmissionError("member cert must be a sha256 hex digest or empty")
        return cls(key, tuple(sorted(set(roles))), host, cert)


def cert_pin(pem: bytes) -> str:
    """The pin of a TLS certificate: sha256 hex of its DER bytes (what a peer serves, whatever
    PEM layout the file had)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise AdmissionError("not a PEM certificate") from None
    return hashlib.sha256(der).hexdigest()


def pinned_cert(genesis: Genesis, key: bytes) -> str:
    """The pin the genesis gives `key`'s TLS certificate, or "" when it pins none."""
    return next((m.cert for m in genesis.members if m.key == key and m.cert), "")


def _members(raw: Any) -> list[Member]:
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_MEMBERS:
        raise AdmissionError(f"1..{MAX_MEMBERS} members are needed")
    return [Member.from_body(m) for m in raw]


def _network_of(data: bytes) -> str:
    try:
        env = decode(data)
        return parse_signing_bytes(env["payload"])[1]
    except (EncodingError, KeyError, TypeError) as e:
        raise AdmissionError(f"not a signed trustgen message: {e}") from None


@dataclass(frozen=True)
class Genesis:
    network: str
    founder: bytes
    authorities: frozenset[bytes]
    members: tuple[Member, ...]
    probation: int  # agreements with the majority a verifier admitted later needs to leave probation
    signed: Signed

    @property
    def id(self) -> bytes:
        return self.signed.id

    def wire(self) -> bytes:
        return self.signed.wire()

    @classmethod
    def parse(cls, data: bytes, network: str | None = None) -> Genesis:
        """Verify a genesis fully (signature, founder among the authorities, members)."""
        net = _network_of(data) if network is None else network
        try:
            msg = open_wire(data, "Genesis", net)
        except MessageError as e:
            code = AdmissionError.WRONG_NETWORK if e.code == MessageError.WRONG_NETWORK else AdmissionError.MALFORMED
            raise AdmissionError(f"genesis refused: {e}", code) from None
        b = msg.body
        auth = b["authorities"]
        if not (isinstance(auth, list) and 1 <= len(auth) <= MAX_AUTHORITIES):
            raise AdmissionError(f"genesis needs 1..{MAX_AUTHORITIES} authorities")
        if not all(isinstance(a, bytes) and len(a) == 32 for a in auth):
            raise AdmissionError("authorities are 32-byte keys")
        if b["founder"] not in auth:
            raise AdmissionError("the genesis founder must be an authority", AdmissionError.NOT_AUTHORITY)
        if not 0 <= b["probation"] <= MAX_PROBATION:
            raise AdmissionError(f"genesis probation must be in [0, {MAX_PROBATION}]")
        return cls(net, b["founder"], frozenset(auth), tuple(_members(b["members"])), b["probation"], msg)

    @classmethod
    def load(cls, path: pathlib.Path | str, network: str | None = None) -> Genesis:
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as e:
            raise AdmissionError(f"cannot read genesis {path}: {e.strerror}") from None
        return cls.parse(data, network)

    def save(self, path: pathlib.Path | str) -> None:
        pathlib.Path(path).write_bytes(self.wire())


def make_genesis(
    founder: Identity,
    network: str,
    members: list[Member],
    authorities: Iterable[bytes] = (),
    probation: int = DEFAULT_PROBATION,
) -> Genesis:
    auth = sorted({founder.public_key, *authorities})
    body = {
        "founder": founder.public_key,
        "authorities": auth,
        "members": [m.to_body() for m in members],
        "probation": probation,
        "time": _now(),
    }
    return Genesis.parse(sign(founder, "Genesis", network, body).wire(), network)


def make_admission(authority: Identity, network: str, members: list[Member]) -> Signed:
    body = {"authority": authority.public_key, "members": [m.to_body() for m in members], "time": _now()}
    return sign(authority, "Admission", network, body)


def make_revocation(authority: Identity, network: str, keys: list[bytes]) -> Signed:
    return sign(authority, "Revocation", network, {"authority": authority.public_key, "keys": keys, "time": _now()})


def _now() -> int:
    return int(time.time() * 1000)


def open_admission(genesis: Genesis, data: bytes) -> tuple[Signed, list[Member]]:
    """An Admission by one of the genesis authorities, verified; raises AdmissionError."""
    msg = _open(genesis, data, "Admission")
    return msg, _members(msg.body["members"])


def open_revocation(genesis: Genesis, data: bytes) -> tuple[Signed, list[bytes]]:
    msg = _open(genesis, data, "Revocation")
    keys = msg.body["keys"]
    if not (isinstance(keys, list) and 1 <= len(keys) <= MAX_MEMBERS):
        raise AdmissionError(f"a revocation names 1..{MAX_MEMBERS} keys")
    if not all(isinstance(k, bytes) and len(k) == 32 for k in keys):
        raise AdmissionError("revoked keys are 32-byte keys")
    return msg, list(keys)


def _open(genesis: Genesis, data: bytes, msg_type: str) -> Signed:
    try:
        msg = open_wire(data, msg_type, genesis.network)
    except MessageError as e:
        code = AdmissionError.WRONG_NETWORK if e.code == MessageError.WRONG_NETWORK else AdmissionError.MALFORMED
        raise AdmissionError(f"{msg_type.lower()} refused: {e}", code) from None
    if msg.signer not in genesis.authorities:
        raise AdmissionError(f"{msg_type.lower()} is not signed by an authority", AdmissionError.NOT_AUTHORITY)
    return msg


@dataclass
class _Record:
    roles: set[str]
    actions: set[bytes]  # the genesis id or the admission ids that admitted the key
    hosts: set[str]
    initial: bool  # a genesis member (never on probation)


class AdmissionState:
    """Who is admitted, from a genesis and the Admitted / Revoked entries fed to it."""

    def __init__(self, genesis: Genesis | None) -> None:
        self.genesis = genesis
        self._records: dict[bytes, _Record] = {}
        self._revoked: set[bytes] = set()
        self._seen: set[bytes] = set()
        if genesis is not None:
            for m in genesis.members:
                self._admit(m, genesis.id, initial=True)

    @property
    def open(self) -> bool:
        return self.genesis is None

    @classmethod
    def from_ledger(cls, ledger: Ledger, genesis: Genesis | None) -> AdmissionState:
        """The admission state at the ledger's current contents."""
        state = cls(genesis)
        for t in ("Admitted", "Revoked"):
            for e in ledger.iter_entries(entry_type=t):
                state.add(e)
        return state

    @classmethod
    def from_entries(cls, entries: Iterable[Entry], genesis: Genesis | None) -> AdmissionState:
        state = cls(genesis)
        for e in entries:
            state.add(e)
        return state

    def _admit(self, m: Member, action: bytes, initial: bool) -> None:
        r = self._records.setdefault(m.key, _Record(set(), set(), set(), False))
        r.roles.update(m.roles)
        r.actions.add(action)
        if m.host:
            r.hosts.add(m.host)
        r.initial = r.initial or initial

    def add(self, e: Entry) -> str | None:
        """Feed one entry; other types are ignored. Returns why an Admitted or Revoked entry
        does not hold (the audit reports it), or None."""
        if e.type not in ("Admitted", "Revoked") or self.genesis is None:
            return None
        try:
            if e.type == "Admitted":
                msg, members = open_admission(self.genesis, e.body["admission"])
                if msg.id not in self._seen:
                    self._seen.add(msg.id)
                    for m in members:
                        self._admit(m, msg.id, initial=False)
            else:
                _, keys = open_revocation(self.genesis, e.body["revocation"])
                self._revoked.update(keys)
        except AdmissionError as err:
            return str(err)
        return None

    def admitted(self, key: bytes, role: str) -> bool:
        """Is `key` admitted for `role` now (and not revoked)?"""
        if self.genesis is None:
            return True
        r = self._records.get(key)
        return r is not None and role in r.roles and key not in self._revoked

    def ever_admitted(self, key: bytes, role: str) -> bool:
        """Was `key` admitted for `role` at some point (revoked or not): what an auditor can demand
        of a past vote or result without knowing when it was cast."""
        if self.genesis is None:
            return True
        r = self._records.get(key)
        return r is not None and role in r.roles

    def member(self, key: bytes) -> bool:
        """Was `key` ever admitted, in any role? Feeds of other keys are strangers' noise."""
        return self.genesis is None or key in self._records

    def admitted_keys(self, role: str) -> set[bytes]:
        return {k for k, r in self._records.items() if role in r.roles and k not in self._revoked}

    def initial(self, key: bytes) -> bool:
        """A genesis member: trusted from the start, never on probation."""
        if self.genesis is None:
            return True
        r = self._records.get(key)
        return r is not None and r.initial

    def groups(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """Each key's group: keys admitted by one authority action or sharing a host are linked,
        and a group is a connected set of links (so an attacker cannot chain identities past the
        rule). Groups are named by a hash of their smallest key; an open network groups nothing."""
        keys = sorted(set(keys))
        parent = {k: k for k in keys}

        def find(k: bytes) -> bytes:
            while parent[k] != k:
                parent[k] = parent[parent[k]]
                k = parent[k]
            return k

        if self.genesis is not None:
            first: dict[Any, bytes] = {}
            for k in keys:
                r = self._records.get(k)
                if r is None:
                    continue
                # The genesis is no common action: its members were each vetted by the founder.
                links = [("a", a) for a in r.actions if a != self.genesis.id] + [("h", h) for h in r.hosts]
                for link in links:
                    other = first.setdefault(link, k)
                    a, b = find(k), find(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        return {k: hashlib.sha256(find(k)).digest() for k in keys}
