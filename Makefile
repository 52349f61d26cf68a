# Two commands set up a fresh machine: `make demo` runs the gateway, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test lint bench bench-clients bench-redis mutate clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/gateway

demo: install  ## the gateway on the embedded store in front of the bundled demo upstream
	$(BIN)/gateway serve --demo

test: install  ## the whole suite (starts its own redis-server processes on free ports)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

bench: install  ## on demand: throughput and latency against a bare proxy, same run
	$(BIN)/python -m bench.run

bench-clients: install  ## on demand: upstream clients, then proxy-port listeners, each alone
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.upstream_clients
	$(BIN)/python -m bench.listeners

bench-redis: install  ## on demand: consume.lua decisions/s beside INCR and a minimal EVALSHA
	$(BIN)/python -m bench.redis_decisions
mutate: install  ## mutation testing of one module or package: make mutate MODULE=gateway/api/stripe.py
	$(BIN)/mutmut run "$(subst /,.,$(basename $(MODULE))).*"
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info
