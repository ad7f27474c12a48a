"""Verifier role: check a worker's result for a task and return a signed Vote.

Each task kind says how its results are checked (trustgen.node.kinds): text by one prefill
pass, images by re-generation and perceptual hashes. Checks that arrive while the engine thread
is busy run together next (text: one shared prefill pass), with the votes checking each alone
gives. A history of accepted outputs names the earlier task when a rejected output replays one.
A verifier set to cheat (trustgen.node.adversary) really signs something other than what its
check found.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.errors import ModelError, UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.adversary import verifier_cheat
from trustgen.node.coalesce import Coalescer
from trustgen.node.engine_pool import Engines
from trustgen.node.kinds import TASK_KINDS, Checked, Fingerprint, TaskKind, check_results
from trustgen.verifier.history import HistoryIndex
from trustgen.verifier.vote import VoteValue, reject

log = logging.getLogger("trustgen.node")
MAX_CHECK_BATCH = 16  # default results checked in one engine call (prefill rows are bounded again inside)


class VerifierRole:
    def __init__(
        self,
        identity: Identity,
        network: str,
        engines: Engines,
        adversary: str = "",
        metrics: Any = None,
        batch: int = MAX_CHECK_BATCH,
    ) -> None:
        """`adversary`: the node's cheating mode; honest unless it is a verifier mode. `batch`: up
        to this many checks that arrive together share one engine call (votes are unchanged)."""
        self.identity, self.network, self.engines = identity, network, engines
        self.cheat = verifier_cheat(adversary)
        self.metrics = metrics
        self.gateways: set[bytes] = set()
        self.history = HistoryIndex()
        self.missing: dict[str, tuple[str, list[bytes]]] = {}
        self._cursor = 0
        self._kinds: dict[bytes, str] = {}  # task id -> kind, for tasks accepted and not yet finalised
        self._results: dict[bytes, Signed] = {}  # committed, not yet finalised
        # task key -> (kind, result output) of each output blob left in `missing`
        self._fetching: dict[str, tuple[TaskKind, dict[str, Any]]] = {}
        # Checks that arrive while the engine thread is busy share its next prefill pass.
        self._checks = Coalescer(engines, self._check_and_record, batch)

    def rebuild_history(self, ledger: Ledger, blobs: BlobStore) -> int:
        """Index the outputs of every result finalised as accepted in the ledger (gossip brings
        the gateway's certificates here). Returns how many were indexed."""
        self._cursor, self._kinds, self._results = 0, {}, {}
        return self.follow(ledger, blobs)

    def follow(self, ledger: Ledger, blobs: BlobStore) -> int:
        """Index accepted outputs finalised since the last call (the kind of each comes from its
        TaskAccepted entry). Accepted outputs that travel as blobs (images) and are not here are
        left in `missing` (blob digest -> (task id hex, keys of nodes that had them)) for the node
        to fetch by digest and hand to `index_image`. Returns how many were indexed."""
        added = 0
        for e in ledger.iter_entries(since=self._cursor):
            try:
                if e.type == "TaskAccepted":
                    t = open_wire(e.body["task"], "Task", self.network)
                    self._kinds[t.id] = t.body["kind"]
                elif e.type == "ResultCommitted":
                    r = open_wire(e.body["result"], "Result", self.network)
                    self._results[r.id] = r
                elif e.type == "TaskFinalized":
                    c = open_wire(e.body["certificate"], "Certificate", self.network).body
                    accepted = self._results.pop(c["result_id"], None)
                    if c["decision"] != "accept" or accepted is None:
                        continue  # a rejected result: the task goes on to another worker
                    kind = TASK_KINDS.get(self._kinds.pop(c["task_id"], ""))
                    if kind is None:
                        continue
                    out, task_key = accepted.body["output"], c["task_id"].hex()
                    field = kind.engine.blob_field
                    if not field:
                        added += self._index(task_key, kind, out, b"")
                    elif isinstance(out.get(field), str) and task_key not in self.history:
                        blob = blobs.get(out[field])
                        if blob is None:
                            self.missing[out[field]] = (task_key, [accepted.body["worker"], c["gateway"]])
                            self._fetching[task_key] = (kind, out)
                        else:
                            added += self._index(task_key, kind, out, blob)
            except (MessageError, ValueError, TypeError, KeyError):
                continue  # a malformed entry is the audit's business, not the index's
        self._cursor = ledger.next_index()
        return added

    def index_image(self, task_key: str, blob: bytes) -> int:
        """Index an output blob the node fetched for an entry of `missing`."""
        fetching = self._fetching.pop(task_key, None)
        return self._index(task_key, *fetching, blob) if fetching is not None else 0

    def _index(self, task_key: str, kind: TaskKind, output: dict[str, Any], blob: bytes) -> int:
        fp = kind.replay_fingerprint(output, blob)
        if not fp:
            return 0
        self.history.add(task_key, fp)
        return 1

    def _check_and_record(self, engine: Any, items: list[tuple[Signed, Signed, bytes]]) -> list[VoteValue]:
        """Check results served by `engine` (in shared passes where the kind allows), then record
        each in arrival order: the same votes and history as checking them one by one."""
        checked = check_results(engine, [(task.body, result.body, blob) for task, result, blob in items])
        return [self._record(task, got) for (task, _, _), got in zip(items, checked)]

    def _record(self, task: Signed, got: Checked | UsageError) -> VoteValue:
        fp: Fingerprint
        if isinstance(got, UsageError):
            vote, fp = reject("prefill", f"malformed result: {got}"), {}
        else:
            vote, fp = got
        task_key = task.id.hex()
        if fp and not vote.accept:
            replay = self.history.find_replay(task_key, fp)
            if replay is not None:
                vote = VoteValue(
                    False,
                    vote.method,
                    vote.distance,
                    vote.margin,
                    f"{vote.reason}; replays the output of task {replay.earlier_task[:16]}",
                    vote.position,
                    vote.fingerprint,
                )
        elif fp and vote.accept:
            self.history.add(task_key, fp)
        return vote

    async def check(self, req: Signed) -> bytes:
        if self.gateways and req.body["sender"] not in self.gateways:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "only the gateway asks this verifier")
        args = req.body["args"]
        try:
            task = open_wire(args.get("task", b""), "Task", self.network)
            result = open_wire(args.get("result", b""), "Result", self.network)
        except MessageError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        if result.body["task_id"] != task.id:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "result is for another task")
        png = args.get("output", b"")
        if not isinstance(png, bytes):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "output must be bytes")
        try:
            engine = self.engines.for_task(task.body["kind"], task.body["model"])
        except ModelError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        vote = await self._checks.submit(engine, (task, result, png))
        if self.cheat is not None:  # recorded above from the honest check
            vote = self.cheat.vote(vote)
        if self.metrics is not None:
            self.metrics.votes.labels("accept" if vote.accept else "reject").inc()
        signed = sign(self.identity, "Vote", self.network, vote.vote_body(self.identity.public_key, task.id, result.id))
        log.info("voted %s on task %s", "accept" if vote.accept else "reject", task.id.hex()[:12])
        return signed.wire()
