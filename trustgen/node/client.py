"""Client side: sign a task, submit it, follow its progress, and check the final answer itself.

A client trusts nobody: the certificate must be signed by the gateway it talked to, be for its
task and the returned result, and carry votes whose majority gives the recorded decision.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.consensus.tally import PENDING, tally
from trustgen.engines.registry import resolve
from trustgen.errors import TrustgenError
from trustgen.net import grpc_options as opts
from trustgen.net.auth import make_request
from trustgen.net.peers import Peers, full_method

TASK_TTL_MS = 3_600_000


class SubmitError(TrustgenError):
    """The network refused the task or returned something that does not check out."""


def model_digest(model: str) -> str:
    return model if model.startswith("sha256:") else resolve(model).digest


def make_task(
    identity: Identity, network: str, kind: str, model: str, params: dict[str, Any], verifiers: int = 3
) -> Signed:
    return sign(
        identity,
        "Task",
        network,
        {
            "client": identity.public_key,
            "kind": kind,
            "model": model_digest(model),
            "params": params,
            "workers": 1,
            "verifiers": verifiers,
            "nonce": os.urandom(16),
            "expiry": int(time.time() * 1000) + TASK_TTL_MS,
        },
    )


def jsonable(v: Any) -> Any:
    """Signed-message values as JSON values (bytes as hex)."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def check_final(status: Any, task: Signed, gateway_key: bytes, network: str) -> dict[str, Any]:
    """Verify a final status; return its contents as plain values."""
    try:
        cert = open_wire(status.certificate, "Certificate", network)
        result = open_wire(status.result, "Result", network)
        votes = [open_wire(v, "Vote", network) for v in status.votes]
    except MessageError as e:
        raise SubmitError(f"gateway returned an invalid final answer: {e}") from None
    c = cert.body
    if c["gateway"] != gateway_key:
        raise SubmitError("certificate is not signed by the gateway")
    if (
        c["task_id"] != task.id
        or result.body["task_id"] != task.id
        or c["result_id"] != result.id
        or c["worker"] != result.body["worker"]
    ):
        raise SubmitError("certificate is for another task or result")
    # The assignment itself cannot be recomputed here (the candidates are in the gateway's
    # ledger), but it never names more than k distinct verifiers: padding could outvote them.
    k = task.body["verifiers"]
    if len(set(c["verifiers"])) != len(c["verifiers"]) or len(c["verifiers"]) > k:
        raise SubmitError("certificate names more verifiers than the task asked for")
    counted = {
        v.body["verifier"]: v.body["accept"]
        for v in votes
        if v.body["result_id"] == result.id and v.body["verifier"] in c["verifiers"]
    }
    t = tally(counted, list(c["verifiers"]), k)
    if t.decision == PENDING:
        raise SubmitError(f"certificate has no majority ({t.accepts} accept, {t.rejects} reject of {k})")
    if t.decision != c["decision"]:
        raise SubmitError(f"certificate says {c['decision']} but its votes say {t.decision}")
    return {
        "task_id": task.id.hex(),
        "decision": c["decision"],
        "worker": c["worker"].hex(),
        "result": jsonable(result.body),
        "result_id": result.id.hex(),
        "certificate_id": cert.id.hex(),
        "skipped": [s.hex() for s in c["skipped"]],
        "votes": [
            {
                "verifier": v.body["verifier"].hex(),
                "accept": v.body["accept"],
                "method": v.body["method"],
                "distance": v.body["distance"],
                "margin": v.body["margin"],
                "reason": v.body["reason"],
            }
            for v in votes
        ],
    }


async def submit(
    gateway: str,
    task: Signed,
    identity: Identity,
    network: str,
    insecure: bool,
    ca_file: str = "",
    wait: bool = True,
    timeout_s: float = 300.0,
    on_status: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    peers = Peers(identity, network, insecure, ca_file)
    try:
        try:
            info = await peers.info(gateway, timeout=opts.DEADLINE_INFO)
            reply = await peers.call(gateway, "Gateway", "Submit", {"task": task.wire()}, timeout=opts.DEADLINE_SUBMIT)
        except grpc.aio.AioRpcError as e:
            raise SubmitError(f"gateway {gateway}: {e.code().name}: {e.details()}") from None
        out: dict[str, Any] = {"task_id": reply.task_id.hex(), "state": reply.state}
        if not wait:
            return out
        t0 = time.monotonic()
        req_args = {"task_id": task.id}
        last = None
        while last is None or last.state not in ("final", "failed"):
            try:
                stream = peers.stub(gateway, "Gateway").Watch(
                    make_request(identity, network, full_method("Gateway", "Watch"), req_args),
                    timeout=max(1.0, timeout_s - (time.monotonic() - t0)),
                )
                async for status in stream:
                    last = status
                    if on_status is not None:
                        on_status(status)
            except grpc.aio.AioRpcError as e:
                # The gateway may restart mid-task: its ledger keeps the task, so watch again.
                if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - t0 > timeout_s:
                    raise SubmitError(f"watching the task: {e.code().name}: {e.details()}") from None
                await asyncio.sleep(0.5)
        out.update(
            state=last.state, detail=last.detail, attempts=last.attempt, latency_s=round(time.monotonic() - t0, 3)
        )
        if last.state == "final":
            out.update(check_final(last, task, bytes.fromhex(info.node_id), network))
            out["output_png"] = last.output
        return out
    finally:
        await peers.close()


def save_output(result: dict[str, Any], path: pathlib.Path) -> None:
    png = result.pop("output_png", b"")
    if png:
        path.write_bytes(png)
        result["image_path"] = str(path)
