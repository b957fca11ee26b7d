# Hostile input and faults (issue 10): longer fuzzing, and the engine's fault table.

FUZZ_EXAMPLES ?= 5000

.PHONY: fuzz
fuzz: deps ## fuzz the SMTP path and parsers longer (FUZZ_EXAMPLES per target, default 5000)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/fuzz -q

RELIABILITY_ARGS ?=

.PHONY: reliability
reliability: deps ## engine faults under traffic: one row per fault, accepted N delivered N lost N
	$(PY) -m bench.reliability $(RELIABILITY_ARGS)

.PHONY: reliability-cluster
reliability-cluster: deps ## cluster faults (API server restart, operator kill mid-drain, pod delete) on the local node
	$(PY) -m bench.reliability --only api-restart operator-kill pod-delete $(RELIABILITY_ARGS)
