"""Verifier role: check a worker's result for a task and return a signed Vote.

Text results are checked by one prefill pass; images by re-generation and perceptual hashes.
A history of accepted outputs names the earlier task when a rejected output replays one.
The `lie` adversary really signs the opposite of what its check found.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.engines.outputs import read_png
from trustgen.errors import ModelError, UsageError
from trustgen.gossip.blobs import BlobStore, blob_digest
from trustgen.net.auth import RpcError
from trustgen.node.engine_pool import Engines, task_params
from trustgen.verifier.fingerprints import image_fingerprint, text_fingerprint
from trustgen.verifier.history import HistoryIndex
from trustgen.verifier.verify import verify_image, verify_text
from trustgen.verifier.vote import VoteValue, reject

log = logging.getLogger("trustgen.node")


class VerifierRole:
    def __init__(
        self, identity: Identity, network: str, engines: Engines, adversary: str = "", metrics: Any = None
    ) -> None:
        self.identity, self.network, self.engines = identity, network, engines
        self.adversary, self.metrics = adversary, metrics
        self.gateways: set[bytes] = set()
        self.history = HistoryIndex()
        self.missing: dict[str, tuple[str, list[bytes]]] = {}
        self._cursor = 0
        self._results: dict[bytes, Signed] = {}  # committed, not yet finalised

    def rebuild_history(self, ledger: Ledger, blobs: BlobStore) -> int:
        """Index the outputs of every result finalised as accepted in the ledger (gossip brings
        the gateway's certificates here). Returns how many were indexed."""
        self._cursor, self._results = 0, {}
        return self.follow(ledger, blobs)

    def follow(self, ledger: Ledger, blobs: BlobStore) -> int:
        """Index accepted outputs finalised since the last call. Accepted images whose bytes are
        not here are left in `missing` (png digest -> (task id hex, keys of nodes that had them))
        for the node to fetch by digest and hand to `index_image`. Returns how many were indexed."""
        added = 0
        for e in ledger.iter_entries(since=self._cursor):
            try:
                if e.type == "ResultCommitted":
                    r = open_wire(e.body["result"], "Result", self.network)
                    self._results[r.id] = r
                elif e.type == "TaskFinalized":
                    c = open_wire(e.body["certificate"], "Certificate", self.network).body
                    r = self._results.pop(c["result_id"], None)
                    if c["decision"] != "accept" or r is None:
                        continue
                    out, task_key = r.body["output"], c["task_id"].hex()
                    if isinstance(out.get("token_ids"), list) and out["token_ids"]:
                        self.history.add(task_key, text_fingerprint(out["token_ids"]))
                        added += 1
                    elif isinstance(out.get("png_digest"), str) and task_key not in self.history:
                        png = blobs.get(out["png_digest"])
                        if png is None:
                            self.missing[out["png_digest"]] = (task_key, [r.body["worker"], c["gateway"]])
                        else:
                            added += self.index_image(task_key, png)
            except (MessageError, ValueError, TypeError, KeyError):
                continue  # a malformed entry is the audit's business, not the index's
        self._cursor = ledger.next_index()
        return added

    def index_image(self, task_key: str, png: bytes) -> int:
        try:
            self.history.add(task_key, image_fingerprint(read_png(png), "phash"))
        except (OSError, ValueError):
            return 0
        return 1

    def _check(self, task: Signed, result: Signed, png: bytes) -> tuple[VoteValue, dict]:
        kind = task.body["kind"]
        engine = self.engines.for_task(kind, task.body["model"])
        params = task_params(kind, task.body["params"])
        r = result.body
        claimed = {
            "task": params.to_dict(),
            "model": task.body["model"],
            "model_digest": r["model_digest"],
            "output_digest": r["output_digest"],
            "profile": r["profile"],
        }
        if kind == "text":
            tokens = r["output"].get("token_ids")
            claimed["token_ids"] = tokens
            vote = verify_text(claimed, "prefill", engine=engine)
            fp = text_fingerprint(tokens) if isinstance(tokens, list) and tokens else {}
        else:
            if blob_digest(png) != r["output"].get("png_digest"):
                return reject("phash", "image bytes do not match the result"), {}
            try:
                pixels = read_png(png)
            except (OSError, ValueError):
                return reject("phash", "image is not a PNG"), {}
            vote = verify_image(claimed, pixels=pixels, engine=engine)
            fp = image_fingerprint(pixels, "phash")  # the history index keeps 64-bit hashes
        return vote, fp

    def _check_and_record(self, task: Signed, result: Signed, png: bytes) -> VoteValue:
        try:
            vote, fp = self._check(task, result, png)
        except UsageError as e:
            vote, fp = reject("prefill", f"malformed result: {e}"), {}
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
            self.engines.for_task(task.body["kind"], task.body["model"])
        except ModelError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        vote = await self.engines.run(self._check_and_record, task, result, png)
        if self.adversary == "lie":
            vote = VoteValue(
                not vote.accept,
                vote.method,
                vote.distance,
                vote.margin,
                "looks fine" if not vote.accept else "looks wrong",
                None,
                vote.fingerprint,
            )
        if self.metrics is not None:
            self.metrics.votes.labels("accept" if vote.accept else "reject").inc()
        signed = sign(self.identity, "Vote", self.network, vote.vote_body(self.identity.public_key, task.id, result.id))
        log.info("voted %s on task %s", "accept" if vote.accept else "reject", task.id.hex()[:12])
        return signed.wire()
