# The two commands the README gives: `make demo` (install + run the main job on the embedded
# default) and `make test` (install + run the tests). Both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev test lint demo bench bundle clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo]"

install-dev: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[demo,training,dev]"

lint: install-dev
	$(BIN)/ruff check broker_plugin training tests benchmarks

test: install-dev
	$(BIN)/ruff check broker_plugin training tests benchmarks
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/bal-broker demo

# The default model bundle (synthetic data, fixed seed): see scripts/build_default_bundle.sh.
bundle: install-dev
	BAL_BROKER=$(BIN)/bal-broker scripts/build_default_bundle.sh

# Throughput, latency and memory (benchmarks/run.py): ~7 minutes, writes benchmarks/results/latest.{json,md}.
# `make bench BENCH_ARGS=--quick` is a ~1 minute smoke run.
BENCH_ARGS ?=
bench: install-dev
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
