"""Trainer and verifier sides of an SPSA job on the network (the gateway's is training_spsa.py).

Every request names a global step t and carries the block's decided steps before it, each with
its verifiers' checks; Replicas.at_step checks each step's proof and advances θ from the block's
base by the accepted bytes, so neither a trainer nor a verifier computes at a θ the gateway merely
claims. A trainer answers with its signed SpsaUpdate; a verifier with one UpdateCheck for the
step (the free arithmetic check of every update, one committed sample re-computed where the
update's coin comes up), and at the block's end with a CheckpointVote on the proposed checkpoint
it re-derived from the block's base and the accepted bytes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.net.auth import RpcError
from trustgen.node.training_replica import JobView, bad, pair
from trustgen.training import adversary, rounds, spsa, spsa_rounds
from trustgen.training.checks import honest_diffs
from trustgen.training.job import SpsaState, checkpoint_digest, checkpoint_step, rounds_of
from trustgen.training.records import ids_digest
from trustgen.training.tensors import clone

if TYPE_CHECKING:
    from trustgen.node.training_trainer import TrainerRole
    from trustgen.node.training_verifier import TrainingVerifier


def _mode(name: str) -> adversary.Mode | None:
    try:
        return adversary.mode(name, "spsa")
    except ValueError:
        return None  # a mode for the other algorithm: honest here


async def work(role: TrainerRole, sender: bytes, args: dict[str, Any], t: int) -> dict[str, Any]:
    """This trainer's SpsaUpdate of step t (a trainer set to cheat does so here)."""
    v, state = await role.replicas.at_step(sender, args, t)
    spec, me = v.spec, role.identity.public_key
    if me not in spec.trainers:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this node is not a trainer of the job")
    cheat, hp = _mode(role.mode), spec.algorithm

    def compute() -> tuple[int, list[float]]:
        diffs = honest_diffs(v.objective, spec, state.params, state.direction(), t, me)
        if cheat is not None and cheat.diffs is not None:
            diffs = cheat.diffs(diffs)
        q = spsa.scalar(diffs, hp["scale"])
        return (cheat.scalar(q) if cheat is not None and cheat.scalar is not None else q), diffs

    q, diffs = await asyncio.to_thread(compute)
    body = {"trainer": me, "job": spec.id, "step": t, "q": q, "diffs": diffs}
    return {"update": sign(role.identity, "SpsaUpdate", role.network, body).wire(), "blob": ""}


def _step_updates(v: JobView, t: int, raw: Any, network: str) -> list[Signed]:
    if not isinstance(raw, list) or len(raw) > len(v.spec.trainers) or not all(isinstance(w, bytes) for w in raw):
        raise bad("updates must be a list of at most one SpsaUpdate wire per trainer")
    try:
        ups = [open_wire(w, "SpsaUpdate", network) for w in raw]
    except MessageError as e:
        raise bad(f"update refused: {e}") from None
    if len({u.signer for u in ups}) != len(ups) or any(
        u.signer not in v.spec.trainers or u.body["job"] != v.spec.id or u.body["step"] != t for u in ups
    ):
        raise bad("an update from outside the trainer set, for another job or step, or a second one")
    return ups


async def check(ver: TrainingVerifier, sender: bytes, args: dict[str, Any], t: int) -> dict[str, Any]:
    """One UpdateCheck for step t: a verdict per recorded update, at θ_t this verifier derived."""
    v, state = await ver.replicas.at_step(sender, args, t)
    me = ver.identity.public_key
    if me not in v.candidates:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this verifier is not a candidate of the job")
    beacon = args.get("beacon")
    if not (isinstance(beacon, bytes) and len(beacon) == 32):
        raise bad("beacon must be 32 bytes")
    ups = _step_updates(v, t, args.get("updates"), ver.network)
    plan = spsa_rounds.plan(v.spec, t, ups)

    def judge() -> list[rounds.Verdict]:
        z = state.direction()
        return [spsa_rounds.verdict(v.objective, v.spec, state.params, z, t, u, plan[u.id]) for u in ups]

    verdicts = await asyncio.to_thread(judge)
    body = {
        "verifier": me,
        "job": v.spec.id,
        "round": t,
        "beacon": beacon,
        "verdicts": [x.to_list() for x in sorted(verdicts, key=lambda x: x.update)],
    }
    return {"check": sign(ver.identity, "UpdateCheck", ver.network, body).wire()}


async def attest(ver: TrainingVerifier, sender: bytes, args: dict[str, Any], b: int) -> dict[str, Any]:
    """A CheckpointVote on block b's proposed checkpoint, re-derived here."""
    v = await ver.replicas.view(sender, args, b)
    spec, me = v.spec, ver.identity.public_key
    if spec.algorithm["name"] != "spsa" or not 0 <= b < rounds_of(spec):
        raise bad("round must be a block of an SPSA job")
    try:
        prop = parse_entry(*pair(args.get("proposal"), "proposal"), ver.network)
    except (MessageError, TypeError) as e:
        raise bad(f"proposal refused: {e}") from None
    if prop.feed != sender or prop.type != "CheckpointProposed" or prop.body["round"] != b:
        raise bad("the proposal is not the gateway's for this block")
    beacon, verifiers, skipped = args.get("beacon"), args.get("verifiers"), args.get("skipped")
    if not (isinstance(beacon, bytes) and isinstance(verifiers, list) and isinstance(skipped, list)):
        raise bad("beacon, verifiers and skipped are needed")
    if verifiers != rounds.effective_round_verifiers(spec.id, b, beacon, v.candidates, skipped, v.k):
        raise bad("the verifiers are not the block's assigned ones")
    if me not in verifiers:
        raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this verifier is not assigned to the block")
    history = args.get("history", [])
    if not (isinstance(history, list) and all(isinstance(x, bytes) and len(x) == 32 for x in history)):
        raise bad("history must be the ids of the updates accepted in earlier blocks")
    base: Any = v.state
    end = spsa_rounds.block_steps(spec, b)
    try:
        steps = spsa_rounds.open_steps(spec, ver.network, v.candidates, v.k, base.step, args.get("steps"), end.stop)
    except rounds.ProofError as e:
        raise bad(f"history refused ({e.code}): {e}") from None

    def no(reason: str) -> dict[str, Any]:
        zero = bytes(32)
        body = {
            "verifier": me,
            "job": spec.id,
            "round": b,
            "digest": zero,
            "state": "",
            "accept": False,
            "reason": reason,
        }
        return {"vote": sign(ver.identity, "CheckpointVote", ver.network, body).wire()}

    accepted = [u.id for u in spsa_rounds.block_accepted(steps)]
    if accepted != list(prop.body["accepted"]):
        return no("the accepted updates are not those the steps' checks accept")
    if b > 0:
        fin = parse_entry(*pair(args.get("finalized"), "finalized"), ver.network)
        prev = rounds.check_finalized(spec, sender, v.candidates, v.k, fin.body)
        if prev.body["updates"] != ids_digest(history):
            return no("the earlier blocks' update list does not match the last finalised checkpoint")
    elif history:
        return no("block 0 has no earlier updates")

    def derive() -> tuple[SpsaState, float, bytes]:
        nxt = SpsaState(spec, clone(base.params), base.step)
        spsa_rounds.advance(nxt, steps)
        return nxt, v.objective.eval_loss(nxt.params), rounds.encode_state(nxt)

    nxt, loss, state_bytes = await asyncio.to_thread(derive)
    digest, state = checkpoint_digest(nxt.params), ver.blobs.put(state_bytes)
    try:
        cb = open_wire(prop.body["checkpoint"], "TrainingCheckpoint", ver.network).body
    except MessageError as e:
        return no(f"the proposed checkpoint does not open: {e}")
    why = (
        "the checkpoint is not the gateway's for this job and block"
        if (cb["publisher"] != sender or cb["job"] != spec.id or cb["step"] != checkpoint_step(spec, b))
        else "a different checkpoint digest"
        if cb["digest"] != digest
        else "a different state blob"
        if prop.body["state"] != state
        else "a different update list"
        if cb["updates"] != ids_digest(history + accepted)
        else f"held-out loss {cb['heldout_loss']!r}, re-computed {loss!r}"
        if cb["heldout_loss"] != loss
        else ""
    )
    if why:
        return no(why)
    v.state, v.cursor = nxt, None  # type: ignore[assignment]  # optimistic: the next block starts here
    body = {"verifier": me, "job": spec.id, "round": b, "digest": digest, "state": state, "accept": True, "reason": ""}
    return {"vote": sign(ver.identity, "CheckpointVote", ver.network, body).wire()}
