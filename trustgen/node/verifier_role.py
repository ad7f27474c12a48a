"""Verifier role: check a worker's result for a task and return a signed Vote.

Each task kind says how its results are checked (trustgen.node.kinds): text by one prefill
pass (checks that arrive while the engine thread is busy share one prefill pass, with the votes
checking each alone gives), images by their committed denoising trajectory (c steps re-executed,
chosen by the challenge beacon the gateway drew after committing the result) or, for results
without a commitment and the audit-drawn fraction, by re-generation and perceptual hashes. The
trajectory tensors are fetched by digest from the worker (or any peer holding them),
size-bounded and checked chunk by chunk. A history of accepted outputs names the earlier task
when a rejected output replays one. A verifier set to cheat (trustgen.node.adversary) really
signs something other than what its check found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.errors import ModelError, UsageError
from trustgen.gossip.blobfetch import BlobFetchError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.adversary import verifier_cheat
from trustgen.node.coalesce import Coalescer
from trustgen.node.engine_pool import Engines
from trustgen.node.kinds import (
    TASK_KINDS,
    Checked,
    Fingerprint,
    TaskKind,
    check_result_by_trajectory,
    check_results,
    trajectory_blob,
)
from trustgen.verifier.history import HistoryIndex
from trustgen.verifier.trajectory import METHOD, choose_method, early_reject
from trustgen.verifier.vote import VoteValue, reject

log = logging.getLogger("trustgen.node")
MAX_CHECK_BATCH = 16  # default results checked in one engine call (prefill rows are bounded again inside)

# (blob digest, keys of nodes that should hold it, addresses the gateway says hold it, size
# limit) -> the blob's bytes; raises BlobFetchError (gossip/blobfetch.py) when no peer serves it
# within the limit.
Fetch = Callable[[str, list[bytes], list[str], int], Awaitable[bytes]]
MAX_SOURCES, MAX_ADDRESS = 8, 256
# A committed trajectory larger than this is not fetched (the vote rejects it): 20 steps of a
# 512x512 Stable Diffusion latent are ~2.7 MB, 200 steps of 1024x1024 ~105 MB in float32.
MAX_TRAJECTORY_BLOB = 128 << 20
FOLLOWED = ("TaskAccepted", "ResultCommitted", "TaskFinalized")  # the entries `follow` reads


class VerifierRole:
    def __init__(
        self,
        identity: Identity,
        network: str,
        engines: Engines,
        adversary: str = "",
        metrics: Any = None,
        fetch: Fetch | None = None,
        batch: int = MAX_CHECK_BATCH,
    ) -> None:
        """`adversary`: the node's cheating mode; honest unless it is a verifier mode. `fetch`:
        how trajectory blobs are fetched; without it every image is re-generated. `batch`: up to
        this many checks that arrive together share one engine call (votes are unchanged)."""
        self.identity, self.network, self.engines = identity, network, engines
        self.fetch = fetch
        # method -> [checks, wall seconds, process CPU seconds], fetch included, what
        # bench/bench_trajnet.py reads (process CPU: torch's intra-op threads are not this one)
        self.timings: dict[str, list[float]] = {}
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
        for e in ledger.iter_entries(since=self._cursor, types=FOLLOWED):
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

    def _check_trajectory(self, task: Signed, result: Signed, png: bytes, traj: tuple) -> VoteValue:
        engine = self.engines.for_task(task.body["kind"], task.body["model"])
        got: Checked | UsageError
        try:
            got = check_result_by_trajectory(engine, task.body, result.body, png, *traj)
        except UsageError as e:
            got = e
        return self._record(task, got)

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
                vote = replace(vote, reason=f"{vote.reason}; replays the output of task {replay.earlier_task[:16]}")
        elif fp and vote.accept:
            self.history.add(task_key, fp)
        return vote

    async def _fetch_trajectory(
        self, req: Signed, result: Signed, beacon: bytes, beacon_size: int
    ) -> bytes | VoteValue:
        """The committed trajectory's bytes from the worker (or the gateway, or any peer), or the
        rejecting vote when the commitment names none or nobody serves it within the limit."""
        assert self.fetch is not None
        digest = trajectory_blob(result.body["output"])
        if not digest:
            return early_reject("trajectory commitment names no blob", beacon, beacon_size)
        hints = req.body["args"].get("sources")
        if not (isinstance(hints, list) and all(isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS for a in hints)):
            hints = []
        try:
            holders = [result.body["worker"], req.body["sender"]]
            return await self.fetch(digest, holders, hints[:MAX_SOURCES], MAX_TRAJECTORY_BLOB)
        except BlobFetchError as e:
            return early_reject(f"committed trajectory could not be fetched: {e}", beacon, beacon_size)

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
        beacon, beacon_size = args.get("beacon"), args.get("beacon_size")
        if not (isinstance(beacon, bytes) and len(beacon) == 32):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "beacon must be 32 bytes")
        if type(beacon_size) is not int or not 0 <= beacon_size < 2**63:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "beacon_size must be a non-negative integer")
        try:
            engine = self.engines.for_task(task.body["kind"], task.body["model"])
        except ModelError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        kind = TASK_KINDS[task.body["kind"]]  # the engine pool serves it, so it is a known kind
        committed = kind.commits_trajectory(result.body["output"])
        wall, cpu = time.perf_counter(), time.process_time()
        if self.fetch is None or choose_method(committed, beacon, task.id) != METHOD:
            vote = await self._checks.submit(engine, (task, result, png))
        else:
            fetched = await self._fetch_trajectory(req, result, beacon, beacon_size)
            if isinstance(fetched, VoteValue):
                vote = fetched
            else:
                vote = await self.engines.run(self._check_trajectory, task, result, png, (fetched, beacon, beacon_size))
        t = self.timings.setdefault(vote.method, [0.0, 0.0, 0.0])
        t[0], t[1], t[2] = t[0] + 1, t[1] + time.perf_counter() - wall, t[2] + time.process_time() - cpu
        if self.cheat is not None:  # recorded above from the honest check
            vote = self.cheat.vote(vote)
        if self.metrics is not None:
            self.metrics.votes.labels("accept" if vote.accept else "reject").inc()
        signed = sign(self.identity, "Vote", self.network, vote.vote_body(self.identity.public_key, task.id, result.id))
        log.info("voted %s on task %s", "accept" if vote.accept else "reject", task.id.hex()[:12])
        return signed.wire()
