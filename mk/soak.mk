# Soak (issue 10, Part 3; not in CI): one engine under mixed load against throttling providers.

SOAK_ARGS ?=

.PHONY: soak
soak: deps ## 30 min of mixed load (SOAK_ARGS=--minutes 3): RSS, fds, queue, latency -> .local/soak/
	$(PY) -m bench.soak $(SOAK_ARGS)
