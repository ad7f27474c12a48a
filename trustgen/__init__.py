"""trustgen: verifiable generative AI in trustless networks."""

import os

# OpenMP threads that spin while they wait for work make torch many times slower on a loaded
# host (measured: bench/bench_threads.py). libgomp reads this when torch loads, and every entry
# point (the CLI, a node) imports trustgen first; an operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
