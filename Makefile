# The few commands people run. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := bash

.PHONY: install install-bench test lint reliability run azurite validate-infra bench-sweep clean

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

install-bench: install
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt

# Every test, against an Azurite the tests start themselves.
test: install
	$(BIN)/python -m pytest

# Fault, storm, fuzz and security tests; their figures become docs/reliability.md.
reliability: install
	rm -f .reliability/figures.json
	$(BIN)/python -m pytest -m reliability
	$(BIN)/python tests/reliability_page.py .reliability/figures.json docs/reliability.md

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

# One sweep's cost at 1k, 10k and 50k live rows, beside the old full-table scan (a few minutes).
bench-sweep: install-bench
	$(BIN)/python -m bench.sweep_scale

# Offline checks of the Bicep template (pycep-parser and checkov, each in its own venv).
validate-infra:
	bash infra/validate.sh

clean:
	rm -rf $(VENV) .venv-infra node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .reliability
