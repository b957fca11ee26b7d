"""Warmup days gated on the day's health and use: advance, hold, step back, complete, and the
events and status an SRE sees for each."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fixtures.objects import NOW, pool, warmup

from mailfleet.operator.api.conditions import timestamp
from mailfleet.operator.api.crd_models import WarmupGates
from mailfleet.operator.decide import ipplan, statuses
from mailfleet.operator.decide import warmup as wu
from mailfleet.operator.decide.health import Counts

HOUR = timedelta(hours=1)
GATES = WarmupGates(min_attempts=20, min_usage=0.5)


def test_a_day_under_every_gate_and_mostly_used_advances() -> None:
    today = {"gmail": Counts(60, 58, 1, 1), "*": Counts(60, 58, 1, 1)}
    assert wu.gate_verdict(GATES, today, 100).advance


@pytest.mark.parametrize(
    ("today", "words"),
    [
        ({"gmail": Counts(50, 45, 0, 5), "*": Counts(50, 45, 0, 5)}, "gmail bounce rate 0.100"),
        ({"yahoo": Counts(50, 30, 20, 0), "*": Counts(50, 30, 20, 0)}, "yahoo deferral rate"),
        ({"gmail": Counts(60, 60, 0, 0, 1), "*": Counts(60, 60, 0, 0, 1)}, "complaint rate"),
        ({"gmail": Counts(30, 30), "*": Counts(30, 30)}, "30 of the day's cap of 100"),
        ({}, "0 of the day's cap"),
    ],
)
def test_a_failed_gate_or_an_unused_cap_does_not_advance(
    today: dict[str, Counts], words: str
) -> None:
    v = wu.gate_verdict(GATES, today, 100)
    assert not v.advance and words in v.reason


def test_few_attempts_are_not_judged_on_rates() -> None:
    today = {"gmail": Counts(10, 5, 0, 5), "outlook": Counts(60, 60), "*": Counts(70, 65, 0, 5)}
    assert wu.gate_verdict(GATES, today, 100).advance


def test_clock_holds_steps_back_or_advances_at_the_end_of_a_day() -> None:
    start = NOW - 25 * HOUR
    fail = wu.DayVerdict(False, "gmail bounce rate")
    day = timedelta(hours=24).total_seconds()
    held = wu.warmup_clock(3, start, None, NOW, day, 10, True, fail)
    assert (held.day, held.outcome, held.last_advance) == (3, "held", start + 24 * HOUR)
    back = wu.warmup_clock(3, start, None, NOW, day, 10, True, fail, step_back=True)
    assert (back.day, back.outcome) == (2, "steppedBack")
    first = wu.warmup_clock(1, start, None, NOW, day, 10, True, fail, step_back=True)
    assert (first.day, first.outcome) == (1, "held")
    on = wu.warmup_clock(3, start, None, NOW, day, 10, True, wu.ADVANCE)
    assert (on.day, on.outcome) == (4, "advanced")
    done = wu.warmup_clock(10, start, None, NOW, day, 10, True, wu.ADVANCE)
    assert done.complete and done.outcome == "complete"
    failed_last = wu.warmup_clock(10, start, None, NOW, day, 10, True, fail)
    assert not failed_last.complete and failed_last.outcome == "held"
    mid = wu.warmup_clock(3, NOW - HOUR, None, NOW, day, 10, True, fail)
    assert mid.outcome is None and mid.day == 3


def a_warmup(day: int, today: dict[str, Counts] | None, phase: str = "Warming", **spec: Any) -> Any:
    began = NOW - 25 * HOUR
    status: dict[str, Any] = {
        "phase": phase,
        "day": day,
        "startTime": timestamp(began - 24 * HOUR),
        "lastAdvanceTime": timestamp(began),
    }
    if today is not None:
        status["today"] = {
            "since": timestamp(began),
            "providers": {p: c.as_dict() for p, c in today.items()},
        }
    return warmup(status=status, schedule={"days": [50, 100, 250, 500]}, **spec)


def test_status_and_events_for_each_outcome() -> None:
    good = {"gmail": Counts(80, 80), "*": Counts(80, 80)}
    bad = {"gmail": Counts(80, 60, 0, 20), "*": Counts(80, 60, 0, 20)}
    cases = [
        (a_warmup(2, good), 3, "Warming", "WarmupAdvanced"),
        (a_warmup(2, bad), 2, "Holding", "WarmupHeld"),
        (a_warmup(2, None), 2, "Holding", "WarmupHeld"),  # nothing sent: an unused cap
        (a_warmup(2, bad, gates={"onFail": "stepBack"}), 1, "Holding", "WarmupSteppedBack"),
        (a_warmup(4, {"*": Counts(400, 400)}), 4, "Complete", "WarmupComplete"),
        (a_warmup(2, good, phase="Holding"), 3, "Warming", "WarmupAdvanced"),
    ]
    for w, day, phase, event in cases:
        old = w.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        new = statuses.warmup_status(w, pool(), NOW)
        assert (new["day"], new["phase"]) == (day, phase), event
        events = statuses.warmup_events(old, new)
        assert [e.reason for e in events] == [event]
        assert new["lastVerdict"] in events[0].message


def test_holding_lasts_until_the_next_day_ends() -> None:
    w = a_warmup(2, None, phase="Holding")
    # Moved the day start one day on: mid-day now, nothing decided, still Holding.
    status = w.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["lastAdvanceTime"] = timestamp(NOW - HOUR)
    w2 = warmup(status=status, schedule={"days": [50, 100, 250, 500]})
    assert ipplan.warmup_phase(w2, pool(), NOW) == "Holding"
    assert statuses.warmup_events(status, statuses.warmup_status(w2, pool(), NOW)) == []


def test_day_figures_accumulate_and_a_new_day_starts_from_zero() -> None:
    w = a_warmup(2, {"gmail": Counts(10, 10), "*": Counts(10, 10)})
    addr = str(w.spec.addresses[0])
    today = statuses.warmup_today(w, {(addr, "gmail"): Counts(5, 4, 1), ("other", "x"): Counts(9)})
    assert today is not None
    assert today["providers"]["gmail"]["attempts"] == 15
    assert today["providers"]["*"]["deferred"] == 1
    assert statuses.warmup_today(w, {("other", "x"): Counts(9)}) is None
    # The status's figures belong to another day: dropped (null in the merge patch).
    status = w.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    status["lastAdvanceTime"] = timestamp(NOW)
    w2 = warmup(status=status, schedule={"days": [50, 100, 250, 500]})
    fresh = statuses.warmup_today(w2, {(addr, "yahoo"): Counts(2, 2)})
    assert fresh is not None
    assert fresh["providers"] == {"*": Counts(2, 2).as_dict(), "yahoo": Counts(2, 2).as_dict(),
                                  "gmail": None}  # fmt: skip
