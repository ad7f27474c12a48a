"""Many real nodes (gRPC servers on ephemeral loopback ports) in one event loop, with gossip
rounds driven explicitly so tests and benchmarks can count them."""

from __future__ import annotations

import asyncio
import pathlib
import random

from trustgen.consensus.identity import Identity
from trustgen.node.config import NodeConfig
from trustgen.node.daemon import Node

NET = "trustgen-local"


class Swarm:
    def __init__(self, root: pathlib.Path, learn_peers: bool = True, fanout: int = 2) -> None:
        self.root = pathlib.Path(root)
        self.learn_peers, self.fanout = learn_peers, fanout
        self.nodes: dict[int, Node] = {}
        self.tasks: dict[int, asyncio.Task] = {}

    def config(self, i: int) -> NodeConfig:
        d = self.root / f"n{i}"
        if not (d / "node.key").exists():
            Identity.generate().save(d)
        return NodeConfig(
            name=f"n{i}",
            data_dir=d,
            roles=[],
            insecure=True,
            metrics_port=-1,
            gossip_interval_s=0,
            gossip_fanout=self.fanout,
            learn_peers=self.learn_peers,
        )

    async def start(self, i: int, bootstrap: list[str] | None = None) -> Node:
        node = Node(self.config(i))
        for a in bootstrap or []:
            node.membership.add(a)
        self.nodes[i] = node
        self.tasks[i] = asyncio.get_running_loop().create_task(node.run(handle_signals=False))
        await asyncio.wait_for(node.serving.wait(), 20)
        return node

    async def stop(self, i: int) -> None:
        node = self.nodes.pop(i)
        node.stop()
        await self.tasks.pop(i)

    async def start_many(self, n: int, links: int = 2, seed: int = 0) -> None:
        """n nodes; each bootstraps to `links` random earlier nodes (a connected graph)."""
        rng = random.Random(seed)
        for i in range(n):
            earlier = [self.nodes[j].address for j in range(i)]
            await self.start(i, rng.sample(earlier, min(links, len(earlier))))

    async def rounds(self, k: int = 1) -> None:
        for _ in range(k):
            await asyncio.gather(*(n.gossip.round() for n in self.nodes.values()))

    def heads(self, i: int) -> dict:
        return self.nodes[i].ledger.heads()

    def converged(self, among: list[int] | None = None) -> bool:
        ids = among if among is not None else list(self.nodes)
        first = self.heads(ids[0])
        return all(self.heads(i) == first for i in ids[1:])

    async def until_converged(self, max_rounds: int = 60, among: list[int] | None = None, pause_s: float = 0.0) -> int:
        """Rounds until converged; `pause_s` between rounds lets real time pass (reconnect
        backoff after a cut link is measured in seconds, not rounds)."""
        for r in range(max_rounds + 1):
            if self.converged(among):
                return r
            await self.rounds()
            if pause_s:
                await asyncio.sleep(pause_s)
        raise AssertionError(f"not converged after {max_rounds} rounds")

    async def close(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)
