# Every developer command and CI step lives here; `.ci/run` calls these targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The Node.js client of tests/integration/test_node_client.py (clients/node/README.md).
NODE_CLIENT := clients/node
NODE_STAMP := $(NODE_CLIENT)/node_modules/.installed-stamp
PORT ?= 7070
DATA ?= ./data
SEEDS ?= 50000
NODES ?= 3
PEER_PORT ?= 7170
# Runs a local cluster (see the top of the script for its settings).
CLUSTER := NODES=$(NODES) DATA=$(DATA) CLIENT_PORT=$(PORT) PEER_PORT=$(PEER_PORT) WEIR=$(VENV)/bin/weir deploy/local/weir-cluster

.PHONY: help venv node-client run stop test test-unit test-sim test-integration sim lint typecheck proto proto-check buf-lint wheel-check bench check clean

help:
	@echo "make run [NODES=1] | stop | test | check | lint | typecheck | proto | bench | sim SEEDS=N"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

venv: $(STAMP)

## npm ci from the committed lock, again only when the lock changes; npm's cache
## (--prefer-offline) serves a reinstall. Without npm it says so and goes on:
## tests/integration/test_node_client.py then fails with the same message.
$(NODE_STAMP): $(NODE_CLIENT)/package.json $(NODE_CLIENT)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(NODE_CLIENT) && npm ci --prefer-offline --no-audit --no-fund --silent && touch node_modules/.installed-stamp; \
	else \
		echo "npm not found: install Node.js 20 and npm; tests/integration/test_node_client.py will fail" >&2; \
	fi

node-client: $(NODE_STAMP)

## Start a local three-node cluster: data under ./data/node-1..3, clients on
## 127.0.0.1:7070-7072, peers on 127.0.0.1:7170-7172; Ctrl-C stops all three
## cleanly. `make run NODES=1`: one broker with its data under ./data on 7070.
run: $(STAMP)
ifeq ($(NODES),1)
	$(VENV)/bin/weir serve --data-dir $(DATA) --listen 127.0.0.1:$(PORT)
else
	$(CLUSTER) run
endif

## Stop the nodes of `deploy/local/weir-cluster start` (or of a `make run` that was killed).
stop:
	$(CLUSTER) stop

## Every test: unit + simulation (with coverage of the Raft core), then integration.
test: $(STAMP) $(NODE_STAMP)
	$(PY) -m coverage erase
	$(PY) -m coverage run --branch --include='cluster/raft/*' -m pytest -q tests/unit tests/sim
	$(PY) -m coverage report --show-missing --fail-under=95
	$(PY) -m pytest -q --durations=15 tests/integration

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q tests/integration

## More simulation seeds than CI runs: make sim SEEDS=20000
sim: $(STAMP)
	WEIR_SIM_SEEDS=$(SEEDS) $(PY) -m pytest -q tests/sim

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk server cluster tests bench tools
	$(VENV)/bin/ruff format --check sdk server cluster tests bench tools

## mypy cannot follow setuptools' package-dir mapping, so it checks a tree of
## links laid out as the installed package.
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/weir
	for f in sdk/*; do ln -s "$(CURDIR)/$$f" .typecheck/weir/; done
	ln -s "$(CURDIR)/server" .typecheck/weir/server
	ln -s "$(CURDIR)/cluster" .typecheck/weir/cluster
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p weir

## Regenerate the committed Python stubs from proto/.
proto: $(STAMP)
	$(PY) tools/genproto.py

proto-check: $(STAMP)
	$(PY) tools/genproto.py --check

buf-lint:
	npx --yes @bufbuild/buf@1.75.0 lint proto

wheel-check: $(STAMP)
	bash tools/wheel_check.sh

check: lint typecheck proto-check buf-lint wheel-check

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf .typecheck build dist *.egg-info .coverage
