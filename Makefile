# `make demo` and `make test` work on a fresh machine with only python3 (3.11+), git and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-nightly bench lint format warmup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml kernels/pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./kernels -e '.[test,dask,bench,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m backend_fab.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-nightly: $(STAMP)
	HYPOTHESIS_PROFILE=nightly $(PY) -m pytest -q -m "nightly or not nightly"

bench: $(STAMP)
	$(PY) -m pytest -q -m benchmark benchmarks

lint: $(STAMP)
	$(PY) -m ruff check src kernels tests benchmarks
	$(PY) -m ruff format --check src kernels tests benchmarks

format: $(STAMP)
	$(PY) -m ruff format src kernels tests benchmarks
	$(PY) -m ruff check --fix src kernels tests benchmarks

warmup: $(STAMP)
	$(PY) -m backend_fab.cli warmup

clean:
	rm -rf $(VENV) fab-lake fab-report .pytest_cache
