"""Ledger throughput: appends/s, ingests/s and audit entries/s on a ledger of N entries.

Durable appends (one fsync'd transaction each) are measured on a small sample; the big ledger
is written in batches. The audit runs with the signature cache cleared, so every signature is
checked. The target is audit >= 10,000 entries/s on 2 cores; its ratio to the raw Ed25519
verification rate measured in this same run shows how close to the floor the audit is.

    python bench/bench_ledger.py [--entries 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import nacl.signing

from trustgen.consensus import identity
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.encoding import parse_signing_bytes
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger

NET = "trustgen-bench"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--durable-sample", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tg-bench-"))
    nodes = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(10)]
    body = {"address": "127.0.0.1:9000", "roles": ["worker", "verifier"]}

    # Durable appends: one transaction (fsync) per entry.
    led = Ledger(tmp / "durable.db", NET, nodes[0])
    t0 = time.perf_counter()
    for _ in range(args.durable_sample):
        led.append("NodeJoined", body)
    durable_rate = args.durable_sample / (time.perf_counter() - t0)
    led.close()

    # Build N entries across 10 feeds, batched.
    per = args.entries // len(nodes)
    sources = []
    t0 = time.perf_counter()
    for i, n in enumerate(nodes):
        src = Ledger(tmp / f"src{i}.db", NET, n)
        with src.batch():
            for _ in range(per):
                src.append("NodeJoined", body)
        sources.append(src)
    batched_rate = per * len(nodes) / (time.perf_counter() - t0)

    # Ingest everything into one node (full validation of each entry), cache cleared.
    identity._VERIFIED.clear()
    dst = Ledger(tmp / "ledger.db", NET, Identity.from_seed(b"\x63" * 32))
    rows = [(p, s) for src in sources for p, s in src.entries(src.identity.public_key, 1, per)]
    t0 = time.perf_counter()
    with dst.batch():
        for p, s in rows:
            dst.ingest(p, s)
    ingest_rate = len(rows) / (time.perf_counter() - t0)
    dst.commit()
    dst.close()

    identity._VERIFIED.clear()
    t0 = time.perf_counter()
    report = audit_ledger(tmp / "ledger.db")
    audit_s = time.perf_counter() - t0
    assert report.ok, report.violations[:3]
    audit_rate = report.entries / audit_s

    # The floor: raw Ed25519 verification of the same payloads, one core.
    sample = [(parse_signing_bytes(p)[3]["feed"], p, s) for p, s in rows[:5000]]
    t0 = time.perf_counter()
    for key, p, s in sample:
        nacl.signing.VerifyKey(key).verify(p, s)
    verify_rate = len(sample) / (time.perf_counter() - t0)

    res = {
        "entries": report.entries,
        "durable_appends_per_s": round(durable_rate),
        "batched_appends_per_s": round(batched_rate),
        "ingests_per_s": round(ingest_rate),
        "audit_entries_per_s": round(audit_rate),
        "raw_verify_per_s": round(verify_rate),
        "audit_over_raw_verify": round(audit_rate / verify_rate, 3),
    }
    if args.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        print(f"{k:<24}{v:>12}")
    print(
        f"audit: {audit_rate:,.0f} entries/s (target >= 10,000) = {audit_rate / verify_rate:.2f}x "
        "the single-core raw signature-verification rate"
    )


if __name__ == "__main__":
    main()
