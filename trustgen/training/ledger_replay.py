"""Replay of a network job from a node that does not hold every delta blob.

A trainer keeps its own deltas, a verifier those of the rounds it checked: a node's store may
lack some. Round by round, in order: when every accepted delta of the round is present, the
round is recomputed from the state before it (aggregation and outer step, as `deltas` replay);
when one is missing but the round's finalised state blob is present, the state is taken from it
after checking that its parameters have the finalised digest (and its held-out loss, the
recorded one); when both are missing the replay stops with the blob named (exit 2), as no later
round can be checked without the state. The checkpoint's `updates` digest is checked either way.
Where every delta is present, ledger_job.replay_node uses the stricter run-directory replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trustgen.training.job import DilocoState, UpdateError, checkpoint_digest
from trustgen.training.ledger_view import LedgerJob
from trustgen.training.objectives import load_objective
from trustgen.training.profile import apply_profile
from trustgen.training.records import RunError, updates_digest
from trustgen.training.replay import LOSS_REL_TOLERANCE, ReplayReport
from trustgen.training.rounds import apply_round, decode_state
from trustgen.training.tensors import TensorError

# (blob address, sha256 its signed message names or None, what it is) -> bytes, None when missing
BlobReader = Callable[[str, bytes | None, str], bytes | None]


def replay_rounds(
    j: LedgerJob,
    read: BlobReader,
    threads: int | None = None,
    losses: bool = True,
) -> ReplayReport:
    """`read(address, sha256 or None, what)` gives a blob of the node's store, None when it is
    missing (and raises RunError when it is corrupted)."""
    spec = j.spec
    prof = apply_profile(spec, threads).to_dict()
    same = threads is None or threads == spec.section("profile")["threads"]
    objective = load_objective(spec)
    c0 = time.process_time()
    state = DilocoState.start(spec, objective)
    rep = ReplayReport(True, spec.id.hex(), 0, 0, "", same_profile=same, profile=prof)
    history: list = []
    best: tuple[float, int] | None = None
    total = spec.algorithm["rounds"]
    for r in range(total):
        rec = j.rounds.get(r)
        if rec is None or not rec.finalized:
            break
        fe, cp = rec.finalized[0]
        ups = j.accepted_updates(r)
        history.extend(ups)
        bad = _round(j, read, state, r, ups, fe.body["state"], cp.body)
        if isinstance(bad, dict):
            rep.ok, rep.first_bad = False, {"round": r, **bad}
            break
        state, adopted = bad
        if adopted:
            rep.from_state.append(r)
        if cp.body["updates"] != updates_digest(history):
            rep.ok, rep.first_bad = (
                False,
                {"round": r + 1, "what": "updates", "detail": "the checkpoint commits to other updates"},
            )
            break
        rep.steps, rep.checkpoints, rep.final_digest = r + 1, rep.checkpoints + 1, cp.body["digest"].hex()
        if losses:
            loss, ref = objective.eval_loss(state.params), cp.body["heldout_loss"]
            if (loss != ref) if same else abs(loss - ref) > LOSS_REL_TOLERANCE * max(1.0, abs(ref)):
                rep.ok = False
                rep.first_bad = {
                    "round": r + 1,
                    "what": "heldout_loss",
                    "detail": f"recomputed {loss!r}, recorded {ref!r}",
                }
                break
        if best is None or cp.body["heldout_loss"] < best[0]:
            best = (cp.body["heldout_loss"], r + 1)
    if rep.ok and rep.steps < total:
        rep.ok = False
        rep.first_bad = {
            "round": rep.steps,
            "what": "truncated",
            "detail": f"rounds finalised stop at {rep.steps} of {total}",
        }
    if best is None and rep.ok:
        raise RunError("the ledger finalises no round of this job: nothing to replay against")
    rep.final_step = best[1] if best else None
    rep.cpu_s = time.process_time() - c0
    return rep


def _round(
    j: LedgerJob, read: BlobReader, state: DilocoState, r: int, ups: list, state_addr: str, cp: dict
) -> tuple[DilocoState, bool] | dict:
    """(the state after round r, whether it was taken from the state blob), or a mismatch."""
    blob_of = {u.id: b for _, u, b in j.rounds[r].updates}
    fetched = {u.id: read(blob_of[u.id], u.body["delta"], f"round {r} delta of {u.signer.hex()[:16]}…") for u in ups}
    blobs = {k: b for k, b in fetched.items() if b is not None}
    if len(blobs) == len(ups):
        try:
            for u in ups:
                state.check(u)
            deltas = {u.id: state.decode(u, blobs[u.id]) for u in ups}
        except UpdateError as e:
            return {"what": e.code, "detail": str(e)}
        except TensorError as e:
            return {"what": "bad_blob", "detail": str(e)}
        nxt = apply_round(state, ups, deltas)
        if nxt.digest != cp["digest"]:
            got, want = nxt.digest.hex()[:16], cp["digest"].hex()[:16]
            return {"what": "checkpoint", "detail": f"recomputed {got}…, recorded {want}…"}
        return nxt, False
    missing = next(blob_of[u.id] for u in ups if u.id not in blobs)
    data = read(state_addr, None, f"round {r} checkpoint state")
    if data is None:
        raise RunError(
            f"round {r}: delta blob {missing[:16]}… and the state blob {state_addr[:16]}… are both missing "
            "from this node's store: the round cannot be checked"
        )
    try:
        adopted = decode_state(j.spec, state, data, r + 1)
    except TensorError as e:
        return {"what": "state", "detail": f"the finalised state blob does not decode: {e}"}
    assert isinstance(adopted, DilocoState)  # this replay is local SGD's (SPSA updates are inline)
    if checkpoint_digest(adopted.params) != cp["digest"]:
        return {"what": "state", "detail": "the finalised state blob does not have the finalised digest"}
    return adopted, True
