"""Helpers for tests that run trustgen as a user would, or run real nodes in-process."""

from __future__ import annotations

import asyncio
import inspect
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run `trustgen ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "trustgen.cli", *args], capture_output=True, text=True, timeout=timeout, **kw
    )


_CHILD = """
import json, sys
from trustgen.engines.generate import load_engine
from trustgen.engines.params import ImageParams, TextParams
kind, tasks = sys.argv[1], json.loads(sys.argv[2])
engine = load_engine("tiny-" + kind, kind)
cls = TextParams if kind == "text" else ImageParams
print(json.dumps({k: engine.generate(cls(**v)).output_digest for k, v in tasks.items()}))
"""


def digests_in_child(kind: str, tasks: dict) -> dict:
    """Output digests of `tasks` computed in a fresh interpreter (another process)."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, json.dumps(tasks)], capture_output=True, text=True, timeout=180, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `pred` from a plain (non-async) test until it returns something true, or fail at the
    deadline (for tests that drive separate processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def until(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `pred` (plain or async) on the running event loop until it returns something true, or
    fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def in_state(peers: Any, gw: Any, task: Any, *states: str) -> Callable[[], Any]:
    """An async predicate for `until`: the task's status once it is in one of `states`."""

    async def check() -> Any:
        st = await peers.call(gw.address, "Gateway", "Status", {"task_id": task.id}, timeout=10)
        return st if st.state in states else None

    return check


class LocalNodes:
    """Real nodes with real roles in this process and event loop, each a gRPC server on an ephemeral
    loopback port. Gossip rounds are off (a test drives what it needs); engines load for workers
    and verifiers as in `trustgen node run`."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.nodes: dict[str, Any] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def data_dir(self, name: str) -> pathlib.Path:
        return self.root / name

    async def start(self, name: str, roles: list[str], wait_joined: bool = True, **settings: Any) -> Any:
        """Start a node and wait until it serves (and, for a worker or verifier, has joined, unless
        `wait_joined` is False: a node its gateway will refuse)."""
        from trustgen.consensus.identity import Identity
        from trustgen.node.config import NodeConfig
        from trustgen.node.daemon import Node, ready_info

        d = self.data_dir(name)
        if not (d / "node.key").exists():
            Identity.generate().save(d)
        settings.setdefault("gossip_interval_s", 0)
        settings.setdefault("open_network", not settings.get("genesis"))  # admission has its own tests
        cfg = NodeConfig(name=name, data_dir=d, roles=roles, insecure=True, metrics_port=-1, **settings)
        node = Node(cfg)
        self.nodes[name] = node
        self._tasks[name] = asyncio.get_running_loop().create_task(node.run(handle_signals=False))
        await asyncio.wait_for(node.serving.wait(), 120)
        if wait_joined and {"worker", "verifier", "trainer"} & set(roles):
            await until(lambda: (ready_info(d) or {}).get("joined"), 60, f"{name} to join its gateway")
        return node

    async def stop(self, name: str) -> None:
        """Stop a node as SIGTERM would; its server is gone when this returns."""
        node = self.nodes.pop(name)
        node.stop()
        await self._tasks.pop(name)

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop(name)


class EventLog:
    """Everything a node publishes on its live event feed, from the moment `ready` returns."""

    def __init__(self, node: Any) -> None:
        import zmq
        import zmq.asyncio

        self.node = node
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(f"tcp://127.0.0.1:{node.events.port}")
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            topic, body = await self._sock.recv_multipart()
            self.events.append((topic.decode(), json.loads(body)))

    async def ready(self, timeout: float = 20.0) -> None:
        """PUB/SUB drops what is sent before the subscription is in place: publish probes on the
        node's bus until one arrives."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            self.node.events.publish("probe", n=n)
            retry = min(deadline, time.monotonic() + 0.2)
            while time.monotonic() < retry:
                if any(t == "probe" for t, _ in self.events):
                    return
                await asyncio.sleep(0.02)
            if time.monotonic() >= deadline:
                raise AssertionError("the event feed never delivered a probe")

    def of(self, topic: str, **match: Any) -> list[dict[str, Any]]:
        return [b for t, b in self.events if t == topic and all(b.get(k) == v for k, v in match.items())]

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._sock.close(0)
        self._ctx.term()


def small_network_job(**algo: Any) -> Any:
    """The shipped local-SGD job cut down for tests: 2 rounds of 2 inner steps of batch 2, every
    challenged step re-executed, 8 evaluation windows."""
    from trustgen.training import spec as specs

    raw = specs.as_table(specs.load("diloco").data)
    raw.pop("trainers")
    raw["data"]["eval_windows"] = 8
    raw["algorithm"].update({"rounds": 2, "inner_steps": 2, "batch": 2, "check_probability": 1.0, **algo})
    return specs.from_dict(raw)


class EventTap:
    """A blocking subscriber to one node's live event feed (for tests driving separate processes)."""

    def __init__(self, port: int) -> None:
        import zmq

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(f"tcp://127.0.0.1:{port}")

    def wait(self, topic: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for event {topic} {match}")
            if self._sock.poll(int(left * 1000)):
                t, body = self._sock.recv_multipart()
                b = json.loads(body)
                if t.decode() == topic and all(b.get(k) == v for k, v in match.items()):
                    return b

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()
