"""Incremental audit and explorer pages on a big ledger.

Builds a gateway's ledger of N entries (tasks accepted, results, three votes, certificates and a
commitment per task, as a running gateway writes them) under a genesis admitting its nodes, as
every `cluster up` and demo network runs (`--open` for an open network), then measures in one run:

- the full audit, and the incremental audit after appending 1 % more entries: the ratio of the
  two (target <= 5 %); the signature cache is cleared before each, so every signature is checked;
- the explorer's pages at N entries (overview, a task, a node, an entry, a search, lists): median
  and p90 server time of each over repeated requests (target <= 200 ms median).

    python bench/bench_explorer.py            # 100,000 entries
    python bench/bench_explorer.py --quick    # 5,000 entries (seconds, for a smoke run)
    python bench/bench_explorer.py --open     # the same without a genesis
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

from trustgen.consensus import identity
from trustgen.consensus.admission import Member, make_genesis
from trustgen.consensus.assignment import effective_verifiers, rank
from trustgen.consensus.audit import audit_ledger
from trustgen.consensus.audit_incremental import INCREMENTAL, audit_incremental
from trustgen.consensus.finality import certify
from trustgen.consensus.identity import Identity
from trustgen.consensus.ledger import Ledger
from trustgen.consensus.messages import sign

NET = "trustgen-bench"
PER_TASK = 7  # commitment, TaskAccepted, ResultCommitted, 3 VoteCast, TaskFinalized


def ident(i: int) -> Identity:
    return Identity.from_seed(i.to_bytes(2, "big") * 16)


class Gateway:
    """Writes tasks into a gateway's ledger the way a running gateway does."""

    def __init__(self, path: pathlib.Path, genesis: bool = True) -> None:
        self.gw, self.client, self.worker = ident(1), ident(2), ident(3)
        self.verifiers = {v.public_key: v for v in (ident(10 + i) for i in range(4))}
        self.led = Ledger(path, NET, self.gw)
        self.n = 0
        if self.led.size() == 0:
            if genesis:
                members = [Member(self.gw.public_key, ("gateway",)), Member(self.worker.public_key, ("worker",))]
                members += [Member(v, ("verifier",)) for v in self.verifiers]
                self.led.append("Genesis", {"genesis": make_genesis(ident(99), NET, members).wire()})
            self.led.append("NodeJoined", {"address": "127.0.0.1:7000", "roles": ["gateway"]})
            for i, v in enumerate([self.worker, *self.verifiers.values()]):
                roles = ["worker"] if v is self.worker else ["verifier"]
                vl = Ledger(path.parent / f"join{i}.db", NET, v)
                e = vl.append("NodeJoined", {"address": f"127.0.0.1:{7001 + i}", "roles": roles})
                vl.close()
                self.led.ingest(e.payload, e.sig)
        self.n = self.led.size()

    def task(self, nonce: int) -> None:
        c = self.led.commit()
        body = {
            "client": self.client.public_key,
            "kind": "text",
            "model": "sha256:" + "ab" * 32,
            "params": {"prompt": f"prompt number {nonce}", "max_new_tokens": 8, "decoding": "greedy"},
            "workers": 1,
            "verifiers": 3,
            "nonce": nonce.to_bytes(8, "big"),
            "expiry": 2_000_000_000_000,
        }
        task = sign(self.client, "Task", NET, body)
        candidates = sorted(self.verifiers)
        self.led.append(
            "TaskAccepted",
            {"task": task.wire(), "beacon": c.body["root"], "beacon_size": c.body["size"], "candidates": candidates},
        )
        result = sign(
            self.worker,
            "Result",
            NET,
            {
                "worker": self.worker.public_key,
                "task_id": task.id,
                "model_digest": body["model"],
                "output_digest": "sha256:" + "cd" * 32,
                "output": {"text": f"output {nonce}", "token_ids": [1, 2, 3]},
                "fingerprint": {},
                "profile": {"device": "cpu"},
            },
        )
        self.led.append("ResultCommitted", {"result": result.wire()})
        chosen = effective_verifiers(rank(c.body["root"], task.id, candidates, self.worker.public_key), [], 3)
        votes = []
        for k in chosen:
            vote = {
                "verifier": k,
                "task_id": task.id,
                "result_id": result.id,
                "accept": True,
                "method": "prefill",
                "distance": 0.0,
                "margin": 1.5,
                "reason": "",
                "fingerprint": {},
                "checks": {},
            }
            votes.append(sign(self.verifiers[k], "Vote", NET, vote))
            self.led.append("VoteCast", {"vote": votes[-1].wire()})
        cert = certify(self.gw, NET, task, c.body["root"], candidates, result, votes)
        self.led.append("TaskFinalized", {"certificate": cert.wire()})

    def grow(self, entries: int) -> None:
        with self.led.batch():
            for _ in range(max(1, entries // PER_TASK)):
                self.task(self.n)
                self.n += PER_TASK


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_audit(path: pathlib.Path, gw: Gateway, extra: int) -> dict:
    identity._VERIFIED.clear()
    full, full_s = timed(lambda: audit_ledger(path))
    assert full.ok, full.violations[:3]
    identity._VERIFIED.clear()
    _, rebuild_s = timed(lambda: audit_incremental(path))  # the first run builds the state
    gw.grow(extra)
    size = gw.led.size()
    identity._VERIFIED.clear()
    inc, inc_s = timed(lambda: audit_incremental(path))
    assert inc.mode == INCREMENTAL and inc.report.ok and inc.report.entries == size
    identity._VERIFIED.clear()
    again, again_full_s = timed(lambda: audit_ledger(path))
    assert again.ok
    return {
        "entries": full.entries,
        "added": inc.new_entries,
        "full_audit_s": round(full_s, 3),
        "first_incremental_s": round(rebuild_s, 3),
        "incremental_s": round(inc_s, 3),
        "full_audit_after_s": round(again_full_s, 3),
        "incremental_over_full": round(inc_s / again_full_s, 4),
    }


def bench_pages(ledger_dir: pathlib.Path, repeat: int) -> dict:
    from starlette.testclient import TestClient

    from trustgen.explorer.app import create_app
    from trustgen.explorer.index import LedgerIndex

    with LedgerIndex(ledger_dir) as ix:
        some_task = ix.db.execute("SELECT task_id FROM tasks ORDER BY rowid DESC LIMIT 1").fetchone()[0].hex()
        gw = ix.db.execute("SELECT feed FROM entries_meta WHERE seq = 1 ORDER BY log_index LIMIT 1").fetchone()[0]
        verifier = ix.db.execute("SELECT verifier FROM votes LIMIT 1").fetchone()[0].hex()
        entry = ix.db.execute("SELECT hash FROM entries_meta ORDER BY log_index DESC LIMIT 1").fetchone()[0].hex()
    pages = {
        "overview": "/",
        "tasks": "/tasks",
        "tasks page 50": "/tasks?page=50",
        "task": f"/task/{some_task}",
        "node (verifier)": f"/node/{verifier}",
        "node (gateway)": f"/node/{gw.hex()}",
        "entry": f"/entry/{entry}",
        "search": f"/search?q={some_task[:16]}",
        "feed": f"/feed/{gw.hex()}",
    }
    app, build_s = timed(lambda: create_app(ledger_dir))
    out: dict = {"index_build_s": round(build_s, 3), "pages": {}}
    with TestClient(app) as client:
        for name, url in pages.items():
            r = client.get(url)
            assert r.status_code == 200, (url, r.status_code, r.text[:300])
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = client.get(url)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
            times.sort()
            out["pages"][name] = {
                "median_ms": round(statistics.median(times) * 1000, 1),
                "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1000, 1),
            }
    out["worst_median_ms"] = max(p["median_ms"] for p in out["pages"].values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="5,000 entries")
    ap.add_argument("--open", action="store_true", help="an open network: no genesis")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = 5_000 if args.quick else args.entries
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tg-bench-explorer-"))
    path = tmp / "gateway" / "ledger.db"
    path.parent.mkdir()
    gw = Gateway(path, genesis=not args.open)
    _, build_s = timed(lambda: gw.grow(n - gw.n))
    res = {"build_s": round(build_s, 1), "audit": bench_audit(path, gw, n // 100)}
    gw.led.close()
    res["explorer"] = bench_pages(path.parent, args.repeat)
    if args.json:
        print(json.dumps(res))
        return
    a, e = res["audit"], res["explorer"]
    under = "an open network" if args.open else "a genesis"
    print(f"ledger of {a['entries']:,} entries under {under} built in {res['build_s']} s")
    print(
        f"full audit {a['full_audit_s']} s; first incremental (builds the state) {a['first_incremental_s']} s; "
        f"+{a['added']} entries ({a['added'] / a['entries']:.1%}): incremental {a['incremental_s']} s vs full "
        f"{a['full_audit_after_s']} s = {a['incremental_over_full']:.2%} (target <= 5 %)"
    )
    print(f"explorer index built in {e['index_build_s']} s")
    for name, p in e["pages"].items():
        print(f"  {name:<18} median {p['median_ms']:>7} ms   p90 {p['p90_ms']:>7} ms")
    print(f"worst page median {e['worst_median_ms']} ms (target <= 200 ms)")


if __name__ == "__main__":
    main()
