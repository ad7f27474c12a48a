"""The explorer in a real browser (the distribution's headless Chromium, driven by Playwright) on
the ledger of a real cluster run (`cluster.up`, separate processes under its genesis): a gateway,
three verifiers, an honest worker and a cheating one (adversary `alter`), two trainers; an image
task, a text task the cheat answers first and loses, and a two-round training job. One cluster run
serves every check. The test checks what the pages show and saves screenshots under its tmp
directory; with
TRUSTGEN_UPDATE_DOCS_SCREENSHOT=1 it also refreshes docs/explorer-task.png."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from tests.helpers import run_cli
from trustgen.consensus.audit import audit_paths
from trustgen.consensus.audit_incremental import audit_paths_incremental, verdict
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed
from trustgen.node import cluster
from trustgen.node.client import make_task, submit
from trustgen.node.training_client import submit_job

CHROMIUM = "/usr/bin/chromium"
NET = "trustgen-local"
DOCS_SHOT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "explorer-task.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no {CHROMIUM} (make install adds the chromium package)"),
]


def text_task_for(me: Identity, first: bytes, then: bytes) -> Signed:
    """A text task whose per-task tie-break tries `first` before `then` (both strangers)."""
    while True:
        task = make_task(me, NET, "text", "tiny-text", {"prompt": "The ledger", "max_new_tokens": 8}, 3)
        if hashlib.sha256(task.id + first).digest() < hashlib.sha256(task.id + then).digest():
            return task


def short_job() -> Any:
    """The default training job cut to two rounds of two inner steps."""
    from trustgen.training import spec as specs

    raw = specs.as_table(specs.load(specs.DEFAULT_JOB).data)
    raw.pop("trainers")
    raw["algorithm"].update({"rounds": 2, "inner_steps": 2})
    return specs.from_dict(raw)


async def tasks_and_job(gw: str, cheat: bytes, good: bytes) -> dict[str, Any]:
    """A text task the cheat answers first and loses, then an image task, beside a training job."""
    me = Identity.generate()
    job = asyncio.ensure_future(
        submit_job(gw, short_job(), me, True, trainers=2, verifiers=3, wait=True, timeout_s=300)
    )
    text = text_task_for(me, cheat, good)
    out = await submit(gw, text, me, NET, insecure=True, timeout_s=180)
    assert out["decision"] == "accept" and out["attempts"] == 2, out
    image = make_task(me, NET, "image", "tiny-image", {"prompt": "a red circle on a white background", "seed": 5}, 3)
    out = await submit(gw, image, me, NET, insecure=True, timeout_s=180)
    assert out["decision"] == "accept", out
    st = await job
    assert st["state"] == "final" and len(st["rounds_done"]) == 2, st
    return {
        "text": text.id.hex(),
        "image": image.id.hex(),
        "cheat": cheat.hex(),
        "job": st["job_id"],
        "digests": [r["digest"] for r in st["rounds_done"]],
    }


def cluster_run(root: pathlib.Path) -> dict[str, Any]:
    """`trustgen cluster up` as separate processes under its genesis: a gateway, three verifiers,
    an honest worker, a cheating one (adversary `alter`) and two trainers; stopped afterwards."""
    ready = cluster.up(root, workers=2, verifiers=3, node_settings={"worker-2": {"adversary": "alter"}}, trainers=2)
    try:
        cheat, good = (cluster.node_identity(root / n).public_key for n in ("worker-2", "worker-1"))
        return asyncio.run(tasks_and_job(ready["gateway"]["address"], cheat, good))
    finally:
        cluster.down(root)


def start_explorer(node_dir: pathlib.Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trustgen.cli", "explorer", str(node_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        raise AssertionError("the explorer never said where it serves") from None
    url = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert url, line
    return proc, url.group(0)


def test_explorer_pages_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    root = tmp_path / "net"
    ids = cluster_run(root)
    gw_dir = root / "gateway"
    # Writes the verdict the pages show. The cluster runs under a genesis: audited incrementally.
    audits = [json.loads(run_cli("audit", str(gw_dir), "--json").stdout)["ledgers"][0] for _ in range(2)]
    assert [(a["ok"], a["audit_mode"]) for a in audits] == [(True, "rebuilt"), (True, "incremental")], audits
    assert audits[0]["genesis"] and audits[0]["training_jobs"] == 1
    # Every node's ledger, replicas cross-checked: the same verdicts both ways, twice.
    full = {r.path: verdict(r) for r in audit_paths([root])}
    for _ in range(2):
        assert {o.report.path: verdict(o.report) for o in audit_paths_incremental([root])} == full
    assert len(full) == 8 and all(v["ok"] for v in full.values())
    shots = tmp_path / "screenshots"
    shots.mkdir()
    proc, url = start_explorer(gw_dir)
    try:
        with sync_api.sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
                viewport={"width": 1200, "height": 900},
            )
            page = ctx.new_page()

            page.goto(url)
            assert "clean" in page.inner_text("#audit")
            counters = page.inner_text("#counters")
            assert re.search(r"tasks\s+2", counters) and re.search(r"results rejected\s+1", counters), counters
            assert page.locator("#latest-tasks tr").count() == 3  # a header and one row per task
            page.screenshot(path=str(shots / "overview.png"), full_page=True)

            # The image task: its image, three votes and the certificate.
            page.goto(f"{url}task/{ids['image']}")
            assert page.eval_on_selector("img.output", "img => img.complete && img.naturalWidth > 0")
            assert page.locator(".result tr.vote").count() == 3
            assert page.locator(".result tr.vote .accept").count() == 3
            cert = page.inner_text(".certificate")
            assert "decision accept" in cert and "verified clean by the audit" in cert
            page.screenshot(path=str(shots / "task-image.png"), full_page=True)
            if os.environ.get("TRUSTGEN_UPDATE_DOCS_SCREENSHOT") == "1":
                shutil.copy(shots / "task-image.png", DOCS_SHOT)

            # The text task: the cheat's result rejected with reasons, then the honest one accepted.
            page.goto(f"{url}task/{ids['text']}")
            results = page.locator(".result")
            assert results.count() == 2
            assert results.nth(0).locator(".vote .reject").count() >= 2
            assert ids["cheat"][:16] in results.nth(0).inner_text()
            assert [c.split()[1] for c in page.locator(".certificate").all_inner_texts()] == ["reject", "accept"]
            assert page.locator(".output-text").count() == 2
            page.screenshot(path=str(shots / "task-text.png"), full_page=True)

            # The raw signed entry behind the certificate.
            page.locator(".certificate a", has_text="signed entry").first.click()
            assert page.url.startswith(f"{url}entry/")
            assert "TaskFinalized" in page.inner_text("#header")
            assert re.fullmatch(r"[0-9a-f]{128}", page.inner_text("#sig").strip())
            page.screenshot(path=str(shots / "entry.png"), full_page=True)

            # The cheat's node page: the evidence and its reputation.
            page.goto(f"{url}node/{ids['cheat']}")
            assert "rejected_result" in page.inner_text("#evidence")
            assert float(page.inner_text("#reputation").split()[0]) < 0.5
            assert page.locator("svg.plot").count() == 1
            page.screenshot(path=str(shots / "node-cheat.png"), full_page=True)

            # The training job: its spec, the loss of each round's checkpoint, the updates, the
            # checks and the finalised checkpoints' digests, each round trained from the last.
            page.goto(f"{url}training")
            page.locator("#jobs a", has_text=ids["job"]).click()
            page.wait_for_url(f"{url}training/{ids['job']}")
            spec = page.inner_text("#spec")
            assert "algorithm.rounds\t2" in spec and "model.base\ttiny-text" in spec, spec
            assert page.locator("svg.plot").count() == 1
            rounds = page.locator("#rounds tr.round")
            assert rounds.count() == 2
            for r, digest in enumerate(ids["digests"]):
                row = rounds.nth(r)
                assert row.locator(".update").count() == 2 and row.locator(".update .accept").count() == 2
                assert row.locator(".check").count() == 3
                assert digest in row.locator(".digest").inner_text()
            assert ids["digests"][0][:16] in rounds.nth(1).locator(".base").inner_text()  # lineage
            page.screenshot(path=str(shots / "training.png"), full_page=True)

            # Search from the header box by a prefix of the task id.
            page.fill("header input[name=q]", ids["text"][:12])
            page.press("header input[name=q]", "Enter")
            page.wait_for_url(f"{url}task/{ids['text']}")
            ctx.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert sorted(p.name for p in shots.iterdir()) == [
        "entry.png",
        "node-cheat.png",
        "overview.png",
        "task-image.png",
        "task-text.png",
        "training.png",
    ]
