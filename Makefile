# Flywheel: every target creates the environment from the lock file when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
FLYWHEEL := $(VENV)/bin/flywheel
export PATH := $(abspath $(TOOLS)/bin):$(abspath $(VENV)/bin):$(PATH)

.PHONY: help env test-tools container-tools run test bench compile lint monitor monitor-ui images container-test apiserver bento clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# --compile-bytecode, as the component image does (UV_COMPILE_BYTECODE=1): every kfp.local task is a
# fresh interpreter, and without .pyc files each one compiles its imports from source again.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

env: $(VENV)/.synced  ## Create .venv from uv.lock

# promtool and the Pushgateway for tests/integration/observability (Debian packages); installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-tools:  ## Install promtool (prometheus) and prometheus-pushgateway when missing (apt-get)
	@if command -v promtool >/dev/null && command -v prometheus-pushgateway >/dev/null; then \
	  echo "promtool and prometheus-pushgateway are installed"; \
	else \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus prometheus-pushgateway; \
	fi

# The container tier's packages (k8s/container-tools.sh: buildah podman runc catatonit mmdebstrap
# uidmap iproute2), installed only when missing, then the check that it can run here (the same one
# `make container-test` runs before its first container): one sentence naming what is missing.
container-tools:  ## Install the container tier's tools (apt-get, as root) when missing and check that the tier can run here
	@bash tests/containers/run.sh --check

run: env  ## The whole loop on the embedded default: train, serve, drift, retrain, rollout
	$(FLYWHEEL) run

# Test workers: one per CPU (pytest-xdist); each test file stays on one worker, so a module's
# fixtures (a pipeline run, a server) are built once. Override with `make test TEST_WORKERS=4`.
TEST_WORKERS ?= logical

test: env test-tools  ## All tests (unit, integration, e2e incl. slow), in parallel; lists the 15 slowest
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; exit $$rc

# The scale section's sizes: `make bench BENCH_ONLY=scale SCALE_ROWS=1000000,5000000,10000000` for the issue's.
# SCALE_ONLY=train_at_sizes (a comma-separated list of benchmarks/scale.py row functions) runs a subset.
SCALE_ROWS ?= 200000,500000
SCALE_RETRAIN_ROWS ?= 100000,1000000
bench: env  ## Every benchmark; one table and bench-results/bench.json
	SCALE_ROWS=$(SCALE_ROWS) SCALE_RETRAIN_ROWS=$(SCALE_RETRAIN_ROWS) SCALE_ONLY=$(SCALE_ONLY) $(PY) -m benchmarks

compile: env  ## KFP IR YAML of the training pipeline
	$(FLYWHEEL) compile --output dist/flywheel-training.yaml

lint: env  ## ruff
	$(VENV)/bin/ruff check components pipelines services tests testkit benchmarks

monitor: env  ## One monitoring pass (drift, quality, report, retrain decision)
	$(FLYWHEEL) monitor

monitor-ui: env  ## Evidently UI over the monitoring workspace (http://localhost:8000)
	$(FLYWHEEL) monitor --ui

images:  ## Build the components, serving and monitor images (buildah; tag derived from uv.lock and the sources)
	@bash k8s/images.sh

container-test: env  ## The images run as real containers with the chart's pod specs (podman, own network namespace); the deploy step against a real kube-apiserver
	@bash tests/apiserver/build.sh
	@$(PY) -m pytest tests/apiserver -o addopts= -p no:randomly -p no:xdist -v
	@PY=$(PY) bash tests/containers/run.sh

apiserver:  ## Build once (cached under $K8S120, default /var/tmp/apiserver-1.20) the real kube-apiserver 1.20 of tests/apiserver
	@bash tests/apiserver/build.sh

bento: env  ## Build the serving Bento offline (bentoml build), with its Dockerfile
	$(FLYWHEEL) bento

clean:  ## Remove the local store, pipeline root and environment
	rm -rf .flywheel $(VENV) $(TOOLS) dist bench-results
