"""A trainer process: computes its updates, signs them, and keeps its own replica of the job.

It talks to the run's coordinator over a pipe (on one machine; part 2 of the design puts the
same messages on the network). Everything it receives is signed and re-verified before use,
and its replica applies the same pure functions as the coordinator and any replayer.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
from multiprocessing.connection import Connection
from typing import Any

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import open_wire, sign
from trustgen.training import adversary, diloco, spsa
from trustgen.training.checks import honest_diffs
from trustgen.training.job import DilocoState, SpsaState, by_trainer, checkpoint_digest, start_state
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.records import BlobDir, open_run
from trustgen.training.tensors import clone, to_bytes


def key_home(root: pathlib.Path, index: int) -> pathlib.Path:
    return root / "keys" / f"trainer-{index}"


def trainer_main(root: str, index: int, mode_name: str, keep_states: bool, conn: Connection) -> None:
    """Entry point of a trainer process (multiprocessing, spawn)."""
    try:
        _main(pathlib.Path(root), index, mode_name, keep_states, conn)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the coordinator went away or excluded us: nothing left to do
    finally:
        conn.close()


def _main(root: pathlib.Path, index: int, mode_name: str, keep_states: bool, conn: Connection) -> None:
    run = open_run(root)
    spec = run.spec
    me = Identity.load(key_home(root, index))
    apply_profile(spec)
    objective = load_objective(spec)
    state = start_state(spec, objective)
    mode = adversary.mode(mode_name, spec.algorithm["name"])
    conn.send(("ready", me.public_key))
    if isinstance(state, SpsaState):
        _spsa(spec, objective, state, me, mode, conn)
    else:
        _diloco(spec, objective, state, me, mode, run.blobs, keep_states, conn)


def _spsa(spec: Any, objective: Any, state: SpsaState, me: Identity, mode: Any, conn: Connection) -> None:
    for t in range(spec.algorithm["steps"]):
        z = state.direction()
        c0 = time.process_time()
        diffs = honest_diffs(objective, spec, state.params, z, t, me.public_key)
        if mode is not None and mode.diffs is not None:
            diffs = mode.diffs(diffs)
        q = spsa.scalar(diffs, spec.algorithm["scale"])
        if mode is not None and mode.scalar is not None:
            q = mode.scalar(q)
        body = {"trainer": me.public_key, "job": spec.id, "step": t, "q": q, "diffs": diffs}
        msg = sign(me, "SpsaUpdate", spec.network, body)
        conn.send(("update", msg.wire(), time.process_time() - c0))
        cmd = conn.recv()
        if cmd[0] != "apply":
            return
        state.apply([open_wire(w, "SpsaUpdate", spec.network) for w in cmd[1]], z)


def _diloco(
    spec: Any,
    objective: Any,
    state: DilocoState,
    me: Identity,
    mode: Any,
    blobs: BlobDir,
    keep_states: bool,
    conn: Connection,
) -> None:
    hp = spec.algorithm
    first_base = None
    for r in range(hp["rounds"]):
        base = clone(state.params)
        if mode is not None and mode.stale_base:
            first_base = first_base or base
            base = first_base
        c0 = time.process_time()
        work = diloco.run_round(objective, base, spec.id, r, me.public_key, hp, keep=True)
        delta = diloco.delta_of(work.final, base)
        if mode is not None and mode.delta is not None:
            delta = mode.delta(delta)
        encoded = diloco.encode_delta(delta, hp["delta_format"])
        withhold = mode is not None and mode.withhold
        blob_id = hashlib.sha256(encoded).digest() if withhold else blobs.put(encoded)
        body = {
            "trainer": me.public_key,
            "job": spec.id,
            "round": r,
            "base": checkpoint_digest(base),
            "delta": blob_id,
            "states": work.digests,
        }
        msg = sign(me, "DeltaUpdate", spec.network, body)
        kept = {h: blobs.put(to_bytes(s)).hex() for h, s in work.states.items()} if keep_states else {}
        conn.send(("update", msg.wire(), time.process_time() - c0, kept))
        cmd = conn.recv()
        if cmd[0] != "challenge":
            return
        h = cmd[1]
        if h:
            # The states around the challenged step, and the final state for the delta check.
            given = {"after": blobs.put(to_bytes(work.states[h])).hex(), "final": blobs.put(to_bytes(work.final)).hex()}
            if h > 1:
                given["before"] = blobs.put(to_bytes(work.states[h - 1])).hex()
            conn.send(("states", given))
        cmd = conn.recv()
        work.states.clear()
        if cmd[0] != "round":
            return
        updates = by_trainer([open_wire(w, "DeltaUpdate", spec.network) for w in cmd[1]])
        state.apply([state.decode(u, blobs.get(u.body["delta"])) for u in updates])
