# Development tasks. Every target runs in the virtual environment .venv at the repository root,
# which `make venv` creates and installs from pyproject.toml.
#
#   make venv            create .venv and install the package with all extras (again when pyproject.toml changes)
#   make services        start Kafka (scripts/kafka.sh) and PostgreSQL (scripts/postgres.sh) on 127.0.0.1
#   make services-stop   stop both
#   make test            venv + services, then pytest; the services stay up for faster reruns unless STOP=1
#   make demo            venv + services, then `controlplane demo` (HEADLESS=1 exits when the demo is done)
#   make eval            detector quality report (results/eval.json)
#   make bench           performance report (results/bench.json)
#   make lint            shell syntax of the scripts, and ruff when it is installed
#
# Variables: PYTHON (interpreter that creates .venv, default python3), KAFKA_PORT (default 9092),
# POSTGRES_PORT (default 55432), PYTEST_ARGS (passed to pytest), BENCH_ARGS (passed to the benchmark,
# e.g. "--events 50000 --skip memory"), HEADLESS, STOP.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

KAFKA_PORT ?= 9092
POSTGRES_PORT ?= 55432
export KAFKA_PORT POSTGRES_PORT

PYTEST_ARGS ?=
HEADLESS ?=
STOP ?=

.PHONY: venv services services-stop test demo eval bench lint

venv: $(STAMP)

# The stamp is newer than pyproject.toml once the install succeeded; .ci/run touches it after
# pointing .venv at its cached environment, so CI does not install twice.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[all]"
	@touch $(STAMP)

services:
	scripts/kafka.sh start
	scripts/postgres.sh start

# Both stops run even when the first fails.
services-stop:
	-scripts/kafka.sh stop
	-scripts/postgres.sh stop

test: venv services
	@set +e; \
	CONTROLPLANE_TEST_KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) \
	CONTROLPLANE_TEST_POSTGRES_URL="$$(scripts/postgres.sh url)" \
	$(BIN)/python -m pytest $(PYTEST_ARGS); \
	status=$$?; \
	if [ $$status -eq 5 ]; then \
	  echo "make test: pytest collected no tests (exit 5); check PYTEST_ARGS ('$(PYTEST_ARGS)') and tests/" >&2; \
	fi; \
	if [ "$(STOP)" = 1 ]; then scripts/kafka.sh stop; scripts/postgres.sh stop; fi; \
	exit $$status

# The demo uses the services started here unless CONTROLPLANE_* already point elsewhere.
demo: venv services
	CONTROLPLANE_KAFKA_BOOTSTRAP="$${CONTROLPLANE_KAFKA_BOOTSTRAP:-127.0.0.1:$(KAFKA_PORT)}" \
	$(BIN)/controlplane demo $(if $(filter 1 yes true,$(HEADLESS)),--headless)

eval: venv
	$(BIN)/python -m controlplane.eval

bench: venv services
	CONTROLPLANE_KAFKA_BOOTSTRAP="$${CONTROLPLANE_KAFKA_BOOTSTRAP:-127.0.0.1:$(KAFKA_PORT)}" \
	CONTROLPLANE_BENCH_POSTGRES_URL="$$(scripts/postgres.sh url controlplane)" \
	$(BIN)/python -m controlplane.bench $(BENCH_ARGS)

lint: venv
	bash -n scripts/kafka.sh scripts/postgres.sh .ci/run
	@if $(BIN)/python -m ruff --version >/dev/null 2>&1; then \
	  $(BIN)/python -m ruff check controlplane streams dashboards migrations tests; \
	else \
	  echo "make lint: ruff is not installed in $(VENV), so only shell syntax was checked ($(BIN)/pip install ruff)"; \
	fi
