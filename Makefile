# The README's two commands: `make reproduce` (main job) and `make test`.
# Each runs setup first; setup is idempotent and takes seconds once cached.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
OLMP := $(VENV)/bin/olmp
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup data reference reproduce test lint test-fast clean-build

setup:
	@bash scripts/setup.sh

data: setup
	@$(OLMP) data mnist

reference: data
	@bash scripts/train_references.sh

reproduce: data
	@bash scripts/reproduce_lenet300100.sh

test: data
	@$(PY) -m pytest -q tests

lint: setup  # ruff (pyproject's [tool.ruff]) and the type check (pyproject's [tool.mypy] files)
	@$(VENV)/bin/ruff check . && $(VENV)/bin/mypy

clean-build:
	rm -rf $(VENV)
