"""Sybil resistance of verifier assignment: how many identities an attacker needs to hold a
majority of a task's k verifiers, checked in trials of the gateway's own selection code.

For k = 3, 5, 7 and a pool of honest genesis verifiers (each its own group), attackers just
below the bound (consensus/sybil.py `needed_for_majority`) must capture no task at all; the
attacker at the bound shows the bound is tight (it can capture some). Prints one JSON line per
case: trials, captured tasks, most seats held, the bound's seat limit, and the capture ratio.

    python bench/bench_trust.py            # 2,000 trials per case
    python bench/bench_trust.py --quick    # 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from trustgen.consensus.sybil import AttackerGroup, max_seats, needed_for_majority, run_trials


def cases(k: int) -> list[tuple[str, list[AttackerGroup], bool]]:
    """(name, attacker, must never capture)."""
    need, graduated = needed_for_majority(k)
    below = [
        ("1 action, 50 graduated identities", [AttackerGroup(50, 0)], True),
        (
            f"{need - 1} actions of 10 graduated identities",
            [AttackerGroup(10, 0) for _ in range(need - 1)],
            True,
        ),
        (
            f"{graduated - 1} graduated actions + {k} probationary actions of 10",
            [AttackerGroup(1, 0) for _ in range(graduated - 1)] + [AttackerGroup(0, 10) for _ in range(k)],
            True,
        ),
    ]
    at = [AttackerGroup(1, 0) for _ in range(graduated)] + [AttackerGroup(0, 1)]
    return below + [(f"at the bound: {graduated} graduated + 1 probationary action", at, False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 trials per case instead of 2,000")
    ap.add_argument("--honest", type=int, default=9, help="honest genesis verifiers in the pool")
    args = ap.parse_args()
    trials = 200 if args.quick else 2000
    ok = True
    t0 = time.perf_counter()
    total = 0
    for k in (3, 5, 7):
        need, graduated = needed_for_majority(k)
        for name, attacker, never in cases(k):
            t = run_trials(args.honest, attacker, k, trials, seed=k)
            total += trials
            held = t.captured == 0 if never else True
            ok = ok and held and t.most_seats <= max_seats(attacker, k)
            print(
                json.dumps(
                    {
                        "k": k,
                        "needed": f"{need} separately admitted identities, {graduated} off probation",
                        "attacker": name,
                        "identities": sum(g.graduated + g.probationary for g in attacker),
                        "trials": t.trials,
                        "captured": t.captured,
                        "capture_ratio": round(t.captured / t.trials, 4),
                        "most_seats": t.most_seats,
                        "seat_bound": max_seats(attacker, k),
                        "holds": held,
                    }
                )
            )
    print(json.dumps({"trials": total, "seconds": round(time.perf_counter() - t0, 2), "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
