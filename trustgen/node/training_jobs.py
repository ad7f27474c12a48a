"""Gateway side of network training: accept a job, drive its rounds, finalise checkpoints.

The flow and what each ledger entry means are in docs/training-network.md. Everything is written
to the gateway's feed before it is acted on; the gateway is trusted for liveness only, since
every finalised checkpoint carries the signed votes of a strict majority of the round's assigned
verifiers, each of which re-derived it. A round closes when every trainer answered or at its
deadline, with the trainers that delivered; a trainer that is killed, times out or whose blob
never arrives is absent from that round and asked again the next.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.consensus.tally import ACCEPT, REJECT
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.net.peers import Peers
from trustgen.node import training_compute as compute
from trustgen.node import training_spsa
from trustgen.node.training_replica import RoundFailed, bad, open_reply
from trustgen.training import rounds, spsa_rounds
from trustgen.training.job import by_trainer, checkpoint_step, rounds_of
from trustgen.training.records import ids_digest, open_update
from trustgen.training.spec import MAX_TRAINERS, JobSpec, open_job, sign_job
from trustgen.training.tensors import TensorError

log = logging.getLogger("trustgen.node")
MAX_VERIFIERS = 15
# A round that cannot reach its verifiers is retried with exponential backoff between these bounds.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0


@dataclass
class JobRun:
    job: Signed
    spec: JobSpec
    accepted: tuple[bytes, bytes]  # the TrainingJobAccepted entry (payload, signature)
    candidates: list[bytes]
    k: int
    state: bytes | None = None  # the checkpoint state blob at round `done` (computed in a child process)
    done: int = 0  # rounds finalised
    status: str = "running"  # running | final | failed
    detail: str = ""
    base_loss: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[bytes, str] = field(default_factory=dict)
    history: list[bytes] = field(default_factory=list)  # ids of every accepted update, in order
    finalized: tuple[bytes, bytes] | None = None
    best: dict[str, Any] = field(default_factory=dict)
    # Updates recorded for round `done` before a restart cut it short: that round reuses them.
    recorded: list[tuple[Signed, str]] = field(default_factory=list)
    retries: int = 0  # round attempts that found too few verifiers and were run again
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def to_dict(self) -> dict[str, Any]:
        a = self.spec.algorithm
        return {
            "job_id": self.spec.id.hex(),
            "name": self.spec.section("job")["name"],
            "state": self.status,
            "detail": self.detail,
            "round": self.done,
            "algorithm": a["name"],
            "rounds_total": rounds_of(self.spec),
            "trainers": [t.hex() for t in self.spec.trainers],
            "excluded": {t.hex(): why for t, why in self.excluded.items()},
            "base_heldout_loss": self.base_loss,
            "rounds_done": self.rounds,
            "best": self.best,
            "retries": self.retries,
        }


class TrainingCoordinator:
    def __init__(
        self,
        identity: Identity,
        network: str,
        ledger: Ledger,
        peers: Peers,
        blobs: BlobStore,
        members: dict[bytes, dict[str, Any]],
        address: Callable[[], str],
        round_timeout_s: float = 600.0,
        verifier_timeout_s: float = 600.0,
        events: Any = None,
        admitted: Callable[[bytes, str], bool] = lambda key, role: True,
        *,
        retry_s: float = 1800.0,
    ) -> None:
        self.identity, self.network, self.ledger = identity, network, ledger
        self.peers, self.blobs, self.members, self.address = peers, blobs, members, address
        self.round_timeout_s, self.verifier_timeout_s = round_timeout_s, verifier_timeout_s
        self.retry_s = retry_s
        self.events = events
        self.admitted = admitted  # the network's admission rule (consensus/admission.py), now
        self.jobs: dict[bytes, JobRun] = {}
        self.by_submission: dict[bytes, bytes] = {}
        self._runners: set[asyncio.Task] = set()
        self.compute = compute.Compute()

    def _with_role(self, role: str) -> list[bytes]:
        return sorted(k for k, m in self.members.items() if role in m["roles"] and self.admitted(k, role))

    # -- submit and status ---------------------------------------------------------------------------

    async def submit(self, req: Signed) -> dict[str, Any]:
        args = req.body["args"]
        try:
            sub, spec = open_job(args.get("job", b""), self.network)
        except MessageError as e:
            raise bad(f"job refused: {e}") from None
        if sub.id in self.by_submission:  # idempotent: a retried submit gets the same job
            return self.jobs[self.by_submission[sub.id]].to_dict()
        if spec.trainers:
            raise bad("the network chooses the trainers: submit a job without [trainers]")
        if spec.algorithm["name"] == "spsa" and spec.algorithm["eval_every"] > spsa_rounds.MAX_BLOCK:
            raise bad(f"an SPSA job on the network must evaluate at most every {spsa_rounds.MAX_BLOCK} steps")
        want, k = args.get("trainers", 4), args.get("verifiers", 3)
        if not (isinstance(want, int) and 1 <= want <= MAX_TRAINERS and isinstance(k, int) and 1 <= k <= MAX_VERIFIERS):
            raise bad(f"trainers must be in 1..{MAX_TRAINERS} and verifiers in 1..{MAX_VERIFIERS}")
        trainers = self._with_role("trainer")[:want]
        if not trainers:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, "no trainer has joined this gateway")
        candidates = [v for v in self._with_role("verifier") if v not in trainers]
        if len(candidates) < k:
            raise RpcError(
                grpc.StatusCode.FAILED_PRECONDITION, f"the job asks for {k} verifiers; {len(candidates)} have joined"
            )
        spec = spec.with_trainers(trainers)
        job = sign_job(self.identity, spec)
        commitment = self.ledger.commit()  # the job's beacon
        entry = self.ledger.append(
            "TrainingJobAccepted",
            {
                "job": job.wire(),
                "beacon": commitment.body["root"],
                "beacon_size": commitment.body["size"],
                "candidates": candidates,
                "k": k,
            },
        )
        run = JobRun(job, spec, (entry.payload, entry.sig), candidates, k)  # the model loads in the runner
        self.jobs[spec.id] = run
        self.by_submission[sub.id] = spec.id
        self._publish("training", job=spec.id.hex(), state="accepted", trainers=len(trainers))
        self._start(run)
        return run.to_dict()

    def _start(self, run: JobRun) -> None:
        t = asyncio.get_running_loop().create_task(self._drive(run))
        self._runners.add(t)
        t.add_done_callback(self._runners.discard)

    async def recover(self) -> int:
        """Rebuild every job from this gateway's own feed and resume the unfinished ones: the
        state after the last finalised round comes from its state blob (checked against the
        finalised digest), a round cut short by the restart is run again, reusing the updates
        it had already recorded. Returns the number of jobs resumed."""
        me = self.identity.public_key
        own = [e for e in self.ledger.iter_entries() if e.feed == me and e.type in _RECOVERED]
        resumed = 0
        for acc in (e for e in own if e.type == "TrainingJobAccepted"):
            try:
                run = await self._rebuild(acc, own)
            except Exception:  # one job that cannot be rebuilt must not stop the others
                log.exception("training job in entry %d cannot be resumed", acc.seq)
                continue
            self.jobs[run.spec.id] = run
            if run.status == "failed":
                continue
            if run.done < rounds_of(run.spec):
                self._start(run)
                resumed += 1
            else:
                run.status = "final"
        return resumed

    async def _rebuild(self, acc: Any, own: list[Any]) -> JobRun:
        job, spec = open_job(acc.body["job"], self.network)
        run = JobRun(job, spec, (acc.payload, acc.sig), list(acc.body["candidates"]), acc.body["k"])
        await self._load(run)
        mine = [e for e in own if _job_of(e, self.network) == spec.id]
        proposals = {e.body["checkpoint"]: e for e in mine if e.type == "CheckpointProposed"}
        signers: dict[bytes, tuple[bytes, int]] = {}  # update id -> (trainer, round)
        updates: list[tuple[Signed, str]] = []
        for e in mine:
            if e.type == "TrainingUpdate":
                u = open_update(e.body["update"], self.network)
                signers[u.id] = (u.signer, _round_of(spec, u))
                updates.append((u, e.body["blob"]))
            if e.type == "Evidence":
                run.excluded[e.body["subject"]] = "rejected by the verifiers (recorded evidence)"
            if e.type != "CheckpointFinalized":
                continue
            r = e.body["round"]
            prop = proposals[e.body["checkpoint"]]
            cp = open_wire(e.body["checkpoint"], "TrainingCheckpoint", self.network)
            run.history += list(prop.body["accepted"])
            run.finalized = (e.payload, e.sig)
            loss, digest = cp.body["heldout_loss"], cp.body["digest"].hex()
            acc_keys = [signers[i][0].hex() for i in prop.body["accepted"] if i in signers]
            delivered = [t.hex() for t, rr in signers.values() if rr == r]
            run.rounds.append(
                {
                    "round": r,
                    "delivered": sorted(set(delivered)),
                    "accepted": acc_keys,
                    "rejected": sorted(set(delivered) - set(acc_keys)),
                    "verifiers": [v.hex() for v in e.body["verifiers"]],
                    "heldout_loss": loss,
                    "digest": digest,
                    "state": e.body["state"],
                    "wall_s": 0.0,
                }
            )
            if not run.best or loss < run.best["heldout_loss"]:
                run.best = {"round": r + 1, "heldout_loss": loss, "digest": digest, "state": e.body["state"]}
            data = self.blobs.get(e.body["state"])
            if data is None:
                raise _RoundFailed(f"the state blob of round {r} is missing from this gateway's store")
            try:
                digest_of = await self.compute.run(compute.restore, job.wire(), self.network, data, r + 1)
            except TensorError as e:
                raise _RoundFailed(f"the state blob of round {r} is malformed: {e}") from None
            run.state, run.done = data, r + 1
            if digest_of != cp.body["digest"]:
                raise _RoundFailed(f"the state blob of round {r} does not have the finalised digest")
        cut = [(u, d) for u, d in updates if _round_of(spec, u) == run.done]
        if cut and spec.algorithm["name"] == "spsa":
            # Re-running a cut block would record a second update per trainer and step; the
            # block's steps are not resumed yet (docs/training-network.md).
            run.status, run.detail = (
                "failed",
                f"the gateway restarted inside block {run.done}: SPSA blocks do not resume",
            )
        run.recorded = [(u, d) for u, d in cut if self.blobs.has(d)]
        return run

    def get(self, job_id: Any) -> JobRun:
        run = self.jobs.get(job_id) if isinstance(job_id, bytes) else None
        if run is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, "unknown training job")
        return run

    # -- driving the rounds ------------------------------------------------------------------------------

    async def _load(self, run: JobRun) -> None:
        if run.base_loss is None:
            state, run.base_loss = await self.compute.run(compute.start, run.job.wire(), self.network)
            run.state = run.state or state

    async def _drive(self, run: JobRun) -> None:
        try:
            await self._load(run)
            drive = _DRIVERS[run.spec.algorithm["name"]]
            for r in range(run.done, rounds_of(run.spec)):
                t0 = time.monotonic()
                info = await self._round_retried(run, r, drive)
                info["wall_s"] = round(time.monotonic() - t0, 3)
                run.rounds.append(info)
                run.touch()
                self._publish("training_round", job=run.spec.id.hex(), **info)
            run.status = "final"
        except _RoundFailed as e:
            run.status, run.detail = "failed", str(e)
            log.warning("training job %s failed: %s", run.spec.id.hex()[:12], e)
        except Exception:  # a bug must not take the node down
            log.exception("training job %s failed", run.spec.id.hex()[:12])
            run.status, run.detail = "failed", "internal error"
        run.touch()
        self._publish("training", job=run.spec.id.hex(), state=run.status)

    async def _round_retried(self, run: JobRun, r: int, drive: Driver) -> dict[str, Any]:
        """Round r, run again under a fresh beacon (reusing its recorded updates) while too few
        verifiers answer, for up to `retry_s`: a partition or verifiers that are down stall the
        job rather than end it, and nothing is finalised until a strict majority answers again."""
        t0, wait = time.monotonic(), RETRY_FIRST_S
        while True:
            try:
                info = await drive(self, run, r)
            except _Unreachable as e:
                # An SPSA block cannot be re-run part way (its trainers already signed its steps).
                if run.spec.algorithm["name"] not in _RETRIED or time.monotonic() - t0 + wait > self.retry_s:
                    raise _RoundFailed(f"{e} (retried for {time.monotonic() - t0:.0f} s)") from None
                run.retries += 1
                run.detail = f"{e}; retrying in {wait:.1f} s"
                run.touch()
                self._publish("training_retry", job=run.spec.id.hex(), round=r, reason=str(e), attempt=run.retries)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_S)
                continue
            run.detail, run.recorded = "", []
            return info

    def common_args(self, run: JobRun) -> dict[str, Any]:
        return {
            "job": run.job.wire(),
            "accepted": list(run.accepted),
            "finalized": list(run.finalized) if run.finalized else [],
            "sources": [self.address()],
        }

    async def _work(self, run: JobRun, trainer: bytes, r: int) -> tuple[Signed, str, str] | None:
        """One trainer's checked update and its delta blob, fetched here; None when it delivered nothing usable."""
        address = self.members[trainer]["address"]
        tag = trainer.hex()[:12]
        try:
            reply = await self.peers.call(
                address, "Training", "Work", {**self.common_args(run), "round": r}, timeout=self.round_timeout_s
            )
            body = open_reply(reply.body)
            u = open_wire(body.get("update", b""), "DeltaUpdate", self.network)
            digest = body.get("blob")
            if (
                u.signer != trainer
                or u.body["job"] != run.spec.id
                or u.body["round"] != r
                or not isinstance(digest, str)
            ):
                log.warning("trainer %s answered with an update for something else", tag)
                return None
            data, _ = await fetch_blob(self.peers, digest, [address], self.blobs)
        except grpc.aio.AioRpcError as e:
            log.warning("trainer %s: round %d: %s %s", tag, r, e.code().name, e.details())
            return None
        except (ValueError, MessageError, BlobFetchError) as e:
            log.warning("trainer %s: round %d: %s", tag, r, e)
            return None
        if hashlib.sha256(data).digest() != u.body["delta"]:
            log.warning("trainer %s: round %d: the blob is not the delta its update names", tag, r)
            return None
        return u, digest, address

    async def _collect_updates(self, run: JobRun, r: int) -> list[tuple[Signed, str, str]]:
        got = await self.gather_work(run, lambda t: self._work(run, t, r))
        return sorted(got, key=lambda g: g[0].signer)

    async def gather_work(self, run: JobRun, work: Callable[[bytes], Awaitable[Any]]) -> list[Any]:
        """`work(trainer)` for every trainer still in the job, until all answered or the round's
        deadline; the results that are not None (a late trainer is simply absent)."""
        trainers = [
            t
            for t in run.spec.trainers
            if t not in run.excluded and t in self.members and self.admitted(t, "trainer")  # revoked: not asked
        ]
        tasks = [asyncio.ensure_future(work(t)) for t in trainers]
        if not tasks:
            return []
        done, pending = await asyncio.wait(tasks, timeout=self.round_timeout_s)
        for t in pending:  # the deadline: the round goes on with those that delivered
            t.cancel()
        return [t.result() for t in done if t.result() is not None]

    async def _ask(self, verifier: bytes, method: str, args: dict[str, Any]) -> dict[str, Any] | None:
        member = self.members.get(verifier)
        if member is None or not self.admitted(verifier, "verifier"):  # revoked since: skipped
            return None
        try:
            reply = await self.peers.call(member["address"], "Training", method, args, timeout=self.verifier_timeout_s)
            return open_reply(reply.body)
        except (grpc.aio.AioRpcError, ValueError) as e:
            log.warning("verifier %s: %s: %s", verifier.hex()[:12], method, e)
            return None

    async def gather_checks(
        self, run: JobRun, r: int, beacon: bytes, ids: set[bytes], ranking: list[bytes], args: dict[str, Any]
    ) -> tuple[list[bytes], list[bytes], list[Signed]]:
        """UpdateChecks (`round` r: a DiLoCo round, an SPSA step) from the assigned verifiers in
        `ranking`; a verifier that fails is skipped and the next standby in rank order asked.
        Returns (verifiers, skipped, checks)."""
        checks: dict[bytes, Signed] = {}
        skipped: list[bytes] = []
        while True:
            chosen = effective_verifiers(ranking, skipped, run.k)
            if len(chosen) < run.k and len(chosen) * 2 <= run.k:
                raise _Unreachable(f"round {r}: too few verifiers answered ({len(checks)} of {run.k})")
            # Candidates exhausted but a strict majority of k can still decide: go on with them
            # (the proof names the skipped ones, so an auditor recomputes the same list).
            todo = [v for v in chosen if v not in checks]
            if not todo:
                return chosen, skipped, [checks[v] for v in chosen]
            answers = await asyncio.gather(*(self._ask(v, "Check", args) for v in todo))
            for v, a in zip(todo, answers):
                c = _open_check(a, v, run.spec.id, r, beacon, ids, self.network)
                if c is None:
                    skipped.append(v)
                else:
                    checks[v] = c
                    self.ledger.append("UpdateCheck", {"check": c.wire()})

    async def _round(self, run: JobRun, r: int) -> dict[str, Any]:
        state = run.state
        assert state is not None
        ups = self._recorded(run, r)
        if not ups:
            ups = await self._collect_updates(run, r)
            for u, d, _ in ups:
                self.ledger.append("TrainingUpdate", {"update": u.wire(), "blob": d})
        run.recorded = [(u, d) for u, d, _ in ups]  # a retry of this round reuses them
        beacon = self.ledger.commit().body["root"]  # after the updates: no trainer can know it
        ranking = rank(beacon, rounds.round_target(run.spec.id, r), run.candidates)
        args = {**self.common_args(run), "round": r, "beacon": beacon, "updates": [[u.wire(), d, a] for u, d, a in ups]}
        verifiers, skipped, checks = await self.gather_checks(run, r, beacon, {u.id for u, _, _ in ups}, ranking, args)
        decisions = rounds.round_decisions([u for u, _, _ in ups], checks, verifiers, run.k)
        for u, _, _ in ups:
            if decisions[u.id] == REJECT and u.signer not in run.excluded:  # a retried round: once
                self.reject(run, u, checks)
        accepted = by_trainer([u for u, _, _ in ups if decisions[u.id] == ACCEPT])
        pairs = []
        blob_of = {u.id: d for u, d, _ in ups}
        for u in accepted:
            data = self.blobs.get(blob_of[u.id])
            if data is None:
                raise _RoundFailed(f"round {r}: the delta blob of an accepted update is gone")
            pairs.append((u.wire(), data))
        try:
            nxt, loss, digest_b = await self.compute.run(compute.derive, run.job.wire(), self.network, state, r, pairs)
        except TensorError as e:  # verifiers accepted a delta this gateway cannot decode: stop, loudly
            raise _RoundFailed(f"round {r}: an accepted delta does not decode here: {e}") from None
        state_digest = await self.finalize(
            run,
            r,
            (nxt, loss, digest_b),
            [u.id for u in accepted],
            beacon,
            verifiers,
            skipped,
            {"checks": [c.wire() for c in checks], "updates": [[u.wire(), d, a] for u, d, a in ups]},
        )
        digest = digest_b.hex()
        return {
            "round": r,
            "delivered": [u.signer.hex() for u, _, _ in ups],
            "accepted": [u.signer.hex() for u in accepted],
            "rejected": [u.signer.hex() for u, _, _ in ups if decisions[u.id] == REJECT],
            "verifiers": [v.hex() for v in verifiers],
            "heldout_loss": loss,
            "digest": digest,
            "state": state_digest,
        }

    async def finalize(
        self,
        run: JobRun,
        r: int,
        derived: tuple[bytes, float, bytes],
        accepted: list[bytes],
        beacon: bytes,
        verifiers: list[bytes],
        skipped: list[bytes],
        extra: dict[str, Any],
    ) -> str:
        """Propose the round's checkpoint (derived: next state blob, held-out loss, digest; the ids
        it accepts, in order), ask `verifiers` to attest it (with `extra` arguments), and finalise
        it on a strict majority; returns the state blob's address. Raises RoundFailed."""
        nxt, loss, digest_b = derived
        spec = run.spec
        state_digest = self.blobs.put(nxt)
        history = run.history + accepted
        cp = sign(
            self.identity,
            "TrainingCheckpoint",
            self.network,
            {
                "publisher": self.identity.public_key,
                "job": spec.id,
                "step": checkpoint_step(spec, r),
                "digest": digest_b,
                "updates": ids_digest(history),
                "heldout_loss": loss,
            },
        )
        prop = self.ledger.append(
            "CheckpointProposed", {"checkpoint": cp.wire(), "round": r, "state": state_digest, "accepted": accepted}
        )
        args = {
            **self.common_args(run),
            "round": r,
            "proposal": [prop.payload, prop.sig],
            "beacon": beacon,
            "verifiers": verifiers,
            "skipped": skipped,
            "history": run.history,
            **extra,
        }
        answers = await asyncio.gather(*(self._ask(v, "Attest", args) for v in verifiers))
        votes = [_open_vote(a, v, spec.id, r, self.network) for v, a in zip(verifiers, answers)]
        counted = [v for v in votes if v is not None]
        yes = [
            v
            for v in counted
            if v.body["accept"] and v.body["digest"] == cp.body["digest"] and v.body["state"] == state_digest
        ]
        if len(yes) * 2 <= run.k:
            reasons = "; ".join(sorted({v.body["reason"] for v in counted if not v.body["accept"]})) or "no answer"
            if (len(yes) + len(verifiers) - len(counted)) * 2 > run.k:  # the missing votes could still decide
                raise _Unreachable(f"round {r}: {len(counted)} of {run.k} verifiers voted on the checkpoint")
            raise _RoundFailed(f"round {r}: {len(yes)} of {run.k} verifiers confirmed the checkpoint ({reasons})")
        fin = self.ledger.append(
            "CheckpointFinalized",
            {
                "checkpoint": cp.wire(),
                "round": r,
                "state": state_digest,
                "beacon": beacon,
                "verifiers": verifiers,
                "skipped": skipped,
                "votes": [v.wire() for v in counted],
            },
        )
        run.finalized, run.history, run.state, run.done = (fin.payload, fin.sig), history, nxt, r + 1
        if not run.best or loss < run.best["heldout_loss"]:
            run.best = {"round": r + 1, "heldout_loss": loss, "digest": digest_b.hex(), "state": state_digest}
        return state_digest

    def reject(self, run: JobRun, u: Signed, checks: list[Signed]) -> None:
        """A majority rejected this update: evidence in the feed, and the trainer is not asked again."""
        why = _reasons(checks, u.id)
        run.excluded[u.signer] = why
        self.ledger.append(
            "Evidence",
            {
                "kind": "rejected_update",
                "subject": u.signer,
                "proof": {"update": u.wire(), "checks": [c.wire() for c in checks]},
            },
        )
        self._publish("training", job=run.spec.id.hex(), state="rejected", trainer=u.signer.hex(), reason=why)

    def _recorded(self, run: JobRun, r: int) -> list[tuple[Signed, str, str]]:
        """The updates recorded for round r before a restart cut it short (once), in trainer order."""
        got, run.recorded = [u for u in run.recorded if u[0].body["round"] == r], []
        out = [(u, d, self.members[u.signer]["address"] if u.signer in self.members else "") for u, d in got]
        return sorted(out, key=lambda g: g[0].signer)

    def _publish(self, topic: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.publish(topic, **fields)

    async def close(self) -> None:
        for t in list(self._runners):
            t.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self.compute.close()


_RoundFailed = RoundFailed
Driver = Callable[[TrainingCoordinator, JobRun, int], Awaitable[dict[str, Any]]]
_DRIVERS: dict[str, Driver] = {
    "diloco": TrainingCoordinator._round,
    "spsa": training_spsa.run_block,
}


def _round_of(spec: JobSpec, u: Signed) -> int:
    """The network round an update belongs to (an SPSA step's block)."""
    return spsa_rounds.block_of(spec, u.body["step"]) if "step" in u.body else u.body["round"]


class _Unreachable(RoundFailed):
    """Too few verifiers answered to decide: retried, since their answers may come back."""


_RETRIED = frozenset({"diloco"})  # algorithms whose round is re-run while too few verifiers answer
_RECOVERED = ("TrainingJobAccepted", "TrainingUpdate", "CheckpointProposed", "CheckpointFinalized", "Evidence")


def _job_of(e: Any, network: str) -> bytes | None:
    """The job an own-feed training entry belongs to (None for other entries)."""
    if e.type == "Evidence":
        if e.body["kind"] != "rejected_update":
            return None
        return open_update(e.body["proof"]["update"], network).body["job"]
    if e.type == "TrainingUpdate":
        return open_update(e.body["update"], network).body["job"]
    if e.type in ("CheckpointProposed", "CheckpointFinalized"):
        return open_wire(e.body["checkpoint"], "TrainingCheckpoint", network).body["job"]
    return None


def _open_check(
    body: dict[str, Any] | None, verifier: bytes, job: bytes, r: int, beacon: bytes, ids: set[bytes], network: str
) -> Signed | None:
    if body is None:
        return None
    try:
        c = open_wire(body.get("check", b""), "UpdateCheck", network)
        verdicts = rounds.verdicts_of(c)
    except (MessageError, ValueError) as e:
        log.warning("verifier %s sent a bad check: %s", verifier.hex()[:12], e)
        return None
    b = c.body
    if c.signer != verifier or b["job"] != job or b["round"] != r or b["beacon"] != beacon or set(verdicts) != ids:
        log.warning("verifier %s sent a check for something else", verifier.hex()[:12])
        return None
    return c


def _open_vote(body: dict[str, Any] | None, verifier: bytes, job: bytes, r: int, network: str) -> Signed | None:
    if body is None:
        return None
    try:
        v = open_wire(body.get("vote", b""), "CheckpointVote", network)
    except MessageError as e:
        log.warning("verifier %s sent a bad vote: %s", verifier.hex()[:12], e)
        return None
    if v.signer != verifier or v.body["job"] != job or v.body["round"] != r:
        return None
    return v


def _reasons(checks: list[Signed], uid: bytes) -> str:
    out = []
    for c in checks:
        v = rounds.verdicts_of(c).get(uid)
        if v is not None and not v.accept:
            out.append(f"{v.code}: {v.reason}" if v.reason else v.code)
    return "; ".join(sorted(set(out)))[:500]
