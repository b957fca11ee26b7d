"""The operator's health check, per pod: reading one engine's /metrics (a real EngineMetrics
registry with many per-domain series) into counts per (IP, provider), against handing the whole
text to prometheus_client's parser; and the window and quarantine decision for a pool.

    python -m bench.health
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailfleet.mta.metrics import EngineMetrics
from mailfleet.operator.api.crd_models import SendingPool, parse_object
from mailfleet.operator.decide import health, quarantine

RESULTS = (("delivered", "ok"), ("deferred", "rate-limited"), ("bounced", "invalid-recipient"))


def engine_text(ips: int, providers: int, domains: int) -> str:
    m = EngineMetrics()
    for i in range(ips):
        for p in range(providers):
            for d in range(domains):
                for result, cls in RESULTS:
                    m.attempts.labels(f"10.0.{i // 250}.{i % 250}", f"p{p}", f"d{d}.example",
                                      result, cls).inc(7)  # fmt: skip
            m.complaints.labels(f"10.0.{i // 250}.{i % 250}", f"p{p}").inc()
    for k in range(1000):
        m.delivery_latency.observe(k / 10)
    return generate_latest(m.registry).decode()


def per_call(fn: object, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / repeat


def a_pool(ips: int) -> SendingPool:
    pool = parse_object(
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingPool",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "ips": [
                    {"address": f"10.0.{i // 250}.{i % 250}", "hostname": f"m{i}.example.com"}
                    for i in range(ips)
                ]
            },
        }
    )
    assert isinstance(pool, SendingPool)
    return pool


def lines(ips: int = 8, providers: int = 5, domains: int = 100) -> list[str]:
    text = engine_text(ips, providers, domains)
    ours = per_call(lambda: health.parse_engine_metrics(text), 5)
    whole = per_call(lambda: list(text_string_to_metric_families(text)), 3)
    series = ips * providers * domains * len(RESULTS)
    out = [
        f"health: one pod's /metrics ({len(text) / 1024:.0f} KiB, {series} attempt series): "
        f"{ours * 1000:.1f} ms to counts per (IP, provider); whole-text parse "
        f"{whole * 1000:.1f} ms; ratio {whole / ours:.1f}x",
    ]
    pool = a_pool(ips)
    counts = health.parse_engine_metrics(text)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    win = health.Window()
    for k in range(120):  # an hour of 30 s checks
        win = health.slide(win, now + timedelta(seconds=30 * k), counts, 3600)
    t = [now + timedelta(seconds=30 * 120)]

    def check() -> None:
        nonlocal win
        t[0] += timedelta(seconds=30)
        win = health.slide(win, t[0], counts, 3600)
        quarantine.decide(pool, {}, health.by_ip(win.totals), {}, t[0])

    took = per_call(check, 20)
    out.append(
        f"health: sliding a full hour's window ({len(win.entries)} checks of {len(counts)} "
        f"pairs) and the quarantine decision for {ips} IPs: {took * 1000:.2f} ms per pool check"
    )
    return out


if __name__ == "__main__":
    for line in lines():
        print(line, flush=True)
