"""Prometheus metrics of SendingDomains: their conditions and DKIM selectors, in the operator's
registry (next to OperatorMetrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from mailfleet.operator.decide.dmarcreport import Report


class DomainMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.condition = Gauge(
            "mailfleet_domain_condition",
            "1 for each condition a SendingDomain's status holds (DKIMPublished, SPFValid, "
            "DMARCAligned, ReverseDNS, Ready), by status and reason",
            ["namespace", "name", "domain", "type", "status", "reason"],
            registry=registry,
        )
        self.selector = Gauge(
            "mailfleet_domain_dkim_selector",
            "1 for each DKIM selector of a SendingDomain, by algorithm and state",
            ["namespace", "name", "domain", "selector", "algorithm", "state"],
            registry=registry,
        )
        self.stopped_ip = Gauge(
            "mailfleet_domain_stopped_ip",
            "1 for each pool IP that does not send a SendingDomain's mail (onFailingIP: "
            "StopSending), by the failing check's reason",
            ["namespace", "name", "domain", "pool", "address", "reason"],
            registry=registry,
        )
        self.last_check = Gauge(
            "mailfleet_domain_last_check_timestamp_seconds",
            "When the operator last checked a SendingDomain's DNS (Unix time)",
            ["namespace", "name", "domain"],
            registry=registry,
        )
        self.dmarc_reports = Counter(
            "mailfleet_dmarc_reports_total",
            "DMARC aggregate reports counted, by reporter (org_name)",
            ["namespace", "name", "domain", "reporter"],
            registry=registry,
        )
        self.dmarc_messages = Counter(
            "mailfleet_dmarc_messages_total",
            "Messages DMARC aggregate reports describe, by reporter, source IP, whether the IP "
            "is one of the domain's pools (ours=false: someone else sends as the domain), the "
            "receiver's disposition and DMARC's DKIM and SPF verdicts",
            ["namespace", "name", "domain", "reporter", "source_ip", "ours", "disposition",
             "dkim", "spf"],
            registry=registry,
        )  # fmt: skip
        self._series: dict[tuple[str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}
        self._domains: dict[tuple[str, str], str] = {}

    def count_report(self, namespace: str, name: str, report: Report, ours: frozenset[str]) -> None:
        self.dmarc_reports.labels(namespace, name, report.domain, report.org_name).inc()
        for r in report.rows:
            self.dmarc_messages.labels(
                namespace,
                name,
                report.domain,
                report.org_name,
                r.source_ip,
                "true" if r.source_ip in ours else "false",
                r.disposition,
                r.dkim,
                r.spf,
            ).inc(r.count)

    def set_domain(self, namespace: str, name: str, domain: str, status: Mapping[str, Any]) -> None:
        now: list[tuple[Gauge, tuple[str, ...]]] = []
        for c in status.get("conditions") or []:
            cond = (namespace, name, domain, str(c["type"]), str(c["status"]), str(c["reason"]))
            now.append((self.condition, cond))
        for s in status.get("selectors") or []:
            sel = (namespace, name, domain, s["selector"], s["algorithm"], s["state"])
            now.append((self.selector, sel))
        for st in status.get("stoppedIPs") or []:
            ip = (namespace, name, domain, st["pool"], st["address"], st["reason"])
            now.append((self.stopped_ip, ip))
        for g, labels in now:
            g.labels(*labels).set(1)
        for g, old in self._series.get((namespace, name), []):
            if (g, old) not in now:
                g.remove(*old)
        self._series[(namespace, name)] = now

    def forget(self, namespace: str, name: str) -> None:
        for g, old in self._series.pop((namespace, name), []):
            g.remove(*old)
        domain = self._domains.pop((namespace, name), None)
        if domain is not None:
            self.last_check.remove(namespace, name, domain)

    def checked(self, namespace: str, name: str, domain: str, when: float) -> None:
        old = self._domains.get((namespace, name))
        if old is not None and old != domain:
            self.last_check.remove(namespace, name, old)
        self._domains[(namespace, name)] = domain
        self.last_check.labels(namespace, name, domain).set(when)
