"""Warmup schedules: how many messages an IP may send on a given warmup day, and when the day
advances.

Pure functions with `now` passed in. A day lasts `schedule.dayLength`; when it ends, the gates
judge it from the outcomes of the warmup's addresses that day (status.today): the next day
comes only when every provider with enough attempts stayed under the gates' rates and the day's
cap was mostly used (an IP that sent a tenth of its cap has proved nothing about the next one:
SparkPost's and Mailgun's automatic warmups wait for volume the same way). Otherwise the day is
repeated (`hold`) or the warmup goes back a day (`stepBack`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from mailfleet.operator.api.crd_models import (
    IPWarmup,
    SendingPool,
    WarmupGates,
    WarmupPreset,
    WarmupSchedule,
)
from mailfleet.operator.decide.health import ALL, Counts

Outcome = Literal["advanced", "held", "steppedBack", "complete"]


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
class DayVerdict:
    advance: bool
    reason: str


ADVANCE = DayVerdict(True, "gates passed")


def capped_addresses(warmup: IPWarmup, pool: SendingPool | None) -> int:
    """How many of the warmup's addresses send under its per-IP cap: those in the pool's spec
    (at least one, so a day is never judged against no cap at all)."""
    if pool is None:
        return max(1, len(warmup.spec.addresses))
    in_pool = {ip.address for ip in pool.spec.ips}
    return max(1, sum(1 for a in set(warmup.spec.addresses) if a in in_pool))


def gate_verdict(
    gates: WarmupGates, today: Mapping[str, Counts], cap: int, addresses: int = 1
) -> DayVerdict:
    """Whether a finished day lets the warmup move on: each provider with at least
    gates.minAttempts attempts under every rate gate, and delivered >= minUsage x cap x
    addresses. `cap` is one IP's (the schedule's days are per IP) and `today` sums every
    address of the warmup, so the usage is judged against all of their caps together."""
    for provider, c in sorted(today.items()):
        if provider == ALL or c.attempts < gates.min_attempts:
            continue
        for name, rate, limit in (
            ("bounce rate", c.bounce_rate(), gates.max_bounce_rate),
            ("complaint rate", c.complaint_rate(), gates.max_complaint_rate),
            ("deferral rate", c.deferral_rate(), gates.max_deferral_rate),
        ):
            if rate is not None and rate > limit:
                return DayVerdict(
                    False, f"{provider} {name} {rate:.3f} over the gate {limit} "
                    f"({c.attempts} attempts)"
                )  # fmt: skip
    delivered = today.get(ALL, Counts()).delivered
    n = max(1, addresses)
    total = cap * n
    of = f"{total}" if n == 1 else f"{total} ({n} IPs at {cap})"
    if delivered < gates.min_usage * total:
        return DayVerdict(
            False, f"{delivered} of the day's cap of {of} delivered, under minUsage "
            f"{gates.min_usage}"
        )  # fmt: skip
    return DayVerdict(True, f"{delivered} of {of} delivered, gates passed")


@dataclass(frozen=True)
class WarmupClock:
    day: int
    last_advance: datetime | None
    complete: bool
    next_advance: datetime | None  # None: not advancing (paused, pending or complete)
    # What the end of a day decided, when one ended at `now`.
    outcome: Outcome | None = None
    reason: str | None = None


def warmup_clock(
    day: int,
    started: datetime | None,
    last_advance: datetime | None,
    now: datetime,
    day_length: float,
    final: int,
    advancing: bool,
    verdict: DayVerdict = ADVANCE,
    step_back: bool = False,
) -> WarmupClock:
    """The warmup day at `now` from the status last written: once a whole day has passed since
    the last advance (or the start), the day's verdict moves it one day on, holds it (the same
    day starts again) or, with `step_back`, moves it one day back. A warmup that fell more than
    a day behind (operator down, paused) moves once and starts that day now: every day's cap is
    meant to be sent, not skipped. A passed final day completes it."""
    day = max(day, 1)
    since = last_advance or started
    if not advancing or since is None:
        return WarmupClock(day, last_advance, False, None)
    length = timedelta(seconds=day_length)
    if now - since < length:
        return WarmupClock(day, last_advance, False, since + length)
    moved = since + length if now - since < 2 * length else now
    if not verdict.advance:
        if step_back and day > 1:
            return WarmupClock(day - 1, moved, False, moved + length, "steppedBack", verdict.reason)
        return WarmupClock(day, moved, False, moved + length, "held", verdict.reason)
    if day >= final:
        return WarmupClock(final, now, True, None, "complete", verdict.reason)
    return WarmupClock(day + 1, moved, False, moved + length, "advanced", verdict.reason)
