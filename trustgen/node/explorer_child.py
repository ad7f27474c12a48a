"""A node's own explorer (`explorer_port` in node.toml): `trustgen explorer` over the node's data
directory, read-only and on loopback, run as a child process the node starts after its ledger
exists and stops when it stops.

A child process, not a server inside the node: the explorer's pages and index must never read the
node's memory (what the pages show is what the ledger holds), the import contracts keep `node` and
`explorer` apart, and a slow page cannot stall the node's event loop. Its output goes to
`explorer.log` in the data directory (where a port already taken says so). The node keeps the
write end of the child's stdin open; the child stops when it reads end of file, so a node killed
with SIGKILL does not leave its explorer serving.
"""

from __future__ import annotations

import logging
import pathlib
import subprocess
import sys

log = logging.getLogger("trustgen.node")

STOP_TIMEOUT_S = 10.0


class ExplorerChild:
    def __init__(self, data_dir: pathlib.Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self._log = open(pathlib.Path(data_dir) / "explorer.log", "ab")
        cmd = [sys.executable, "-m", "trustgen.cli", "explorer", str(data_dir), "--port", str(port)]
        cmd += ["--host", "127.0.0.1", "--exit-with-stdin"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        log.info("explorer of this node's ledger on %s (pid %d)", self.url, self.proc.pid)

    def stop(self) -> None:
        """End the child (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and close its log."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc.returncode:
            log.warning("the explorer had exited with code %d (see explorer.log)", self.proc.returncode)
        self._log.close()
