# paxoskv — every target installs what it needs (into .venv, or cached tool dirs) first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Test files run on this many worker processes at once in make test (pytest-xdist; 0: one
# process, as before). Two cover this project's 2-core machines.
PYTEST_JOBS ?= 2
PYTEST_TEST_ARGS = -q -m "not slow" -n $(PYTEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)
BENCH_COMPARE_ARGS ?=
BENCH_MEMORY_ARGS ?=
BENCH_SCALE_ARGS ?=
BENCH_GC_ARGS ?=
AUDIT_ARGS ?=
SEEDS  ?= 1000
OPS    ?= 500

.DEFAULT_GOAL := help
.PHONY: help venv lint test unit run demo chaos sim bench bench-compare profile \
	bench-storage bench-memory bench-scale bench-fast bench-gc clean e2e e2e-tests lock audit

help:
	@echo "make run     install, start a local 3-node cluster and run a demo (Ctrl-C stops it)"
	@echo "make test    lint, chart checks, unit/property/simulation/integration/chaos tests"
	@echo "make lint    ruff + mypy --strict + make audit"
	@echo "make audit   constraints.txt pins against PyPI's vulnerability data (AUDIT_ARGS=--strict"
	@echo "             fails when PyPI is unreachable; otherwise that is only a warning)"
	@echo "make lock    re-pin constraints.txt (the runtime versions the image and venv use)"
	@echo "make chaos   only the chaos tests on real processes"
	@echo "make sim     python -m paxoskv.sim --seeds \$$SEEDS --ops \$$OPS"
	@echo "make bench   benchmark, with ratios against a baseline run in the same invocation"
	@echo "make bench-fast  --fast-paxos on (forwarding off) vs the default, many clients on"
	@echo "             all nodes writing keys of their own (~25 s; BENCH_FAST_ARGS='--seconds 20')"
	@echo "make bench-compare  3 etcd members vs 3 paxoskv nodes, same wrk workloads (~7 min;"
	@echo "             installs etcd-server and wrk from Debian; table + reports/bench-compare.json)"
	@echo "make profile py-spy on each node under a wrk load; top functions (PROFILE_ARGS)"
	@echo "make bench-storage  group commit, SQLite vs LMDB, fsync on (~1 min; docs/storage.md)"
	@echo "make bench-memory   RSS of 3 nodes holding 10^6 keys of 1 KiB (~5 min, ~5 GB of disk;"
	@echo "             BENCH_MEMORY_ARGS='--keys 100000' for a smaller run)"
	@echo "make bench-scale    req/s, p99, CPU per op, RSS and disk per key as keys (10^4..10^6),"
	@echo "             values (100 B..100 KB), nodes (3, 5) and acceptor groups (3 nodes, 6 with"
	@echo "             R=3, 6) grow (~8-14 min, ~3.5 GB of disk; installs wrk; table +"
	@echo "             reports/bench-scale.json; BENCH_SCALE_ARGS='--max-keys 100000' or"
	@echo "             '--axes groups' for less)"
	@echo "make bench-gc  10^5 keys written and deleted on 3 nodes: data dir and RSS empty, full"
	@echo "             and after tombstone collection (~40 min on 2 busy cores; table +"
	@echo "             reports/bench-gc.json; BENCH_GC_ARGS='--keys 10000' for less)"
	@echo "make image / chart-check / cluster-up / e2e: see README"

# Python 3.11+ is required; python3-venv comes from Debian where the interpreter lacks it.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "paxoskv needs Python 3.11+"'
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

# Re-pin constraints.txt to the newest releases that satisfy pyproject.toml (then run the tests).
lock:
	rm -rf build/lock-venv && mkdir -p build
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --upgrade pip
	build/lock-venv/bin/pip install -q '.[k8s]'
	sed -n '/^#/p' constraints.txt > build/constraints.new
	build/lock-venv/bin/pip freeze --exclude paxoskv >> build/constraints.new
	mv build/constraints.new constraints.txt
	rm -rf build/lock-venv
	@echo "constraints.txt re-pinned; now run make test and make e2e"

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check paxoskv tests e2e deploy/scripts
	$(VENV)/bin/mypy --strict paxoskv deploy/scripts/audit_deps.py
	@$(MAKE) --no-print-directory audit

# Known vulnerabilities of the pinned versions (pip-audit's PyPI source cannot work here: see
# the script's docstring). Unreachable PyPI only warns, unless AUDIT_ARGS=--strict.
audit:
	$(PYTHON) deploy/scripts/audit_deps.py --constraints constraints.txt $(AUDIT_ARGS)

# promtool's cold build is long: make test uses it only when already cached (see deploy.mk)
# Byte-compiled once here: the tests start hundreds of node and CLI processes, and where
# PYTHONDONTWRITEBYTECODE is set each would compile every module again (0.3 s of CPU apiece).
# Lint (half a minute, mostly mypy) runs beside the tests; its output follows theirs, and
# either failing fails make test.
test: $(STAMP)
	$(MAKE) --no-print-directory chart-check PAXOSKV_PROMTOOL=0
	$(PY) -m compileall -q paxoskv
	@mkdir -p build; $(MAKE) --no-print-directory lint > build/lint.log 2>&1 & lint=$$!; \
	status=0; \
	echo '$(PY) -m pytest $(PYTEST_TEST_ARGS) tests  (lint runs beside it)'; \
	$(PY) -m pytest $(PYTEST_TEST_ARGS) tests || status=$$?; \
	if wait $$lint; then echo "== lint: passed"; else echo "== lint: FAILED"; status=1; fi; \
	cat build/lint.log; exit $$status

unit: $(STAMP)
	$(PY) -m pytest -q tests/core tests/check tests/storage tests/transport tests/api

run: $(STAMP)
	$(VENV)/bin/paxoskv local-cluster --nodes 3 --base-port 7000 --data-dir data/local-cluster --demo

demo: $(STAMP)
	$(VENV)/bin/paxoskv local-cluster --nodes 3 --base-port 7000 --data-dir data/local-cluster --exit-after-demo

chaos: $(STAMP)
	$(PY) -m pytest -q -m chaos $(PYTEST_ARGS) tests/chaos

sim: $(STAMP)
	$(PY) -m paxoskv.sim --seeds $(SEEDS) --ops $(OPS)

bench: $(STAMP)
	$(PY) -m paxoskv.bench

# etcd 3.4 and wrk come from Debian by package name when missing (run as root).
bench-fast: $(STAMP)
	$(PY) -m paxoskv.bench_fast $(BENCH_FAST_ARGS)

bench-compare: $(STAMP)
	@command -v etcd >/dev/null && command -v wrk >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server wrk)
	$(PY) -m paxoskv.bench_compare $(BENCH_COMPARE_ARGS)

# py-spy (a dev dependency) samples every node while wrk drives node 1 (run as root).
PROFILE_ARGS ?=
profile: $(STAMP)
	@command -v wrk >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m paxoskv.bench_profile $(PROFILE_ARGS)

# lmdb is only needed here (the [bench] extra), so it is installed on first use.
bench-storage: $(STAMP)
	@$(PY) -c 'import lmdb' 2>/dev/null || $(PIP) install -q -e '.[bench]'
	$(PY) -m paxoskv.bench_storage

bench-memory: $(STAMP)
	$(PY) -m paxoskv.bench_memory $(BENCH_MEMORY_ARGS)

bench-gc: $(STAMP)
	$(PY) -m paxoskv.bench_gc $(BENCH_GC_ARGS)

# wrk comes from Debian by package name when missing (run as root).
bench-scale: $(STAMP)
	@command -v wrk >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) -m paxoskv.bench_scale $(BENCH_SCALE_ARGS)

# End to end on a real cluster: image, cluster, load, the ten steps, teardown.
# E2E_KEEP_CLUSTER=1 leaves the cluster up afterwards.
e2e: $(STAMP)
	@set -e; started=$$(date +%s); \
	$(MAKE) --no-print-directory image; \
	$(MAKE) --no-print-directory chart-tools PAXOSKV_PROMTOOL=1; \
	$(MAKE) --no-print-directory cluster-up; \
	rc=0; \
	$(MAKE) --no-print-directory cluster-load IMAGE=$(IMAGE) && \
	$(MAKE) --no-print-directory e2e-tests || rc=$$?; \
	if [ "$(E2E_KEEP_CLUSTER)" != 1 ]; then $(MAKE) --no-print-directory cluster-down || true; fi; \
	echo "e2e: finished in $$(( $$(date +%s) - started )) s with status $$rc"; exit $$rc

e2e-tests: $(STAMP)
	KUBECONFIG_E2E=$(KUBECONFIG_E2E) PAXOSKV_E2E_IMAGE=$(IMAGE) \
	  $(PY) -m pytest -v -s -p no:cacheprovider e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data reports

-include e2e/cluster/cluster.mk
-include deploy/deploy.mk
