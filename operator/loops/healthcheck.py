"""The health check of a pool's IPs, every spec.health.interval: read each pod's /metrics, keep
the window of counter differences, ask the blocklists, and decide (quarantine.decide).

One HealthChecker per pool, in its PoolMemory: its memory (the last scrape of each pod, the
window, the last verdicts) is plain fields, gone with the pool. The verdicts also go into the
pool's status.ips, from which an operator that restarts takes them back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailfleet.operator.api.crd_models import SendingPool
from mailfleet.operator.clients.blocklist import BlocklistChecker, Listing
from mailfleet.operator.clients.promql import PrometheusApi
from mailfleet.operator.decide import health, quarantine
from mailfleet.operator.decide.pods import PodRef, pollable
from mailfleet.operator.metrics import OperatorMetrics, PoolSeries

log = logging.getLogger("mailfleet.operator")

PoolKey = tuple[str, str]  # namespace, name: for logs and metric labels only


class MetricsSource(Protocol):
    async def metrics(self, ip: str) -> str | None: ...


@dataclass(frozen=True)
class CheckResult:
    verdicts: quarantine.Verdicts
    notices: list[quarantine.Notice]
    changed: bool  # the verdicts differ from the last ones: re-render the pool
    delta: dict[health.PairKey, health.Counts]  # what happened since the last check
    status: dict[str, Any]  # the pool status fields the check fills (health)


class HealthChecker:
    def __init__(
        self,
        engines: MetricsSource,
        blocklists: BlocklistChecker,
        metrics: OperatorMetrics,
        prometheus: PrometheusApi | None = None,
        series: PoolSeries | None = None,
    ) -> None:
        self.engines = engines
        self.prometheus = prometheus or PrometheusApi()
        self.blocklists = blocklists
        self.metrics = metrics
        # The pool's exported series (its PoolMemory's): the pool's forgetting removes them.
        self.series = series if series is not None else PoolSeries()
        # Pod name -> its counters at the last check.
        self.last_scrape: dict[str, dict[health.PairKey, health.Counts]] = {}
        self.window = health.Window()
        self.verdicts: quarantine.Verdicts | None = None
        self.last_check: datetime | None = None
        # The pool status fields of the last check (status.health), merged into each render.
        self.fields: dict[str, Any] | None = None

    def due(self, pool: SendingPool, now: datetime) -> bool:
        last = self.last_check
        return last is None or now - last >= timedelta(seconds=pool.spec.health.interval)

    async def _scrape(
        self, key: PoolKey, pods: Sequence[PodRef]
    ) -> dict[health.PairKey, health.Counts]:
        """The pool's counter differences since the last check, every pod together."""
        refs = pollable(list(pods))
        texts = await asyncio.gather(*(self.engines.metrics(p.ip or "") for p in refs))
        delta: dict[health.PairKey, health.Counts] = {}
        for pod, text in zip(refs, texts, strict=True):
            if text is None:
                continue
            try:
                counts = health.parse_engine_metrics(text)
            except ValueError as e:
                log.warning("pod %s/%s: unreadable /metrics: %s", key[0], pod.name, e)
                continue
            d = health.scrape_delta(self.last_scrape.get(pod.name), counts)
            self.last_scrape[pod.name] = counts
            for k, c in d.items():
                delta[k] = delta.get(k, health.Counts()) + c
        seen = {p.name for p in refs}
        for old in [k for k in self.last_scrape if k not in seen]:
            del self.last_scrape[old]
        return delta

    async def _from_prometheus(
        self, pool: SendingPool, url: str
    ) -> dict[health.PairKey, health.Counts] | None:
        """The window's figures as Prometheus has them; None when it does not answer."""
        q_attempts, q_complaints = health.promql_queries(
            [str(ip.address) for ip in pool.spec.ips], pool.spec.health.window
        )
        attempts, complaints = await asyncio.gather(
            self.prometheus.query(url, q_attempts), self.prometheus.query(url, q_complaints)
        )
        if attempts is None or complaints is None:
            return None
        return health.from_promql(attempts, complaints)

    async def _listings(self, pool: SendingPool) -> dict[str, list[Listing]]:
        spec = pool.spec
        dns = spec.routing.dns
        nameservers = [str(a) for a in dns.nameservers]
        out: dict[str, list[Listing]] = {}
        for ip in spec.ips:
            answers = await asyncio.gather(
                *(
                    # Half an interval: the next check asks again, and sees a new listing.
                    self.blocklists.check(
                        str(ip.address), zone, nameservers, dns.port, spec.health.interval / 2
                    )
                    for zone in spec.health.blocklists
                )
            )
            out[str(ip.address)] = list(answers)
            for a in answers:
                if a.error:
                    log.warning("blocklist %s on %s: %s (not counted)", a.zone, ip.address, a.error)
        return out

    async def check(
        self,
        key: PoolKey,
        pool: SendingPool,
        pods: Sequence[PodRef],
        now: datetime,
        prior_no_healthy: bool,
    ) -> CheckResult:
        self.last_check = now
        spec = pool.spec.health
        delta = await self._scrape(key, pods)
        win = health.slide(self.window, now, delta, spec.window)
        self.window = win
        totals = dict(win.totals)
        if spec.prometheus is not None:
            totals = await self._from_prometheus(pool, spec.prometheus.url) or totals
        per_ip = health.by_ip(totals)
        listings = await self._listings(pool)
        listed = {
            addr: [a.describe() for a in answers if a.listed] for addr, answers in listings.items()
        }
        before = self.verdicts
        prior = before.ips if before is not None else quarantine.prior_verdicts(pool)
        verdicts = quarantine.decide(pool, prior, per_ip, listed, now)
        self.verdicts = verdicts
        notices = quarantine.verdict_events(prior, verdicts, prior_no_healthy)
        changed = (
            before is None
            or dict(before.ips) != dict(verdicts.ips)
            or before.no_healthy_ip != verdicts.no_healthy_ip
        )
        summary = [
            health.ip_summary(str(ip.address), per_ip.get(str(ip.address), health.Counts()),
                              listed.get(str(ip.address), []))
            for ip in pool.spec.ips
        ]  # fmt: skip
        self.metrics.set_health(key[0], key[1], totals, listed, self.series)
        self.fields = {"health": summary}
        return CheckResult(verdicts, notices, changed, delta, self.fields)
