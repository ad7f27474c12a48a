"""A node serves the explorer over its own ledger when `explorer_port` is set: on loopback, read-only,
started with the node and stopped with it."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import LocalNodes
from trustgen.errors import UsageError
from trustgen.node.config import NodeConfig
from trustgen.node.daemon import ready_info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, proc: subprocess.Popen, method: str = "GET", timeout_s: float = 90.0) -> tuple[int, str]:
    """The page at `url` once the explorer answers (it starts as its own process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise AssertionError(f"the explorer never answered on {url}") from None
            try:  # wait for the child to bind, or to exit (a failure the assertion names)
                proc.wait(0.2)
                raise AssertionError(f"the explorer exited with code {proc.returncode}")
            except subprocess.TimeoutExpired:
                pass


@pytest.mark.parametrize("bad", [-1, 65536, "8470", 1.5])
def test_explorer_port_is_checked(tmp_path, bad):
    with pytest.raises(UsageError, match="explorer_port"):
        NodeConfig(name="n", data_dir=tmp_path, roles=[], insecure=True, explorer_port=bad)


@pytest.mark.slow
def test_a_node_serves_its_ledger_read_only_and_stops_it(tmp_path):
    port = free_port()

    async def main() -> None:
        nodes = LocalNodes(tmp_path)
        try:
            gw = await nodes.start("gateway", ["gateway"], explorer_port=port)
            url = (ready_info(tmp_path / "gateway") or {})["explorer"]
            assert url == f"http://127.0.0.1:{port}/"
            proc = gw.explorer.proc
            status, page = await asyncio.to_thread(fetch, url, proc)
            assert status == 200 and gw.identity.node_id[:16] in page  # its own feed, from its ledger
            status, _ = await asyncio.to_thread(fetch, url, proc, "POST")
            assert status == 405  # read-only: no route takes a write
            assert not (await nodes.start("replica", [])).explorer  # 0 (the default): none
        finally:
            await nodes.close()
        assert proc.poll() is not None  # stopped with its node
        assert not (tmp_path / "gateway" / "explorer.log").read_text().count("Traceback")

    asyncio.run(main())


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped (the orphan's new parent may not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_the_explorer_stops_when_its_node_is_killed(tmp_path):
    """SIGKILL gives the node no chance to stop its child: the child must notice on its own."""
    import os
    import signal
    import sys

    from tests.helpers import wait_for

    async def make_ledger() -> None:
        nodes = LocalNodes(tmp_path)
        await nodes.start("gateway", ["gateway"])
        await nodes.close()

    asyncio.run(make_ledger())
    port = free_port()
    code = (
        "import sys, pathlib\n"
        "from trustgen.node.explorer_child import ExplorerChild\n"
        f"c = ExplorerChild(pathlib.Path({str(tmp_path / 'gateway')!r}), {port})\n"
        "print(c.proc.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    node = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        child = int(node.stdout.readline())
        status, _ = fetch(f"http://127.0.0.1:{port}/", node)
        assert status == 200
        os.kill(node.pid, signal.SIGKILL)
        node.wait()
        wait_for(lambda: _gone(child), timeout=30, what="the explorer child to exit after its node was killed")
    finally:
        if not _gone(node.pid):
            node.kill()
