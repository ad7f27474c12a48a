"""`trustgen audit --follow`: audit again whenever a ledger file changes, incrementally.

A change is seen by polling the sizes and modification times of each ledger's database and WAL
files (a stat each, no SQLite read), so an idle monitor costs next to nothing."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable

from trustgen.consensus.audit import find_ledgers
from trustgen.consensus.audit_incremental import Outcome, audit_paths_incremental

MIN_POLL_S = 0.05


def _stamp(ledgers: list[pathlib.Path]) -> tuple:
    out: list[tuple[int, int] | None] = []
    for p in ledgers:
        for f in (p, pathlib.Path(f"{p}-wal")):
            try:
                st = f.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
    return tuple(out)


def follow(
    paths: list[pathlib.Path], report: Callable[[list[Outcome]], None], stop: threading.Event, poll_s: float = 0.5
) -> None:
    """Audit `paths` now and after every change until `stop` is set; `report` gets each round."""
    poll_s = max(poll_s, MIN_POLL_S)
    seen: tuple | None = None
    while not stop.is_set():
        ledgers = sorted({q for p in paths for q in find_ledgers(p)})
        stamp = _stamp(ledgers)
        if stamp != seen:
            seen = stamp
            report(audit_paths_incremental(paths))
        stop.wait(poll_s)
