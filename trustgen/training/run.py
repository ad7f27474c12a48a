"""`train run`: a job's trainers as separate processes on this machine, and its coordinator.

The coordinator validates every signed update (signer in the trainer set, step or round,
range, base checkpoint, blob layout), spot-checks a random fraction by re-execution with a
private random source the trainers cannot predict, excludes a trainer at its first failed
check, appends accepted updates to `updates.log`, evaluates held-out loss, records signed
checkpoints, and writes the best one as the job's final model directory.

A little over 400 lines on purpose: the coordinator's SPSA and local-SGD loops share its state,
checks and records; the arithmetic lives in spsa.py, diloco.py, checks.py and job.py.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import pathlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.engines.registry import model_digest
from trustgen.errors import TrustgenError, UsageError
from trustgen.training import adversary, diloco
from trustgen.training.checks import CheckResult, check_arithmetic, check_delta, check_inner_step, check_sample
from trustgen.training.job import (
    DilocoState,
    SpsaState,
    UpdateError,
    by_trainer,
    checkpoint_digest,
    evaluation_points,
    snapshot,
    start_state,
)
from trustgen.training.objectives import Objective, load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.records import BlobDir, RunError, append_line, updates_digest
from trustgen.training.spec import MAX_TRAINERS, JobSpec, sign_job
from trustgen.training.tensors import TensorError, Tensors, from_bytes, layout
from trustgen.training.trainer import key_home, trainer_main

Progress = Callable[[int, int, dict[str, Any]], None]
RECV_TIMEOUT_S = 600.0
# What each message from a trainer must look like (pipes carry pickled tuples; check before use).
_SHAPES: dict[str, Callable[[tuple], bool]] = {
    "update": lambda m: (
        len(m) in (3, 4)
        and isinstance(m[1], bytes)
        and isinstance(m[2], float)
        and (len(m) == 3 or isinstance(m[3], dict) and all(isinstance(v, str) for v in m[3].values()))
    ),
    "states": lambda m: (
        len(m) == 2
        and isinstance(m[1], dict)
        and "final" in m[1]
        and "after" in m[1]
        and all(isinstance(k, str) and isinstance(v, str) for k, v in m[1].items())
    ),
}


class TrainingError(TrustgenError):
    """A run that cannot go on: a trainer that never started, a held-out loss that is no number."""


@dataclass
class Peer:
    index: int
    key: bytes
    conn: Any
    proc: Any
    active: bool = True


@dataclass
class Coordinator:
    root: pathlib.Path
    spec: JobSpec
    me: Identity
    objective: Objective
    state: SpsaState | DilocoState
    peers: list[Peer]
    progress: Progress | None
    rng: random.Random = field(default_factory=lambda: random.Random(random.SystemRandom().getrandbits(64)))
    accepted: list[Signed] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=lambda: {"count": 0, "rejected": 0, "cpu_s": 0.0})
    trainer_cpu_s: float = 0.0
    kept_states: dict[str, dict[str, str]] = field(default_factory=dict)
    challenges: dict[str, int] = field(default_factory=dict)
    best: tuple[float, int, Tensors] | None = None

    @property
    def blobs(self) -> BlobDir:
        return BlobDir(self.root / "blobs")

    def exclude(self, peer: Peer, step: int, code: str, reason: str) -> None:
        peer.active = False
        self.rejected.append(
            {"trainer": peer.key.hex(), "index": peer.index, "step": step, "code": code, "reason": reason}
        )
        try:
            peer.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass

    def send(self, peer: Peer, msg: tuple, step: int) -> None:
        try:
            peer.conn.send(msg)
        except (BrokenPipeError, OSError):
            self.exclude(peer, step, "trainer_died", "the trainer process ended")

    def live(self) -> list[Peer]:
        return [p for p in self.peers if p.active]

    def receive(self, peer: Peer, step: int, kind: str) -> tuple | None:
        """The trainer's next message if it is a well-formed `kind` within the time limit; else the
        trainer is excluded (a stuck, dead or confused trainer never stalls or crashes the run)."""
        try:
            if not peer.conn.poll(RECV_TIMEOUT_S):
                self.exclude(peer, step, "trainer_timeout", f"no message within {RECV_TIMEOUT_S:g} s")
                peer.proc.kill()
                return None
            msg = peer.conn.recv()
        except (EOFError, OSError):
            self.exclude(peer, step, "trainer_died", "the trainer process ended")
            return None
        if not (isinstance(msg, tuple) and msg and msg[0] == kind and _SHAPES[kind](msg)):
            self.exclude(peer, step, "bad_message", f"expected a {kind} message")
            return None
        return msg

    def open_update(self, peer: Peer, wire: bytes, msg_type: str, step: int) -> Signed | None:
        try:
            u = open_wire(wire, msg_type, self.spec.network)
        except MessageError as e:
            self.exclude(peer, step, e.code, str(e))
            return None
        if u.signer != peer.key or u.body["job"] != self.spec.id:
            self.exclude(peer, step, "wrong_signer", "update not signed by this trainer for this job")
            return None
        return u

    def timed_check(self, fn: Callable[[], CheckResult]) -> CheckResult:
        c0 = time.process_time()
        res = fn()
        self.checks["cpu_s"] += time.process_time() - c0
        self.checks["count"] += 1
        self.checks["rejected"] += 0 if res.accept else 1
        return res

    def evaluate(self, step: int) -> None:
        params = self.state.params
        loss = self.objective.eval_loss(params)
        if not math.isfinite(loss):
            raise TrainingError(f"held-out loss is {loss} at step {step}: the job diverged (lower its learning rate)")
        digest = checkpoint_digest(params)
        rec = sign(
            self.me,
            "TrainingCheckpoint",
            self.spec.network,
            {
                "publisher": self.me.public_key,
                "job": self.spec.id,
                "step": step,
                "digest": digest,
                "updates": updates_digest(self.accepted),
                "heldout_loss": loss,
            },
        )
        append_line(self.root / "checkpoints.log", rec)
        self.evals.append({"step": step, "heldout_loss": loss, "digest": digest.hex()})
        if self.best is None or loss < self.best[0]:
            self.best = (loss, step, snapshot(self.state))

    def commit(self, updates: list[Signed]) -> None:
        for u in by_trainer(updates):
            append_line(self.root / "updates.log", u)
            self.accepted.append(u)

    # -- SPSA ---------------------------------------------------------------------------------

    def run_spsa(self) -> None:
        assert isinstance(self.state, SpsaState)
        hp = self.spec.algorithm
        points = evaluation_points(self.spec)
        for t in range(hp["steps"]):
            z = self.state.direction()
            got: list[Signed] = []
            for peer in self.live():
                msg = self.receive(peer, t, "update")
                if msg is None:
                    continue
                self.trainer_cpu_s += msg[2]
                u = self.open_update(peer, msg[1], "SpsaUpdate", t)
                if u is None:
                    continue
                if u.body["step"] != t or not -127 <= u.body["q"] <= 127:
                    self.exclude(peer, t, "malformed", f"step {u.body['step']} byte {u.body['q']}")
                    continue
                bad = check_arithmetic(self.spec, u)  # free: every update, not a sample of them
                if bad is not None:
                    self.exclude(peer, t, "wrong_scalar", bad.reason)
                    continue
                if self.rng.random() < hp["check_probability"]:
                    params, j = self.state.params, self.rng.randrange(hp["batch"])
                    res = self.timed_check(lambda: check_sample(self.objective, self.spec, params, z, u, j))
                    if not res.accept:
                        self.exclude(peer, t, "forged_sample", res.reason)
                        continue
                got.append(u)
            self.commit(got)
            wires = [u.wire() for u in by_trainer(got)]
            for peer in self.live():
                self.send(peer, ("apply", wires), t)
            self.state.apply(got, z)
            if t + 1 in points:
                self.evaluate(t + 1)
            if self.progress:
                self.progress(t + 1, hp["steps"], self.evals[-1] if self.evals else {})

    # -- local SGD ----------------------------------------------------------------------------

    def run_diloco(self) -> None:
        assert isinstance(self.state, DilocoState)
        hp = self.spec.algorithm
        for r in range(hp["rounds"]):
            base = snapshot(self.state)
            got: list[tuple[Peer, Signed, bytes, Tensors]] = []
            for peer in self.live():
                msg = self.receive(peer, r, "update")
                if msg is None:
                    continue
                self.trainer_cpu_s += msg[2]
                u = self.open_update(peer, msg[1], "DeltaUpdate", r)
                if u is None:
                    continue
                try:
                    self.state.check(u)
                    blob = self.blobs.get(u.body["delta"])
                    delta = self.state.decode(u, blob)
                except UpdateError as e:
                    self.exclude(peer, r, e.code, str(e))
                    continue
                except (TensorError, RunError) as e:  # a missing or malformed blob: the trainer's fault
                    self.exclude(peer, r, "bad_blob", str(e))
                    continue
                for h, hx in (msg[3] if len(msg) > 3 else {}).items():
                    self.kept_states.setdefault(f"{r}/{u.signer.hex()}", {})[str(h)] = hx
                got.append((peer, u, blob, delta))
            # The beacon for this round's challenges: every update that passed the static checks, in
            # trainer order (equal to the committed set unless a check then rejects someone).
            round_id = updates_digest(by_trainer([u for _, u, _, _ in got]))
            checked = []
            for peer, u, blob, delta in got:
                h = diloco.challenge(self.spec.id, r, u.signer, round_id, hp["inner_steps"])
                self.challenges[f"{r}/{u.signer.hex()}"] = h
                if self.rng.random() >= hp["check_probability"]:
                    self.send(peer, ("challenge", 0), r)
                    if peer.active:
                        checked.append((peer, u, delta))
                    continue
                self.send(peer, ("challenge", h), r)
                reply = self.receive(peer, r, "states")
                if reply is None:
                    continue
                res = self.timed_check(lambda: self.check_round(u, blob, base, h, reply[1]))
                if not res.accept:
                    self.exclude(peer, r, "failed_check", res.reason)
                    continue
                checked.append((peer, u, delta))
            updates = [u for _, u, _ in checked]
            self.commit(updates)
            wires = [u.wire() for u in by_trainer(updates)]
            for peer in self.live():
                self.send(peer, ("round", wires), r)
            order = {u.signer: d for _, u, d in checked}
            self.state.apply([order[k] for k in sorted(order)])
            self.evaluate(r + 1)
            if self.progress:
                self.progress(r + 1, hp["rounds"], self.evals[-1])

    def check_round(self, u: Signed, blob: bytes, base: Tensors, h: int, given: dict[str, str]) -> CheckResult:
        fmt = self.spec.algorithm["delta_format"]
        shape = layout(diloco.initial_state(base))
        try:
            states = {k: from_bytes(self.blobs.get(bytes.fromhex(v)), shape, f"state {k}") for k, v in given.items()}
        except Exception as e:  # missing or malformed state blobs fail the check
            return CheckResult(False, float("inf"), f"state blobs: {e}", "inner-step")
        # Before step 1 the state is public: the round's checkpoint with zero moments.
        before = diloco.initial_state(base) if h == 1 else states.get("before")
        if before is None or (h > 1 and diloco.state_digest(before, h - 1) != u.body["states"][h - 2]):
            return CheckResult(False, float("inf"), f"the state before step {h} is not the committed one", "inner-step")
        res = check_inner_step(self.objective, self.spec, u, h, before, states.get("after"), True)
        if not res.accept:
            return res
        return check_delta(states["final"], base, blob, u, fmt)


def _keys(root: pathlib.Path, spec: JobSpec, n: int, given: list[Identity] | None) -> tuple[JobSpec, Identity]:
    author = Identity.generate()
    author.save(root / "keys" / "author")
    keys = []
    for i in range(n):
        ident = given[i] if given else Identity.generate()
        ident.save(key_home(root, i))
        keys.append(ident.public_key)
    return spec.with_trainers(keys), author


def run_job(
    spec: JobSpec,
    out: pathlib.Path,
    trainers: int | None = None,
    adversary_mode: str = "",
    adversary_trainer: int = 0,
    keep_states: bool = False,
    progress: Progress | None = None,
    trainer_keys: list[Identity] | None = None,
) -> dict[str, Any]:
    """Run a job to completion and return its summary (also written to `out/run.json`).
    trainer_keys: run with these trainers' identities (in key order, as a network job names them)
    instead of fresh ones, to compare with a network job of the same trainers."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} is not empty: choose a new directory for the run")
    try:
        adversary.mode(adversary_mode, spec.algorithm["name"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    if spec.trainers:
        raise UsageError(
            "this job names its trainers; `train run` starts trainers with keys it generates, so "
            "give a job without [trainers] (the run writes the keys it used into the job)"
        )
    if trainer_keys:
        trainer_keys = sorted(trainer_keys, key=lambda k: k.public_key)
    n = len(trainer_keys) if trainer_keys else 4 if trainers is None else trainers
    if not 1 <= n <= MAX_TRAINERS:
        raise UsageError(f"--trainers must be between 1 and {MAX_TRAINERS}")
    if adversary_mode and not 0 <= adversary_trainer < n:
        raise UsageError(f"--adversary-trainer must be below {n}")
    out.mkdir(parents=True, exist_ok=True)
    spec, author = _keys(out, spec, n, trainer_keys)
    (out / "job.wire").write_bytes(sign_job(author, spec).wire())
    (out / "job.toml").write_text(spec.to_toml())
    t0 = time.perf_counter()
    prof = apply_profile(spec)
    objective = load_objective(spec)
    ctx = mp.get_context("spawn")
    peers: list[Peer] = []
    try:
        for i, key in enumerate(spec.trainers):
            mine, theirs = ctx.Pipe()
            mode = adversary_mode if adversary_mode and i == adversary_trainer else ""
            proc = ctx.Process(target=trainer_main, args=(str(out), i, mode, keep_states, theirs), daemon=True)
            proc.start()
            theirs.close()
            peers.append(Peer(i, key, mine, proc))
        for p in peers:
            try:
                hello = p.conn.recv() if p.conn.poll(RECV_TIMEOUT_S) else None
            except (EOFError, OSError):
                hello = None
            if hello != ("ready", p.key):
                raise TrainingError(f"trainer {p.index} did not start (see its error above)")
        co = Coordinator(out, spec, author, objective, start_state(spec, objective), peers, progress)
        co.evaluate(0)
        (co.run_spsa if spec.algorithm["name"] == "spsa" else co.run_diloco)()
    finally:
        for p in peers:
            p.conn.close()
        for p in peers:
            p.proc.join(timeout=30)
            if p.proc.is_alive():
                p.proc.kill()
    assert co.best is not None
    best_loss, best_step, best_params = co.best
    final = out / "final"
    objective.save(best_params, final)
    summary = {
        "job_id": spec.id.hex(),
        "name": spec.section("job")["name"],
        "algorithm": spec.algorithm["name"],
        "trainers": [k.hex() for k in spec.trainers],
        "profile": prof.to_dict(),
        "base_heldout_loss": co.evals[0]["heldout_loss"],
        "final_heldout_loss": best_loss,
        "final_step": best_step,
        "final_checkpoint_digest": checkpoint_digest(best_params).hex(),
        "final_model_digest": model_digest(final),
        "evals": co.evals,
        "rejected": co.rejected,
        "checks": co.checks,
        "updates": len(co.accepted),
        "trainer_cpu_s": co.trainer_cpu_s,
        "kept_states": co.kept_states,
        "challenges": co.challenges,
        "wall_s": time.perf_counter() - t0,
    }
    (out / "run.json").write_text(json.dumps(summary, indent=1))
    return summary
