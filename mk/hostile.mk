# Hostile input and faults (issue 10): longer fuzzing, and the engine's fault table.

FUZZ_EXAMPLES ?= 5000

.PHONY: fuzz
fuzz: deps ## fuzz the SMTP path and parsers longer (FUZZ_EXAMPLES per target, default 5000)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/fuzz -q
