"""Outgoing authenticated calls to other nodes, over cached channels."""

from __future__ import annotations

import time
from typing import Any

import grpc

from trustgen.consensus.identity import Identity
from trustgen.net import transport
from trustgen.net.auth import make_request
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

STUBS = {
    "Gateway": rpc.GatewayStub,
    "Worker": rpc.WorkerStub,
    "Verifier": rpc.VerifierStub,
    "Blobs": rpc.BlobsStub,
    "Node": rpc.NodeStub,
    "Gossip": rpc.GossipStub,
    "Training": rpc.TrainingStub,
}


def full_method(service: str, method: str) -> str:
    return f"/trustgen.v1.{service}/{method}"


class Peers:
    def __init__(
        self, identity: Identity, network: str, insecure: bool, ca_file: str = "", metrics: Any = None
    ) -> None:
        self.identity, self.network = identity, network
        self.insecure, self.ca_file = insecure, ca_file
        self.metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Protobuf bytes of every answer received (unary replies and blob chunks): what a node
        # downloads from its peers, for the transfer benchmarks.
        self.bytes_received = 0

    def stub(self, address: str, service: str) -> Any:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = transport.channel(address, self.insecure, self.ca_file)
        return STUBS[service](ch)

    async def call(self, address: str, service: str, method: str, args: dict[str, Any], timeout: float) -> Any:
        req = make_request(self.identity, self.network, full_method(service, method), args)
        t0 = time.perf_counter()
        try:
            reply = await getattr(self.stub(address, service), method)(req, timeout=timeout)
            self.bytes_received += reply.ByteSize()
            return reply
        finally:
            if self.metrics is not None:
                self.metrics.rpc_latency.labels(method).observe(time.perf_counter() - t0)

    async def info(self, address: str, timeout: float = 5.0) -> pb.NodeInfo:
        return await self.stub(address, "Node").Info(pb.InfoRequest(), timeout=timeout)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()
