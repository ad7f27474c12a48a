"""A trainer's or verifier's view of a network training job: the signed job, its objective, and
the checkpoint state of the latest round it knows, caught up from a finalised checkpoint proof.

Everything arrives from the coordinating gateway in request arguments and is checked here before
use: the job must be signed by the gateway asking, the `TrainingJobAccepted` entry must be that
gateway's and name the job, and a `CheckpointFinalized` must carry a strict majority of the
round's assigned verifiers' votes (training/rounds.check_finalized). Its state blob is fetched
from the gateway or any peer, checked chunk by chunk, and must decode to parameters whose digest
is the finalised one. A node that was down for rounds, or joins mid-job, catches up this way.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc

from trustgen.consensus.encoding import EncodingError, decode
from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import MessageError, Signed
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.training import rounds, spsa_rounds
from trustgen.training.job import DilocoState, SpsaState, checkpoint_digest, checkpoint_step, start_state
from trustgen.training.objectives import Objective, load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.spec import JobSpec, open_job
from trustgen.training.tensors import TensorError, clone

log = logging.getLogger("trustgen.node")
MAX_JOBS = 4  # jobs whose objective and state a node keeps in memory at once


MAX_REPLY = 1 << 20  # replies name blobs and carry signed wires, never tensors


def open_reply(data: bytes) -> dict[str, Any]:
    """A peer's TrainingReply body: a canonical map, bounded; ValueError otherwise."""
    if len(data) > MAX_REPLY:
        raise ValueError("reply too large")
    try:
        body = decode(data)
    except EncodingError as e:
        raise ValueError(f"reply is not a canonical map: {e}") from None
    if not isinstance(body, dict):
        raise ValueError("reply is not a map")
    return body


class RoundFailed(Exception):
    """A round (or SPSA block) the coordinator cannot complete: the job fails with this reason."""


def bad(detail: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, detail)


def pair(v: Any, what: str) -> tuple[bytes, bytes]:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, bytes) for x in v)):
        raise bad(f"{what} must be an entry [payload, signature]")
    return v[0], v[1]


@dataclass
class JobView:
    job: Signed  # the TrainingJob, signed by the coordinating gateway
    spec: JobSpec
    gateway: bytes
    candidates: list[bytes]
    k: int
    objective: Objective
    state: DilocoState  # the checkpoint state at round `state.step` (SPSA: an SpsaState at its block's start)
    # SPSA: θ advanced from `state` by the accepted update ids of each step applied so far
    cursor: tuple[Any, list[list[bytes]], SpsaState] | None = None


class Replicas:
    """Job views by job id (bounded), and the catch-up from a finalised checkpoint."""

    def __init__(self, network: str, peers: Peers, blobs: BlobStore) -> None:
        self.network, self.peers, self.blobs = network, peers, blobs
        self.jobs: dict[bytes, JobView] = {}
        self._lock = asyncio.Lock()

    def _open(self, sender: bytes, args: dict[str, Any]) -> tuple[Signed, JobSpec, list[bytes], int]:
        try:
            job, spec = open_job(args.get("job", b""), self.network)
            accepted = parse_entry(*pair(args.get("accepted"), "accepted"), self.network)
        except (MessageError, TypeError) as e:
            raise bad(f"job refused: {e}") from None
        if job.signer != sender or accepted.feed != sender or accepted.type != "TrainingJobAccepted":
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "the job must be the asking gateway's own")
        if accepted.body["job"] != job.wire():
            raise bad("the TrainingJobAccepted entry is for another job")
        if spec.algorithm["name"] == "spsa" and spec.algorithm["eval_every"] > spsa_rounds.MAX_BLOCK:
            raise bad(f"an SPSA job on the network evaluates at most every {spsa_rounds.MAX_BLOCK} steps")
        cands = accepted.body["candidates"]
        if not all(isinstance(c, bytes) and len(c) == 32 for c in cands) or not 1 <= accepted.body["k"] <= len(cands):
            raise bad("the job's verifier candidates are malformed")
        return job, spec, list(cands), accepted.body["k"]

    def algorithm(self, sender: bytes, args: dict[str, Any]) -> str:
        """The algorithm of the job a request names (checked as every request's job is)."""
        return self._open(sender, args)[1].algorithm["name"]

    async def view(self, sender: bytes, args: dict[str, Any], rnd: int) -> JobView:
        """The job at the start of round (SPSA: block) `rnd`, caught up from args["finalized"] if behind."""
        job, spec, candidates, k = self._open(sender, args)
        async with self._lock:  # one catch-up at a time; objectives are loaded once
            v = self.jobs.get(spec.id)
            if v is None:
                if len(self.jobs) >= MAX_JOBS:
                    self.jobs.pop(next(iter(self.jobs)))
                apply_profile(spec)
                objective = await asyncio.to_thread(load_objective, spec)
                v = JobView(job, spec, sender, candidates, k, objective, start_state(spec, objective))  # type: ignore[arg-type]
                self.jobs[spec.id] = v
            if v.state.step != (checkpoint_step(spec, rnd - 1) if rnd > 0 else 0):
                v.state = await self._catch_up(v, args, rnd)  # type: ignore[assignment]
        return v

    async def at_step(self, sender: bytes, args: dict[str, Any], t: int) -> tuple[JobView, SpsaState]:
        """An SPSA job at step t: its block's base (caught up like view), advanced by the accepted
        updates of the block's earlier steps, each step's proof checked (args["steps"])."""
        _, spec, _, _ = self._open(sender, args)
        if spec.algorithm["name"] != "spsa" or not 0 <= t < spec.algorithm["steps"]:
            raise bad("step must be a step of an SPSA job")
        b = spsa_rounds.block_of(spec, t)
        v = await self.view(sender, args, b)
        base: Any = v.state
        try:
            steps = spsa_rounds.open_steps(spec, self.network, v.candidates, v.k, base.step, args.get("steps"), t)
        except rounds.ProofError as e:
            raise bad(f"history refused ({e.code}): {e}") from None
        ids = [[u.id for u in s.accepted] for s in steps]
        cur = v.cursor
        if cur is None or cur[0] is not base or cur[1] != ids[: len(cur[1])]:
            cur = (base, [], SpsaState(spec, clone(base.params), base.step))
        done, state = len(cur[1]), cur[2]
        await asyncio.to_thread(spsa_rounds.advance, state, steps[done:])
        v.cursor = (base, ids, state)
        return v, state

    async def _catch_up(self, v: JobView, args: dict[str, Any], rnd: int) -> DilocoState | SpsaState:
        if rnd == 0:
            return start_state(v.spec, v.objective)
        try:
            fin = parse_entry(*pair(args.get("finalized"), "finalized"), self.network)
        except MessageError as e:
            raise bad(f"finalized checkpoint refused: {e}") from None
        if fin.feed != v.gateway or fin.type != "CheckpointFinalized" or fin.body["round"] != rnd - 1:
            raise bad(f"round {rnd} needs the gateway's CheckpointFinalized of round {rnd - 1}")
        try:
            cp = rounds.check_finalized(v.spec, v.gateway, v.candidates, v.k, fin.body)
        except rounds.ProofError as e:
            raise bad(f"finalized checkpoint refused ({e.code}): {e}") from None
        digest = fin.body["state"]
        data = self.blobs.get(digest)
        if data is None:
            sources = [a for a in args.get("sources", []) if isinstance(a, str)][:8]
            try:
                data, _ = await fetch_blob(self.peers, digest, sources, self.blobs)
            except BlobFetchError as e:
                raise RpcError(grpc.StatusCode.UNAVAILABLE, f"checkpoint state of round {rnd - 1}: {e}") from None
        try:
            state = rounds.decode_state(v.spec, v.state, data, rnd)
        except TensorError as e:
            raise bad(f"checkpoint state of round {rnd - 1}: {e}") from None
        if checkpoint_digest(state.params) != cp.body["digest"]:
            raise bad(f"checkpoint state of round {rnd - 1} does not have the finalised digest")
        log.info("job %s: caught up to round %d from a finalised checkpoint", v.spec.id.hex()[:12], rnd)
        return state
