# livelearn — `make demo` runs the main job on the embedded stack, `make test` runs the checks.
# Both create .venv at the repository root and install what they need (pip's cache keeps
# the downloads; requirements.lock pins the exact versions).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: install lint typecheck unit test test-kafka4 demo bench clean browser promtool compose-config

# uv installs the locked set in about a minute (36 s with its cache warm) where pip took ~4.5
# minutes (the CUDA torch wheels are gigabytes: uv unpacks them in parallel and links them from
# its cache); pip does it where uv cannot.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements.lock uv
	$(VENV)/bin/uv pip install -q -p $(PY) --compile-bytecode -c requirements.lock -e ".[dev]" || \
	  $(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check streams retrieval trainers tests bench
	$(VENV)/bin/ruff format --check streams retrieval trainers tests bench

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q -m "not integration" tests/unit streams retrieval trainers

# The demo's report is rendered by headless Chromium in a test; Debian's package where we may.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1) ; } || \
	  echo "no Chromium: the report render test will skip"

# promtool validates and unit-tests the alerting rules (deploy/prometheus); Debian's prometheus.
promtool:
	@command -v promtool >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus \
	    >/dev/null 2>&1)) ; } || echo "no promtool: the alerting rules' promtool checks will skip"

# `docker compose config` where the compose plugin is installed; elsewhere the same loader
# (compose-spec/compose-go) built with Go from the module proxy into the venv. Capped: a slow
# proxy means the check skips rather than the suite running late.
compose-config: install
	@docker compose version >/dev/null 2>&1 || test -x $(VENV)/bin/compose-config || { \
	  command -v go >/dev/null && (cd deploy/compose-config && \
	    timeout 300 go build -o ../../$(VENV)/bin/compose-config .) ; } || \
	  echo "no docker compose and no Go build: the compose config test will skip"

# Two pytest workers, each with its own session broker; a module's tests stay on one worker
# (its module-scoped broker, cluster, registry or worker is shared by them). The files start
# slowest first (tests/durations.py; --no-loadscope-reorder keeps that order), so the workers
# end together; tests/conftest.py gives every process one torch thread.
test: lint typecheck browser promtool compose-config
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# The same suite with every broker it starts on Kafka 4.4.0 (jars fetched by Maven once).
test-kafka4:
	LIVELEARN_TEST_KAFKA_VERSION=4.4.0 $(MAKE) test

demo: install
	$(VENV)/bin/livelearn demo

bench: install
	$(PY) -m bench train --quick

clean:
	rm -rf $(VENV) .livelearn .pytest_cache .mypy_cache .ruff_cache
