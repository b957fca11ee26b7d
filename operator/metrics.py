"""The operator's own Prometheus metrics: reconciles, errors, durations, API writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

Series = list[tuple[Gauge, tuple[str, ...]]]


@dataclasses.dataclass
class PoolSeries:
    """The label sets last exported for one pool, kept in its PoolMemory: a new status drops
    the ones it no longer has, forgetting the pool drops them all."""

    status: Series = dataclasses.field(default_factory=list)
    health: Series = dataclasses.field(default_factory=list)


class OperatorMetrics:
    """In their own registry, so tests and several operators in one process do not clash."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "mailfleet_operator_reconciles_total",
            "Reconciles run, by kind and result (unchanged, changed, error)",
            ["kind", "result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "mailfleet_operator_reconcile_errors_total",
            "Reconciles that failed, by kind and error",
            ["kind", "error"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mailfleet_operator_reconcile_duration_seconds",
            "Time one reconcile took, by kind",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.api_writes = Counter(
            "mailfleet_operator_api_writes_total",
            "Write requests sent to the API server, by kind and verb (apply, patch-status)",
            ["kind", "verb"],
            registry=self.registry,
        )
        self.events = Counter(
            "mailfleet_operator_events_total",
            "Kubernetes Events posted, by type and reason",
            ["type", "reason"],
            registry=self.registry,
        )

        self.pool_condition = Gauge(
            "mailfleet_pool_condition",
            "1 for each condition a SendingPool's status holds, by type, status and reason",
            ["pool_namespace", "pool", "type", "status", "reason"],
            registry=self.registry,
        )
        self.pool_ip_state = Gauge(
            "mailfleet_pool_ip_state",
            "1 for the state each pool IP is in (active, warming, standby, quarantined)",
            ["pool_namespace", "pool", "address", "state"],
            registry=self.registry,
        )
        self.pool_draining_pods = Gauge(
            "mailfleet_pool_draining_pods",
            "Pods of a pool handing off their queue before a scale-down removes them",
            ["pool_namespace", "pool"],
            registry=self.registry,
        )
        self.pool_handoff_left = Gauge(
            "mailfleet_pool_handoff_left",
            "Messages the draining pods of a pool still hold",
            ["pool_namespace", "pool"],
            registry=self.registry,
        )
        self.pool_stranded_messages = Gauge(
            "mailfleet_pool_stranded_messages",
            "Messages queued on a pool's pods whose node is not Ready, by node",
            ["pool_namespace", "pool", "node"],
            registry=self.registry,
        )
        self.pool_replicas = Gauge(
            "mailfleet_pool_replicas",
            "Pods of a pool: desired (the target) and running (that exist)",
            ["pool_namespace", "pool", "kind"],
            registry=self.registry,
        )
        self.warmup_phase = Gauge(
            "mailfleet_warmup_phase",
            "1 for the phase an IPWarmup is in (Pending, Warming, Holding, Complete, Paused)",
            ["warmup_namespace", "warmup", "pool", "phase"],
            registry=self.registry,
        )
        self.warmup_day = Gauge(
            "mailfleet_warmup_day",
            "The day of its schedule an IPWarmup is on, and today's cap (messages per IP)",
            ["warmup_namespace", "warmup", "pool", "kind"],
            registry=self.registry,
        )
        self.ip_outcomes = Gauge(
            "mailfleet_pool_ip_outcomes",
            "Delivery outcomes per pool IP and provider over the pool's health window "
            "(attempts, delivered, deferred, bounced, complaints), as the last check summed them",
            ["pool_namespace", "pool", "address", "provider", "outcome"],
            registry=self.registry,
        )
        self.ip_rate = Gauge(
            "mailfleet_pool_ip_rate",
            "Bounce and deferral rates (per attempt) and complaint rate (per delivered message) "
            "per pool IP and provider over the pool's health window",
            ["pool_namespace", "pool", "address", "provider", "rate"],
            registry=self.registry,
        )
        self.ip_listed = Gauge(
            "mailfleet_pool_ip_listed",
            "1 for each blocklist that lists a pool IP (zone, with its codes and reason)",
            ["pool_namespace", "pool", "address", "listing"],
            registry=self.registry,
        )
        self._warmups: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}

    def set_pool(
        self, namespace: str, pool: str, status: Mapping[str, Any], exported: PoolSeries
    ) -> None:
        """The pool's status as gauges; series the status no longer holds are removed."""
        now: list[tuple[Gauge, tuple[str, ...]]] = []
        for c in status.get("conditions") or []:
            cond = (namespace, pool, str(c["type"]), str(c["status"]), str(c.get("reason", "")))
            now.append((self.pool_condition, cond))
        for ip in status.get("ips") or []:
            now.append((self.pool_ip_state, (namespace, pool, str(ip["address"]), ip["state"])))
        for g, series in now:
            g.labels(*series).set(1)
        if "drainingPods" in status:
            draining: Sequence[str] = status.get("drainingPods") or []
            self.pool_draining_pods.labels(namespace, pool).set(len(draining))
            now.append((self.pool_draining_pods, (namespace, pool)))
        if status.get("handoffLeft") is not None:
            self.pool_handoff_left.labels(namespace, pool).set(status["handoffLeft"])
            now.append((self.pool_handoff_left, (namespace, pool)))
        by_node: dict[str, int] = {}
        for s in status.get("strandedPods") or []:
            by_node[str(s["node"])] = by_node.get(str(s["node"]), 0) + int(s.get("queued") or 0)
        for node, held in by_node.items():
            self.pool_stranded_messages.labels(namespace, pool, node).set(held)
            now.append((self.pool_stranded_messages, (namespace, pool, node)))
        for kind, field in (("desired", "desiredReplicas"), ("running", "replicas")):
            if status.get(field) is not None:
                self.pool_replicas.labels(namespace, pool, kind).set(status[field])
                now.append((self.pool_replicas, (namespace, pool, kind)))
        for g, old in exported.status:
            if (g, old) not in now:
                g.remove(*old)
        exported.status = now

    def set_warmup(self, namespace: str, warmup: str, pool: str, status: Mapping[str, Any]) -> None:
        """A warmup's phase, day and cap as gauges (the alert on a warmup held for a day)."""
        key = (namespace, warmup)
        now: list[tuple[Gauge, tuple[str, ...]]] = []
        if status.get("phase"):
            now.append((self.warmup_phase, (namespace, warmup, pool, str(status["phase"]))))
            self.warmup_phase.labels(*now[-1][1]).set(1)
        for kind, field in (("day", "day"), ("cap", "todayCap")):
            if status.get(field) is not None:
                now.append((self.warmup_day, (namespace, warmup, pool, kind)))
                self.warmup_day.labels(*now[-1][1]).set(status[field])
        for g, old in self._warmups.get(key, []):
            if (g, old) not in now:
                g.remove(*old)
        self._warmups[key] = now

    def forget_warmup(self, namespace: str, warmup: str) -> None:
        for g, old in self._warmups.pop((namespace, warmup), []):
            g.remove(*old)

    def set_health(
        self,
        namespace: str,
        pool: str,
        totals: Mapping[tuple[str, str], Any],
        listed: Mapping[str, Sequence[str]],
        exported: PoolSeries,
    ) -> None:
        """The health check's window figures (health.Counts per (IP, provider)) and listings;
        series of pairs gone from the window are removed."""
        now: list[tuple[Gauge, tuple[str, ...]]] = []
        for (address, provider), counts in sorted(totals.items()):
            for outcome, value in counts.as_dict().items():
                labels = (namespace, pool, address, provider, outcome)
                self.ip_outcomes.labels(*labels).set(value)
                now.append((self.ip_outcomes, labels))
            for rate, value in (
                ("bounce", counts.bounce_rate()),
                ("deferral", counts.deferral_rate()),
                ("complaint", counts.complaint_rate()),
            ):
                if value is not None:
                    labels = (namespace, pool, address, provider, rate)
                    self.ip_rate.labels(*labels).set(value)
                    now.append((self.ip_rate, labels))
        for address, listings in sorted(listed.items()):
            for listing in listings:
                listed_labels = (namespace, pool, address, listing[:200])
                self.ip_listed.labels(*listed_labels).set(1)
                now.append((self.ip_listed, listed_labels))
        for g, old in exported.health:
            if (g, old) not in now:
                g.remove(*old)
        exported.health = now

    def forget_pool(self, exported: PoolSeries) -> None:
        for g, old in exported.status + exported.health:
            g.remove(*old)
        exported.status, exported.health = [], []

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """/metrics on a background thread (prometheus_client's own server)."""
        start_http_server(port, addr=addr, registry=self.registry)
