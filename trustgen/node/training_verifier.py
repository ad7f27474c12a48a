"""Verifier side of network training: check a round's updates, then re-derive the proposed checkpoint.

`check` fetches every recorded update's delta blob (chunk-checked) from its trainer or the
gateway, runs the static checks, re-executes the challenged inner step of every update whose coin
comes up (asking the trainer for the states around it, checked against its commitments), and
signs one UpdateCheck for the round. `attest` recomputes which updates the assigned verifiers'
checks accept, aggregates them from the round's checkpoint state, evaluates the held-out loss and
signs a CheckpointVote that accepts the gateway's proposal only when digest, state blob, update
list and loss are exactly what it derived itself (the job's execution profile makes that exact).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import parse_entry
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.consensus.tally import ACCEPT
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob
from trustgen.gossip.blobs import BlobStore
from trustgen.net import grpc_options as opts
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node import training_spsa_roles
from trustgen.node.training_replica import JobView, Replicas, bad, open_reply, pair
from trustgen.training import rounds
from trustgen.training.job import by_trainer, checkpoint_digest
from trustgen.training.records import ids_digest

log = logging.getLogger("trustgen.node")


def _ints(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class TrainingVerifier:
    def __init__(self, identity: Identity, network: str, peers: Peers, blobs: BlobStore) -> None:
        self.identity, self.network, self.peers, self.blobs = identity, network, peers, blobs
        self.replicas = Replicas(network, peers, blobs)
        self.gateways: set[bytes] = set()
        self._lock = asyncio.Lock()

    def _gate(self, req: Signed) -> tuple[bytes, dict[str, Any], int]:
        sender, args = req.body["sender"], req.body["args"]
        if sender not in self.gateways:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "only the gateway this verifier joined assigns checks")
        rnd = args.get("round")
        if not _ints(rnd):
            raise bad("round must be an integer >= 0")
        return sender, args, rnd

    def _updates(self, v: JobView, rnd: int, items: Any) -> list[tuple[Signed, str, str]]:
        """The round's recorded updates: [wire, blob digest, trainer address] each, one per trainer."""
        if not isinstance(items, list) or len(items) > len(v.spec.trainers):
            raise bad("updates must be a list of at most one per trainer")
        out, seen = [], set()
        for it in items:
            if not (isinstance(it, list) and len(it) == 3 and isinstance(it[0], bytes) and isinstance(it[1], str)):
                raise bad("an update is [wire, blob digest, trainer address]")
            try:
                u = open_wire(it[0], "DeltaUpdate", self.network)
            except MessageError as e:
                raise bad(f"update refused: {e}") from None
            if u.signer not in v.spec.trainers or u.body["job"] != v.spec.id or u.signer in seen:
                raise bad("an update from outside the trainer set, for another job, or a second one")
            seen.add(u.signer)
            out.append((u, it[1], it[2] if isinstance(it[2], str) else ""))
        return out

    async def _blob(self, digest: str, sources: list[str]) -> bytes | None:
        data = self.blobs.get(digest)
        if data is not None:
            return data
        try:
            data, _ = await fetch_blob(self.peers, digest, [s for s in sources if s][:8], self.blobs)
        except BlobFetchError as e:
            log.info("delta %s: %s", digest[:12], e)
            return None
        return data

    async def _states(self, address: str, job: bytes, rnd: int, h: int) -> dict[str, bytes] | None:
        """The states around step h, from the trainer (None when it cannot give them)."""
        try:
            reply = await self.peers.call(
                address, "Training", "States", {"job": job, "round": rnd, "step": h}, timeout=opts.DEADLINE_FETCH
            )
            names = open_reply(reply.body)
        except (grpc.aio.AioRpcError, ValueError) as e:
            log.info("trainer at %s gave no states: %s", address, e)
            return None
        out = {}
        for k in ("before", "after", "final"):
            d = names.get(k)
            if isinstance(d, str):
                data = await self._blob(d, [address])
                if data is None:
                    return None
                out[k] = data
        return out

    async def check(self, req: Signed) -> dict[str, Any]:
        sender, args, rnd = self._gate(req)
        async with self._lock:  # one check at a time; `round` is an SPSA job's global step
            return await _CHECK[self.replicas.algorithm(sender, args)](self, sender, args, rnd)

    async def _diloco_check(self, sender: bytes, args: dict[str, Any], rnd: int) -> dict[str, Any]:
        v = await self.replicas.view(sender, args, rnd)
        me = self.identity.public_key
        if me not in v.candidates:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this verifier is not a candidate of the job")
        beacon = args.get("beacon")
        if not (isinstance(beacon, bytes) and len(beacon) == 32):
            raise bad("beacon must be 32 bytes")
        ups = self._updates(v, rnd, args.get("updates"))
        sources = [s for s in args.get("sources", []) if isinstance(s, str)][:4]
        blobs = await asyncio.gather(*(self._blob(d, [a, *sources]) for _, d, a in ups))
        plan = rounds.challenges(v.spec, rnd, [u for u, _, _ in ups])
        base = v.state.params
        verdicts = []
        for (u, _, address), blob in zip(ups, blobs):
            rejected, _delta = rounds.static_verdict(v.state, u, blob)
            if rejected is not None:
                verdicts.append(rejected)
                continue
            h = plan[u.id]
            if h == 0:
                verdicts.append(rounds.Verdict(u.id, True, "", 0, 0.0, ""))
                continue
            given = await self._states(address, v.spec.id, rnd, h)
            assert blob is not None
            verdicts.append(
                await asyncio.to_thread(rounds.challenged_verdict, v.objective, v.spec, u, blob, base, h, given)
            )
        body = {
            "verifier": me,
            "job": v.spec.id,
            "round": rnd,
            "beacon": beacon,
            "verdicts": [x.to_list() for x in sorted(verdicts, key=lambda x: x.update)],
        }
        return {"check": sign(self.identity, "UpdateCheck", self.network, body).wire()}

    async def attest(self, req: Signed) -> dict[str, Any]:
        sender, args, rnd = self._gate(req)
        async with self._lock:  # `round` is an SPSA job's block
            return await _ATTEST[self.replicas.algorithm(sender, args)](self, sender, args, rnd)

    async def _diloco_attest(self, sender: bytes, args: dict[str, Any], rnd: int) -> dict[str, Any]:
        v = await self.replicas.view(sender, args, rnd)
        vote = await self._attest(v, sender, args, rnd)
        return {"vote": sign(self.identity, "CheckpointVote", self.network, vote).wire()}

    async def _attest(self, v: JobView, gateway: bytes, args: dict[str, Any], rnd: int) -> dict[str, Any]:
        me, spec = self.identity.public_key, v.spec
        try:
            prop = parse_entry(*pair(args.get("proposal"), "proposal"), self.network)
            checks = [open_wire(w, "UpdateCheck", self.network) for w in args.get("checks", [])]
        except (MessageError, TypeError) as e:
            raise bad(f"proposal refused: {e}") from None
        if prop.feed != gateway or prop.type != "CheckpointProposed" or prop.body["round"] != rnd:
            raise bad("the proposal is not the gateway's for this round")
        beacon, verifiers, skipped = args.get("beacon"), args.get("verifiers"), args.get("skipped")
        if not (isinstance(beacon, bytes) and isinstance(verifiers, list) and isinstance(skipped, list)):
            raise bad("beacon, verifiers and skipped are needed")
        if verifiers != rounds.effective_round_verifiers(spec.id, rnd, beacon, v.candidates, skipped, v.k):
            raise bad("the verifiers are not the round's assigned ones")
        if me not in verifiers:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "this verifier is not assigned to the round")
        ups = self._updates(v, rnd, args.get("updates"))
        for c in checks:
            if c.body["job"] != spec.id or c.body["round"] != rnd or c.body["beacon"] != beacon:
                raise bad("a check for another job, round or beacon")
        try:
            decisions = rounds.round_decisions([u for u, _, _ in ups], checks, verifiers, v.k)
        except ValueError as e:
            raise bad(f"checks refused: {e}") from None
        accepted = [u for u, _, _ in ups if decisions[u.id] == ACCEPT]
        history = args.get("history", [])
        if not (isinstance(history, list) and all(isinstance(x, bytes) and len(x) == 32 for x in history)):
            raise bad("history must be the ids of the updates accepted in earlier rounds")

        def no(reason: str) -> dict[str, Any]:
            log.warning("job %s round %d: refusing the proposal: %s", spec.id.hex()[:12], rnd, reason)
            zero = bytes(32)
            return {
                "verifier": me,
                "job": spec.id,
                "round": rnd,
                "digest": zero,
                "state": "",
                "accept": False,
                "reason": reason,
            }

        if [u.id for u in by_trainer(accepted)] != list(prop.body["accepted"]):
            return no("the accepted updates are not those the verifiers' checks accept")
        if rnd > 0:
            fin = parse_entry(*pair(args.get("finalized"), "finalized"), self.network)
            prev = rounds.check_finalized(spec, gateway, v.candidates, v.k, fin.body)
            if prev.body["updates"] != ids_digest(history):
                return no("the earlier rounds' update list does not match the last finalised checkpoint")
        elif history:
            return no("round 0 has no earlier updates")
        deltas = {}
        sources = [s for s in args.get("sources", []) if isinstance(s, str)][:4]
        for u, d, a in ups:
            if decisions[u.id] != ACCEPT:
                continue
            blob = await self._blob(d, [a, *sources])
            rejected, delta = rounds.static_verdict(v.state, u, blob)
            if rejected is not None or delta is None:
                return no(f"an accepted update fails here: {rejected.reason if rejected else 'no delta'}")
            deltas[u.id] = delta

        def derive() -> tuple[Any, float, bytes]:
            nxt = rounds.apply_round(v.state, accepted, deltas)
            return nxt, v.objective.eval_loss(nxt.params), rounds.encode_state(nxt)

        nxt, loss, state_bytes = await asyncio.to_thread(derive)
        digest, state = checkpoint_digest(nxt.params), self.blobs.put(state_bytes)
        try:
            cp = open_wire(prop.body["checkpoint"], "TrainingCheckpoint", self.network)
        except MessageError as e:
            return no(f"the proposed checkpoint does not open: {e}")
        cb = cp.body
        mine_updates = ids_digest(history + [u.id for u in by_trainer(accepted)])
        why = (
            "the checkpoint is not the gateway's for this job and round"
            if (cb["publisher"] != gateway or cb["job"] != spec.id or cb["step"] != rnd + 1)
            else "a different checkpoint digest"
            if cb["digest"] != digest
            else "a different state blob (parameters or outer momentum)"
            if prop.body["state"] != state
            else "a different update list"
            if cb["updates"] != mine_updates
            else f"held-out loss {cb['heldout_loss']!r}, re-computed {loss!r}"
            if cb["heldout_loss"] != loss
            else ""
        )
        if why:
            return no(why)
        v.state = nxt  # optimistic: the next round starts here unless the gateway says otherwise
        return {
            "verifier": me,
            "job": spec.id,
            "round": rnd,
            "digest": digest,
            "state": state,
            "accept": True,
            "reason": "",
        }


# A verifier's work by the job's algorithm.
_Handler = Callable[[TrainingVerifier, bytes, dict[str, Any], int], Awaitable[dict[str, Any]]]
_CHECK: dict[str, _Handler] = {"diloco": TrainingVerifier._diloco_check, "spsa": training_spsa_roles.check}
_ATTEST: dict[str, _Handler] = {"diloco": TrainingVerifier._diloco_attest, "spsa": training_spsa_roles.attest}
