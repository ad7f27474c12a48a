"""Live event feed over ZeroMQ PUB. For people and dashboards only: PUB/SUB drops messages
sent before a subscriber connects, so nothing consensus needs ever travels here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import zmq


class EventBus:
    def __init__(self, port: int) -> None:
        self._ctx: zmq.SyncContext = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 10_000)
        if port == 0:
            self.port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            self._sock.bind(f"tcp://127.0.0.1:{port}")
            self.port = port

    def publish(self, topic: str, **fields: Any) -> None:
        fields.setdefault("time", time.time())
        try:
            self._sock.send_multipart([topic.encode(), json.dumps(fields, default=str).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass  # a slow subscriber loses events rather than stalling the node

    def close(self) -> None:
        self._sock.close(0)


def subscribe(host: str, port: int, timeout_s: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    ctx: zmq.SyncContext = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://{host}:{port}")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = 500 if deadline is None else max(1, int(min(0.5, deadline - time.monotonic()) * 1000))
            if sock.poll(wait):
                topic, body = sock.recv_multipart()
                try:
                    yield topic.decode(), json.loads(body)
                except ValueError:
                    continue
    finally:
        sock.close(0)
