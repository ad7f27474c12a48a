"""Client side of network training: sign a job, submit it to a gateway, follow its rounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.errors import TrustgenError
from trustgen.net import grpc_options as opts
from trustgen.net.peers import Peers
from trustgen.node.training_replica import open_reply
from trustgen.training.spec import JobSpec, sign_job

POLL_S = 0.5  # a client following a job asks for its status this often


class TrainingClientError(TrustgenError):
    """The gateway refused the job or its status."""


async def _call(peers: Peers, gateway: str, method: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        reply = await peers.call(gateway, "Training", method, args, timeout=timeout)
        return open_reply(reply.body)
    except grpc.aio.AioRpcError as e:
        raise TrainingClientError(f"gateway {gateway}: {e.code().name}: {e.details()}") from None
    except ValueError as e:
        raise TrainingClientError(f"gateway {gateway} sent a malformed answer: {e}") from None


async def submit_job(
    gateway: str,
    spec: JobSpec,
    identity: Identity,
    insecure: bool,
    *,
    ca_file: str = "",
    trainers: int = 4,
    verifiers: int = 3,
    wait: bool = False,
    timeout_s: float = 1800.0,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    peers = Peers(identity, spec.network, insecure, ca_file)
    try:
        job = sign_job(identity, spec)
        args = {"job": job.wire(), "trainers": trainers, "verifiers": verifiers}
        st = await _call(peers, gateway, "Submit", args, opts.DEADLINE_CHECK)
        t0 = time.monotonic()
        while wait and st.get("state") == "running":
            if on_status is not None:
                on_status(st)
            if time.monotonic() - t0 > timeout_s:
                raise TrainingClientError(f"job {st.get('job_id')} still running after {timeout_s:g} s")
            await asyncio.sleep(POLL_S)
            st = await _call(peers, gateway, "Status", {"job_id": bytes.fromhex(st["job_id"])}, opts.DEADLINE_INFO)
        return st
    finally:
        await peers.close()


async def job_status(gateway: str, job_id: bytes, network: str, insecure: bool, ca_file: str = "") -> dict[str, Any]:
    peers = Peers(Identity.generate(), network, insecure, ca_file)
    try:
        return await _call(peers, gateway, "Status", {"job_id": job_id}, opts.DEADLINE_INFO)
    finally:
        await peers.close()
