"""Gateway role: accept client tasks, schedule workers, gather verifier votes, finalise.

Everything the gateway decides is written to its ledger feed before it is acted on or answered:
a task is `TaskAccepted` (with the beacon and candidate verifiers that fix its assignment)
before the client hears back, so a restarted gateway rebuilds every task from its ledger and
resumes the unfinished ones. Workers that fail or time out lose the task to another; rejected
results go to another worker (bounded attempts) and are recorded as evidence, as are votes
against the majority, late ones included. A task is decided as soon as a strict majority of its
verifiers agree; a verifier that misses its deadline is replaced by the next standby (the miss is
recorded first, so the audit can check the replacement) and demoted in this gateway's later
assignments until it answers again (a health probe). A task ends in exactly one terminal ledger
fact, TaskFinalized (accept) or TaskFailed (with a reason code); transient faults are retried
with backoff and become a failure only when the task expires. Scheduling is in
trustgen.node.scheduling, vote collection in trustgen.node.votes; this module wires them to the
RPCs (Submit, Status, Watch, Join).
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
from trustgen.consensus.liveness import MAX_DETAIL, NOT_ADMITTED, UNAVAILABLE, UNRESPONSIVE
from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.consensus.reputation import Reputation, task_candidates
from trustgen.errors import UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net import grpc_options as opts
from trustgen.net import transport
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node import scheduling, votes
from trustgen.node.offers import ENTRY as SERVES
from trustgen.node.offers import Offer, can_run, check_offered, parse_offer
from trustgen.node.scheduling import FINAL_STATES, MAX_WORKER_FAILURES, TaskState, failure_detail
from trustgen.node.votes import Answer, Miss
from trustgen.rpc import trustgen_pb2 as pb

log = logging.getLogger("trustgen.node")
PROBE_TIMEOUT_S = 2.0  # a health probe of a demoted verifier
PROBE_MAX_INTERVAL_S = 4.0  # a probe is one Info call: cheap enough to repeat often


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
        self._probe: asyncio.Task | None = None

    # -- membership ----------------------------------------------------------------------------

    def _load_members(self) -> None:
        for e in self.ledger.iter_entries(entry_type="NodeJoined"):
            self.members[e.feed] = {"address": e.body["address"], "roles": list(e.body["roles"]), "offer": None}
        for e in self.ledger.iter_entries(entry_type=SERVES):  # the latest of each feed wins
            if e.feed in self.members:
                self.members[e.feed]["offer"] = _offer_or_none(e.body)

    def _refresh_reputation(self) -> None:
        """Feed the entries stored since the last refresh (only those) to the accumulator."""
        for e in self.ledger.iter_entries(since=self._rep_cursor, types=Reputation.FED_TYPES):
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
        serves = next((e for _, e in reversed(parsed) if e.type == SERVES), None)
        try:
            offer = parse_offer(serves.body) if serves is not None else None
        except UsageError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if offer is None and sender in self.members:  # a re-join may send only its newer entries
            offer = self.members[sender].get("offer")
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
        self.members[sender] = {
            "address": address,
            "roles": list(joined.body["roles"]),
            "offer": offer,
            "batch": info.worker_batch,
        }
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
        self._start_probe()
        return len(pending)

    def _spawn(self, st: TaskState) -> None:
        self._background(self._run(st))

    def _background(self, coro: Any) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._runners.add(t)
        t.add_done_callback(self._runners.discard)
        return t

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
        # A model nobody serves, or a task over every budget, would wait for a worker until expiry.
        check_offered(task, [m["offer"] for m in self._admitted_members("worker").values() if m.get("offer")])
        self._refresh_reputation()
        # The beacon (a fresh commitment) and the acceptance in one durable transaction (one fsync,
        # not two). A refusal leaves the commitment stored, as before: rolling it back would make
        # the next commitment re-hash the whole log.
        refused: RpcError | None = None
        with self.ledger.batch():
            commitment = self.ledger.commit()
            candidates = task_candidates(
                self._rep,
                commitment.body["root"],
                task.id,
                [k for k, m in self.members.items() if "verifier" in m["roles"]],
                task.body["verifiers"],
                self.identity.public_key,
            )
            try:
                scheduling.check_task(task, len(candidates))
            except RpcError as e:
                refused = e
            else:
                self.ledger.append(
                    "TaskAccepted",
                    {
                        "task": task.wire(),
                        "beacon": commitment.body["root"],
                        "beacon_size": commitment.body["size"],
                        "candidates": candidates,
                    },
                )
        if refused is not None:
            raise refused
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
        tries = 0
        try:
            while st.state not in FINAL_STATES:
                try:
                    await self._drive(st)
                except Exception as e:
                    # A storage fault (or a bug) must not take the node down nor end the task: it is
                    # retried with backoff, and fails as expired only if it never clears.
                    log.warning(
                        "task %s: %s: %s (retrying)", st.task.id.hex()[:12], type(e).__name__, e, exc_info=tries == 0
                    )
                    st.update("waiting", f"retrying after {type(e).__name__}")
                if st.state not in FINAL_STATES:
                    await scheduling.backoff(st.task, tries)
                    tries += 1
        finally:
            if self.metrics is not None:
                self.metrics.tasks_open.dec()
                self.metrics.tasks.labels(st.state).inc()
                if st.state == "final":
                    self.metrics.task_latency.observe(time.monotonic() - st.accepted_at)

    def _fail(self, st: TaskState, reason: str, detail: str = "") -> None:
        """End the task in failure: the TaskFailed entry first (a storage fault raises here and the
        task is retried), then the state. Never after a terminal state."""
        if st.state in FINAL_STATES:
            return
        detail = detail[:MAX_DETAIL]
        self.ledger.append("TaskFailed", {"task_id": st.task.id, "reason": reason, "detail": detail})
        st.update("failed", failure_detail(reason, detail))
        self._publish("task", task=st.task.id.hex(), state="failed", reason=reason)

    async def _drive(self, st: TaskState) -> None:
        """Give the task to workers until a result is accepted, attempts run out or it expires."""
        failures = 0
        failed: set[bytes] = set()  # workers that failed this task (a transient fault): tried again later
        refused = ""  # why a worker refused the task as invalid (the task's fault, not the worker's)
        task = st.task
        while st.attempt < self.max_attempts:
            if scheduling.expired(task):
                self._fail(st, "expired")
                return
            if failures >= MAX_WORKER_FAILURES:
                await scheduling.backoff(task, failures - MAX_WORKER_FAILURES)
            workers = {k: m for k, m in self._admitted_members("worker").items() if can_run(m.get("offer"), task)}
            worker = scheduling.pick_worker(st, workers, self.suspects, self.reputation, self.inflight)
            if worker is None and refused:
                # Every worker that could take it said it is invalid: fail now, with the reason.
                self._fail(st, "refused", refused)
                return
            if worker is None or worker == scheduling.BUSY:
                if worker is None:  # workers that failed it get another chance once their suspicion lapses
                    st.excluded -= failed
                    failed.clear()
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
                failed.add(worker)
                st.excluded.add(worker)
                self.suspects[worker] = time.monotonic()
                continue
            result, blob = got
            # The challenge beacon: a commitment of the log that holds the ResultCommitted, so the
            # worker could not know it when it committed (consensus/challenge.py). Both in one
            # durable transaction.
            with self.ledger.batch():
                self.ledger.append("ResultCommitted", {"result": result.wire()})
                challenge = self.ledger.commit().body
            st.attempt += 1
            st.result, st.output = result, blob
            st.update("verifying", f"attempt {st.attempt}")
            if await self._decide(st, worker, result, blob, challenge):
                return
        self._fail(st, "rejected", f"{st.attempt} results, none accepted")

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

    async def _decide(
        self, st: TaskState, worker: bytes, result: Signed, blob: bytes, challenge: dict[str, Any]
    ) -> bool:
        """Collect the votes on a result and record the decision. True when the task is done
        (accepted, or failed); False when the result was rejected. No majority (the verifiers
        missed) is transient: asked again with backoff until the task expires. `challenge`: the
        body of the commitment made right after the ResultCommitted."""
        task = st.task
        me = self.identity.public_key

        async def ask(verifier: bytes) -> Answer:
            member = self.members.get(verifier)
            if member is None:
                return Miss(UNAVAILABLE, votes.now_ms())
            if not self.admission.admitted(verifier, "verifier"):
                return Miss(NOT_ADMITTED, votes.now_ms())  # revoked since the task was accepted
            answer = await votes.ask_verifier(
                self.peers,
                self.network,
                member["address"],
                verifier,
                task,
                result,
                blob,
                self.verifier_timeout_s,
                (challenge["root"], challenge["size"]),
                [self.members[worker]["address"]] if worker in self.members else [],
            )
            if isinstance(answer, Signed) and verifier in self._rep.unresponsive.of(me):
                self._restore(verifier)
            return answer

        def on_skip(verifier: bytes, miss: Miss) -> None:
            self._record_miss(task, result, verifier, miss)

        tries = 0
        while True:
            got, skipped, pending = await votes.collect_votes(st.beacon, task, st.candidates, result, ask, on_skip)
            try:
                cert = certify(self.identity, self.network, task, st.beacon, st.candidates, result, got, skipped)
                break
            except MessageError as e:
                if scheduling.expired(task):
                    self._fail(st, "expired", f"verifiers gave no majority: {e}")
                    return True
                st.update("verifying", f"verifiers gave no majority yet ({e}); asking again")
                await scheduling.backoff(task, tries)
                tries += 1
        counted = votes.record_decision(self.ledger, self.network, cert)
        for verifier, answer in pending.items():
            self._background(self._late(cert, result, verifier, answer))
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

    # -- late votes, misses and health probes ----------------------------------------------------

    async def _late(self, cert: Signed, result: Signed, verifier: bytes, answer: asyncio.Task) -> None:
        """An assigned verifier's answer that came after the decision: its vote is recorded (and,
        disagreeing, is evidence); a miss is recorded and demotes it."""
        got = await answer
        task_id = cert.body["task_id"]
        try:
            if isinstance(got, Signed):
                if votes.record_late_vote(self.ledger, cert, got):
                    self._publish("late_vote", task=task_id.hex(), verifier=verifier.hex(), accept=got.body["accept"])
            elif got is not None and (st := self.tasks.get(task_id)) is not None:
                self._record_miss(st.task, result, verifier, got)
        except Exception as e:  # a storage fault: the decision stands; only this record is lost
            log.warning("task %s: late answer of %s not recorded: %s", task_id.hex()[:12], verifier.hex()[:12], e)

    def _record_miss(self, task: Signed, result: Signed, verifier: bytes, miss: Miss) -> None:
        votes.record_skip(self.ledger, task, result, verifier, miss, int(self.verifier_timeout_s * 1000))
        self._publish("verifier_missed", task=task.id.hex(), verifier=verifier.hex(), reason=miss.reason)
        if miss.reason in UNRESPONSIVE:
            self._refresh_reputation()  # demoted in the next task's candidates
            self._start_probe()

    def _restore(self, verifier: bytes) -> None:
        self.ledger.append("VerifierRestored", {"verifier": verifier})
        self._refresh_reputation()
        self._publish("verifier_restored", verifier=verifier.hex())

    def _start_probe(self) -> None:
        if (self._probe is None or self._probe.done()) and self._rep.unresponsive.of(self.identity.public_key):
            self._probe = self._background(self._probe_loop())

    async def _probe_loop(self) -> None:
        """Probe every verifier this gateway recorded as unresponsive (Info, a short deadline) with
        growing intervals, and restore each one that answers; ends when none is left."""
        interval = 0.5
        while down := self._rep.unresponsive.of(self.identity.public_key):
            for v in sorted(down):
                member = self.members.get(v)
                if member is None:
                    continue
                try:
                    info = await self.peers.info(member["address"], timeout=PROBE_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    continue
                if info.node_id == v.hex() and v in self._rep.unresponsive.of(self.identity.public_key):
                    self._restore(v)
            await asyncio.sleep(interval)
            interval = min(interval * 2, PROBE_MAX_INTERVAL_S)

    def _publish(self, topic: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(topic, **fields)

    async def close(self) -> None:
        for t in list(self._runners):
            t.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)


def _offer_or_none(body: Any) -> Offer | None:
    """A stored `Serves` body as an Offer; None (serves nothing) when malformed: it came by gossip."""
    try:
        return parse_offer(body)
    except UsageError:
        return None
