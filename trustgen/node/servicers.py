"""gRPC servicers: thin. Each opens the signed request, calls a role function, and maps domain
errors to status codes. Nothing a peer sends can raise out of here: unexpected errors become
INTERNAL and are logged, and the node keeps serving."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from trustgen.errors import TrustgenError
from trustgen.gossip.blobs import CHUNK
from trustgen.net.auth import RequestGuard, RpcError
from trustgen.net.peers import full_method
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

log = logging.getLogger("trustgen.node")


_REFUSED = (RpcError, TrustgenError, ValueError, TypeError, KeyError)


def _refusal(name: str, e: Exception) -> tuple[grpc.StatusCode, str]:
    """The status for an error a handler raised over what a peer sent."""
    if isinstance(e, RpcError):
        return e.code, str(e)
    if isinstance(e, TrustgenError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    log.warning("%s: bad request: %r", name, e)  # a peer's odd values reaching a handler
    return grpc.StatusCode.INVALID_ARGUMENT, f"bad request: {e}"


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
                    await self._refuse(context, *_refusal(name, e))

            return stream

        @functools.wraps(fn)
        async def unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(self, arg(self, request), context)
            except _REFUSED as e:
                await self._refuse(context, *_refusal(name, e))

        return unary

    return wrap


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


class NodeServicer(rpc.NodeServicer):
    def __init__(self, info: Callable[[], pb.NodeInfo]) -> None:
        self.info = info

    async def Info(self, request, context):
        return self.info()
