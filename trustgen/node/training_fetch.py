"""A joiner's way in: the latest finalised checkpoint of a job, proven from a ledger, fetched from peers.

The ledger (a node's own, filled by gossip) gives the job (`TrainingJobAccepted`, signed by its
gateway) and every round's `CheckpointFinalized`. Each proof is checked (the gateway's checkpoint
for that round, the round's assigned verifiers, a strict majority of their votes for this digest
and state blob), rounds must run 0, 1, ... without a gap or a second version, and the state blob
is fetched from any peer (chunk-checked) and must decode to the finalised digest. The result is a
normal model directory that `trustgen generate` and the network load. No training is re-run.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import MessageError, open_wire
from trustgen.errors import TrustgenError
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob
from trustgen.gossip.blobs import BlobStore
from trustgen.net.peers import Peers
from trustgen.training import rounds
from trustgen.training.spec import JobSpec, open_job


class FetchError(TrustgenError):
    """The ledger does not prove a checkpoint of the job, or no peer serves its state."""


def latest_proof(ledger: Ledger, job_id: bytes) -> tuple[JobSpec, Any, list[Any]]:
    """The job's spec, its acceptance entry and its CheckpointFinalized entries (rounds 0..R),
    each proof checked."""
    acc = None
    spec = None
    for e in ledger.iter_entries(entry_type="TrainingJobAccepted"):
        try:
            job, s = open_job(e.body["job"], ledger.network)
        except MessageError:
            continue
        if s.id == job_id and job.signer == e.feed:
            acc, spec = e, s
            break
    if acc is None or spec is None:
        raise FetchError(f"the ledger holds no accepted job {job_id.hex()[:16]}…")
    cands, k = list(acc.body["candidates"]), acc.body["k"]
    fins: dict[int, Any] = {}
    for e in ledger.iter_entries(entry_type="CheckpointFinalized"):
        if e.feed != acc.feed:
            continue
        try:
            cp = rounds.check_finalized(spec, acc.feed, cands, k, e.body)
        except rounds.ProofError as err:
            if err.code == "bad_checkpoint" and _other_job(e, ledger.network, spec.id):
                continue
            raise FetchError(f"round {e.body['round']}: {err}") from None
        r = e.body["round"]
        if r in fins and fins[r][0].hash != e.hash:
            raise FetchError(f"two different checkpoints finalised for round {r}")
        fins[r] = (e, cp)
    if not fins:
        raise FetchError("no round of the job has been finalised yet")
    if sorted(fins) != list(range(len(fins))):
        raise FetchError(f"the finalised rounds have a gap: {sorted(fins)}")
    return spec, acc, [fins[r] for r in range(len(fins))]


def _other_job(e: Any, network: str, job_id: bytes) -> bool:
    try:
        return open_wire(e.body["checkpoint"], "TrainingCheckpoint", network).body["job"] != job_id
    except MessageError:
        return False


def peer_addresses(ledger: Ledger) -> list[str]:
    """Every node's latest address from NodeJoined entries (to ask for blobs)."""
    latest: dict[bytes, str] = {}
    for e in ledger.iter_entries(entry_type="NodeJoined"):
        latest[e.feed] = e.body["address"]
    return list(dict.fromkeys(latest.values()))


async def fetch_checkpoint(
    node_dir: pathlib.Path,
    network: str,
    job_id: bytes,
    out: pathlib.Path,
    sources: list[str],
    insecure: bool,
    ca_file: str = "",
) -> dict[str, Any]:
    from trustgen.training.job import checkpoint_digest, start_state
    from trustgen.training.objectives import load_objective
    from trustgen.training.profile import apply_profile

    path = node_dir / "ledger.db"
    if not path.is_file():
        raise FetchError(f"{node_dir} has no ledger.db")
    t0 = time.perf_counter()
    ledger = Ledger(path, network)
    try:
        spec, _acc, fins = latest_proof(ledger, job_id)
        addresses = sources + peer_addresses(ledger)
    finally:
        ledger.close()
    t_proof = time.perf_counter() - t0
    last, cp = fins[-1]
    store = BlobStore(node_dir / "blobs")
    data = store.get(last.body["state"])
    if data is None:
        peers = Peers(Identity.generate(), network, insecure, ca_file)
        try:
            data, _ = await fetch_blob(peers, last.body["state"], addresses[:16], store)
        except BlobFetchError as e:
            raise FetchError(f"checkpoint state of round {last.body['round']}: {e}") from None
        finally:
            await peers.close()
    t_fetch = time.perf_counter() - t0 - t_proof
    apply_profile(spec)
    objective = load_objective(spec)
    state = rounds.decode_state(spec, start_state(spec, objective), data, last.body["round"] + 1)  # type: ignore[arg-type]
    if checkpoint_digest(state.params) != cp.body["digest"]:
        raise FetchError(f"the state blob of round {last.body['round']} does not have the finalised digest")
    objective.save(state.params, out)
    return {
        "job_id": spec.id.hex(),
        "round": last.body["round"] + 1,
        "digest": cp.body["digest"].hex(),
        "heldout_loss": cp.body["heldout_loss"],
        "rounds_proven": len(fins),
        "out": str(out),
        "proof_s": round(t_proof, 3),
        "fetch_s": round(t_fetch, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
