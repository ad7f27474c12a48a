"""The explorer's pages over a real ledger (in-process HTTP): what each page shows, that it follows
the ledger as it grows, that it never writes to the node's directory, and that hostile requests get
a clear 400/404 page."""

from __future__ import annotations

import hashlib
import pathlib
import re

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from tests.consensus_fixtures import NET, build  # noqa: E402
from tests.test_audit_replicas import run_task  # noqa: E402
from trustgen.consensus.audit_incremental import audit_incremental  # noqa: E402
from trustgen.consensus.ledger import Ledger  # noqa: E402
from trustgen.explorer.app import create_app  # noqa: E402


def text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def tree(d: pathlib.Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def node_dir(tmp_path: pathlib.Path):
    d = tmp_path / "gateway"
    scen = build(d / "ledger.db", n_tasks=3, lying={0})
    scen.ledger.close()
    return d, scen


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory):
    d = tmp_path_factory.mktemp("explorer") / "gateway"
    build(d / "ledger.db", n_tasks=1).ledger.close()
    return TestClient(create_app(d))


def test_pages_show_what_the_ledger_holds(node_dir):
    d, scen = node_dir
    audit_incremental(d / "ledger.db")
    client = TestClient(create_app(d))
    home = text(client.get("/").text)
    assert "clean" in home and "tasks 3" in home and "results accepted 3" in home and "Latest commitments" in home
    task = scen.tasks[0].id.hex()
    page = client.get(f"/task/{task}")
    assert page.status_code == 200
    body = text(page.text)
    assert "hello" in body and "verified clean by the audit" in body and body.count("prefill") >= 6
    liar = scen.verifiers[0].public_key.hex()
    node = text(client.get(f"/node/{liar}").text)
    assert "verifier" in node and "bad marks" in node
    # The header's ledger size, on a page that lists entries of its own (a feed).
    feed = text(client.get(f"/feed/{scen.gateway.public_key.hex()}").text)
    assert re.search(rf"{NET} · \d+ entries", feed), feed[:300]
    # Every page links to raw signed entries, and an entry page shows its payload and signature.
    link = re.search(r'href="/entry/([0-9a-f]{64})"', page.text)
    assert link
    entry = client.get(f"/entry/{link.group(1)}")
    assert entry.status_code == 200 and "Signed payload" in entry.text
    row = (
        Ledger(d / "ledger.db", NET)
        .db.execute("SELECT payload, sig FROM entries WHERE hash = ?", (bytes.fromhex(link.group(1)),))
        .fetchone()
    )
    assert row[0].hex() in entry.text and row[1].hex() in entry.text
    # Search by a prefix of a task id goes to the task; of a feed key, to the node.
    hit = client.get(f"/search?q={task[:12]}", follow_redirects=False)
    assert hit.status_code == 303 and hit.headers["location"] == f"/task/{task}"
    assert client.get(f"/search?q={liar}", follow_redirects=False).headers["location"] == f"/node/{liar}"


def test_the_explorer_follows_new_entries_and_never_writes(node_dir):
    d, scen = node_dir
    before = tree(d)
    client = TestClient(create_app(d))
    assert "not audited yet" in client.get("/").text
    # Read-only: the ledger unchanged and no file of its own beside it (a WAL reader's -wal/-shm
    # files are SQLite's, made by any reader of a WAL database).
    after = {k: v for k, v in tree(d).items() if not k.endswith(("-wal", "-shm"))}
    assert after == before
    scen.ledger = Ledger(d / "ledger.db", NET, scen.gateway)
    t = run_task(scen, b"later")
    scen.ledger.close()
    page = client.get(f"/task/{t.task.id.hex()}")
    assert page.status_code == 200 and "not audited yet" in page.text
    assert "tasks 4" in text(client.get("/").text)


@pytest.mark.parametrize(
    "url, status",
    [
        ("/task/zz", 400),
        ("/task/" + "ab" * 33, 400),
        ("/task/" + "ab" * 32, 404),
        ("/node/" + "0" * 63, 400),
        ("/entry/../../etc/passwd", 404),
        ("/tasks?page=0", 400),
        ("/tasks?page=99999999999", 400),
        ("/tasks?page=-1", 400),
        ("/search?q=<script>", 400),
        ("/search?q=" + "a" * 65, 400),
        ("/blob/../ledger.db", 404),
        ("/blob/" + "g" * 64, 400),
        ("/training/" + "cd" * 32, 404),
    ],
)
def test_hostile_requests_get_a_clear_answer(shared_client, url, status):
    r = shared_client.get(url)
    assert r.status_code == status, r.text[:300]
    assert "Traceback" not in r.text


def test_explorer_cli_refuses_bad_input(tmp_path):
    from tests.helpers import run_cli

    res = run_cli("explorer", str(tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_failed_tasks_and_skipped_verifiers_are_shown(tmp_path):
    """A task that ended in TaskFailed reads as failed with its reason (list, page, overview), and a
    VerifierSkipped record is listed on its task's page with why and the deadline it missed."""
    from tests.consensus_fixtures import open_task
    from tests.test_liveness_audit import fail, finalise, skip

    d = tmp_path / "gateway"
    scen = build(d / "ledger.db", n_tasks=1)
    failed = open_task(scen, b"fails")
    fail(scen, failed.task.id, "expired", "verifiers gave no majority")
    late = open_task(scen, b"late")
    missed, *rest = late.ranking
    skip(scen, late, missed, deadline_ms=3)
    finalise(scen, late, rest[:2], skipped=[missed])
    scen.ledger.close()
    client = TestClient(create_app(d))
    assert "tasks failed 1" in text(client.get("/").text)
    listing = text(client.get("/tasks").text)
    assert "failed (expired)" in listing and listing.count("accept") >= 2
    page = text(client.get(f"/task/{failed.task.id.hex()}").text)
    assert "failed : expired (verifiers gave no majority)" in page and "no certificate: the task failed" in page
    page = client.get(f"/task/{late.task.id.hex()}").text
    skipped = text(page[page.index('id="skips"') :])
    assert missed.hex()[:8] in skipped and "deadline" in skipped and "0.003 s" in skipped
