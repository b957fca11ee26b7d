"""Hypothesis profiles for the fuzz tests: "ci" (the default, bounded, part of `make test`) and
"fuzz" (`make fuzz`, or HYPOTHESIS_PROFILE=fuzz): many more examples."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {
    "deadline": None,  # a shared 2-core machine: no per-example time limit
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    "derandomize": False,
}
settings.register_profile("ci", max_examples=150, **_common)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")), **_common
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
