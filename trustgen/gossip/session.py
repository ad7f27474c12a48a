"""Authenticated gossip sessions: one signed handshake per peer, then a MAC on every frame.

Signing each gossip message costs a ~340 B envelope (Request payload + Ed25519 signature), more
than a small ledger entry; a session pays it once. The client's hello is a signed Request for
Gossip/Session, checked by the same RequestGuard as every unary call (signature, method,
freshness, nonce replay), carrying an ephemeral X25519 key. The server answers with a signed
GossipAccept bound to the client's nonce and carrying its own ephemeral key. Both derive one
session key from the X25519 secret and both signed payloads, so each side knows the other's
long-term key (what gossip needs to pin bad entries on a peer) and every later frame carries a
16-byte keyed BLAKE2b tag over (direction, frame number, body): a frame cannot be forged,
replayed, reordered or moved into another session. Frames are not encrypted: the ledger is
public, and TLS adds confidentiality where it is wanted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum
from typing import Any

import grpc
import nacl.bindings
import nacl.exceptions
import nacl.public

from trustgen.consensus.domains import GOSSIP_SESSION as _PERSON  # BLAKE2b personalisation
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, open_payload, sign
from trustgen.net.auth import RequestGuard, RpcError
from trustgen.rpc import trustgen_pb2 as pb

METHOD = "/trustgen.v1.Gossip/Session"
TAG_BYTES = 16
HELLO_TIMEOUT_S = 10.0


class SessionCode(StrEnum):
    """Why a session failed; callers decide on this, never on the message text."""

    BAD_TAG = "bad_tag"  # a frame's MAC does not check: forged, replayed, reordered or moved
    MALFORMED = "malformed"  # an authentic frame whose body is not a usable GossipOp
    UNEXPECTED = "unexpected"  # a valid answer of the wrong kind for the request
    HANDSHAKE = "handshake"  # the server's accept is invalid, or the key exchange failed
    WRONG_KEY = "wrong_key"  # a valid server, but not the node we meant to reach
    ENDED_BY_PEER = "ended_by_peer"  # the server ended the stream instead of answering
    CLOSED = "closed"  # our end was already closed


class SessionError(Exception):
    """The session failed; `code` says how (see SessionCode)."""

    def __init__(self, code: SessionCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _shared_key(eph: nacl.public.PrivateKey, peer_eph: bytes, client_hello: bytes, accept: bytes) -> bytes:
    if len(peer_eph) != 32:
        raise SessionError(SessionCode.HANDSHAKE, "ephemeral key must be 32 bytes")
    try:
        secret = nacl.bindings.crypto_scalarmult(bytes(eph), peer_eph)
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError):
        raise SessionError(SessionCode.HANDSHAKE, "ephemeral key is a low-order point") from None
    if secret == bytes(32):
        raise SessionError(SessionCode.HANDSHAKE, "ephemeral key is a low-order point")
    transcript = hashlib.sha256(client_hello).digest() + hashlib.sha256(accept).digest()
    return hashlib.blake2b(secret + transcript, digest_size=32, person=_PERSON).digest()


class Framer:
    """Seals outgoing and opens incoming frames under the session key, counting frames in each
    direction, so the tag binds a frame to its place in the stream."""

    def __init__(self, key: bytes, client: bool, on_send: Callable[[int], None] | None = None) -> None:
        self.key = key
        self.out_dir, self.in_dir = (b"C", b"S") if client else (b"S", b"C")
        self.sent = self.received = 0
        self.on_send = on_send

    def _tag(self, direction: bytes, n: int, body: bytes) -> bytes:
        return hashlib.blake2b(
            direction + n.to_bytes(8, "big") + body, key=self.key, digest_size=TAG_BYTES, person=_PERSON
        ).digest()

    def seal(self, op: pb.GossipOp) -> pb.GossipFrame:
        return self.seal_body(op.SerializeToString())

    def seal_body(self, body: bytes) -> pb.GossipFrame:
        """Seal raw bytes as the next outgoing frame. `seal` is this for a GossipOp; bytes that are
        not one reach the other end authentic, and its `open` reports them as MALFORMED."""
        frame = pb.GossipFrame(body=body, tag=self._tag(self.out_dir, self.sent, body))
        self.sent += 1
        if self.on_send is not None:
            self.on_send(frame.ByteSize())
        return frame

    def open(self, frame: pb.GossipFrame) -> pb.GossipOp:
        expected = self._tag(self.in_dir, self.received, frame.body)
        if not hmac.compare_digest(frame.tag, expected):
            raise SessionError(SessionCode.BAD_TAG, f"frame {self.received} has a bad tag")
        self.received += 1
        op = pb.GossipOp()
        try:
            op.ParseFromString(frame.body)
        except Exception:  # protobuf's DecodeError; the tag was valid, so the peer sent garbage
            raise SessionError(SessionCode.MALFORMED, "frame body is not a GossipOp") from None
        if op.WhichOneof("op") is None:
            raise SessionError(SessionCode.MALFORMED, "frame carries no operation")
        return op


# -- client --------------------------------------------------------------------------------------


class ClientSession:
    """The client end: `request()` sends one op and returns the server's answer; requests are
    serialised, so answers pair with requests by order."""

    def __init__(self, call: Any, framer: Framer, peer_key: bytes) -> None:
        self.call, self.framer, self.peer_key = call, framer, peer_key
        # Feeds announced on this session, by the number the client gave each (index + 1).
        self.feed_ids: dict[bytes, int] = {}
        self.announced: list[bytes] = []
        self._lock = asyncio.Lock()
        self.closed = False

    @classmethod
    async def open(
        cls,
        stub: Any,
        identity: Identity,
        network: str,
        expect_key: bytes | None = None,
        on_send: Callable[[int], None] | None = None,
        timeout: float = HELLO_TIMEOUT_S,
    ) -> ClientSession:
        """Handshake over a new Session stream. Raises grpc.aio.AioRpcError (transport or
        refusal), asyncio.TimeoutError, or SessionError (the server's answer is not valid, or it
        is not the node `expect_key` names)."""
        eph = nacl.public.PrivateKey.generate()
        nonce = os.urandom(16)
        hello = sign(
            identity,
            "Request",
            network,
            {
                "sender": identity.public_key,
                "method": METHOD,
                "nonce": nonce,
                "time": int(time.time() * 1000),
                "args": {"eph": bytes(eph.public_key)},
            },
        )
        call = stub.Session()
        try:
            frame = pb.GossipFrame(body=hello.payload, tag=hello.sig)
            await asyncio.wait_for(call.write(frame), timeout)
            if on_send is not None:
                on_send(frame.ByteSize())
            reply = await asyncio.wait_for(call.read(), timeout)
            if reply is grpc.aio.EOF:
                raise SessionError(SessionCode.HANDSHAKE, "server closed the session during the handshake")
            try:
                accept = open_payload(reply.body, reply.tag, "GossipAccept", network)
            except MessageError as e:
                raise SessionError(SessionCode.HANDSHAKE, f"bad accept: {e}") from None
            if accept.body["client_nonce"] != nonce:
                raise SessionError(SessionCode.HANDSHAKE, "accept is not for this hello")
            server = accept.body["server"]
            if expect_key is not None and server != expect_key:
                raise SessionError(SessionCode.WRONG_KEY, "the node at this address has another key")
            key = _shared_key(eph, accept.body["eph"], hello.payload, accept.payload)
        except BaseException:
            call.cancel()
            raise
        return cls(call, Framer(key, client=True, on_send=on_send), server)

    def feed_id(self, feed: bytes) -> tuple[int, bool]:
        """The number of `feed` on this session, and whether it is new (the announcement must
        then carry the key too)."""
        n = self.feed_ids.get(feed)
        if n is not None:
            return n, False
        self.announced.append(feed)
        n = self.feed_ids[feed] = len(self.announced)
        return n, True

    async def request(self, op: pb.GossipOp | Callable[[ClientSession], pb.GossipOp], timeout: float) -> pb.GossipOp:
        """Send `op` (or the op `op(self)` builds: session-numbered announcements) and return the
        answer."""
        async with self._lock:
            if self.closed:
                raise SessionError(SessionCode.CLOSED, "session is closed")
            try:
                if callable(op):
                    op = op(self)
                try:
                    await asyncio.wait_for(self.call.write(self.framer.seal(op)), timeout)
                    frame = await asyncio.wait_for(self.call.read(), timeout)
                except asyncio.InvalidStateError:  # the call already finished: read its status
                    frame = await asyncio.wait_for(self.call.read(), timeout)
                if frame is grpc.aio.EOF:
                    raise SessionError(SessionCode.ENDED_BY_PEER, "server ended the session")
                return self.framer.open(frame)
            except BaseException:
                # After a timeout or a bad frame, answers no longer pair with requests.
                self.close()
                raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.call.cancel()


# -- server --------------------------------------------------------------------------------------


def _retrieve(f: asyncio.Future) -> None:
    if not f.cancelled():
        f.exception()


async def _next(
    frames: AsyncIterator[pb.GossipFrame], timeout: float, stop: asyncio.Event | None = None
) -> pb.GossipFrame | None:
    """The next frame; None when the stream ended or `stop` was set first."""
    read = asyncio.ensure_future(frames.__anext__())
    read.add_done_callback(_retrieve)  # a read cancelled as it ended must not log "never retrieved"
    waits = {read} if stop is None else {read, asyncio.ensure_future(stop.wait())}
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            if not w.done():
                w.cancel()
    if read not in done:
        if stop is not None and stop.is_set():
            return None
        raise TimeoutError
    try:
        return read.result()
    except StopAsyncIteration:
        return None


async def accept(
    frames: AsyncIterator[pb.GossipFrame],
    guard: RequestGuard,
    identity: Identity,
    network: str,
    on_send: Callable[[int], None] | None = None,
    timeout: float = HELLO_TIMEOUT_S,
) -> tuple[bytes, Framer, pb.GossipFrame] | None:
    """Check the client's hello; return (client key, framer, accept frame to send), or None if
    the client left. Raises RpcError with the status to end the stream with."""
    try:
        first = await _next(frames, timeout)
    except TimeoutError:
        raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within the handshake timeout") from None
    if first is None:
        return None
    hello = guard.open(pb.SignedRequest(payload=first.body, signature=first.tag), METHOD)
    peer_eph = hello.body["args"].get("eph")
    if not isinstance(peer_eph, bytes) or len(peer_eph) != 32 or len(hello.body["args"]) != 1:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "hello args must be exactly {eph: 32 bytes}")
    eph = nacl.public.PrivateKey.generate()
    acc = sign(
        identity,
        "GossipAccept",
        network,
        {"server": identity.public_key, "client_nonce": hello.body["nonce"], "eph": bytes(eph.public_key)},
    )
    try:
        key = _shared_key(eph, peer_eph, hello.payload, acc.payload)
    except SessionError as e:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    frame = pb.GossipFrame(body=acc.payload, tag=acc.sig)
    if on_send is not None:
        on_send(frame.ByteSize())
    return hello.body["sender"], Framer(key, client=False, on_send=on_send), frame


async def frames_in(
    frames: AsyncIterator[pb.GossipFrame],
    framer: Framer,
    idle_s: float,
    max_frame: int,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[pb.GossipOp]:
    """The client's requests, opened and checked; ends when the client closes the stream, is
    idle for `idle_s`, or `stop` is set. Raises RpcError for an oversized or unauthentic frame."""
    while True:
        try:
            frame = await _next(frames, idle_s, stop)
        except TimeoutError:
            return
        if frame is None:
            return
        if frame.ByteSize() > max_frame:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"frame over {max_frame} bytes")
        try:
            yield framer.open(frame)
        except SessionError as e:
            code = (
                grpc.StatusCode.UNAUTHENTICATED if e.code is SessionCode.BAD_TAG else grpc.StatusCode.INVALID_ARGUMENT
            )
            raise RpcError(code, str(e)) from None
