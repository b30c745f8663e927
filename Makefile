# paxoskv — every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv lint test unit run chaos sim bench clean

help:
	@echo "make run     start a local 3-node cluster and run a demo"
	@echo "make test    lint + unit, property, simulation, integration and chaos tests"
	@echo "make lint    ruff + mypy --strict on paxoskv/core"
	@echo "make chaos   chaos test on real processes only"
	@echo "make sim     python -m paxoskv.sim (SEEDS=, OPS=, PAXOSKV_SIM_SEED=)"
	@echo "make bench   benchmark with ratios against a baseline run"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check paxoskv tests e2e
	$(VENV)/bin/mypy --strict paxoskv/core paxoskv/check

test: lint
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

-include e2e/cluster/cluster.mk
-include deploy/deploy.mk
