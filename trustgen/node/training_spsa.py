"""Gateway side of an SPSA job on the network: one block of `eval_every` steps per call.

Each step is decided before it is applied, as in a local run (training/run.py): the gateway asks
every live trainer for its SpsaUpdate of step t, sending the block's decided steps so far (each
with its checks: a trainer re-derives θ_t itself and never takes the gateway's word for it),
records the answers, commits (the step's beacon, unknown to every trainer), and asks the step's
verifiers, ranked by that beacon with the step target, for an UpdateCheck; a standby replaces a
verifier that fails. A strict majority decides each update; a rejected one is evidence and its
trainer is excluded. At the block's end the compute child applies the block's accepted bytes,
evaluates held-out loss, and the block's checkpoint is proposed, attested by verifiers ranked by a
fresh beacon with the block target, and finalised exactly as a local-SGD round's
(TrainingCoordinator.finalize). The pure rules are in training/spsa_rounds.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc

from trustgen.consensus.messages import MessageError, Signed, open_wire
from trustgen.node import training_compute as compute
from trustgen.node.training_replica import RoundFailed, open_reply
from trustgen.training import rounds, spsa_rounds
from trustgen.training.job import by_trainer

if TYPE_CHECKING:
    from trustgen.node.training_jobs import JobRun, TrainingCoordinator

log = logging.getLogger("trustgen.node")


async def _work(co: TrainingCoordinator, run: JobRun, trainer: bytes, t: int, history: list[dict]) -> Signed | None:
    """One trainer's update of step t, checked for what the gateway must not record: another
    signer, job or step, or committed samples that are not `batch` floats (an update whose byte
    does not follow from them is recorded: the verifiers reject it, and it is its own evidence)."""
    tag = trainer.hex()[:12]
    args = {**co.common_args(run), "round": t, "steps": history}
    try:
        reply = await co.peers.call(
            co.members[trainer]["address"], "Training", "Work", args, timeout=co.round_timeout_s
        )
        u = open_wire(open_reply(reply.body).get("update", b""), "SpsaUpdate", co.network)
    except grpc.aio.AioRpcError as e:
        log.warning("trainer %s: step %d: %s %s", tag, t, e.code().name, e.details())
        return None
    except (ValueError, MessageError) as e:
        log.warning("trainer %s: step %d: %s", tag, t, e)
        return None
    b = u.body
    diffs = b["diffs"]
    if u.signer != trainer or b["job"] != run.spec.id or b["step"] != t:
        log.warning("trainer %s answered with an update for something else", tag)
        return None
    if len(diffs) != run.spec.algorithm["batch"] or not all(isinstance(x, float) for x in diffs):
        log.warning("trainer %s: step %d: the committed samples are not the job's batch of floats", tag, t)
        return None
    return u


async def _step(co: TrainingCoordinator, run: JobRun, t: int, history: list[dict]) -> spsa_rounds.Step:
    spec = run.spec
    ups = by_trainer(await co.gather_work(run, lambda tr: _work(co, run, tr, t, history)))
    for u in ups:
        co.ledger.append("TrainingUpdate", {"update": u.wire(), "blob": ""})
    beacon = co.ledger.commit().body["root"]  # after the updates: no trainer can know it
    ranking = spsa_rounds.ranking(spec, t, beacon, run.candidates)
    args = {
        **co.common_args(run),
        "round": t,
        "beacon": beacon,
        "updates": [u.wire() for u in ups],
        "steps": history,
    }
    _, _, checks = await co.gather_checks(run, t, beacon, {u.id for u in ups}, ranking, args)
    try:  # the rule every trainer, verifier and auditor applies to the recorded checks
        step = spsa_rounds.decide(spec, t, beacon, ups, checks, run.candidates, run.k)
    except rounds.ProofError as e:
        raise RoundFailed(f"step {t}: the recorded checks do not decide it ({e.code}): {e}") from None
    for u in ups:
        if step.decisions[u.id] == "reject":
            co.reject(run, u, checks)
    return step


async def run_block(co: TrainingCoordinator, run: JobRun, b: int) -> dict[str, Any]:
    spec = run.spec
    assert run.state is not None
    steps: list[spsa_rounds.Step] = []
    for t in spsa_rounds.block_steps(spec, b):
        steps.append(await _step(co, run, t, [s.to_args() for s in steps]))
        run.touch()
    accepted = spsa_rounds.block_accepted(steps)
    wires = [[u.wire() for u in s.accepted] for s in steps]
    nxt, loss, digest = await co.compute.run(compute.derive_block, run.job.wire(), co.network, run.state, b, wires)
    beacon = co.ledger.commit().body["root"]  # the block's checkpoint verifiers: a fresh draw
    verifiers = rounds.effective_round_verifiers(spec.id, b, beacon, run.candidates, [], run.k)
    extra = {"steps": [s.to_args() for s in steps]}
    state = await co.finalize(run, b, (nxt, loss, digest), [u.id for u in accepted], beacon, verifiers, [], extra)
    delivered = sorted({u.signer.hex() for s in steps for u in s.updates})
    rejected = sorted({u.signer.hex() for s in steps for u in s.updates if s.decisions[u.id] == "reject"})
    return {
        "round": b,
        "steps": len(steps),
        "delivered": delivered,
        "accepted": sorted({u.signer.hex() for u in accepted}),
        "rejected": rejected,
        "verifiers": [v.hex() for v in verifiers],
        "heldout_loss": loss,
        "digest": digest.hex(),
        "state": state,
    }
