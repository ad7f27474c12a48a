"""Gateway scheduling: task state, validation, recovery from the ledger, worker choice, execution.

A task's state is rebuilt from the gateway's own feed (`recover_tasks`): TaskAccepted fixes the
task, its beacon and candidate verifiers; ResultCommitted counts an attempt; TaskFinalized either
finishes it (accept) or excludes the worker that produced the rejected result; TaskFailed fails
it for good. The first terminal entry wins (the audit flags any second one). Workers are chosen
by reputation, then load (tasks in flight over the worker's slots), then a per-task hash (so ties
spread); a worker that fails or times out is suspected for a while and loses the task to another.
A worker that announced its batch size B (NodeInfo.worker_batch, read when it joins) has 2B slots:
one batch decoding and the next forming. The gateway keeps no more of its tasks in flight there;
a task that finds every eligible worker full waits at the gateway for a free slot, so tasks do not
queue (and time out) behind a busy worker while another frees up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.engines.kinds import engine_kind
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")
FINAL_STATES = ("final", "failed")
MAX_VERIFIERS = 9
MAX_WORKER_FAILURES = 8
SUSPECT_S = 30.0
# Transient faults (storage errors, unavailable peers, stalled verifiers) are retried after
# BACKOFF_BASE_S * 2^n seconds, at most BACKOFF_MAX_S, until the task expires.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
MAX_ANNOUNCED_BATCH = 64  # a worker's announced batch is untrusted: bounded like the node setting
BUSY = b""  # pick_worker: eligible workers exist, and every one has its slots full


def worker_slots(member: dict[str, Any]) -> int | None:
    """Tasks the gateway keeps in flight at a worker: twice its announced batch (bounded), or
    None (no limit) when it announced none, as a node from before the announcement."""
    batch = member.get("batch")
    if type(batch) is not int or batch < 1:
        return None
    return 2 * min(batch, MAX_ANNOUNCED_BATCH)


@dataclass
class TaskState:
    task: Signed
    beacon: bytes
    candidates: list[bytes]
    state: str = "accepted"
    detail: str = ""
    attempt: int = 0
    result: Signed | None = None
    output: bytes = b""
    votes: list[Signed] = field(default_factory=list)
    certificate: Signed | None = None
    decision: str = ""
    excluded: set[bytes] = field(default_factory=set)
    accepted_at: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self.changed.set()
        self.changed = asyncio.Event()

    def to_proto(self) -> pb.TaskStatus:
        return pb.TaskStatus(
            task_id=self.task.id,
            state=self.state,
            detail=self.detail,
            attempt=self.attempt,
            result=self.result.wire() if self.result else b"",
            votes=[v.wire() for v in self.votes],
            certificate=self.certificate.wire() if self.certificate else b"",
            output=self.output,
            decision=self.decision,
        )


def expired(task: Signed) -> bool:
    return task.body["expiry"] <= int(time.time() * 1000)


async def backoff(task: Signed, tries: int) -> None:
    """Wait before retry number `tries` of a transient fault, never past the task's expiry."""
    left = task.body["expiry"] / 1000 - time.time()
    await asyncio.sleep(max(0.0, min(BACKOFF_BASE_S * 2**tries, BACKOFF_MAX_S, left)))


def check_task(task: Signed, verifier_pool: int) -> None:
    """Refuse (RpcError) a task this gateway cannot run as asked, before anything is stored:
    `verifier_pool` is how many registered verifiers it could be assigned."""
    b = task.body
    try:
        engine_kind(b["kind"]).parse_params(b["params"])
    except UsageError as e:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    if type(b["workers"]) is not int or b["workers"] != 1:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "workers: only 1 is supported")
    k = b["verifiers"]
    if type(k) is not int or not 1 <= k <= MAX_VERIFIERS or k % 2 == 0:
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"verifiers must be odd, 1..{MAX_VERIFIERS}")
    if k > verifier_pool:
        # Accepting it would finalise on fewer votes than the client asked for.
        raise RpcError(
            grpc.StatusCode.FAILED_PRECONDITION, f"verifiers: {k} asked, only {verifier_pool} registered verifiers"
        )
    if expired(task):
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "task already expired")


class TaskRefused(Exception):
    """A worker said the task itself is bad (INVALID_ARGUMENT), or names a model or kind it does not
    serve (FAILED_PRECONDITION): the worker did nothing wrong, so it is not suspected; the task goes
    to another worker or fails with the reason."""


TASK_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


def finish(st: TaskState, cert: Signed, votes: list[Signed], blobs: BlobStore) -> None:
    """Mark a task final under an accepting certificate, with its output blob if it has one."""
    st.certificate, st.votes, st.decision = cert, votes, cert.body["decision"]
    if st.result is not None and st.result.id == cert.body["result_id"]:
        blob_field = engine_kind(st.task.body["kind"]).blob_field
        digest = st.result.body["output"].get(blob_field, "") if blob_field else ""
        st.output = (blobs.get(digest) or b"") if digest else b""
    st.update("final", "accepted by majority")


def recover_tasks(ledger: Ledger, gateway: bytes, network: str, blobs: BlobStore) -> dict[bytes, TaskState]:
    """Every task of the gateway's own feed, in the state its entries put it in."""
    tasks: dict[bytes, TaskState] = {}
    for e in ledger.iter_entries():
        if e.feed != gateway:
            continue
        if e.type == "TaskAccepted":
            task = open_wire(e.body["task"], "Task", network)
            tasks[task.id] = TaskState(task, e.body["beacon"], list(e.body["candidates"]))
        elif e.type == "ResultCommitted":
            res = open_wire(e.body["result"], "Result", network)
            st = tasks.get(res.body["task_id"])
            if st is not None:
                st.attempt += 1
                st.result = res
        elif e.type == "TaskFinalized":
            cert = open_wire(e.body["certificate"], "Certificate", network)
            st = tasks.get(cert.body["task_id"])
            if st is None:
                continue
            if st.state in FINAL_STATES:
                continue
            if cert.body["decision"] == "accept":
                finish(st, cert, [open_wire(v, "Vote", network) for v in cert.body["votes"]], blobs)
            else:
                st.excluded.add(cert.body["worker"])
        elif e.type == "TaskFailed":
            st = tasks.get(e.body["task_id"])
            if st is not None and st.state not in FINAL_STATES:
                st.update("failed", failure_detail(e.body["reason"], e.body["detail"]))
    return tasks


def failure_detail(reason: str, detail: str) -> str:
    return f"{reason}: {detail}" if detail else reason


def pick_worker(
    st: TaskState,
    members: dict[bytes, dict[str, Any]],
    suspects: dict[bytes, float],
    reputation: dict[bytes, float],
    inflight: dict[bytes, int],
) -> bytes | None:
    """The best worker for a task: not excluded from it, not recently failed, a slot free; highest
    reputation, then the smallest share of its slots in use, then a hash of task and worker. None
    when no worker may take it; BUSY when some may, but all are full."""
    now = time.monotonic()
    pool = [
        k
        for k, m in members.items()
        if "worker" in m["roles"] and k not in st.excluded and now - suspects.get(k, -1e9) > SUSPECT_S
    ]
    if not pool:
        return None
    load: dict[bytes, float] = {}
    for k in pool:
        slots = worker_slots(members[k])
        if slots is None or inflight.get(k, 0) < slots:
            load[k] = inflight.get(k, 0) / (slots or 1)
    if not load:
        return BUSY
    tid = st.task.id
    return min(load, key=lambda k: (-reputation.get(k, 0.5), load[k], hashlib.sha256(tid + k).digest()))


async def execute(
    peers: Peers,
    network: str,
    address: str,
    worker: bytes,
    task: Signed,
    timeout_s: float,
    on_failure: Callable[[str], None],
) -> tuple[Signed, bytes] | None:
    """Have `worker` run `task`: its signed Result and output blob, or None when it failed (an RPC
    error, reported to `on_failure` with the status name) or answered with something unusable.
    Raises TaskRefused when the worker refused the task as invalid."""
    try:
        reply = await peers.call(address, "Worker", "Execute", {"task": task.wire()}, timeout=timeout_s)
    except grpc.aio.AioRpcError as e:
        if e.code() in TASK_REFUSALS:
            log.warning("worker %s refused task %s: %s", worker.hex()[:12], task.id.hex()[:12], e.details())
            raise TaskRefused(e.details() or "task refused by the worker") from None
        log.warning("worker %s failed task %s: %s", worker.hex()[:12], task.id.hex()[:12], e.code().name)
        on_failure(e.code().name)
        return None
    try:
        result = open_wire(reply.result, "Result", network)
    except MessageError as e:
        log.warning("worker %s sent a bad result: %s", worker.hex()[:12], e)
        return None
    if result.body["worker"] != worker or result.body["task_id"] != task.id:
        log.warning("worker %s sent a result for another task or signer", worker.hex()[:12])
        return None
    return result, reply.output
