"""Worker role: run a gateway's task on the local engines and return a signed Result.

Adversary modes make a worker really cheat, through the same code path an honest worker uses,
so tests and demonstrations show the network catching it:
- `other-model`: generates with a different model (perturbed weights) but claims the task's;
- `alter`: generates honestly, then changes one token / a patch of pixels;
- `replay`: returns the output of its previous task as the output of the current one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import grpc
import numpy as np
import torch

from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import MessageError, Signed, open_wire, sign
from trustgen.engines.outputs import ImageOutput, TextOutput
from trustgen.errors import ModelError, UsageError
from trustgen.gossip.blobs import BlobStore
from trustgen.net.auth import RpcError
from trustgen.node.engine_pool import Engines, task_params
from trustgen.verifier.fingerprints import image_fingerprint, text_fingerprint

log = logging.getLogger("trustgen.node")


def result_body(worker: bytes, task: Signed, out: TextOutput | ImageOutput, png_digest: str = "") -> dict[str, Any]:
    if isinstance(out, TextOutput):
        output: dict[str, Any] = {"token_ids": out.token_ids, "text": out.text, "finish_reason": out.finish_reason}
        fp = text_fingerprint(out.token_ids)
    else:
        h, w, _ = out.pixels.shape
        output = {"png_digest": png_digest, "height": h, "width": w}
        fp = image_fingerprint(out.pixels)
    return {
        "worker": worker,
        "task_id": task.id,
        "model_digest": out.model_digest,
        "output_digest": out.output_digest,
        "output": output,
        "fingerprint": fp,
        "profile": out.profile.to_dict(),
    }


class WorkerRole:
    def __init__(
        self,
        identity: Identity,
        network: str,
        engines: Engines,
        blobs: BlobStore,
        adversary: str = "",
        delay_s: float = 0.0,
        metrics: Any = None,
    ) -> None:
        self.identity, self.network = identity, network
        self.engines, self.blobs = engines, blobs
        self.adversary, self.delay_s = adversary, delay_s
        self.metrics = metrics
        self.gateways: set[bytes] = set()  # keys allowed to assign work
        self._last: TextOutput | ImageOutput | None = None
        self._cheat_engines: dict[str, Any] = {}

    def _generate(self, kind: str, engine: Any, params: Any) -> TextOutput | ImageOutput:
        if self.adversary == "other-model":
            engine = self._other_model(kind, engine)
        out = engine.generate(params)
        if self.adversary == "alter":
            out = _altered(out)
        elif self.adversary == "replay":
            previous, self._last = self._last, out
            if previous is not None and type(previous) is type(out):
                out = previous
        return out

    def _other_model(self, kind: str, engine: Any) -> Any:
        if kind not in self._cheat_engines:
            cheat = copy.copy(engine)
            g = torch.Generator().manual_seed(1234)
            target = "model" if kind == "text" else "pipe"
            module = copy.deepcopy(getattr(engine, target))
            net = module if kind == "text" else module.unet
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.2 * p.abs().mean())
            setattr(cheat, target, module)
            self._cheat_engines[kind] = cheat
        return self._cheat_engines[kind]

    async def execute(self, req: Signed) -> tuple[bytes, bytes]:
        if self.gateways and req.body["sender"] not in self.gateways:
            raise RpcError(grpc.StatusCode.PERMISSION_DENIED, "only the gateway assigns work to this worker")
        try:
            task = open_wire(req.body["args"].get("task", b""), "Task", self.network)
            engine = self.engines.for_task(task.body["kind"], task.body["model"])
            params = task_params(task.body["kind"], task.body["params"])
        except (MessageError, UsageError) as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except ModelError as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            out = await self.engines.run(self._generate, task.body["kind"], engine, params)
        except UsageError as e:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        png = b""
        digest = ""
        if isinstance(out, ImageOutput):
            png = out.png()
            digest = self.blobs.put(png)
        if self.metrics is not None:
            self.metrics.executions.labels(task.body["kind"]).inc()
        result = sign(self.identity, "Result", self.network, result_body(self.identity.public_key, task, out, digest))
        log.info("executed task %s (%s)", task.id.hex()[:12], task.body["kind"])
        return result.wire(), png


def _altered(out: TextOutput | ImageOutput) -> TextOutput | ImageOutput:
    if isinstance(out, TextOutput):
        tokens = list(out.token_ids)
        i = len(tokens) // 2
        tokens[i] = (tokens[i] + 1) % 1000
        return TextOutput(out.prompt_ids, tokens, out.text, out.finish_reason, out.model_digest, out.profile, out.score)
    pixels = out.pixels.copy()
    h, w, _ = pixels.shape
    pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255 - pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    return ImageOutput(np.ascontiguousarray(pixels), out.model_digest, out.profile)
