# The README's two commands:
#   make run    set everything up and run the server (demo responder when no webhook is set)
#   make test   set everything up and run every check and test
# Everything is installed into .venv: first the locked dependencies (requirements.lock, or
# requirements-test.lock with the test tools), then InkFlow itself with `pip install --no-deps .`
# (a real, non-editable install: twistd only finds the plugin that way).
#
# After adding or changing a dependency in setup.py: `make lock` rewrites both lock files with
# pip-tools (installed by the target itself), keeping the versions already locked where they still
# fit; `make lock UPGRADE=1` moves every dependency to the newest release its range allows.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
UPGRADE ?=

LOCK      := requirements.lock
TEST_LOCK := requirements-test.lock
PIP_TOOLS := pip-tools>=7.4,<8
COMPILE    = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras --allow-unsafe $(if $(UPGRADE),--upgrade)

.PHONY: run test test-slow test-n8n install install-test lock lint unit e2e bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

# Reinstall every time: the tests must run the code as installed.  `pip check` fails when
# setup.py asks for something the lock file lacks (then: make lock).
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --upgrade --force-reinstall --no-deps .
	$(BIN)/python -m pip check
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -r $(TEST_LOCK)
	$(BIN)/python -m pip install --quiet --upgrade --force-reinstall --no-deps .
	$(BIN)/python -m pip check
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	sh scripts/install-system-deps.sh browser haproxy redis
	sh scripts/install-n8n-chat.sh

lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(PIP_TOOLS)"
	$(COMPILE) --output-file $(LOCK) setup.py
	$(COMPILE) --extra test --output-file $(TEST_LOCK) setup.py

# The checkout's static/ (with the @n8n/chat example's widget, fetched here when npm is at hand).
run: install
	-sh scripts/install-n8n-chat.sh
	$(BIN)/twistd -n --pidfile= inkflow --static-dir static $(ARGS)

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Unit tests are reactor-free: they run under trial and under pytest.
unit:
	$(BIN)/python -m twisted.trial tests.unit
	$(BIN)/python -m pytest -q tests/unit
	node --test tests/js/

# End-to-end tests start real processes on loopback ports: their own runner invocation.
e2e:
	$(BIN)/python -m pytest -q tests/e2e

test: install-test lint unit e2e

# The slow resilience suites (slowloris, slow body, overload; ~1 minute): CI runs them after `make test`.
test-slow: install-test
	sh scripts/install-system-deps.sh load-tools
	INKFLOW_SLOW_TESTS=1 $(BIN)/python -m pytest -q tests/slow

# Opt-in: against a real n8n installed from the npm registry into .n8n/<version>/: 2.41.3 by default
# (with its own Node 24; ~3.1 GB, about 6 minutes the first time), or N8N_VERSION=2.8.4 (Node 20;
# ~2.3 GB, 5-12 minutes); see docs/n8n.md.
N8N_VERSION ?= 2.41.3
test-n8n: install-test
	N8N_VERSION=$(N8N_VERSION) scripts/n8n/install.sh .n8n/$(N8N_VERSION)
	INKFLOW_N8N_DIR=.n8n/$(N8N_VERSION) $(BIN)/python -m pytest -q -m n8n tests/n8n

bench: install
	sh scripts/install-system-deps.sh load-tools
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info _trial_temp .mypy_cache .ruff_cache .pytest_cache test-artifacts
