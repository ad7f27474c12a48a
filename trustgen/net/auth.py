"""Authentication of node-to-node and client requests.

A request is a signed `Request` message: {sender, method, nonce, time, args}. The server checks,
in order: well-formed (INVALID_ARGUMENT), signature (UNAUTHENTICATED), that it was signed for
this very RPC method (PERMISSION_DENIED), freshness within the clock-skew window
(UNAUTHENTICATED) and that the (sender, nonce) pair is new (ALREADY_EXISTS): a captured request
cannot be replayed, even to another method or node of the same network.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_payload, sign
from trustgen.rpc import trustgen_pb2 as pb

MAX_SKEW_MS = 120_000
_NONCE_CACHE = 200_000


class RpcError(Exception):
    """A domain error with the gRPC status it maps to (servicers abort with it)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def make_request(identity: Identity, network: str, method: str, args: dict[str, Any]) -> pb.SignedRequest:
    msg = sign(
        identity,
        "Request",
        network,
        {
            "sender": identity.public_key,
            "method": method,
            "nonce": os.urandom(16),
            "time": int(time.time() * 1000),
            "args": args,
        },
    )
    return pb.SignedRequest(payload=msg.payload, signature=msg.sig)


class RequestGuard:
    """Verifies requests for one node; remembers nonces for the skew window."""

    def __init__(self, network: str) -> None:
        self.network = network
        self._seen: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()

    def open(self, req: pb.SignedRequest, method: str) -> Signed:
        if not req.payload or not req.signature:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "unsigned request")
        try:
            msg = open_payload(req.payload, req.signature, "Request", self.network)
        except MessageError as e:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if e.code in MessageError.AUTH_CODES
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            raise RpcError(code, str(e)) from None
        b = msg.body
        if b["method"] != method:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, f"request was signed for {b['method']}, not {method}")
        now = int(time.time() * 1000)
        if abs(now - b["time"]) > MAX_SKEW_MS:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "request time outside the allowed clock skew")
        if len(b["nonce"]) < 8:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "nonce too short")
        key = (b["sender"], b["nonce"])
        if key in self._seen:
            raise RpcError(grpc.StatusCode.ALREADY_EXISTS, "replayed request (nonce already used)")
        self._seen[key] = now
        while self._seen and (
            len(self._seen) > _NONCE_CACHE or next(iter(self._seen.values())) < now - 2 * MAX_SKEW_MS
        ):
            self._seen.popitem(last=False)
        return msg
