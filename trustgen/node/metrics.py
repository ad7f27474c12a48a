"""Prometheus metrics of one node (its own registry, served over HTTP on loopback)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Counter("trustgen_tasks_total", "Tasks by final state", ["state"], registry=r)
        self.tasks_open = Gauge("trustgen_tasks_open", "Tasks accepted and not final", registry=r)
        self.votes = Counter("trustgen_votes_total", "Votes by verdict", ["verdict"], registry=r)
        self.executions = Counter("trustgen_executions_total", "Generations run", ["kind"], registry=r)
        self.task_latency = Histogram(
            "trustgen_task_seconds",
            "Accept-to-final latency",
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.rpc_latency = Histogram("trustgen_rpc_seconds", "Outgoing RPC latency", ["method"], registry=r)
        self.rejected_requests = Counter("trustgen_rejected_requests_total", "Refused requests", ["code"], registry=r)
        self.replay_index = Gauge(
            "trustgen_replay_index_outputs", "Accepted outputs in the verifier's replay index", registry=r
        )
        self.blobs_fetched = Counter("trustgen_blobs_fetched_total", "Blobs fetched from peers by digest", registry=r)
        self.gossip_bytes = Gauge("trustgen_gossip_bytes_sent", "Gossip frame bytes written since start", registry=r)
        self.rpc_bytes_in = Gauge(
            "trustgen_rpc_bytes_received", "Protobuf bytes of RPC replies and blob chunks received", registry=r
        )
        self.peers = Gauge("trustgen_peers", "Known peers by state", ["state"], registry=r)
        self.port = -1

    def serve(self, port: int) -> int:
        if port < 0:
            return -1
        srv, _thread = start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.port = srv.server_port
        self._server = srv
        return self.port

    def close(self) -> None:
        if self.port >= 0:
            self._server.shutdown()
