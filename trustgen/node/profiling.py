"""Opt-in CPU profile of a node process, for finding where a task's CPU goes (bench/bench_network.py
--profile). Off unless TRUSTGEN_PROFILE_DIR is set in the node's environment.

cProfile sees one thread, and a node's work is spread over the event loop, the engine thread and
asyncio's worker threads, so every thread started after `install` gets a profiler of its own from
its start (threading.setprofile), and a dump merges them. The clock is the thread's CPU time, not
the wall clock: time blocked in epoll, a queue or an fsync is not work, and on a loaded machine
the wall clock mostly measures other processes. SIGUSR1 clears every profiler (the start of the
window to measure, after warm-up), SIGUSR2 writes the merged profile to DIR/<pid>.prof.
"""

from __future__ import annotations

import cProfile
import os
import pathlib
import pstats
import signal
import sys
import threading
import time
from typing import Any

ENV = "TRUSTGEN_PROFILE_DIR"
_profilers: list[cProfile.Profile] = []
# The main thread's, enabled by the first SIGUSR1 only: it loads the models, which under a
# profiler took longer than a cluster waits for a node to start.
_main = cProfile.Profile(time.thread_time)
_lock = threading.Lock()


class _Snapshot:
    """A profiler's stats so far, without disabling it (pstats.Stats.add would)."""

    def __init__(self, prof: cProfile.Profile) -> None:
        prof.snapshot_stats()
        self.stats = prof.stats  # type: ignore[attr-defined]

    def create_stats(self) -> None:
        pass


def _start_thread_profile(*_: Any) -> None:
    """The first profile event of a new thread: give the thread its own profiler (enabling it
    replaces this hook in that thread)."""
    prof = cProfile.Profile(time.thread_time)
    with _lock:
        _profilers.append(prof)
    prof.enable()


def _clear(*_: Any) -> None:
    with _lock:
        for prof in _profilers:
            prof.clear()
        _main.enable()  # signal handlers run on the main thread: its profiler starts here


def dump(directory: pathlib.Path) -> pathlib.Path:
    """Write every thread's profile, merged, to DIR/<pid>.prof (atomically: readers wait for it)."""
    with _lock:
        snaps = [s for s in (_Snapshot(p) for p in _profilers) if s.stats]  # threads idle since the clear
    stats = pstats.Stats()
    for s in snaps:
        stats.add(s)  # type: ignore[arg-type]  # pstats duck-types: create_stats() and .stats
    path = directory / f"{os.getpid()}.prof"
    tmp = path.with_suffix(".tmp")
    stats.dump_stats(tmp)
    os.replace(tmp, path)
    return path


def install() -> bool:
    """Profile this process if TRUSTGEN_PROFILE_DIR is set; call on the main thread, before the
    node starts its threads. True when installed."""
    where = os.environ.get(ENV)
    if not where:
        return False
    directory = pathlib.Path(where)
    directory.mkdir(parents=True, exist_ok=True)
    threading.setprofile(_start_thread_profile)
    with _lock:
        _profilers.append(_main)
    signal.signal(signal.SIGUSR1, _clear)
    signal.signal(signal.SIGUSR2, lambda *_: dump(directory))
    print(f"profiling into {directory} (SIGUSR1 clears, SIGUSR2 dumps)", file=sys.stderr)
    return True
