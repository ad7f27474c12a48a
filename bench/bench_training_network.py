"""Network training, measured against the same job run locally, in one run.

4 trainers and 3 verifiers as separate processes run R local-SGD rounds of the default job;
the same job runs locally with `train run` (4 trainer processes, one coordinator). Figures:

- round overhead: median wall time of a network round / median wall time of a local round
  (rounds after the first: the first includes every process loading its model);
- transfer: protobuf bytes each node received (RPC replies and blob chunks, from its
  trustgen_rpc_bytes_received metric) / the blob bytes it needed (the gateway: every delta;
  a verifier: every delta plus the states of each challenged update; a trainer: nothing but
  its requests' answers), per round;
- joiner: the time to prove and fetch the latest checkpoint from a node's ledger
  (`train fetch`) / the wall time of training the job from scratch locally.

SPSA part: the shipped SPSA job cut to S steps (blocks of eval_every) on 4 trainers and 3
verifiers as separate processes: every node's last finalised digest, the digests against a local
`train run` by the same trainers' keys, `audit` and `train replay` of one verifier's directory,
and the wall time per step on the network / per step locally.

    python bench/bench_training_network.py [--quick] [--part diloco|spsa|both] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trustgen.consensus.identity import Identity  # noqa: E402
from trustgen.consensus.ledger import parse_entry  # noqa: E402
from trustgen.consensus.messages import open_wire  # noqa: E402
from trustgen.node import cluster  # noqa: E402
from trustgen.node.training_client import submit_job  # noqa: E402
from trustgen.node.training_fetch import fetch_checkpoint  # noqa: E402
from trustgen.training import spec as specs  # noqa: E402
from trustgen.training.rounds import Verdict  # noqa: E402
from trustgen.training.run import run_job  # noqa: E402

NET = "trustgen-local"
TRAINERS, VERIFIERS = 4, 3


def job(rounds: int, inner_steps: int | None) -> specs.JobSpec:
    raw = specs.as_table(specs.load(specs.DEFAULT_JOB).data)
    raw.pop("trainers")
    raw["algorithm"]["rounds"] = rounds
    if inner_steps:
        raw["algorithm"]["inner_steps"] = inner_steps
    return specs.from_dict(raw)


def received(ready: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, info in ready.items():
        with urllib.request.urlopen(f"http://127.0.0.1:{info['metrics_port']}/metrics", timeout=10) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines() if x.startswith("trustgen_rpc_bytes_received "))
        out[name] = float(line.split()[1])
    return out


def entries(node_dir: pathlib.Path, kind: str) -> list[Any]:
    db = sqlite3.connect(f"file:{node_dir / 'ledger.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT payload, sig FROM entries WHERE type = ? ORDER BY log_index", (kind,)).fetchall()
    db.close()
    return [parse_entry(p, s, NET) for p, s in rows]


def needed(root: pathlib.Path, state_bytes: int) -> dict[str, int]:
    """Blob bytes each kind of node had to download over the job."""
    gw = root / "gateway"
    ckpt = (gw / "blobs" / entries(gw, "CheckpointFinalized")[-1].body["state"]).stat().st_size
    deltas = sum((gw / "blobs" / e.body["blob"]).stat().st_size for e in entries(gw, "TrainingUpdate"))
    # Every verifier of a round challenges the same steps: count one check per round.
    per_round_states: dict[int, int] = {}
    for e in entries(gw, "UpdateCheck"):
        c = open_wire(e.body["check"], "UpdateCheck", NET)
        r = c.body["round"]
        if r in per_round_states:
            continue
        per_round_states[r] = sum(
            (3 if Verdict.from_list(v).inner > 1 else 2) * state_bytes
            for v in c.body["verdicts"]
            if Verdict.from_list(v).inner
        )
    rounds = len(entries(gw, "CheckpointFinalized"))
    # A trainer computes from the round's checkpoint, which it fetches from round 1 on.
    return {"gateway": deltas, "verifier": deltas + sum(per_round_states.values()), "trainer": (rounds - 1) * ckpt}


def local_run(spec: specs.JobSpec, out: pathlib.Path) -> tuple[list[float], float]:
    marks: list[float] = []
    t0 = time.perf_counter()
    run_job(spec, out, trainers=TRAINERS, progress=lambda done, total, ev: marks.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    return [b - a for a, b in zip(marks, marks[1:])], wall


def network_run(spec: specs.JobSpec, root: pathlib.Path) -> dict[str, Any]:
    ready = cluster.up(root, workers=0, verifiers=VERIFIERS, trainers=TRAINERS)
    try:
        before = received(ready)
        st = asyncio.run(
            submit_job(
                ready["gateway"]["address"],
                spec,
                Identity.generate(),
                True,
                trainers=TRAINERS,
                verifiers=VERIFIERS,
                wait=True,
            )
        )
        after = received(ready)
        replicated = cluster.wait_replicated(root, timeout=60)
        fetch_dir = root / "fetched"
        t0 = time.perf_counter()
        got = asyncio.run(fetch_checkpoint(root / "verifier-1", NET, bytes.fromhex(st["job_id"]), fetch_dir, [], True))
        fetch_s = time.perf_counter() - t0
    finally:
        cluster.down(root)
    return {
        "status": st,
        "bytes": {n: after[n] - before[n] for n in ready},
        "fetch": got,
        "fetch_s": fetch_s,
        "replicated": replicated,
    }


def spsa_job(steps: int, every: int) -> specs.JobSpec:
    raw = specs.as_table(specs.load("spsa").data)
    raw.pop("trainers")
    raw["algorithm"].update({"steps": steps, "eval_every": every})
    return specs.from_dict(raw)


def spsa_part(steps: int, every: int, td: pathlib.Path) -> dict[str, Any]:
    spec, root = spsa_job(steps, every), td / "spsa-net"
    ready = cluster.up(root, workers=0, verifiers=VERIFIERS, trainers=TRAINERS)
    try:
        st = asyncio.run(
            submit_job(
                ready["gateway"]["address"],
                spec,
                Identity.generate(),
                True,
                trainers=TRAINERS,
                verifiers=VERIFIERS,
                wait=True,
            )
        )
        replicated = cluster.wait_replicated(root, timeout=60)
    finally:
        cluster.down(root)
    if st["state"] != "final":
        sys.exit(f"the SPSA network job did not finish: {st['state']} {st['detail']}")
    names = sorted(ready)
    last = {n: entries(root / n, "CheckpointFinalized")[-1] for n in names}
    digests = {
        n: open_wire(e.body["checkpoint"], "TrainingCheckpoint", NET).body["digest"].hex() for n, e in last.items()
    }
    keys = [Identity.load(root / n) for n in names if n.startswith("trainer-")]
    marks: list[float] = []
    t0 = time.perf_counter()
    local = run_job(
        spec, td / "spsa-local", trainer_keys=keys, progress=lambda d, t, ev: marks.append(time.perf_counter())
    )
    local_wall = time.perf_counter() - t0
    cli = [sys.executable, "-m", "trustgen.cli"]
    node = str(root / "verifier-1")
    audit = subprocess.run([*cli, "audit", node, "--json"], capture_output=True, text=True)
    replay = subprocess.run(
        [*cli, "train", "replay", node, "--job", st["job_id"], "--json"], capture_output=True, text=True
    )
    net_step = sum(r["wall_s"] for r in st["rounds_done"]) / steps
    # Mean over the same steps, evaluations included (the network's block wall times include its
    # checkpoint evaluation too); the median skipped the local evaluation steps.
    local_step = (marks[-1] - marks[0]) / (len(marks) - 1)
    return {
        "steps": steps,
        "eval_every": every,
        "same_digest_on_every_node": len(set(digests.values())) == 1,
        "nodes": len(digests),
        "equal_to_local": [e["digest"] for e in local["evals"][1:]] == [r["digest"] for r in st["rounds_done"]],
        "audit_rc": audit.returncode,
        "replay_rc": replay.returncode,
        "network_step_s": net_step,
        "local_step_s": local_step,
        "step_overhead": net_step / local_step,
        "local_wall_s": local_wall,
        "replicated_s": replicated,
        "final_digest": st["rounds_done"][-1]["digest"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 rounds of 4 inner steps, 6 SPSA steps (a smoke run)")
    ap.add_argument("--part", choices=("diloco", "spsa", "both"), default="both")
    ap.add_argument("--json", type=pathlib.Path)
    a = ap.parse_args()
    res: dict[str, Any] = {}
    if a.part in ("diloco", "both"):
        res["diloco"] = diloco_part(a.quick)
    if a.part in ("spsa", "both"):
        steps, every = (6, 3) if a.quick else (100, 25)
        with tempfile.TemporaryDirectory() as td:
            s = res["spsa"] = spsa_part(steps, every, pathlib.Path(td))
        print(
            f"SPSA {s['steps']} steps: same digest on all {s['nodes']} nodes: {s['same_digest_on_every_node']}, "
            f"equal to local: {s['equal_to_local']}, audit rc {s['audit_rc']}, replay rc {s['replay_rc']}"
        )
        print(
            f"SPSA step overhead (network / local): {s['step_overhead']:.2f}x "
            f"({s['network_step_s']:.3f}s vs {s['local_step_s']:.3f}s per step)"
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


def diloco_part(quick: bool) -> dict[str, Any]:
    rounds, inner = (3, 4) if quick else (5, None)
    spec = job(rounds, inner)
    res: dict[str, Any] = {
        "rounds": rounds,
        "inner_steps": spec.algorithm["inner_steps"],
        "trainers": TRAINERS,
        "verifiers": VERIFIERS,
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as td:
        local_rounds, local_wall = local_run(spec, pathlib.Path(td) / "local")
        net = network_run(spec, pathlib.Path(td) / "net")
        st = net["status"]
        if st["state"] != "final":
            sys.exit(f"the network job did not finish: {st['state']} {st['detail']}")
        net_rounds = [r["wall_s"] for r in st["rounds_done"]]
        res["local_round_s"] = local_rounds
        res["network_round_s"] = net_rounds
        res["round_overhead"] = statistics.median(net_rounds[1:]) / statistics.median(local_rounds)
        state_bytes = max(
            p.stat().st_size for p in (pathlib.Path(td) / "net" / "trainer-1" / "blobs").iterdir() if p.is_file()
        )
        need = needed(pathlib.Path(td) / "net", state_bytes)
        res["bytes_per_round"] = {n: b / rounds for n, b in net["bytes"].items()}
        res["transfer_ratio"] = {
            n: (b / need[n.split("-")[0]] if need[n.split("-")[0]] else None) for n, b in net["bytes"].items()
        }
        res["needed_per_round"] = {k: v / rounds for k, v in need.items()}
        res["joiner_fetch_s"] = net["fetch_s"]
        res["local_training_wall_s"] = local_wall
        res["joiner_ratio"] = net["fetch_s"] / local_wall
        res["final_digest"] = st["best"]["digest"]
        res["excluded"] = st["excluded"]
        res["accepted_per_round"] = [len(r["accepted"]) for r in st["rounds_done"]]
        res["replicated_s"] = net["replicated"]
    print(f"round overhead (network / local, median of rounds 2..{rounds}): {res['round_overhead']:.2f}x")
    for n, r in sorted(res["transfer_ratio"].items()):
        per = res["bytes_per_round"][n]
        print(f"  {n:<11} received {per / 1e6:7.2f} MB/round" + (f" = {r:.3f}x what it needed" if r else ""))
    print(f"joiner: proof + fetch {res['joiner_fetch_s']:.1f}s = {res['joiner_ratio']:.3f}x training from scratch")
    return res


if __name__ == "__main__":
    main()
