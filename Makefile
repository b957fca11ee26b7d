# Every entry point of mailfleet. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.deps-stamp

# Debian packages the tests and benchmarks drive as real peers.
APT_PACKAGES := postfix swaks dnsmasq-base libmail-dkim-perl libnet-dns-perl libcryptx-perl redis-server \
                dante-server prometheus openssl ca-certificates lua5.1

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: apt-deps node-deps $(STAMP) ## install everything the tests need (idempotent)

.PHONY: apt-deps
apt-deps: ## Debian packages (postfix, swaks, dnsmasq, Mail::DKIM, redis, dante, prometheus, lua)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:" $$missing; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@

.PHONY: test
test: deps ## run the whole test suite against real peers
	$(VENV)/bin/pytest tests

# tests/unit: no cluster, no peers (the chart tests run helm, promtool and lua5.1 from make deps).
.PHONY: test-unit
test-unit: $(STAMP) ## the fast loop: tests/unit only, about a minute (UNIT_ARGS=-k NAME, -x ...)
	$(VENV)/bin/pytest -q tests/unit $(UNIT_ARGS)

.PHONY: lint
lint: $(STAMP) ## ruff, mypy and the import-layer contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	hack/lint-imports.sh mypy
	hack/lint-imports.sh contracts

.PHONY: fmt
fmt: $(STAMP) ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

.PHONY: bench
bench: deps ## benchmarks: print figures and ratios against peers (never fail on speed)
	$(PY) -m bench.run $(BENCH_ARGS)

.PHONY: demo
demo: deps ## a local fleet: control plane, operator, examples/local/, ISP simulator, live summary
	$(PY) -m bench.demo $(DEMO_ARGS)

.PHONY: demo-engine
demo-engine: deps ## one engine with examples/mta/local.yaml, a local sink and a DKIM-signed message
	$(PY) -m bench.demo_engine $(DEMO_ARGS)

# Feature fragments (control plane, CRDs, ...) add their targets here.
-include mk/*.mk
