# Two entry points for a fresh machine: `make demo` (install + main job) and `make test`.
PY ?= python3
PIP = $(PY) -m pip
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: install demo test bench protos

# torch first, pinned to the CPU build; the project's range accepts it and installs nothing more.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'

demo: install
	$(PY) -m trustgen.cli demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

# Regenerate trustgen/rpc from proto/ (the test suite fails when they drift apart).
protos:
	$(PY) scripts/gen_protos.py
