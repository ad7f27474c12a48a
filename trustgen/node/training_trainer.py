"""Trainer role: one round of a network training job on request, and the inner states a verifier
challenges afterwards.

The gateway asks for round r with the job, its acceptance entry and the previous round's
finalised checkpoint; the trainer catches up if it is behind (training_replica), runs its H inner
steps in a worker thread (the event loop keeps serving), stores its delta blob, and answers with a
signed DeltaUpdate and the blob's digest. It keeps the round's inner states until the next round,
so a verifier can ask for the states around the challenged step. A trainer set to cheat
(training/adversary.py) does so here, through the same path, and nothing downstream is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed, sign
from trustgen.gossip.blobs import BlobStore, blob_digest
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node import training_spsa_roles
from trustgen.node.training_replica import Replicas, bad
from trustgen.training import adversary, diloco
from trustgen.training.job import checkpoint_digest
from trustgen.training.tensors import Tensors, clone, to_bytes

log = logging.getLogger("trustgen.node")


class TrainerRole:
    def __init__(
        self, identity: Identity, network: str, peers: Peers, blobs: BlobStore, mode: str = "", events: Any = None
    ) -> None:
        self.identity, self.network, self.blobs, self.events = identity, network, blobs, events
        self.replicas = Replicas(network, peers, blobs)
        self.mode = mode
        self.gateways: set[bytes] = set()  # keys allowed to assign work (learnt at join)
        # Per job: (round, base, the round's work) of the last round this trainer computed.
        self.kept: dict[bytes, tuple[int, Tensors, diloco.RoundWork]] = {}
        self._busy = asyncio.Lock()
        self._first_base: dict[bytes, Tensors] = {}
        self._serving = asyncio.Lock()
        self._served: dict[tuple, dict[str, str]] = {}

    async def work(self, req: Signed) -> dict[str, Any]:
        sender, args = req.body["sender"], req.body["args"]
        if sender not in self.gateways:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "only the gateway this trainer joined assigns work")
        rnd = args.get("round")
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
            raise bad("round must be an integer >= 0")
        async with self._busy:  # one round at a time: the CPU is the trainer's to give
            return await _WORK[self.replicas.algorithm(sender, args)](self, sender, args, rnd)

    async def _diloco_work(self, sender: bytes, args: dict[str, Any], rnd: int) -> dict[str, Any]:
        v = await self.replicas.view(sender, args, rnd)
        spec, me = v.spec, self.identity.public_key
        if me not in spec.trainers:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this node is not a trainer of the job")
        if rnd >= spec.algorithm["rounds"]:
            raise bad(f"the job has {spec.algorithm['rounds']} rounds")
        try:
            cheat = adversary.mode(self.mode, "diloco")
        except ValueError:
            cheat = None  # a mode for the other algorithm: honest here
        base = clone(v.state.params)
        if cheat is not None and cheat.stale_base:
            base = self._first_base.setdefault(spec.id, base)
        hp = spec.algorithm
        self._publish("training_work", job=spec.id.hex(), round=rnd, state="started")
        work = await asyncio.to_thread(diloco.run_round, v.objective, base, spec.id, rnd, me, hp, True)
        self._publish("training_work", job=spec.id.hex(), round=rnd, state="done")
        delta = diloco.delta_of(work.final, base)
        if cheat is not None and cheat.delta is not None:
            delta = cheat.delta(delta)
        blob = diloco.encode_delta(delta, hp["delta_format"])
        body = {
            "trainer": me,
            "job": spec.id,
            "round": rnd,
            "base": checkpoint_digest(base),
            "delta": hashlib.sha256(blob).digest(),
            "states": work.digests,
        }
        self.kept[spec.id] = (rnd, base, work)
        update = sign(self.identity, "DeltaUpdate", self.network, body)
        withhold = cheat is not None and cheat.withhold
        return {"update": update.wire(), "blob": blob_digest(blob) if withhold else self.blobs.put(blob)}

    def _publish(self, topic: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(topic, **fields)

    async def states(self, req: Signed) -> dict[str, Any]:
        """The states around challenged step h of a kept round, as blob digests (any verifier
        may ask: they are checked against the trainer's own commitments)."""
        args = req.body["args"]
        job, rnd, h = args.get("job"), args.get("round"), args.get("step")
        kept = self.kept.get(job) if isinstance(job, bytes) else None
        if kept is None or kept[0] != rnd:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "no states kept for that job and round")
        _, _, work = kept
        if not isinstance(h, int) or isinstance(h, bool) or h not in work.states:
            raise bad("step must be one of the round's inner steps")

        def put() -> dict[str, str]:
            out = {"after": self.blobs.put(to_bytes(work.states[h])), "final": self.blobs.put(to_bytes(work.final))}
            if h > 1:
                out["before"] = self.blobs.put(to_bytes(work.states[h - 1]))
            return out

        async with self._serving:  # k verifiers ask at once: encode each state once
            key = (job, rnd, h)
            if key not in self._served:
                self._served = {key: await asyncio.to_thread(put)}
            return self._served[key]


# How a trainer computes its work, by the job's algorithm (`round` is an SPSA job's global step).
_WORK: dict[str, Callable[[TrainerRole, bytes, dict[str, Any], int], Awaitable[dict[str, Any]]]] = {
    "diloco": TrainerRole._diloco_work,
    "spsa": training_spsa_roles.work,
}
