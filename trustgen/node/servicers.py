"""gRPC servicers: thin. Each opens the signed request, calls a role function, and maps domain
errors to status codes. Nothing a peer sends can raise out of here: unexpected errors become
INTERNAL and are logged (a traceback at most once a minute per method), and the node keeps
serving. Undecodable request bytes are answered INVALID_ARGUMENT (DecodeGuard) and storage faults
RESOURCE_EXHAUSTED or UNAVAILABLE, each logged as one line; what a peer causes is logged one line
per peer per minute (trustgen.logs.PeerLog): a hostile peer or a full disk must not fill the log."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from trustgen.consensus.encoding import encode
from trustgen.errors import TrustgenError
from trustgen.gossip.blobs import CHUNK
from trustgen.logs import PeerLog
from trustgen.net.auth import RequestGuard, RpcError
from trustgen.net.peers import full_method
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

log = logging.getLogger("trustgen.node")


_REFUSED = (RpcError, TrustgenError, ValueError, TypeError, KeyError)
PEER_LOG = PeerLog(log)  # one per process: a peer's lines are limited across all its requests
STORAGE_LOG = PeerLog(log, level=logging.ERROR)  # keyed by method
_BUG_LOG: dict[str, float] = {}  # method -> when its last traceback was logged
BUG_LOG_EVERY_S = 60.0


def _refusal(name: str, e: Exception, peer: str) -> tuple[grpc.StatusCode, str]:
    """The status for an error a handler raised over what a peer sent."""
    if isinstance(e, RpcError):
        return e.code, str(e)
    if isinstance(e, TrustgenError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    PEER_LOG.warning(peer, "%s: bad request from %s: %r", name, peer, e)  # a peer's odd values reaching a handler
    return grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {e}"


def _internal(name: str, e: Exception) -> tuple[grpc.StatusCode, str]:
    """A bug reached by a request: INTERNAL (never UNKNOWN), its traceback logged at most once a
    minute per method so a peer that found it cannot flood the log with it."""
    now = time.monotonic()
    if now - _BUG_LOG.get(name, float("-inf")) >= BUG_LOG_EVERY_S:
        _BUG_LOG[name] = now
        log.error("%s: internal error", name, exc_info=e)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"


_STORAGE = (sqlite3.OperationalError, OSError)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _storage_fault(name: str, e: Exception) -> tuple[grpc.StatusCode, str]:
    """The status for a local storage failure: the request may succeed later, elsewhere or after
    space is freed, so it is not the peer's fault (never INVALID_ARGUMENT) nor UNKNOWN."""
    full = "database or disk is full" in str(e) or getattr(e, "errno", None) in _FULL
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.UNAVAILABLE
    # One line, no traceback, at most one a minute per method: a full disk answers every request.
    STORAGE_LOG.warning(name, "%s: storage fault: %s: %s", name, type(e).__name__, e)
    return code, f"node storage {'full' if full else 'unavailable'}: {e}"


def guarded(service: str, method: str, opens: bool = True) -> Callable:
    """Open the request for `service/method` (unless the handler authenticates a stream itself:
    `opens=False`), run the handler, unary or streaming, and map errors to statuses."""
    name = full_method(service, method)

    def wrap(fn: Callable) -> Callable:
        def arg(self, request: Any) -> Any:
            return self.guard.open(request, name) if opens else request

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    async for item in fn(self, arg(self, request), context):
                        yield item
                except _REFUSED as e:
                    await self._refuse(context, *_refusal(name, e, context.peer()))
                except _STORAGE as e:
                    if isinstance(e, TimeoutError):  # an OSError, but not storage: let it be
                        raise
                    await self._refuse(context, *_storage_fault(name, e))
                except Exception as e:
                    if _aborted(e):
                        raise
                    await self._refuse(context, *_internal(name, e))

            return stream

        @functools.wraps(fn)
        async def unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, arg(self, request), context)
            except _REFUSED as e:
                await self._refuse(context, *_refusal(name, e, context.peer()))
            except _STORAGE as e:
                if isinstance(e, TimeoutError):
                    raise
                await self._refuse(context, *_storage_fault(name, e))
            except Exception as e:
                if _aborted(e):
                    raise
                await self._refuse(context, *_internal(name, e))

        return unary

    return wrap


def _aborted(e: Exception) -> bool:
    """gRPC's own abort (context.abort raises it to end the handler) is not an error of ours."""
    return isinstance(e, (grpc.aio.AbortError, TimeoutError))


class _Undecodable(RpcError):
    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message")


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Decodes requests to our services inside the handler instead of in gRPC's deserializer,
    which answers undecodable bytes UNKNOWN and logs a traceback per message. Here they are
    answered INVALID_ARGUMENT, and logged one line per peer per `log_every_s` at most."""

    def __init__(self, prefix: str = "/trustgen.v1.", metrics: Any = None, log_every_s: float = 60.0) -> None:
        self.prefix, self.metrics = prefix, metrics
        self._log = PeerLog(log, log_every_s)

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not details.method.startswith(self.prefix):
            return handler
        decode, method = handler.request_deserializer, details.method
        if handler.request_streaming:
            inner = handler.stream_stream or handler.stream_unary

            async def frames(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for data in raw:
                    yield self._decode(decode, data, method, context)

            if handler.response_streaming:

                async def stream_stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                    try:
                        async for item in inner(frames(raw, context), context):
                            yield item
                    except _Undecodable as e:  # a handler that did not map it itself
                        await self._abort(context, e)

                return grpc.stream_stream_rpc_method_handler(
                    stream_stream, response_serializer=handler.response_serializer
                )

            async def stream_unary(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(frames(raw, context), context)
                except _Undecodable as e:
                    await self._abort(context, e)

            return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=handler.response_serializer)

        if handler.response_streaming:
            inner = handler.unary_stream

            async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    request = self._decode(decode, raw, method, context)
                except _Undecodable as e:
                    await self._abort(context, e)
                async for item in inner(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=handler.response_serializer)

        inner = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = self._decode(decode, raw, method, context)
            except _Undecodable as e:
                await self._abort(context, e)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=handler.response_serializer)

    def _decode(self, decode: Callable[[bytes], Any], data: bytes, method: str, context: Any) -> Any:
        try:
            return decode(data)
        except DecodeError:
            self._note(context.peer(), method)
            raise _Undecodable() from None

    def _note(self, peer: str, method: str) -> None:
        self._log.warning(peer, "%s: undecodable request from %s", method, peer)

    async def _abort(self, context: grpc.aio.ServicerContext, e: RpcError) -> None:
        if self.metrics is not None:
            self.metrics.rejected_requests.labels(e.code.name).inc()
        await context.abort(e.code, str(e))


class _Base:
    def __init__(self, guard: RequestGuard, metrics: Any = None) -> None:
        self.guard, self.metrics = guard, metrics

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected_requests.labels(code.name).inc()
        await context.abort(code, detail)


def _task_id(msg: Any) -> bytes:
    tid = msg.body["args"].get("task_id")
    if not isinstance(tid, bytes) or len(tid) != 32:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "task_id must be 32 bytes")
    return tid


class GatewayServicer(_Base, rpc.GatewayServicer):
    def __init__(self, role: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.role = role

    @guarded("Gateway", "Submit")
    async def Submit(self, msg, context):
        st = await self.role.submit(msg)
        return pb.SubmitReply(task_id=st.task.id, state=st.state)

    @guarded("Gateway", "Status")
    async def Status(self, msg, context):
        return self.role.get(_task_id(msg)).to_proto()

    @guarded("Gateway", "Watch")
    async def Watch(self, msg, context):
        async for status in self.role.watch(_task_id(msg)):
            yield status

    @guarded("Gateway", "Join")
    async def Join(self, msg, context):
        return pb.JoinReply(ledger_size=await self.role.join(msg))


class WorkerServicer(_Base, rpc.WorkerServicer):
    def __init__(self, role: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.role = role

    @guarded("Worker", "Execute")
    async def Execute(self, msg, context):
        result, output = await self.role.execute(msg)
        return pb.ExecuteReply(result=result, output=output)


class VerifierServicer(_Base, rpc.VerifierServicer):
    def __init__(self, role: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.role = role

    @guarded("Verifier", "Check")
    async def Check(self, msg, context):
        return pb.CheckReply(vote=await self.role.check(msg))


class BlobsServicer(_Base, rpc.BlobsServicer):
    def __init__(self, store: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.store = store

    def _digest(self, msg: Any) -> str:
        digest = msg.body["args"].get("digest")
        if not isinstance(digest, str):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "digest must be a hex string")
        return digest

    @guarded("Blobs", "Manifest")
    async def Manifest(self, msg, context):
        m = self.store.manifest(self._digest(msg))
        if m is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "no such blob")
        return pb.BlobManifest(digest=m.digest, size=m.size, chunks=m.chunks)

    @guarded("Blobs", "Fetch")
    async def Fetch(self, msg, context):
        data = self.store.get(self._digest(msg))
        if data is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "no such blob")
        start = msg.body["args"].get("from_index", 0)
        if not isinstance(start, int) or start < 0:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "from_index must be >= 0")
        for i in range(start, max(1, -(-len(data) // CHUNK))):
            yield pb.Chunk(index=i, data=data[i * CHUNK : (i + 1) * CHUNK])


class GossipServicer(_Base, rpc.GossipServicer):
    def __init__(self, gossip: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.gossip = gossip

    @guarded("Gossip", "Session", opens=False)  # the session's first frame is its signed hello
    async def Session(self, request_iterator, context):
        # aclosing: when the client goes, the session's cleanup runs now, not at collection.
        async with contextlib.aclosing(self.gossip.serve(request_iterator, self.guard)) as frames:
            async for frame in frames:
                yield frame


class TrainingServicer(_Base, rpc.TrainingServicer):
    """Network training: the gateway's Submit/Status, a trainer's Work/States, a verifier's
    Check/Attest; a node without the role answers UNIMPLEMENTED."""

    def __init__(self, coordinator: Any, trainer: Any, verifier: Any, guard: RequestGuard, metrics: Any = None) -> None:
        super().__init__(guard, metrics)
        self.coordinator, self.trainer, self.verifier = coordinator, trainer, verifier

    @staticmethod
    def _role(role: Any, what: str) -> Any:
        if role is None:
            raise RpcError(grpc.StatusCode.UNIMPLEMENTED, f"this node is not a {what}")
        return role

    @guarded("Training", "Submit")
    async def Submit(self, msg, context):
        return training_reply(await self._role(self.coordinator, "gateway").submit(msg))

    @guarded("Training", "Status")
    async def Status(self, msg, context):
        return training_reply(self._role(self.coordinator, "gateway").get(msg.body["args"].get("job_id")).to_dict())

    @guarded("Training", "Work")
    async def Work(self, msg, context):
        return training_reply(await self._role(self.trainer, "trainer").work(msg))

    @guarded("Training", "States")
    async def States(self, msg, context):
        return training_reply(await self._role(self.trainer, "trainer").states(msg))

    @guarded("Training", "Check")
    async def Check(self, msg, context):
        return training_reply(await self._role(self.verifier, "verifier").check(msg))

    @guarded("Training", "Attest")
    async def Attest(self, msg, context):
        return training_reply(await self._role(self.verifier, "verifier").attest(msg))


def training_reply(body: dict[str, Any]) -> pb.TrainingReply:
    return pb.TrainingReply(body=encode(body))


class NodeServicer(rpc.NodeServicer):
    def __init__(self, info: Callable[[], pb.NodeInfo]) -> None:
        self.info = info

    async def Info(self, request, context):
        return self.info()
