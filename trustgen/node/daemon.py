"""`trustgen node run`: one node process with the roles its config names.

Start-up order: identity, ledger, blob store, event bus, metrics, engines (workers and
verifiers only: a pure gateway never imports torch), gRPC server with health and reflection;
then `ready.json` in the data directory (actual ports, pid) so launchers need no fixed ports;
then joining the gateway. SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import signal
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

import trustgen
from trustgen.consensus.admission import (
    AdmissionError,
    AdmissionState,
    Genesis,
    cert_pin,
    open_admission,
    open_revocation,
    pinned_cert,
)
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.gossip.blobfetch import BlobFetchError, fetch_blob, sources_for
from trustgen.gossip.blobs import BlobStore
from trustgen.gossip.gossip import Gossip, Membership
from trustgen.net import grpc_options as opts
from trustgen.net import transport
from trustgen.net.auth import RequestGuard
from trustgen.net.peers import Peers
from trustgen.node import profiling
from trustgen.node.config import NodeConfig
from trustgen.node.events import EventBus
from trustgen.node.explorer_child import ExplorerChild
from trustgen.node.metrics import Metrics
from trustgen.node.offers import ENTRY as OFFER_ENTRY
from trustgen.node.offers import offer_body
from trustgen.node.servicers import (
    BlobsServicer,
    DecodeGuard,
    GatewayServicer,
    GossipServicer,
    NodeServicer,
    TrainingServicer,
    VerifierServicer,
    WorkerServicer,
)
from trustgen.rpc import trustgen_pb2 as pb
from trustgen.rpc import trustgen_pb2_grpc as rpc

if TYPE_CHECKING:  # the roles are imported when loaded: a pure gateway never imports torch
    from trustgen.node.engine_pool import Engines
    from trustgen.node.gateway import GatewayRole
    from trustgen.node.training_jobs import TrainingCoordinator
    from trustgen.node.training_trainer import TrainerRole
    from trustgen.node.training_verifier import TrainingVerifier
    from trustgen.node.verifier_role import VerifierRole
    from trustgen.node.worker import WorkerRole

log = logging.getLogger("trustgen.node")
READY_FILE = "ready.json"


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        passphrase = os.environ.get("TRUSTGEN_PASSPHRASE")
        self.identity = Identity.load(cfg.data_dir, passphrase.encode() if passphrase else None)
        self.genesis = Genesis.load(cfg.genesis, cfg.network) if cfg.genesis else None
        if self.genesis is not None and cfg.tls_cert:
            check_tls_pin(self.genesis, self.identity.public_key, pathlib.Path(cfg.tls_cert))
        self.ledger = Ledger(cfg.ledger_path, cfg.network, self.identity)
        self.blobs = BlobStore(cfg.data_dir / "blobs")
        self.metrics = Metrics()
        self.events = EventBus(cfg.events_port)
        self.peers = Peers(self.identity, cfg.network, cfg.insecure, cfg.tls_ca, self.metrics)
        self.guard = RequestGuard(cfg.network)
        bootstrap = list(cfg.bootstrap) + ([cfg.gateway] if cfg.gateway else [])
        self.membership = Membership(self.identity.public_key, bootstrap)
        self.gossip = Gossip(
            self.identity,
            self.ledger,
            self.peers,
            self.membership,
            cfg.gossip_fanout,
            learn_peers=cfg.learn_peers,
            events=self.events,
        )
        if self.genesis is not None:
            self.gossip.replica.admits = self._admitted_feeds
        self._admission = AdmissionState(self.genesis)
        self._admission_cursor = 0
        self.metrics.gossip_bytes.set_function(lambda: self.gossip.bytes_sent)
        self.metrics.rpc_bytes_in.set_function(lambda: self.peers.bytes_received)
        for state in ("alive", "suspect", "dead", "banned"):
            self.metrics.peers.labels(state).set_function(partial(self._peers_in, state))
        self.gateway: GatewayRole | None = None
        self.worker: WorkerRole | None = None
        self.verifier: VerifierRole | None = None
        self.engines: Engines | None = None
        self.coordinator: TrainingCoordinator | None = None
        self.trainer: TrainerRole | None = None
        self.train_verifier: TrainingVerifier | None = None
        self.address = ""
        self.explorer: ExplorerChild | None = None
        self._stop = asyncio.Event()
        self.serving = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to shut down, as SIGTERM does; call it on the node's event loop (from another
        thread: `loop.call_soon_threadsafe(node.stop)`)."""
        self._stop.set()

    def _peers_in(self, state: str) -> int:
        return sum(1 for p in self.membership.peers.values() if p.state == state)

    def info(self) -> pb.NodeInfo:
        return pb.NodeInfo(
            node_id=self.identity.node_id,
            roles=self.cfg.roles,
            network=self.cfg.network,
            events_port=self.events.port,
            metrics_port=self.metrics.port,
            ledger_size=self.ledger.size(),
            version=trustgen.__version__,
            worker_batch=self.cfg.worker_batch if "worker" in self.cfg.roles else 0,
        )

    def _load_roles(self) -> None:
        cfg = self.cfg
        if "worker" in cfg.roles or "verifier" in cfg.roles:
            from trustgen.logs import quiet_libraries
            from trustgen.node.engine_pool import Engines

            quiet_libraries()
            self.engines = engines = Engines(cfg.models, cfg.threads)
            if "worker" in cfg.roles:
                from trustgen.node.worker import WorkerRole

                self.worker = WorkerRole(
                    self.identity,
                    cfg.network,
                    engines,
                    self.blobs,
                    cfg.adversary,
                    cfg.delay_s,
                    self.metrics,
                    cfg.worker_batch,
                    cfg.budgets,
                )
            if "verifier" in cfg.roles:
                from trustgen.node.verifier_role import VerifierRole

                self.verifier = verifier = VerifierRole(
                    self.identity,
                    cfg.network,
                    engines,
                    cfg.adversary,
                    self.metrics,
                    self._fetch_checked,
                    cfg.verifier_batch,
                )
                log.info(
                    "history index: %d accepted outputs from the ledger",
                    verifier.rebuild_history(self.ledger, self.blobs),
                )
        # Training roles import torch only when a job arrives (training_replica / training_jobs
        # load objectives lazily), but their modules need it: load them for those roles only.
        if "trainer" in cfg.roles:
            from trustgen.node.training_trainer import TrainerRole

            self.trainer = TrainerRole(
                self.identity, cfg.network, self.peers, self.blobs, cfg.train_adversary, self.events
            )
        if "verifier" in cfg.roles:
            from trustgen.node.training_verifier import TrainingVerifier

            self.train_verifier = TrainingVerifier(self.identity, cfg.network, self.peers, self.blobs)
        if "gateway" in cfg.roles:
            from trustgen.node.gateway import GatewayRole

            self.gateway = GatewayRole(
                self.identity,
                cfg.network,
                self.ledger,
                self.peers,
                self.blobs,
                cfg.max_attempts,
                cfg.worker_timeout_s,
                cfg.verifier_timeout_s,
                self.events,
                self.metrics,
                AdmissionState(self.genesis),
            )
            from trustgen.node.training_jobs import TrainingCoordinator

            self.coordinator = TrainingCoordinator(
                self.identity,
                cfg.network,
                self.ledger,
                self.peers,
                self.blobs,
                self.gateway.members,
                lambda: self.address,
                cfg.training_round_timeout_s,
                cfg.verifier_timeout_s,
                self.events,
                self._admitted,
                retry_s=cfg.training_retry_s,
            )

    def _admitted_feeds(self) -> Callable[[bytes], bool]:
        """The feeds gossip keeps: those of keys ever admitted, as of the admissions stored so far
        (read since the last call only)."""
        cursor = self.ledger.next_index()
        for t in ("Admitted", "Revoked"):
            for e in self.ledger.iter_entries(since=self._admission_cursor, entry_type=t):
                self._admission.add(e)
        self._admission_cursor = cursor
        return self._admission.member

    def _record_admission(self) -> None:
        """Put the genesis (once) and this node's admissions in its own feed, so a gateway it joins
        and every auditor of its feed sees under what, and by whom, it was admitted."""
        if self.genesis is None:
            return
        me = self.identity.public_key
        own = {
            (e.type, next(iter(e.body.values())))
            for t in ("Genesis", "Admitted", "Revoked")
            for e in self.ledger.iter_entries(entry_type=t)
            if e.feed == me
        }
        if not any(t == "Genesis" for t, _ in own):
            self.ledger.append("Genesis", {"genesis": self.genesis.wire()})
        files: list[tuple[str, str, Callable[[Genesis, bytes], Any]]]
        files = [("Admitted", p, open_admission) for p in self.cfg.admissions]
        files += [("Revoked", p, open_revocation) for p in self.cfg.revocations]
        for entry_type, path, check in files:
            try:
                data = pathlib.Path(path).read_bytes()
            except OSError as e:
                raise AdmissionError(f"cannot read {path}: {e.strerror}") from None
            check(self.genesis, data)  # refuse a bad file at start, not at the gateway
            if (entry_type, data) not in own:
                self.ledger.append(entry_type, {"admission" if entry_type == "Admitted" else "revocation": data})

    def _record_offer(self) -> None:
        """A worker's `Serves` entry (node/offers.py), appended when what it serves has changed."""
        if self.worker is None or self.engines is None:
            return
        body = offer_body(self.engines.served(), self.cfg.budgets)
        latest = None
        for e in self.ledger.iter_entries(entry_type=OFFER_ENTRY):
            if e.feed == self.identity.public_key:
                latest = e.body
        if latest != body:
            self.ledger.append(OFFER_ENTRY, body)

    async def run(self, handle_signals: bool = True) -> None:
        cfg = self.cfg
        self._load_roles()
        server = transport.server([DecodeGuard(metrics=self.metrics)])  # undecodable bytes: INVALID_ARGUMENT
        services = [pb.DESCRIPTOR.services_by_name["Node"].full_name, pb.DESCRIPTOR.services_by_name["Blobs"].full_name]
        rpc.add_NodeServicer_to_server(NodeServicer(self.info), server)
        rpc.add_BlobsServicer_to_server(BlobsServicer(self.blobs, self.guard, self.metrics), server)
        rpc.add_GossipServicer_to_server(GossipServicer(self.gossip, self.guard, self.metrics), server)
        services.append("trustgen.v1.Gossip")
        if self.gateway:
            rpc.add_GatewayServicer_to_server(GatewayServicer(self.gateway, self.guard, self.metrics), server)
            services.append("trustgen.v1.Gateway")
        if self.worker:
            rpc.add_WorkerServicer_to_server(WorkerServicer(self.worker, self.guard, self.metrics), server)
            services.append("trustgen.v1.Worker")
        if self.verifier:
            rpc.add_VerifierServicer_to_server(VerifierServicer(self.verifier, self.guard, self.metrics), server)
            services.append("trustgen.v1.Verifier")
        training = TrainingServicer(self.coordinator, self.trainer, self.train_verifier, self.guard, self.metrics)
        rpc.add_TrainingServicer_to_server(training, server)
        services.append("trustgen.v1.Training")
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(services + [reflection.SERVICE_NAME, "grpc.health.v1.Health"], server)
        host = cfg.listen.rsplit(":", 1)[0]
        port = transport.add_port(server, cfg.listen, cfg.insecure, cfg.tls_cert, cfg.tls_key)
        self.address = f"{host}:{port}"
        await server.start()
        self.metrics.serve(cfg.metrics_port)

        me = self.identity.public_key
        latest = None
        for e in self.ledger.iter_entries(entry_type="NodeJoined"):
            if e.feed == me:
                latest = e
        self._record_admission()
        self._record_offer()
        if latest is None or latest.body["address"] != self.address or list(latest.body["roles"]) != cfg.roles:
            self.ledger.append("NodeJoined", {"address": self.address, "roles": cfg.roles})
        if self.gateway:
            resumed = self.gateway.recover()
            log.info("gateway resumed %d pending tasks", resumed)
        recovering = None
        if self.coordinator:  # loads models: in the background, so the node serves at once
            recovering = asyncio.get_running_loop().create_task(self._recover_training(self.coordinator))
        if cfg.explorer_port:
            self.explorer = ExplorerChild(cfg.data_dir, cfg.explorer_port)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._write_ready(joined=not (self.worker or self.verifier or self.trainer))
        log.info("node %s serving %s at %s", self.identity.node_id[:12], ",".join(cfg.roles), self.address)
        self.events.publish("node", state="serving", node=self.identity.node_id, address=self.address)

        loop = asyncio.get_running_loop()
        if handle_signals:  # only possible on the main thread; in-process callers use stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        joiner = (
            loop.create_task(self._join_gateway())
            if (self.worker or self.verifier or self.trainer) and cfg.gateway
            else None
        )
        gossiper = (
            loop.create_task(self.gossip.run(cfg.gossip_interval_s, self._stop)) if cfg.gossip_interval_s > 0 else None
        )
        follower = (
            loop.create_task(self._follow_outputs(self.verifier, max(cfg.gossip_interval_s, 0.5)))
            if self.verifier
            else None
        )
        self.serving.set()
        await self._stop.wait()
        log.info("stopping")
        await health.enter_graceful_shutdown()
        for t in (joiner, gossiper, follower, recovering):
            if t:
                t.cancel()
        self.gossip.close()
        if self.gateway:
            await self.gateway.close()
        if self.coordinator:
            await self.coordinator.close()
        await server.stop(grace=3)
        if self.explorer is not None:
            await asyncio.to_thread(self.explorer.stop)
        await self.peers.close()
        if self.engines:
            self.engines.close()
        self.events.close()
        self.metrics.close()
        self.ledger.close()
        (cfg.data_dir / READY_FILE).unlink(missing_ok=True)

    def _admitted(self, key: bytes, role: str) -> bool:
        """The gateway's admission rule as it stands now (revocations arrive by gossip)."""
        return self.gateway is not None and self.gateway.admission.admitted(key, role)

    async def _recover_training(self, coordinator: TrainingCoordinator) -> None:
        jobs = await coordinator.recover()
        log.info("gateway resumed %d training jobs", jobs)

    async def _fetch_checked(self, digest: str, holders: list[bytes], hints: list[str], max_size: int) -> bytes:
        """A blob a check needs, from the addresses the gateway named and the nodes that should
        hold it first, then any peer; peers that served bad chunks are marked as misbehaving.
        Content addressing makes a wrong hint cost a failed try, nothing more."""
        sources = list(dict.fromkeys(hints + sources_for(holders, self.membership)))
        data, bad = await fetch_blob(self.peers, digest, sources, None, max_size)  # not kept: served by its worker
        for address in bad:
            p = self.membership.peers.get(address)
            if p is not None and p.key is not None:
                self.membership.misbehaved(p.key)
        return data

    async def _follow_outputs(self, verifier: VerifierRole, interval_s: float) -> None:
        """Keep the verifier's replay index current as certificates arrive by gossip, fetching
        accepted images it does not have by digest from the nodes that had them, then any peer."""
        tries: dict[str, int] = {}
        while not self._stop.is_set():
            try:
                verifier.follow(self.ledger, self.blobs)
                for digest, (task_key, holders) in list(verifier.missing.items())[:4]:
                    try:
                        png, bad = await fetch_blob(
                            self.peers, digest, sources_for(holders, self.membership), self.blobs
                        )
                    except BlobFetchError as e:
                        tries[digest] = tries.get(digest, 0) + 1
                        if tries[digest] >= 10:
                            log.warning("giving up on output %s: %s", digest[:12], e)
                            del verifier.missing[digest]
                        continue
                    for address in bad:
                        p = self.membership.peers.get(address)
                        if p is not None and p.key is not None:
                            self.membership.misbehaved(p.key)
                    del verifier.missing[digest]
                    tries.pop(digest, None)
                    verifier.index_image(task_key, png)
                    self.metrics.blobs_fetched.inc()
                self.metrics.replay_index.set(len(verifier.history))
            except Exception:  # the index is derived state: a failed pass is retried, never fatal
                log.exception("output follower pass failed")
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass

    def _write_ready(self, joined: bool = False) -> None:
        ready = {
            "node_id": self.identity.node_id,
            "address": self.address,
            "pid": os.getpid(),
            "roles": self.cfg.roles,
            "events_port": self.events.port,
            "metrics_port": self.metrics.port,
            "explorer": self.explorer.url if self.explorer is not None else "",
            "joined": joined,
        }
        tmp = self.cfg.data_dir / (READY_FILE + ".tmp")
        tmp.write_text(json.dumps(ready))
        os.replace(tmp, self.cfg.data_dir / READY_FILE)

    async def _join_gateway(self) -> None:
        """Send our feed to the gateway until it takes it; learn the gateway's key, so only it
        may assign us work."""
        delay = 0.2
        me = self.identity.public_key
        while not self._stop.is_set():
            try:
                info = await self.peers.info(self.cfg.gateway, timeout=opts.DEADLINE_INFO)
                entries = [[p, s] for p, s in self.ledger.entries(me, 1, 1000)]
                await self.peers.call(
                    self.cfg.gateway, "Gateway", "Join", {"entries": entries}, timeout=opts.DEADLINE_JOIN
                )
                gw = bytes.fromhex(info.node_id)
                for role in (self.worker, self.verifier, self.trainer, self.train_verifier):
                    if role is not None:
                        role.gateways = {gw}
                log.info("joined gateway %s", self.cfg.gateway)
                self._write_ready(joined=True)
                self.events.publish("node", state="joined", gateway=self.cfg.gateway)
                return
            except grpc.aio.AioRpcError as e:
                log.warning("join %s failed: %s %s", self.cfg.gateway, e.code().name, e.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def check_tls_pin(genesis: Genesis, key: bytes, cert: pathlib.Path) -> None:
    """Refuse to start with a TLS certificate other than the one the genesis pins for this key:
    the gateway would refuse the join anyway, later and less clearly."""
    pin = pinned_cert(genesis, key)
    if not pin:
        return
    try:
        served = cert_pin(cert.read_bytes())
    except OSError as e:
        raise AdmissionError(f"cannot read tls_cert {cert}: {e.strerror}") from None
    if served != pin:
        raise AdmissionError(f"tls_cert {cert} is not the certificate the genesis pins for this node")


def run_node(cfg: NodeConfig, log_level: str = "INFO") -> None:
    from trustgen.logs import setup

    setup(log_level, cfg.log_path, cfg.log_max_bytes, cfg.log_backups)
    profiling.install()  # only with TRUSTGEN_PROFILE_DIR set (bench/bench_network.py --profile)
    node = Node(cfg)
    asyncio.run(node.run())


def ready_info(data_dir: Any) -> dict[str, Any] | None:
    import pathlib

    path = pathlib.Path(data_dir) / READY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
