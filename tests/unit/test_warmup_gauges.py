"""The operator's warmup gauges follow each warmup's status (phase, day, cap) and drop the phase
it left, so an alert on a phase held for a day sees only the phase the warmup is in now."""

from __future__ import annotations

from mailfleet.operator.metrics import OperatorMetrics


def test_warmup_gauges_follow_the_status_and_drop_the_phase_it_left() -> None:
    m = OperatorMetrics()

    def sample(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    base = {"warmup_namespace": "mail", "warmup": "w", "pool": "p"}
    m.set_warmup("mail", "w", "p", {"phase": "Warming", "day": 3, "todayCap": 500})
    assert sample("mailfleet_warmup_phase", **base, phase="Warming") == 1
    assert sample("mailfleet_warmup_day", **base, kind="day") == 3
    assert sample("mailfleet_warmup_day", **base, kind="cap") == 500
    m.set_warmup("mail", "w", "p", {"phase": "Holding", "day": 3, "todayCap": 500})
    assert sample("mailfleet_warmup_phase", **base, phase="Warming") is None
    assert sample("mailfleet_warmup_phase", **base, phase="Holding") == 1
    m.forget_warmup("mail", "w")
    assert sample("mailfleet_warmup_phase", **base, phase="Holding") is None
    assert sample("mailfleet_warmup_day", **base, kind="day") is None
