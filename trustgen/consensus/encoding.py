"""Canonical, deterministic, domain-separated byte encoding for everything that is signed.

Every value has exactly one encoding and the decoder refuses anything else (unsorted or
duplicate keys, trailing bytes, non-minimal forms, NaN), so `encode(decode(b)) == b` for every
`b` the decoder accepts. Signed bytes start with a header naming the message type, the network
and the schema version: a signature made for one (type, network) never verifies as another.

Value grammar (all integers big-endian):
    0x00 None | 0x01 False | 0x02 True
    0x03 int     8-byte two's complement (int64 range only)
    0x04 float   8-byte IEEE-754 double (finite only)
    0x05 bytes   u32 length + raw
    0x06 str     u32 length + UTF-8
    0x07 list    u32 count + values
    0x08 dict    u32 count + (str key, value) pairs, keys sorted by their UTF-8 bytes, unique
"""

from __future__ import annotations

import math
import struct
from typing import Any

from trustgen.consensus.domains import SIGNED_MAGIC

MAGIC = SIGNED_MAGIC
MAX_DEPTH = 32
MAX_LEN = 64 * 1024 * 1024


class EncodingError(ValueError):
    """Bytes that are not the canonical encoding of a value, or a value that has none."""


def _enc(v: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError("nesting too deep")
    if v is None:
        out += b"\x00"
    elif v is True:
        out += b"\x02"
    elif v is False:
        out += b"\x01"
    elif isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise EncodingError(f"integer {v} outside int64")
        out += b"\x03" + struct.pack(">q", v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise EncodingError("non-finite float")
        out += b"\x04" + struct.pack(">d", v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out += b"\x05" + struct.pack(">I", len(b)) + b
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out += b"\x06" + struct.pack(">I", len(b)) + b
    elif isinstance(v, (list, tuple)):
        out += b"\x07" + struct.pack(">I", len(v))
        for item in v:
            _enc(item, out, depth + 1)
    elif isinstance(v, dict):
        keys = []
        for k in v:
            if not isinstance(k, str):
                raise EncodingError(f"dict key {k!r} is not a string")
            keys.append((k.encode("utf-8"), k))
        keys.sort()
        out += b"\x08" + struct.pack(">I", len(keys))
        for kb, k in keys:
            out += b"\x06" + struct.pack(">I", len(kb)) + kb
            _enc(v[k], out, depth + 1)
    else:
        raise EncodingError(f"cannot encode {type(v).__name__}")


def encode(value: Any) -> bytes:
    out = bytearray()
    _enc(value, out, 0)
    return bytes(out)


_U32 = struct.Struct(">I").unpack_from
_I64 = struct.Struct(">q").unpack_from
_F64 = struct.Struct(">d").unpack_from


def _truncated(pos: int) -> EncodingError:
    return EncodingError(f"truncated at byte {pos}")


def _length(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise _truncated(pos)
    n = _U32(data, pos)[0]
    if n > MAX_LEN:
        raise EncodingError(f"length {n} too large")
    return n


def _dec(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """The value at `pos` and the position after it. One function with offsets, no reader
    object: decoding is on every hop of every task (each entry, task, result and vote), and a
    method call per field was most of its cost."""
    if depth > MAX_DEPTH:
        raise EncodingError("nesting too deep")
    end = len(data)
    if pos >= end:
        raise _truncated(pos)
    tag = data[pos]
    pos += 1
    if tag == 3:
        if pos + 8 > end:
            raise _truncated(pos)
        return _I64(data, pos)[0], pos + 8
    if tag == 5 or tag == 6:
        n = _length(data, pos)
        pos += 4
        if pos + n > end:
            raise _truncated(pos)
        raw = data[pos : pos + n]
        if tag == 5:
            return raw, pos + n
        try:
            return raw.decode("utf-8"), pos + n
        except UnicodeDecodeError:
            raise EncodingError("invalid UTF-8") from None
    if tag == 7:
        n = _length(data, pos)
        pos += 4
        items = []
        for _ in range(n):
            v, pos = _dec(data, pos, depth + 1)
            items.append(v)
        return items, pos
    if tag == 8:
        n = _length(data, pos)
        pos += 4
        result: dict[str, Any] = {}
        prev: bytes | None = None
        for _ in range(n):
            if pos >= end:
                raise _truncated(pos)
            if data[pos] != 6:
                raise EncodingError("dict key is not a string")
            k = _length(data, pos + 1)
            pos += 5
            if pos + k > end:
                raise _truncated(pos)
            kb = data[pos : pos + k]
            pos += k
            if prev is not None and kb <= prev:
                raise EncodingError("dict keys not sorted or duplicated")
            prev = kb
            try:
                key = kb.decode("utf-8")
            except UnicodeDecodeError:
                raise EncodingError("invalid UTF-8 in key") from None
            result[key], pos = _dec(data, pos, depth + 1)
        return result, pos
    if tag == 0:
        return None, pos
    if tag == 1 or tag == 2:
        return tag == 2, pos
    if tag == 4:
        if pos + 8 > end:
            raise _truncated(pos)
        f = _F64(data, pos)[0]
        if not math.isfinite(f):
            raise EncodingError("non-finite float")
        return f, pos + 8
    raise EncodingError(f"unknown tag 0x{tag:02x} at byte {pos - 1}")


def decode(data: bytes) -> Any:
    data = bytes(data)  # a no-op for bytes; slices of a bytearray or memoryview must come out as bytes
    v, pos = _dec(data, 0, 0)
    if pos != len(data):
        raise EncodingError(f"{len(data) - pos} trailing bytes")
    return v


def _is_int(v: Any) -> bool:
    """A real integer: bool is an int subclass in Python (True == 1), but `true` and `1` are two
    encodings, and accepting both would give one message two payloads and two ids."""
    return isinstance(v, int) and not isinstance(v, bool)


def signing_bytes(msg_type: str, network: str, body: dict[str, Any], version: int = 1) -> bytes:
    """The exact bytes a signature covers: magic, type, network, version, then the body."""
    if not _is_int(version):
        raise EncodingError(f"version must be an integer, not {type(version).__name__}")
    return MAGIC + encode([msg_type, network, version, body])


def parse_signing_bytes(data: bytes) -> tuple[str, str, int, dict[str, Any]]:
    if not data.startswith(MAGIC):
        raise EncodingError("missing trustgen magic")
    data = bytes(data)
    v, pos = _dec(data, len(MAGIC), 0)  # from the offset: no copy of the payload
    if pos != len(data):
        raise EncodingError(f"{len(data) - pos} trailing bytes")
    if (
        not isinstance(v, list)
        or len(v) != 4
        or not isinstance(v[0], str)
        or not isinstance(v[1], str)
        or not _is_int(v[2])
        or not isinstance(v[3], dict)
    ):
        raise EncodingError("header is not [type, network, version, body]")
    return v[0], v[1], v[2], v[3]
