# Two commands set up a fresh machine: `make demo` runs the gateway, `make test` runs the tests.
# Both may run at once: the virtualenv is built once, under a lock (flock, from util-linux).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install venv-locked demo test lint bench bench-clients bench-redis bench-leases profile mutate clean

# the lock is taken before the venv exists, so it lives beside it; whoever waited on it finds
# the venv already built (the check inside the lock) and leaves it alone
$(BIN)/gateway: pyproject.toml
	@flock $(VENV).lock $(MAKE) --no-print-directory venv-locked

venv-locked:
	@if [ ! -x $(BIN)/gateway ] || [ pyproject.toml -nt $(BIN)/gateway ]; then \
		set -e; \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/pip install --quiet --upgrade pip; \
		$(BIN)/pip install --quiet -e '.[dev]'; \
		touch $(BIN)/gateway; \
	fi

install: $(BIN)/gateway

# GATEWAY_ADMIN_TOKEN: yours if set, else a new random one (32 bytes, hex) printed once here;
# DEMO_FLAGS go to `gateway serve --demo` (e.g. DEMO_FLAGS='--listen 127.0.0.1:8081')
DEMO_FLAGS ?=
demo: install  ## the gateway on the embedded store in front of the bundled demo upstream
	@token="$${GATEWAY_ADMIN_TOKEN:-}"; \
	if [ -z "$$token" ]; then \
		token="$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(32))')"; \
		echo "Admin API token for this run (GATEWAY_ADMIN_TOKEN): $$token"; \
		shown="$$token"; \
	else \
		echo "Admin API token: your GATEWAY_ADMIN_TOKEN"; \
		shown='$$GATEWAY_ADMIN_TOKEN'; \
	fi; \
	echo "The demo account's usage, from the admin API:"; \
	echo "  curl -s -H \"Authorization: Bearer $$shown\" http://127.0.0.1:9090/admin/accounts/1/usage"; \
	GATEWAY_ADMIN_TOKEN="$$token" exec $(BIN)/gateway serve --demo $(DEMO_FLAGS)

test: install  ## the whole suite (starts its own redis-server processes on free ports)
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check gateway tests bench tools
	$(BIN)/ruff format --check gateway tests bench tools
	$(BIN)/mypy

bench: install  ## on demand: throughput and latency against a bare proxy, same run
	$(BIN)/python -m bench.run

profile: install  ## a py-spy flame graph (profile.svg) of one gateway worker on Redis under load
	$(BIN)/python -m bench.profile

bench-clients: install  ## on demand: upstream clients, then proxy-port listeners, each alone
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.upstream_clients
	$(BIN)/python -m bench.listeners

bench-redis: install  ## on demand: consume.lua decisions/s beside INCR and a minimal EVALSHA
	$(BIN)/python -m bench.redis_decisions

bench-leases: install  ## on demand: a leased hot account beside an unlimited caller, 4 workers
	$(BIN)/python -m bench.leases

# MUTATE_CHILDREN: mutants tested at once (the machine is shared: 1 or 2)
MUTATE_CHILDREN ?= 2
mutate: install  ## mutation testing of one module or package: make mutate MODULE=gateway/api/stripe.py
	nice -n 10 $(BIN)/python tools/mutate.py $(MODULE) --max-children $(MUTATE_CHILDREN)

clean:
	rm -rf $(VENV) $(VENV).lock build *.egg-info
