"""Which pool IPs the operator takes out of rotation, which standbys replace them, and when an
IP comes back: pure functions of the health figures, the blocklist answers and the last verdicts
(read back from the pool's status.ips, so an operator restart forgets nothing).

- An IP is quarantined when a blocklist lists it, or when over spec.health.window it made at
  least minAttempts delivery attempts and its bounce, deferral or complaint rate is above the
  threshold.
- It comes back once it has spent `cooldown` in quarantine and is neither listed nor above a
  threshold any more (a quarantined IP sends nothing: its bad figures leave the window).
- For each quarantined sending IP, the first standby (spec order) that is not itself listed is
  promoted; when the IP comes back the standby returns to standby.
- When no IP would be left sending, `whenNoHealthyIP` decides: keepSending leaves one sending
  (the least bad: unlisted first, then spec order), stop quarantines it too. Never silently:
  the verdict says NoHealthyIP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from mailfleet.operator.api.crd_models import Health, SendingPool
from mailfleet.operator.api.reasons import ConditionReason, EventReason, EventType
from mailfleet.operator.decide.health import Counts

VerdictState = Literal["quarantined", "promoted", "kept"]
NO_HEALTHY = ConditionReason.NoHealthyIP


@dataclass(frozen=True)
class Notice:
    """An event to post about the pool."""

    type: EventType
    reason: EventReason
    message: str


@dataclass(frozen=True)
class IPVerdict:
    state: VerdictState
    reason: str
    since: datetime


@dataclass(frozen=True)
class Verdicts:
    """The health check's decisions for one pool; IPs not named are as their spec says."""

    ips: Mapping[str, IPVerdict]
    no_healthy_ip: str | None = None  # why, when no IP is left healthy
    checked_at: datetime | None = None


def failing(counts: Counts | None, health: Health) -> str | None:
    """The first threshold the IP's window figures cross, as a reason; None when healthy or
    when there are too few attempts to judge."""
    if counts is None or counts.attempts < health.quarantine.min_attempts:
        return None
    q = health.quarantine
    checks = (
        ("BounceRate", counts.bounce_rate(), q.bounce_rate, counts.bounced, counts.attempts),
        ("ComplaintRate", counts.complaint_rate(), q.complaint_rate, counts.complaints,
         counts.delivered),
        ("DeferralRate", counts.deferral_rate(), q.deferral_rate, counts.deferred, counts.attempts),
    )  # fmt: skip
    for name, rate, limit, part, whole in checks:
        if rate is not None and rate > limit:
            return f"{name}: {rate:.3f} ({part}/{whole}) over {limit}"
    return None


def listed_reason(listed_on: Sequence[str]) -> str | None:
    if not listed_on:
        return None
    zones = ", ".join(listed_on)
    return f"Listed:{zones}"[:1024]


def prior_verdicts(pool: SendingPool) -> dict[str, IPVerdict]:
    """The verdicts the pool's status records: quarantined IPs, promoted standbys (a spec
    standby that the status shows sending) and an IP kept sending with none healthy."""
    standby = {str(ip.address) for ip in pool.spec.ips if ip.standby}
    out: dict[str, IPVerdict] = {}
    for s in pool.status.ips if pool.status is not None else []:
        addr, since, reason = str(s.address), s.since, s.reason or ""
        if since is None:
            continue
        if s.state == "quarantined":
            out[addr] = IPVerdict("quarantined", reason, since)
        elif addr in standby and s.state in ("active", "warming"):
            out[addr] = IPVerdict("promoted", reason, since)
        elif reason.startswith(NO_HEALTHY):
            out[addr] = IPVerdict("kept", reason, since)
    return out


def decide(
    pool: SendingPool,
    prior: Mapping[str, IPVerdict],
    window: Mapping[str, Counts],
    listed: Mapping[str, Sequence[str]],
    now: datetime,
) -> Verdicts:
    """This check's verdicts from the last ones, each IP's window figures and the zones that
    list it (with their reasons)."""
    health = pool.spec.health
    cooldown = timedelta(seconds=health.cooldown)
    order = [str(ip.address) for ip in pool.spec.ips]
    standby = [str(ip.address) for ip in pool.spec.ips if ip.standby]
    out: dict[str, IPVerdict] = {}
    bad: dict[str, str] = {}
    for addr in order:
        why = listed_reason(listed.get(addr, ())) or failing(window.get(addr), health)
        before = prior.get(addr)
        if before is not None and before.state == "quarantined":
            if why is None and now - before.since >= cooldown:
                continue
            # The reason it went out stays the reason it is out.
            out[addr] = IPVerdict("quarantined", before.reason, before.since)
        elif why is not None:
            bad[addr] = why
    for addr, why in bad.items():
        out[addr] = IPVerdict("quarantined", why, now)
    # One standby per quarantined sending IP, in spec order, skipping quarantined ones.
    out_of_rotation = [a for a in order if a not in standby and a in out]
    free = [a for a in standby if a not in out]
    for addr in free[: len(out_of_rotation)]:
        before = prior.get(addr)
        since = before.since if before is not None and before.state == "promoted" else now
        replaced = out_of_rotation[free.index(addr)]
        out[addr] = IPVerdict("promoted", f"Replaces:{replaced}", since)
    sending = [
        a
        for a in order
        if (a not in out and a not in standby) or (a in out and out[a].state == "promoted")
    ]
    no_healthy: str | None = None
    if not sending:
        candidates = sorted(
            (a for a in order if a not in standby or a in out),
            key=lambda a: (out[a].reason.startswith("Listed:") if a in out else False,
                           order.index(a)),
        )  # fmt: skip
        first = candidates[0] if candidates else order[0]
        why = out[first].reason if first in out else "unknown"
        if health.when_no_healthy_ip == "keepSending":
            before = prior.get(first)
            if before is not None and before.state == "kept":
                # Unchanged while it lasts: no status write at every check.
                out[first] = before
            else:
                reason = f"{NO_HEALTHY}: sends although {why}"[:1024]
                out[first] = IPVerdict("kept", reason, now)
            no_healthy = (
                f"every IP is quarantined or unhealthy; {first} keeps sending "
                f"({out[first].reason.removeprefix(NO_HEALTHY + ': sends although ')})"
            )
        else:
            no_healthy = "every IP is quarantined and whenNoHealthyIP is stop: mail waits queued"
    return Verdicts(out, no_healthy, now)


def verdict_events(
    prior: Mapping[str, IPVerdict], now: Verdicts, prior_no_healthy: bool
) -> list[Notice]:
    """What changed since the last verdicts, as events for `kubectl get events`."""
    events: list[Notice] = []
    for addr, v in now.ips.items():
        before = prior.get(addr)
        if before is not None and before.state == v.state:
            continue
        if v.state == "quarantined":
            events.append(
                Notice("Warning", EventReason.IPQuarantined, f"{addr} quarantined: {v.reason}")
            )
        elif v.state == "promoted":
            events.append(
                Notice(
                    "Normal", EventReason.StandbyPromoted, f"standby {addr} promoted: {v.reason}"
                )
            )
    for addr, before in prior.items():
        after = now.ips.get(addr)
        if after is not None and after.state == before.state:
            continue
        if before.state == "quarantined" and after is None:
            events.append(
                Notice(
                    "Normal",
                    EventReason.IPRecovered,
                    f"{addr} back in rotation: delisted, under the thresholds and quarantined "
                    f"since {before.since.isoformat()}",
                )
            )
        elif before.state == "promoted" and after is None:
            events.append(
                Notice("Normal", EventReason.StandbyReleased, f"{addr} back to standby: not needed")
            )
    if now.no_healthy_ip is not None and not prior_no_healthy:
        events.append(Notice("Warning", EventReason.NoHealthyIP, now.no_healthy_ip))
    return events
