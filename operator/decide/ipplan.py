"""Replica counts and each pool IP's state, owner pod and warmup caps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from mailfleet.mta.config import (
    WarmupCapConfig,
)
from mailfleet.operator.api.crd_models import (
    IPWarmup,
    Replicas,
    SendingPool,
)
from mailfleet.operator.api.naming import pod_name, pool_name
from mailfleet.operator.decide import warmup as wu
from mailfleet.operator.decide.health import Counts
from mailfleet.operator.decide.quarantine import IPVerdict

IPStateName = Literal["active", "warming", "standby", "quarantined"]


def desired_replicas(replicas: Replicas) -> int:
    """spec.replicas.desired (the scale subresource) if set, else min; clamped to [min, max]."""
    want = replicas.desired if replicas.desired is not None else replicas.min
    return int(max(replicas.min, min(replicas.max, want)))


@dataclass(frozen=True)
class IPPlan:
    address: str
    hostname: str
    state: IPStateName
    reason: str | None
    owner: str | None  # the pod name that sends from it


def _base_phase(warmup: IPWarmup, pool: SendingPool | None) -> str:
    if pool is None:
        return "Pending"
    pool_addresses = {ip.address for ip in pool.spec.ips}
    if not any(a in pool_addresses for a in warmup.spec.addresses):
        return "Pending"
    if warmup.spec.paused:
        return "Paused"
    status = warmup.status
    if status is not None and status.phase in ("Holding", "Complete"):
        return str(status.phase)
    return "Warming"


def day_figures(warmup: IPWarmup) -> dict[str, Counts]:
    """The outcomes of the current day as the status holds them (none when they belong to
    another day)."""
    status = warmup.status
    if status is None or status.today is None:
        return {}
    day_start = status.last_advance_time or status.start_time
    if day_start is None or status.today.since != day_start:
        return {}
    return {p: Counts(**o.model_dump()) for p, o in status.today.providers.items()}


def clock_of(warmup: IPWarmup, pool: SendingPool | None, now: datetime) -> wu.WarmupClock:
    """The warmup's day at `now`: from its status, moved by the clock when a day ended and the
    gates judged that day."""
    status = warmup.status
    day = int(status.day) if status is not None and status.day else 1
    started = status.start_time if status is not None else None
    last = status.last_advance_time if status is not None else None
    schedule = warmup.spec.schedule
    return wu.warmup_clock(
        day,
        started,
        last,
        now,
        schedule.day_length,
        wu.final_day(schedule),
        advancing=_base_phase(warmup, pool) in ("Warming", "Holding"),
        verdict=wu.gate_verdict(
            warmup.spec.gates,
            day_figures(warmup),
            wu.cap_for_day(schedule, day),
            wu.capped_addresses(warmup, pool),
        ),
        step_back=warmup.spec.gates.on_fail == "stepBack",
    )


def warmup_phase(warmup: IPWarmup, pool: SendingPool | None, now: datetime) -> str:
    """Pending (no such pool, or none of its addresses in the pool), Paused, Complete (a whole
    day spent at the schedule's last cap), Holding (the last day's end failed a gate: the day
    is repeated) or Warming."""
    phase = _base_phase(warmup, pool)
    if phase in ("Warming", "Holding"):
        clock = clock_of(warmup, pool, now)
        if clock.complete:
            return "Complete"
        if clock.outcome in ("held", "steppedBack"):
            return "Holding"
        if clock.outcome == "advanced":
            return "Warming"
    return phase


def warmup_day(warmup: IPWarmup, pool: SendingPool | None, now: datetime) -> int:
    return clock_of(warmup, pool, now).day


def active_warmups(pool: SendingPool, warmups: Sequence[IPWarmup], now: datetime) -> list[IPWarmup]:
    """The pool's warmups that still cap their addresses, ordered by name."""
    return sorted(
        (
            w
            for w in warmups
            if w.spec.pool_ref == pool_name(pool)
            and warmup_phase(w, pool, now) in ("Warming", "Holding", "Paused")
        ),
        key=lambda w: str(w.metadata["name"]),
    )


def assign_owners(addresses: Sequence[str], replicas: int, pool: str) -> dict[str, str | None]:
    """Sending addresses round-robin over pods 0..replicas-1 in the order given; no pods, no
    owner. Stable: the same spec always gives the same pod the same addresses."""
    if replicas <= 0:
        return {a: None for a in addresses}
    return {a: pod_name(pool, i % replicas) for i, a in enumerate(addresses)}


def plan_ips(
    pool: SendingPool,
    warmups: Sequence[IPWarmup],
    replicas: int,
    now: datetime,
    verdicts: Mapping[str, IPVerdict] | None = None,
) -> list[IPPlan]:
    """Each pool IP's state (standby from the spec; quarantined or promoted by the health
    check's `verdicts`; warming while an IPWarmup covers it; else active) and its owner pod
    (standby IPs have none; promoted standbys come after the others, so a promotion moves no
    other IP to another pod)."""
    verdicts = verdicts or {}
    warming: dict[str, str] = {}
    for w in active_warmups(pool, warmups, now):
        for a in w.spec.addresses:
            warming.setdefault(str(a), f"IPWarmup/{w.metadata['name']}")
    promoted = [
        str(ip.address)
        for ip in pool.spec.ips
        if ip.standby and (v := verdicts.get(str(ip.address))) is not None and v.state == "promoted"
    ]
    sending = [str(ip.address) for ip in pool.spec.ips if not ip.standby] + promoted
    owners = assign_owners(sending, replicas, pool_name(pool))
    plans = []
    for ip in pool.spec.ips:
        addr = str(ip.address)
        verdict = verdicts.get(addr)
        owner = owners.get(addr)
        if verdict is not None and verdict.state == "quarantined":
            plans.append(IPPlan(addr, ip.hostname, "quarantined", verdict.reason, owner))
        elif ip.standby and addr not in promoted:
            plans.append(IPPlan(addr, ip.hostname, "standby", None, None))
        else:
            why = verdict.reason if verdict is not None else None
            if addr in warming:
                plans.append(IPPlan(addr, ip.hostname, "warming", why or warming[addr], owner))
            else:
                plans.append(IPPlan(addr, ip.hostname, "active", why, owner))
    return plans


def warmup_caps(
    pool: SendingPool, warmups: Sequence[IPWarmup], now: datetime, promoted: Sequence[str] = ()
) -> list[WarmupCapConfig]:
    """Today's caps for the pool's warming IPs: "*" carries the IP's whole daily cap, and each
    provider in perProvider its share of it. The first warmup (by name) naming an IP wins."""
    # A promoted standby sends under its warmup's caps.
    pool_ips = {str(ip.address) for ip in pool.spec.ips if not ip.standby} | set(promoted)
    caps: list[WarmupCapConfig] = []
    seen: set[str] = set()
    for w in active_warmups(pool, warmups, now):
        clock = clock_of(w, pool, now)
        day = clock.day
        cap = wu.cap_for_day(w.spec.schedule, day)
        # The engines count the day from when it began, as the operator does (None until the
        # warmup's status says when it started).
        began = clock.last_advance or (w.status.start_time if w.status is not None else None)
        start = began.timestamp() if began is not None else None
        for a in w.spec.addresses:
            addr = str(a)
            if addr not in pool_ips or addr in seen:
                continue
            seen.add(addr)
            caps.append(
                WarmupCapConfig(address=a, provider="*", day=day, daily_cap=cap, day_start=start)
            )
            for provider, share_cap in wu.provider_caps(cap, w.spec.per_provider).items():
                caps.append(
                    WarmupCapConfig(
                        address=a, provider=provider, day=day, daily_cap=share_cap, day_start=start
                    )
                )
    return caps


def warmup_day_length(pool: SendingPool, warmups: Sequence[IPWarmup], now: datetime) -> float:
    """The engine's day for warmup counting: the shortest day of the pool's active warmups."""
    lengths = [w.spec.schedule.day_length for w in active_warmups(pool, warmups, now)]
    return min(lengths) if lengths else 86400.0


def next_warmup_advance(
    pool: SendingPool, warmups: Sequence[IPWarmup], now: datetime
) -> datetime | None:
    """When the next of the pool's warmups moves a day (the operator re-renders then)."""
    times = [
        t
        for w in warmups
        if w.spec.pool_ref == pool_name(pool)
        and (t := clock_of(w, pool, now).next_advance) is not None
    ]
    return min(times) if times else None
