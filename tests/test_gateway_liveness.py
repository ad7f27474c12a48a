"""The gateway's terminal states with a real storage fault and no network: a task whose failure
cannot be written (SQLite refuses writes) is retried with backoff, not lost or reported failed
without a ledger fact; once the store takes writes again, TaskFailed is written once, and a
gateway rebuilt from the ledger keeps it failed and never runs it."""

from __future__ import annotations

import asyncio
import pathlib
import time

from tests.consensus_fixtures import NET, ident, make_task
from tests.helpers import until
from trustgen.consensus import merkle
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import sign
from trustgen.gossip.blobs import BlobStore
from trustgen.net.peers import Peers
from trustgen.node.gateway import GatewayRole


def role(ledger: Ledger, tmp_path: pathlib.Path) -> GatewayRole:
    me = ledger.identity
    assert me is not None
    return GatewayRole(me, NET, ledger, Peers(me, NET, insecure=True), BlobStore(tmp_path / "blobs"))


def test_a_failure_that_cannot_be_written_is_retried_then_recorded_once(tmp_path):
    async def main() -> None:
        gw = ident(1)
        ledger = Ledger(tmp_path / "ledger.db", NET, gw)
        client = ident(3)
        task = make_task(client, nonce=b"storage")
        task = sign(client, "Task", NET, dict(task.body, expiry=int(time.time() * 1000) + 300))
        body = {"task": task.wire(), "beacon": merkle.EMPTY_ROOT, "beacon_size": 0, "candidates": []}
        ledger.append("TaskAccepted", body)
        ledger.db.execute("PRAGMA query_only = 1")  # every write now fails in SQLite itself
        g = role(ledger, tmp_path)
        try:
            assert g.recover() == 1  # no worker: it waits, expires, and cannot record the failure
            st = g.tasks[task.id]
            await until(lambda: st.detail == "retrying after OperationalError", 30, "a retry after the fault")
            assert st.state == "waiting" and list(ledger.iter_entries(entry_type="TaskFailed")) == []
            ledger.db.execute("PRAGMA query_only = 0")
            await until(lambda: st.state == "failed", 60, "the failure to be recorded")
            assert st.detail == "expired"
        finally:
            await g.close()
        (failed,) = list(ledger.iter_entries(entry_type="TaskFailed"))
        assert (failed.body["task_id"], failed.body["reason"]) == (task.id, "expired")
        again = role(ledger, tmp_path)
        try:
            assert again.recover() == 0 and again.tasks[task.id].state == "failed"
        finally:
            await again.close()
        ledger.close()

    asyncio.run(main())
