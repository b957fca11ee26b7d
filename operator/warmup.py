"""Warmup schedules: how many messages an IP may send on a given warmup day, and when the day
advances.

Pure functions with `now` passed in. The day advances by the clock, one day per
`schedule.dayLength` of warming; health gates (hold, backoff) build on this later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mailfleet.operator.crd_models import WarmupPreset, WarmupSchedule


# Messages per IP per day. The last value is the cap from that day on (the warmup is complete
# when an IP has spent a full day at it).
def _days(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split())


PRESETS: dict[WarmupPreset, tuple[int, ...]] = {
    "conservative": _days(
        "20 50 100 200 400 750 1000 1500 2000 3000 5000 7500 10000 15000 20000 "
        "30000 40000 50000 75000 100000"
    ),
    "standard": _days("50 100 250 500 1000 2000 5000 10000 20000 40000 75000 100000 150000 250000"),
    "aggressive": _days("200 500 1000 5000 10000 25000 50000 100000 250000"),
}


def schedule_days(schedule: WarmupSchedule) -> tuple[int, ...]:
    """The per-day caps of a schedule: its explicit days or its preset's."""
    if schedule.days is not None:
        return tuple(schedule.days)
    return PRESETS[schedule.preset or "standard"]


def cap_for_day(schedule: WarmupSchedule, day: int) -> int:
    """The cap of warmup day `day` (1-based; day 0 or below is day 1; past the end, the last)."""
    days = schedule_days(schedule)
    index = min(max(day, 1), len(days)) - 1
    return days[index]


def final_day(schedule: WarmupSchedule) -> int:
    return len(schedule_days(schedule))


def provider_caps(cap: int, per_provider: dict[str, float]) -> dict[str, int]:
    """Each provider's share of the day's cap, rounded down (a share never rounds up past it)."""
    return {name: int(cap * share) for name, share in sorted(per_provider.items())}


@dataclass(frozen=True)
class WarmupClock:
    day: int
    last_advance: datetime | None
    complete: bool
    next_advance: datetime | None  # None: not advancing (paused, pending or complete)


def warmup_clock(
    day: int,
    started: datetime | None,
    last_advance: datetime | None,
    now: datetime,
    day_length: float,
    final: int,
    advancing: bool,
) -> WarmupClock:
    """The warmup day at `now` from the status last written: one day further once a whole day
    has passed since the last advance (or the start). A warmup that fell more than a day behind
    (operator down, paused) moves one day only and starts that day now: every day's cap is
    meant to be sent, not skipped. Past the final day it is complete."""
    day = max(day, 1)
    since = last_advance or started
    if not advancing or since is None:
        return WarmupClock(day, last_advance, False, None)
    length = timedelta(seconds=day_length)
    if now - since < length:
        return WarmupClock(day, last_advance, False, since + length)
    if day >= final:
        return WarmupClock(final, now, True, None)
    moved = since + length if now - since < 2 * length else now
    return WarmupClock(day + 1, moved, False, moved + length)
