"""Worker role: run a gateway's task on the local engines and return a signed Result.

A task over the worker's budget (node config) is refused before it runs. When the caller goes
away (the gateway's deadline passes, or it cancels the call when it abandons the task), gRPC
cancels the handler and the generation stops at its next checkpoint, so the engine thread takes
the next task instead of finishing work nobody waits for.

A worker set to cheat (trustgen.node.adversary) misbehaves in `_generate`, through the same code
path an honest worker uses, so tests and demonstrations show the network catching it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.errors import ModelError, UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.adversary import worker_cheat
from trustgen.node.batcher import Batcher
from trustgen.node.engine_pool import Engines
from trustgen.node.kinds import TaskKind, task_kind

log = logging.getLogger("trustgen.node")


def result_body(
    worker: bytes, task: Signed, kind: TaskKind, out: Any, blob_digest: str = "", extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`extra`: what the worker commits to beyond the output (TaskKind.commit), signed with it."""
    output, fp = kind.describe(out, blob_digest)
    output = output | (extra or {})
    return {
        "worker": worker,
        "task_id": task.id,
        "model_digest": out.model_digest,
        "output_digest": out.output_digest,
        "output": output,
        "fingerprint": fp,
        "profile": out.profile.to_dict(),
    }


class WorkerRole:
    def __init__(
        self,
        identity: Identity,
        network: str,
        engines: Engines,
        blobs: BlobStore,
        adversary: str = "",
        delay_s: float = 0.0,
        metrics: Any = None,
        batch: int = 1,
        budgets: dict[str, int] | None = None,
    ) -> None:
        """`adversary`: the node's cheating mode; honest unless it is a worker mode. `batch`: up to
        this many tasks that arrive together run as one engine batch (outputs are unchanged).
        `budgets`: the largest task cost taken per kind (None: no limit)."""
        self.identity, self.network = identity, network
        self.engines, self.blobs = engines, blobs
        self.cheat = worker_cheat(adversary)
        self.delay_s = delay_s
        self.metrics = metrics
        self.gateways: set[bytes] = set()  # keys allowed to assign work
        self.batcher = Batcher(engines, batch) if batch > 1 and self.cheat is None else None
        self.budgets = budgets
        self.cancelled = 0  # generations stopped because their caller went away (tests, metrics)

    def _generate(self, kind: TaskKind, engine: Any, params: Any) -> Any:
        if self.cheat is not None:
            return self.cheat.generate(kind.engine, engine, params)
        return kind.run(engine, params)

    async def execute(self, req: Signed) -> tuple[bytes, bytes]:
        if self.gateways and req.body["sender"] not in self.gateways:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "only the gateway assigns work to this worker")
        try:
            task = open_wire(req.body["args"].get("task", b""), "Task", self.network)
            engine = self.engines.for_task(task.body["kind"], task.body["model"])
            kind = task_kind(task.body["kind"])
            params = kind.engine.parse_params(task.body["params"])
        except (MessageError, UsageError) as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except ModelError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        cost = kind.engine.cost(params)
        if self.budgets is not None and cost > self.budgets.get(kind.name, 0):
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{kind.engine.cost_terms}: task cost {cost} is over this worker's budget "
                f"{self.budgets.get(kind.name, 0)}",
            )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        cancel = threading.Event()
        try:
            if self.batcher is not None and kind.batched:
                out = await self.batcher.generate(engine, params, cancel, kind.run_batch)
            else:
                out = await self.engines.run(self._generate, kind, engine, params, cancel=cancel)
        except asyncio.CancelledError:
            cancel.set()  # the engine thread stops at its next checkpoint
            self.cancelled += 1
            log.info("task %s cancelled by its caller", task.id.hex()[:12])
            raise
        except UsageError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        blob = kind.engine.blob(out)
        digest = self.blobs.put(blob) if blob else ""
        # Kept and served by gossip blob fetch (a verifier fetches it by the digest committed);
        # hashing and encoding the tensors runs off the event loop.
        extra, kept = await self.engines.run(kind.commit, out) if kind.commit is not None else ({}, b"")
        if kept:
            self.blobs.put(kept)
        if self.metrics is not None:
            self.metrics.executions.labels(kind.name).inc()
        body = result_body(self.identity.public_key, task, kind, out, digest, extra)
        result = sign(self.identity, "Result", self.network, body)
        log.info("executed task %s (%s)", task.id.hex()[:12], kind.name)
        return result.wire(), blob
