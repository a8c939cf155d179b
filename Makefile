# btc — see README.md. `make setup` then `make test`; `make pipeline` runs the notebooks.
# `make test-fast` (< 2 min) skips the tests marked slow in tests/conftest.py; `make test` runs all.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= quick
PYTEST_ARGS ?= --durations=25  # the slowest tests, so a CI log shows where its time goes

.PHONY: setup test test-fast lint pytest pipeline bench clean-results

setup:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"btc needs Python 3.11, found {sys.version.split()[0]} (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name btc --display-name "Python (btc)"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

pytest:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint pytest

test-fast:
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

pipeline:
	$(BIN)/btc pipeline --preset $(PRESET) $(if $(VERBOSE),--verbose)

bench:
	cd benchmarks && ../$(BIN)/python run_all.py

clean-results:
	rm -rf results/01_* results/02_* results/03_* results/04_* results/*.ipynb results/*.json
