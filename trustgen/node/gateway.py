"""Gateway role: accept client tasks, schedule workers, gather verifier votes, finalise.

Everything the gateway decides is written to its ledger feed before it is acted on or answered:
a task is `TaskAccepted` (with the beacon and candidate verifiers that fix its assignment)
before the client hears back, so a restarted gateway rebuilds every task from its ledger and
resumes the unfinished ones. Workers that fail or time out lose the task to another; rejected
results go to another worker (bounded attempts) and are recorded as evidence, as are votes
against the majority. Scheduling is in trustgen.node.scheduling, vote collection in
trustgen.node.votes; this module wires them to the RPCs (Submit, Status, Watch, Join).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import grpc

from trustgen.consensus.admission import AdmissionError, AdmissionState, cert_pin, open_admission, pinned_cert
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Entry, IngestError, Ledger, parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.reputation import Reputation, task_candidates
from trustgen.gossip.blobs import BlobStore
from trustgen.net import grpc_options as opts
from trustgen.net import transport
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node import scheduling, votes
from trustgen.node.scheduling import FINAL_STATES, MAX_WORKER_FAILURES, TaskState
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")


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
        admission: AdmissionState | None = None,
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
        # Admission state and reputation are fed the same entries, in log order (one cursor).
        self._rep = Reputation(network, admission)
        self.admission = self._rep.admission
        self._rep_cursor = 0
        self._joined = asyncio.Event()
        self._slot_freed = asyncio.Event()  # set (and replaced) whenever a worker's task comes back
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
        """A node sends its own feed's entries, ending with a NodeJoined naming its address. All
        of them are checked (form, signer, admission for every role named, address) before any
        is stored; then they are stored in one transaction."""
        sender = req.body["sender"]
        entries = req.body["args"].get("entries")
        if not isinstance(entries, list) or not entries or len(entries) > 1000:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "join needs 1..1000 of the node's own entries")
        parsed: list[tuple[list[bytes], Entry]] = []
        for item in entries:
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, bytes) for x in item)):
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "entries are [payload, signature] pairs")
            try:
                entry = parse_entry(item[0], item[1], self.network)
            except MessageError as e:
                raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"entry refused: {e}") from None
            if entry.feed != sender:
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "a node may only join with its own feed")
            parsed.append((item, entry))
        joined = next((e for _, e in reversed(parsed) if e.type == "NodeJoined"), None)
        if joined is None:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "no NodeJoined entry in the join")
        self._check_admission(sender, [e for _, e in parsed], list(joined.body["roles"]))
        address = joined.body["address"]
        # The address must really be the sender's: otherwise a node could point work at others.
        try:
            info = await self.peers.info(address, timeout=opts.DEADLINE_INFO)
        except grpc.aio.AioRpcError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot reach {address}: {e.code().name}") from None
        if info.node_id != sender.hex():
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, f"{address} is another node")
        await self._check_pin(sender, address)
        me = self.identity.public_key
        carried = {e.body["admission"] for e in self.ledger.iter_entries(entry_type="Admitted") if e.feed == me}
        try:
            with self.ledger.batch():  # all or nothing
                for item, _ in parsed:
                    self.ledger.ingest(item[0], item[1])
                # Re-carried in the gateway's own (admitted) feed, so nodes that keep only admitted
                # feeds learn the admission and then take the joiner's feed from gossip.
                for _, x in parsed:
                    if x.type == "Admitted" and x.body["admission"] not in carried:
                        carried.add(x.body["admission"])
                        self.ledger.append("Admitted", {"admission": x.body["admission"]})
        except IngestError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"entry refused ({e.code}): {e}") from None
        self._refresh_reputation()  # the admissions it carried count from now on
        self.members[sender] = {"address": address, "roles": list(joined.body["roles"]), "batch": info.worker_batch}
        self.suspects.pop(sender, None)
        self._joined.set()
        self._joined = asyncio.Event()
        self._publish("joined", node=sender.hex(), address=address, roles=joined.body["roles"])
        return self.ledger.size()

    def _check_admission(self, sender: bytes, entries: list[Entry], roles: list[str]) -> None:
        """PERMISSION_DENIED unless `sender` is admitted for every role it names, by the genesis,
        an admission this gateway holds, or one the joining feed carries (checked here, before
        anything is stored); INVALID_ARGUMENT for a carried admission that does not hold."""
        genesis = self.admission.genesis
        if genesis is None:
            return
        state = copy.deepcopy(self.admission)
        for e in entries:
            if e.type == "Genesis" and e.body["genesis"] != genesis.wire():
                raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "the node runs under another genesis")
            if e.type == "Admitted":
                try:
                    open_admission(genesis, e.body["admission"])
                except AdmissionError as err:
                    raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
                state.add(e)
        if not roles:  # a roleless stranger could otherwise park its feed here
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "a node joins in the roles it was admitted for")
        missing = [r for r in roles if not state.admitted(sender, r)]
        if missing:
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED, f"{sender.hex()[:16]} is not admitted as {', '.join(missing)}"
            )

    async def _check_pin(self, sender: bytes, address: str) -> None:
        """When the genesis pins the sender's TLS certificate, the one served at its address must
        be it: the CA alone would trust any certificate it signed for that name."""
        genesis = self.admission.genesis
        pin = pinned_cert(genesis, sender) if genesis is not None else ""
        if not pin:
            return
        try:
            served = cert_pin(await transport.served_certificate(address, opts.DEADLINE_INFO))
        except (OSError, ValueError, AdmissionError) as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, f"no TLS certificate at {address}: {e}") from None
        if served != pin:
            raise RpcError(
                grpc.StatusCode.PERMISSION_DENIED, f"{address} serves a certificate the genesis does not pin"
            )

    def _admitted_members(self, role: str) -> dict[bytes, dict[str, Any]]:
        return {k: m for k, m in self.members.items() if role in m["roles"] and self.admission.admitted(k, role)}

    # -- tasks -----------------------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild task states from this gateway's own feed and resume unfinished tasks."""
        self._load_members()
        self._refresh_reputation()
        self.tasks.update(scheduling.recover_tasks(self.ledger, self.identity.public_key, self.network, self.blobs))
        pending = [st for st in self.tasks.values() if st.state not in FINAL_STATES]
        for st in pending:
            self._spawn(st)
        return len(pending)

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
        # The candidates are the admitted registered verifiers, under the probation, group and
        # reputation rules, as of the beacon: the state is brought up to the log the commitment covers
        # (nothing awaits in between, so nothing is stored in between). A task asking for more
        # verifiers than that is refused, not finalised on fewer votes.
        scheduling.check_task(task, len(self._admitted_members("verifier")))
        self._refresh_reputation()
        commitment = self.ledger.commit()  # the beacon: a fresh commitment
        candidates = task_candidates(
            self._rep,
            commitment.body["root"],
            task.id,
            [k for k, m in self.members.items() if "verifier" in m["roles"]],
            task.body["verifiers"],
        )
        scheduling.check_task(task, len(candidates))
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
        self._publish("task", task=task.id.hex(), state="accepted", kind=task.body["kind"])
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

    # -- running a task --------------------------------------------------------------------------

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
        """Give the task to workers until a result is accepted, attempts run out or it expires."""
        failures = 0
        refused = ""  # why a worker refused the task as invalid (the task's fault, not the worker's)
        task = st.task
        while st.attempt < self.max_attempts and failures < MAX_WORKER_FAILURES:
            if scheduling.expired(task):
                st.update("failed", "expired")
                return
            workers = self._admitted_members("worker")
            worker = scheduling.pick_worker(st, workers, self.suspects, self.reputation, self.inflight)
            if worker is None and refused:
                # Every worker that could take it said it is invalid: fail now, with the reason.
                st.update("failed", f"task refused by workers: {refused}")
                return
            if worker is None or worker == scheduling.BUSY:
                st.update("waiting", "no worker available" if worker is None else "every worker is busy")
                await self._wait_for_worker()
                continue
            st.update("running", f"worker {worker.hex()[:12]}")
            self._publish("task", task=task.id.hex(), state="running", worker=worker.hex())
            try:
                got = await self._execute(st, worker)
            except scheduling.TaskRefused as e:
                # Not suspected: the next task goes to it as usual. Only this task moves on, so one
                # lying worker cannot fail a task another worker would run.
                refused = str(e)
                st.excluded.add(worker)
                self._publish("task_refused", task=task.id.hex(), worker=worker.hex(), reason=refused)
                continue
            if got is None:
                failures += 1
                st.excluded.add(worker)
                self.suspects[worker] = time.monotonic()
                continue
            result, blob = got
            self.ledger.append("ResultCommitted", {"result": result.wire()})
            st.attempt += 1
            st.result, st.output = result, blob
            st.update("verifying", f"attempt {st.attempt}")
            if await self._decide(st, worker, result, blob):
                return
        st.update("failed", "no worker produced an accepted result")

    async def _wait_for_worker(self) -> None:
        """Until a node joins or a worker's slot frees, at most a second (suspicions expire too)."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._joined, self._slot_freed)]
        try:
            await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _execute(self, st: TaskState, worker: bytes) -> tuple[Signed, bytes] | None:
        self.inflight[worker] += 1
        try:
            got = await scheduling.execute(
                self.peers,
                self.network,
                self.members[worker]["address"],
                worker,
                st.task,
                self.worker_timeout_s,
                lambda code: self._publish("worker_failed", task=st.task.id.hex(), worker=worker.hex(), code=code),
            )
        finally:
            self.inflight[worker] -= 1
            self._slot_freed.set()
            self._slot_freed = asyncio.Event()
        if got is not None and got[1]:
            self.blobs.put(got[1])
        return got

    async def _decide(self, st: TaskState, worker: bytes, result: Signed, blob: bytes) -> bool:
        """Collect the votes on a result and record the decision. True when the task is done
        (accepted, or no majority possible); False when the result was rejected."""
        task = st.task

        async def ask(verifier: bytes) -> Signed | None:
            member = self.members.get(verifier)
            if member is None or not self.admission.admitted(verifier, "verifier"):
                return None  # revoked since the task was accepted: skipped, a standby votes
            return await votes.ask_verifier(
                self.peers, self.network, member["address"], verifier, task, result, blob, self.verifier_timeout_s
            )

        counted_votes, skipped = await votes.collect_votes(st.beacon, task, st.candidates, result, ask)
        try:
            cert = certify(self.identity, self.network, task, st.beacon, st.candidates, result, counted_votes, skipped)
        except MessageError as e:
            st.update("failed", f"verifiers gave no majority: {e}")
            return True
        counted = votes.record_decision(self.ledger, self.network, cert)
        self._publish(
            "decision",
            task=task.id.hex(),
            decision=cert.body["decision"],
            worker=worker.hex(),
            votes=[[v.body["verifier"].hex(), v.body["accept"]] for v in counted],
        )
        self._refresh_reputation()
        if cert.body["decision"] == "accept":
            scheduling.finish(st, cert, counted, self.blobs)
            self._publish("task", task=task.id.hex(), state="final")
            return True
        votes.record_rejection(self.ledger, cert)
        st.excluded.add(worker)
        st.votes, st.certificate, st.decision = counted, cert, "reject"
        return False

    def _publish(self, topic: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(topic, **fields)

    async def close(self) -> None:
        for t in list(self._runners):
            t.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
