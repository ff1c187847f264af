# The few commands people run. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHELL := bash

.PHONY: install install-browser dist test casefold lint reliability bench bench-smoke bench-sweep run run-func azurite validate-infra smoke-azure smoke-local clean

# Ports of the local stack (`make run HOST_PORT=7072 EMULATOR_PORT=8889`).
HOST_PORT ?= 7071
EMULATOR_PORT ?= 8888
AZURITE_BLOB_PORT ?= 10000
AZURITE_QUEUE_PORT ?= 10001
AZURITE_TABLE_PORT ?= 10002
export HOST_PORT EMULATOR_PORT AZURITE_BLOB_PORT AZURITE_QUEUE_PORT AZURITE_TABLE_PORT

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

# Debian's Chromium for the browser test, installed only when missing (needs root or sudo).
install-browser:
	@test -x /usr/bin/chromium || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y chromium; }

# The wheel (and sdist) other Functions apps install: the library and its blueprint, in dist/ (README, "Add to your
# own app").
dist: install
	rm -rf dist
	$(BIN)/python -m build --wheel --sdist --no-isolation --outdir dist .

# Every test, end-to-end ones included, against an Azurite the tests start themselves; then the browser library's
# tests (Node's own runner) against a stack they start themselves.
test: install install-browser
	$(BIN)/python -m pytest
	PYTHON=$(BIN)/python node --test --test-concurrency=1 client/test/*.test.mjs

# The client library's folding data, from the Python the app runs on (tests/infra/test_client_fold.py checks it).
casefold: install
	$(BIN)/python client/scripts/casefold.py

# Fault, storm, fuzz and security tests; their figures become docs/reliability.md.
reliability: install
	rm -f .reliability/figures.json
	$(BIN)/python -m pytest -m reliability
	$(BIN)/python testkit/reliability_page.py .reliability/figures.json docs/reliability.md

# Benchmarks against an Azurite of their own: writes bench/results/latest.md, latest.json and the plots.
bench: install $(VENV)/.bench-installed
	$(BIN)/python -m bench

# A few iterations of every benchmark, written to a temporary directory: checks the bench still works (CI).
bench-smoke: install $(VENV)/.bench-installed
	out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; $(BIN)/python -m bench --smoke --out "$$out"

$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole system locally: Azurite (in memory), the SignalR emulator, the local host and the demo page.
run: install
	@test -f local.settings.json || { cp local.settings.sample.json local.settings.json; echo "created local.settings.json from the sample"; }
	@PYTHON=$(BIN)/python bash local/scripts/run-local.sh

# The same with Azure Functions Core Tools (`func`) instead of the local host.
run-func: install
	@command -v func >/dev/null || { echo "Azure Functions Core Tools (func) is not installed: see README, 'Run it locally'"; exit 1; }
	@test -f local.settings.json || { cp local.settings.sample.json local.settings.json; echo "created local.settings.json from the sample"; }
	@MODE=func PYTHON=$(BIN)/python bash local/scripts/run-local.sh

# Azurite alone, in the foreground (for running `func start` yourself). --skipApiVersionCheck: azure-storage-queue
# speaks a newer API version than Azurite accepts.
azurite: install
	node_modules/.bin/azurite --inMemoryPersistence --disableTelemetry --skipApiVersionCheck

# One sweep's cost at 1k, 10k and 50k live rows: beside the old full-table scan, and, with a SignalR
# connection, the group listing beside per-connection HEAD checks (about ten minutes in all); then the sweep at
# scale (bench/scale.py: 1M listed connections at 30 ms, K = 16 vs 1; 200k index writes and 10k connects, S = 1 vs 8;
# about twenty minutes), merged into latest.md/json.
bench-sweep: install $(VENV)/.bench-installed
	$(BIN)/python -m bench.sweep_scale
	$(BIN)/python -m bench.reconcile_scale
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench --merge-scale

# Offline checks of the Bicep template (pycep-parser and checkov, each in its own venv).
validate-infra:
	bash infra/validate.sh

# After `azd up`: check the deployed app (pass/fail table; exit 1 on any failure). Reads the azd environment's
# outputs; the function key comes from `az`. SMOKE_ACCESS_TOKEN=<token for the app registration> adds the
# SignalR client steps. Keys and tokens are never printed.
smoke-azure: install
	@command -v azd >/dev/null || { echo "smoke-azure: the Azure Developer CLI (azd) is not installed"; exit 2; }
	@env_file=$$(mktemp); trap 'rm -f "$$env_file"' EXIT; \
	  azd env get-values >"$$env_file" || { echo "smoke-azure: azd env get-values failed (run azd up first)"; exit 2; }; \
	  $(BIN)/python local/scripts/smoke.py azure --env-file "$$env_file"

# The same checks against a local stack started with `make run` (Azure-only steps are SKIP).
smoke-local: install
	$(BIN)/python local/scripts/smoke.py local --url http://localhost:$(HOST_PORT)

clean:
	rm -rf dist $(VENV) .venv-infra node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .reliability
