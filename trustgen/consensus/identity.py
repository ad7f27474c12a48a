"""Ed25519 identities (PyNaCl): key files with mode 0600, optional passphrase encryption.

The private key never appears in a repr, a log line or an exception message. Verification is
cached by (key, sha256(message), signature), since PyNaCl has no batch verification and the same
signed message (a vote inside a certificate, say) is checked again and again.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import stat
from collections import OrderedDict

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from trustgen.errors import TrustgenError

KEY_FILE = "node.key"
_VERIFIED: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_CACHE_MAX = 200_000


class KeyFileError(TrustgenError):
    """A key file that is missing, unreadable, too open, or needs another passphrase."""


class Identity:
    """A node's or client's signing key."""

    __slots__ = ("_sk",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._sk = signing_key

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity, for test vectors and reproducible local clusters only."""
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self._sk.verify_key)

    @property
    def node_id(self) -> str:
        return self.public_key.hex()

    def sign(self, message: bytes) -> bytes:
        return self._sk.sign(message).signature

    def __repr__(self) -> str:
        return f"Identity({self.node_id[:16]}…)"

    # -- files -------------------------------------------------------------------------------

    def save(self, home: pathlib.Path, passphrase: bytes | None = None) -> pathlib.Path:
        home = pathlib.Path(home)
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = home / KEY_FILE
        seed = bytes(self._sk)
        if passphrase:
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            key = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE,
                passphrase,
                salt,
                opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
                memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
            )
            doc = {
                "version": 1,
                "kdf": "argon2id",
                "salt": salt.hex(),
                "public_key": self.node_id,
                "sealed": nacl.secret.SecretBox(key).encrypt(seed).hex(),
            }
        else:
            doc = {"version": 1, "public_key": self.node_id, "seed": seed.hex()}
        # Create with 0600 from the start: a chmod after writing leaves a window.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        return path

    @classmethod
    def load(cls, home: pathlib.Path, passphrase: bytes | None = None) -> Identity:
        path = pathlib.Path(home) / KEY_FILE
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            raise KeyFileError(f"no key file at {path} (create one with `trustgen keys new`)") from None
        if mode & 0o077:
            raise KeyFileError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            doc = json.loads(path.read_text())
            if "sealed" in doc:
                if not passphrase:
                    raise KeyFileError(f"{path} is encrypted: a passphrase is needed")
                key = nacl.pwhash.argon2id.kdf(
                    nacl.secret.SecretBox.KEY_SIZE,
                    passphrase,
                    bytes.fromhex(doc["salt"]),
                    opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
                    memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
                )
                seed = nacl.secret.SecretBox(key).decrypt(bytes.fromhex(doc["sealed"]))
            else:
                seed = bytes.fromhex(doc["seed"])
            ident = cls(nacl.signing.SigningKey(seed))
        except nacl.exceptions.CryptoError:
            raise KeyFileError(f"{path}: wrong passphrase") from None
        except (ValueError, KeyError, TypeError):
            raise KeyFileError(f"{path} is not a trustgen key file") from None
        if ident.node_id != doc.get("public_key"):
            raise KeyFileError(f"{path}: stored public key does not match the private key")
        return ident


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` by `public_key` over `message` is valid. Cached."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    k = (public_key, hashlib.sha256(message).digest(), signature)
    if k in _VERIFIED:
        _VERIFIED.move_to_end(k)
        return True
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    _VERIFIED[k] = None
    if len(_VERIFIED) > _CACHE_MAX:
        _VERIFIED.popitem(last=False)
    return True
