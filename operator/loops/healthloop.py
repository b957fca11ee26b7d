"""The health loop's decisions for one pool: whether a check is due, what a check found that
the Operator must act on (events, a re-render when verdicts changed, the status figures when
they are due), and when the figures may go into the status.

The check itself (scrapes, window, blocklists, verdicts) is healthcheck.HealthChecker, one per
pool in its PoolMemory; this returns a `HealthOutcome` and writes nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailfleet.operator.api import conditions
from mailfleet.operator.api.crd_models import SendingPool
from mailfleet.operator.api.outcomes import Event
from mailfleet.operator.decide import drift, health, quarantine
from mailfleet.operator.decide.pods import PodRef
from mailfleet.operator.loops.healthcheck import HealthChecker
from mailfleet.operator.loops.poolmemory import PoolMemory

# The figures go into the status at most this often (the operator's metrics have them always).
HEALTH_STATUS_MAX_PERIOD = 300.0


@dataclass(frozen=True)
class HealthOutcome:
    events: list[Event]
    rerender: bool  # the verdicts changed: the engines get them with the next config
    status: dict[str, Any] | None  # the figures to write now, if any
    delta: dict[health.PairKey, health.Counts]  # what happened since the last check


def due(mem: PoolMemory, pool: SendingPool, now: datetime) -> bool:
    return mem.health is None or mem.health.due(pool, now)


async def check(
    checker: HealthChecker,
    mem: PoolMemory,
    pool: SendingPool,
    refs: Sequence[PodRef],
    old_status: Mapping[str, Any] | None,
    now: datetime,
) -> HealthOutcome:
    ready = conditions.condition(old_status, "IPsHealthy")
    result = await checker.check(
        mem.key,
        pool,
        list(refs),
        now,
        prior_no_healthy=ready is not None and ready.get("reason") == quarantine.NO_HEALTHY,
    )
    events = [Event(n.type, n.reason, n.message) for n in result.notices]
    write = (
        not result.changed
        and drift.status_changed(old_status, result.status)
        and write_due(mem, pool, old_status, result.status)
    )
    return HealthOutcome(events, result.changed, result.status if write else None, result.delta)


def write_due(
    mem: PoolMemory,
    pool: SendingPool,
    old_status: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
) -> bool:
    """Figures move with every message: the status takes them at most every ten intervals
    (at most 5 min; the operator's metrics have them at every check), a change of listing at
    once."""

    def listed(items: Any) -> list[Any]:
        return [(h.get("address"), h.get("listedOn")) for h in items or []]

    now = time.monotonic()
    last = mem.health_written
    period = min(10 * pool.spec.health.interval, HEALTH_STATUS_MAX_PERIOD)
    if (
        last is None
        or now - last >= period
        or listed((old_status or {}).get("health")) != listed(fields.get("health"))
    ):
        mem.health_written = now
        return True
    return False


def health_fields(mem: PoolMemory) -> dict[str, Any] | None:
    """The last check's status fields, merged into each render."""
    if mem.health is None:
        return None
    return mem.health.fields
