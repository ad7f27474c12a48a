"""`trustgen demo`: the main job. Brings a local network up as separate processes, submits a
text and an image task and a short training job, shows outputs, votes, decisions and the
finalised checkpoints, audits every node's ledger, and brings the network down. Succeeds only
when both tasks were accepted by majority, every training round was finalised, and every ledger
audits clean."""

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


async def _run_tasks(gateway: str, out_dir: pathlib.Path) -> list[dict[str, Any]]:
    me = Identity.generate()
    tasks = [
        make_task(me, NETWORK, "text", "tiny-text", TEXT.to_dict()),
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
    console: Console, as_json: bool, workers: int = 3, verifiers: int = 3, keep: pathlib.Path | None = None
) -> bool:
    root = pathlib.Path(keep) if keep else pathlib.Path(tempfile.mkdtemp(prefix="trustgen-demo-"))
    say = (lambda *a, **k: None) if as_json else console.print
    t0 = time.monotonic()
    report: dict[str, Any] = {"dir": str(root)}
    try:
        say(f"[bold]starting[/] a gateway, {workers} workers, {verifiers} verifiers and 2 trainers in {root}")
        ready = cluster.up(root, workers, verifiers, trainers=2)
        report["startup_s"] = round(time.monotonic() - t0, 2)
        say(f"network up in {report['startup_s']}s")
        *results, training = asyncio.run(_run_tasks(ready["gateway"]["address"], root))
        report["tasks"], report["training"] = results, training
        if not as_json:
            for res in results:
                print_task(console, res)
            _print_training(console, training)
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
