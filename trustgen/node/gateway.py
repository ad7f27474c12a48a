"""Gateway role: accept client tasks, schedule workers, gather verifier votes, finalise.

Everything the gateway decides is written to its ledger feed before it is acted on or answered:
a task is `TaskAccepted` (with the beacon and candidate verifiers that fix its assignment)
before the client hears back, so a restarted gateway rebuilds every task from its ledger and
resumes the unfinished ones. Workers that fail or time out lose the task to another; rejected
results go to another worker (bounded attempts) and are recorded as evidence, as are votes
against the majority.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import IngestError, Ledger, parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.reputation import Reputation
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net import grpc_options as opts
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node.engine_pool import task_params
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")
FINAL_STATES = ("final", "failed")
MAX_VERIFIERS = 9
MAX_WORKER_FAILURES = 8
SUSPECT_S = 30.0


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


class GatewayRole:
    def __init__(
        self,
        identity: Identity,
        network: str,
        ledger: Ledger,
        peers: Peers,
        blobs: BlobStore,
        max_attempts: int = 3,
        worker_timeout_s: float = 60.0,
        verifier_timeout_s: float = 60.0,
        events: Any = None,
        metrics: Any = None,
    ) -> None:
        self.identity, self.network, self.ledger = identity, network, ledger
        self.peers, self.blobs = peers, blobs
        self.max_attempts = max_attempts
        self.worker_timeout_s, self.verifier_timeout_s = worker_timeout_s, verifier_timeout_s
        self.events, self.metrics = events, metrics
        self.tasks: dict[bytes, TaskState] = {}
        self.members: dict[bytes, dict[str, Any]] = {}
        self.inflight: dict[bytes, int] = defaultdict(int)
        self.suspects: dict[bytes, float] = {}
        self.reputation: dict[bytes, float] = {}
        self._rep = Reputation(network)
        self._rep_cursor = 0
        self._joined = asyncio.Event()
        self._runners: set[asyncio.Task] = set()

    # -- membership ----------------------------------------------------------------------------

    def _load_members(self) -> None:
        for e in self.ledger.iter_entries(entry_type="NodeJoined"):
            self.members[e.feed] = {"address": e.body["address"], "roles": list(e.body["roles"])}

    def _refresh_reputation(self) -> None:
        """Feed the entries stored since the last refresh (only those) to the accumulator."""
        for e in self.ledger.iter_entries(since=self._rep_cursor):
            self._rep.add(e)
        self._rep_cursor = self.ledger.next_index()
        self.reputation = self._rep.scores()

    async def join(self, req: Signed) -> int:
        """A node sends its own feed's entries, ending with a NodeJoined naming its address."""
        sender = req.body["sender"]
        entries = req.body["args"].get("entries")
        if not isinstance(entries, list) or not entries or len(entries) > 1000:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "join needs 1..1000 of the node's own entries")
        joined = None
        for item in entries:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "entries are [payload, signature] pairs")
            try:
                entry = parse_entry(item[0], item[1], self.network)
            except MessageError as e:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"entry refused: {e}") from None
            if entry.feed != sender:  # checked before anything is stored
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "a node may only join with its own feed")
            try:
                self.ledger.ingest(item[0], item[1])
            except IngestError as e:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"entry refused ({e.code}): {e}") from None
            if entry.type == "NodeJoined":
                joined = entry
        if joined is None:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "no NodeJoined entry in the join")
        address = joined.body["address"]
        # The address must really be the sender's: otherwise a node could point work at others.
        try:
            info = await self.peers.info(address, timeout=opts.DEADLINE_INFO)
        except grpc.aio.AioRpcError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot reach {address}: {e.code().name}") from None
        if info.node_id != sender.hex():
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, f"{address} is another node")
        self.members[sender] = {"address": address, "roles": list(joined.body["roles"])}
        self.suspects.pop(sender, None)
        self._joined.set()
        self._joined = asyncio.Event()
        self._publish("joined", node=sender.hex(), address=address, roles=joined.body["roles"])
        return self.ledger.size()

    # -- tasks -----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild task states from this gateway's own feed and resume unfinished tasks."""
        self._load_members()
        self._refresh_reputation()
        me = self.identity.public_key
        for e in self.ledger.iter_entries():
            if e.feed != me:
                continue
            if e.type == "TaskAccepted":
                task = open_wire(e.body["task"], "Task", self.network)
                self.tasks[task.id] = TaskState(task, e.body["beacon"], list(e.body["candidates"]))
            elif e.type == "ResultCommitted":
                res = open_wire(e.body["result"], "Result", self.network)
                st = self.tasks.get(res.body["task_id"])
                if st is not None:
                    st.attempt += 1
                    st.result = res
            elif e.type == "TaskFinalized":
                cert = open_wire(e.body["certificate"], "Certificate", self.network)
                st = self.tasks.get(cert.body["task_id"])
                if st is None:
                    continue
                if cert.body["decision"] == "accept":
                    self._finish(st, cert, [open_wire(v, "Vote", self.network) for v in cert.body["votes"]])
                else:
                    st.excluded.add(cert.body["worker"])
        pending = [st for st in self.tasks.values() if st.state not in FINAL_STATES]
        for st in pending:
            self._spawn(st)
        return len(pending)

    def _finish(self, st: TaskState, cert: Signed, votes: list[Signed]) -> None:
        st.certificate, st.votes, st.decision = cert, votes, cert.body["decision"]
        if st.result is not None and st.result.id == cert.body["result_id"]:
            png_digest = st.result.body["output"].get("png_digest", "")
            st.output = (self.blobs.get(png_digest) or b"") if png_digest else b""
        st.update("final", "accepted by majority")

    def _spawn(self, st: TaskState) -> None:
        t = asyncio.get_running_loop().create_task(self._run(st))
        self._runners.add(t)
        t.add_done_callback(self._runners.discard)

    async def submit(self, req: Signed) -> TaskState:
        try:
            task = open_wire(req.body["args"].get("task", b""), "Task", self.network)
        except MessageError as e:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if e.code == MessageError.BAD_SIGNATURE
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            raise RpcError(code, f"task refused: {e}") from None
        if task.id in self.tasks:
            return self.tasks[task.id]  # idempotent: a retried submit gets the same task
        b = task.body
        if b["kind"] not in ("text", "image"):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown task kind {b['kind']!r}")
        try:
            task_params(b["kind"], b["params"])
        except UsageError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if b["workers"] != 1:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "only workers = 1 is supported")
        if not 1 <= b["verifiers"] <= MAX_VERIFIERS or b["verifiers"] % 2 == 0:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"verifiers must be odd, 1..{MAX_VERIFIERS}")
        if b["expiry"] <= int(time.time() * 1000):
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "task already expired")
        # The beacon is a fresh commitment; the candidates are every verifier it covers.
        commitment = self.ledger.commit()
        candidates = sorted(k for k, m in self.members.items() if "verifier" in m["roles"])
        self.ledger.append(
            "TaskAccepted",
            {
                "task": task.wire(),
                "beacon": commitment.body["root"],
                "beacon_size": commitment.body["size"],
                "candidates": candidates,
            },
        )
        st = TaskState(task, commitment.body["root"], candidates)
        self.tasks[task.id] = st
        if self.metrics is not None:
            self.metrics.tasks_open.inc()
        self._publish("task", task=task.id.hex(), state="accepted", kind=b["kind"])
        self._spawn(st)
        return st

    def get(self, task_id: bytes) -> TaskState:
        st = self.tasks.get(task_id)
        if st is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "unknown task")
        return st

    async def watch(self, task_id: bytes) -> AsyncIterator[pb.TaskStatus]:
        st = self.get(task_id)
        while True:
            changed = st.changed
            yield st.to_proto()
            if st.state in FINAL_STATES:
                return
            await changed.wait()

    # -- scheduling --------------------------------------------------------------------------------

    def _pick_worker(self, st: TaskState) -> bytes | None:
        now = time.monotonic()
        pool = [
            k
            for k, m in self.members.items()
            if "worker" in m["roles"] and k not in st.excluded and now - self.suspects.get(k, -1e9) > SUSPECT_S
        ]
        if not pool:
            return None
        tid = st.task.id
        return min(
            pool, key=lambda k: (-self.reputation.get(k, 0.5), self.inflight[k], hashlib.sha256(tid + k).digest())
        )

    async def _run(self, st: TaskState) -> None:
        try:
            await self._drive(st)
        except Exception:  # a bug must not take the node down; the task is marked, the rest go on
            log.exception("task %s failed", st.task.id.hex()[:12])
            st.update("failed", "internal error")
        finally:
            if self.metrics is not None:
                self.metrics.tasks_open.dec()
                self.metrics.tasks.labels(st.state).inc()
                if st.state == "final":
                    self.metrics.task_latency.observe(time.monotonic() - st.accepted_at)

    async def _drive(self, st: TaskState) -> None:
        failures = 0
        task = st.task
        while st.attempt < self.max_attempts and failures < MAX_WORKER_FAILURES:
            if task.body["expiry"] <= int(time.time() * 1000):
                st.update("failed", "expired")
                return
            worker = self._pick_worker(st)
            if worker is None:
                st.update("waiting", "no worker available")
                joined = self._joined
                try:
                    await asyncio.wait_for(joined.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            st.update("running", f"worker {worker.hex()[:12]}")
            self._publish("task", task=task.id.hex(), state="running", worker=worker.hex())
            got = await self._execute(st, worker)
            if got is None:
                failures += 1
                st.excluded.add(worker)
                self.suspects[worker] = time.monotonic()
                continue
            result, png = got
            self.ledger.append("ResultCommitted", {"result": result.wire()})
            st.attempt += 1
            st.result, st.output = result, png
            st.update("verifying", f"attempt {st.attempt}")
            votes, skipped = await self._collect_votes(st, result, png)
            try:
                cert = certify(self.identity, self.network, task, st.beacon, st.candidates, result, votes, skipped)
            except MessageError as e:
                st.update("failed", f"verifiers gave no majority: {e}")
                return
            counted = [open_wire(v, "Vote", self.network) for v in cert.body["votes"]]
            for v in counted:
                self.ledger.append("VoteCast", {"vote": v.wire()})
            self.ledger.append("TaskFinalized", {"certificate": cert.wire()})
            accepted = cert.body["decision"] == "accept"
            for v in counted:
                if v.body["accept"] != accepted:
                    self.ledger.append(
                        "Evidence",
                        {
                            "kind": "minority_vote",
                            "subject": v.body["verifier"],
                            "proof": {"certificate": cert.wire(), "vote": v.wire()},
                        },
                    )
            self._publish(
                "decision",
                task=task.id.hex(),
                decision=cert.body["decision"],
                worker=worker.hex(),
                votes=[[v.body["verifier"].hex(), v.body["accept"]] for v in counted],
            )
            self._refresh_reputation()
            if accepted:
                self._finish(st, cert, counted)
                self._publish("task", task=task.id.hex(), state="final")
                return
            self.ledger.append(
                "Evidence", {"kind": "rejected_result", "subject": worker, "proof": {"certificate": cert.wire()}}
            )
            st.excluded.add(worker)
            st.votes, st.certificate, st.decision = counted, cert, "reject"
        st.update("failed", "no worker produced an accepted result")

    async def _execute(self, st: TaskState, worker: bytes) -> tuple[Signed, bytes] | None:
        address = self.members[worker]["address"]
        self.inflight[worker] += 1
        try:
            reply = await self.peers.call(
                address, "Worker", "Execute", {"task": st.task.wire()}, timeout=self.worker_timeout_s
            )
        except grpc.aio.AioRpcError as e:
            log.warning("worker %s failed task %s: %s", worker.hex()[:12], st.task.id.hex()[:12], e.code().name)
            self._publish("worker_failed", task=st.task.id.hex(), worker=worker.hex(), code=e.code().name)
            return None
        finally:
            self.inflight[worker] -= 1
        try:
            result = open_wire(reply.result, "Result", self.network)
        except MessageError as e:
            log.warning("worker %s sent a bad result: %s", worker.hex()[:12], e)
            return None
        if result.body["worker"] != worker or result.body["task_id"] != st.task.id:
            log.warning("worker %s sent a result for another task or signer", worker.hex()[:12])
            return None
        if reply.output:
            self.blobs.put(reply.output)
        return result, reply.output

    async def _ask(self, verifier: bytes, st: TaskState, result: Signed, png: bytes) -> Signed | None:
        member = self.members.get(verifier)
        if member is None:
            return None
        try:
            reply = await self.peers.call(
                member["address"],
                "Verifier",
                "Check",
                {"task": st.task.wire(), "result": result.wire(), "output": png},
                timeout=self.verifier_timeout_s,
            )
            vote = open_wire(reply.vote, "Vote", self.network)
        except (grpc.aio.AioRpcError, MessageError) as e:
            log.warning("verifier %s gave no vote: %s", verifier.hex()[:12], e)
            return None
        b = vote.body
        if b["verifier"] != verifier or b["task_id"] != st.task.id or b["result_id"] != result.id:
            return None
        return vote

    async def _collect_votes(self, st: TaskState, result: Signed, png: bytes) -> tuple[list[Signed], list[bytes]]:
        """Votes of the assigned verifiers; a verifier that fails is skipped and the next standby
        in rank order is asked instead."""
        k = st.task.body["verifiers"]
        ranking = rank(st.beacon, st.task.id, st.candidates, result.body["worker"])
        votes: dict[bytes, Signed] = {}
        skipped: list[bytes] = []
        while True:
            chosen = effective_verifiers(ranking, skipped, k)
            todo = [v for v in chosen if v not in votes]
            if not todo:
                break
            answers = await asyncio.gather(*(self._ask(v, st, result, png) for v in todo))
            for v, a in zip(todo, answers):
                if a is None:
                    skipped.append(v)
                else:
                    votes[v] = a
            if len(chosen) < k and all(v in votes or v in skipped for v in ranking):
                break
        return list(votes.values()), skipped

    def _publish(self, topic: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(topic, **fields)

    async def close(self) -> None:
        for t in list(self._runners):
            t.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
