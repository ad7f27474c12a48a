"""The explorer in a real browser (the distribution's headless Chromium, driven by Playwright) on
the ledger of a real cluster run: a gateway, three verifiers, an honest worker and a cheating one
(adversary `alter`), an image task and a text task the cheat answers first and loses. The test
checks what the pages show and saves screenshots under its tmp directory; with
TRUSTGEN_UPDATE_DOCS_SCREENSHOT=1 it also refreshes docs/explorer-task.png."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from tests.helpers import LocalNodes, run_cli
from trustgen.consensus.identity import Identity
from trustgen.consensus.messages import Signed
from trustgen.node.client import make_task, submit

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


async def cluster_run(root: pathlib.Path) -> dict[str, str]:
    nodes = LocalNodes(root)
    try:
        gw = await nodes.start("gateway", ["gateway"])
        for i in range(3):
            await nodes.start(f"verifier-{i}", ["verifier"], gateway=gw.address)
        good = await nodes.start("good", ["worker"], gateway=gw.address)
        bad = await nodes.start("cheat", ["worker"], gateway=gw.address, adversary="alter")
        me = Identity.generate()
        text = text_task_for(me, bad.identity.public_key, good.identity.public_key)
        out = await submit(gw.address, text, me, NET, insecure=True, timeout_s=180)
        assert out["decision"] == "accept" and out["attempts"] == 2, out
        image = make_task(
            me, NET, "image", "tiny-image", {"prompt": "a red circle on a white background", "seed": 5}, 3
        )
        out = await submit(gw.address, image, me, NET, insecure=True, timeout_s=180)
        assert out["decision"] == "accept", out
        return {"text": text.id.hex(), "image": image.id.hex(), "cheat": bad.identity.public_key.hex()}
    finally:
        await nodes.close()


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
    ids = asyncio.run(cluster_run(root))
    gw_dir = root / "gateway"
    assert run_cli("audit", str(gw_dir)).returncode == 0  # writes the verdict the pages show
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
    ]
