# The few commands people run. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := bash

.PHONY: install test lint bench bench-smoke run azurite validate-infra clean

# Python packages into .venv, Azurite into node_modules; redone only when the pins change.
install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Every test, against an Azurite the tests start themselves.
test: install
	$(BIN)/python -m pytest

# Benchmarks against an Azurite of their own: writes bench/results/latest.md, latest.json and the plots.
bench: install $(VENV)/.bench-installed
	PYTHONPATH=tests $(BIN)/python -m bench

# A few iterations of every benchmark, written to a temporary directory: checks the bench still works (CI).
bench-smoke: install $(VENV)/.bench-installed
	out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; PYTHONPATH=tests $(BIN)/python -m bench --smoke --out "$$out"

$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Run the app locally: Azurite (blob, queue, table; in memory) plus Azure Functions Core Tools (`func`).
run: install
	@command -v func >/dev/null || { echo "Azure Functions Core Tools (func) is not installed: see README, 'Run it locally'"; exit 1; }
	@test -f local.settings.json || { cp local.settings.sample.json local.settings.json; echo "created local.settings.json from the sample"; }
	@node_modules/.bin/azurite --silent --inMemoryPersistence --disableTelemetry & \
	  azurite=$$!; trap 'kill $$azurite 2>/dev/null' EXIT INT TERM; \
	  for _ in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/10002) 2>/dev/null && break; sleep 0.2; done; \
	  . $(BIN)/activate && func start

# Azurite alone, in the foreground (for running `func start` yourself).
azurite: install
	node_modules/.bin/azurite --inMemoryPersistence --disableTelemetry

# Offline checks of the Bicep template (pycep-parser and checkov, each in its own venv).
validate-infra:
	bash infra/validate.sh

clean:
	rm -rf $(VENV) .venv-infra node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
