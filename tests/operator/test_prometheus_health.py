"""The health check reading Prometheus (Debian's prometheus scraping a real engine) instead of
the pods: the same figures the engine counts, a quarantine verdict from them, and a fallback to
the operator's own scrapes when Prometheus does not answer."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc
from fixtures.operator import wait_for
from fixtures.procs import Proc, free_port
from fixtures.smtppeers import RecordingMX

from mailfleet.operator.api.crd_models import SendingPool, parse_object
from mailfleet.operator.clients.blocklist import BlocklistChecker
from mailfleet.operator.clients.engine_admin import EngineAdmin
from mailfleet.operator.decide import health
from mailfleet.operator.decide.pods import PodRef
from mailfleet.operator.loops.healthcheck import CheckResult, HealthChecker
from mailfleet.operator.metrics import OperatorMetrics

PROMETHEUS = "/usr/bin/prometheus"
SOURCE = "127.0.0.1"


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "engines", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.proc = Proc(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            name="prometheus",
            log_dir=workdir / "logs",
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as rsp:
            result: list[dict[str, Any]] = json.load(rsp)["data"]["result"]
            return result

    def value(self, expr: str) -> float | None:
        try:
            result = self.query(expr)
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def engine_and_prometheus(
    tmp_path: Path, mta_engine: Callable[..., EngineProc], recording_mx: Callable[..., RecordingMX]
) -> Iterator[tuple[EngineProc, Prometheus, RecordingMX]]:
    mx = recording_mx("127.0.0.1")
    mx.on_rcpt = lambda call: "550 5.1.1 no such user" if call.address.startswith("bad") else None
    eng = mta_engine(
        {
            "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
            "delivery": {"sourceIPs": [{"address": SOURCE, "hostname": "mta.test"}]},
        }
    )
    prom = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{eng.admin_port}")
    try:
        wait_for(
            "Prometheus scraping the engine",
            lambda: prom.value('up{job="engines"}') == 1.0,
            60,
            every=0.5,
        )
        yield eng, prom, mx
    finally:
        prom.proc.stop()


def a_pool(**health_spec: Any) -> SendingPool:
    pool = parse_object(
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingPool",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "ips": [{"address": SOURCE, "hostname": "mta.test"}],
                "health": {
                    "window": "10m",
                    "quarantine": {"minAttempts": 10, "bounceRate": 0.2},
                    "whenNoHealthyIP": "stop",
                    **health_spec,
                },
            },
        }
    )
    assert isinstance(pool, SendingPool)
    return pool


def send(eng: EngineProc, local: str, n: int) -> None:
    for i in range(n):
        # A null sender: the bounces make no DSNs, whose delivery would count too.
        eng.send("", [f"{local}{i}@example.org"], b"Subject: x\r\n\r\nhi\r\n")


def check(eng: EngineProc, pool: SendingPool) -> CheckResult:
    async def run() -> CheckResult:
        admin = EngineAdmin(port=eng.admin_port)
        checker = HealthChecker(admin, BlocklistChecker(), OperatorMetrics())
        try:
            return await checker.check(
                ("ns", "p"), pool, [PodRef("p-0", "127.0.0.1", True)], datetime.now(UTC), False
            )
        finally:
            await admin.close()
            await checker.prometheus.close()

    return asyncio.run(run())


def test_figures_and_verdict_from_prometheus(
    engine_and_prometheus: tuple[EngineProc, Prometheus, RecordingMX],
) -> None:
    eng, prom, _ = engine_and_prometheus
    # One of each first: the series exist (at zero history) before the traffic measured.
    send(eng, "good-first", 1)
    send(eng, "bad-first", 1)
    total = 'sum(mailfleet_delivery_attempts_total{result="bounced"})'
    wait_for("the first bounce scraped", lambda: prom.value(total) == 1.0, 60, every=0.5)
    send(eng, "good", 12)
    send(eng, "bad", 12)
    truth = wait_for(
        "the engine counting 13 deliveries and 13 bounces",
        lambda: (
            (c := health.parse_engine_metrics(eng.metrics_text()).get((SOURCE, "default")))
            and (c.delivered, c.bounced) == (13, 13)
            and c
        ),
        60,
        every=0.5,
    )
    wait_for(
        "Prometheus catching up",
        lambda: prom.value(total) == float(truth.bounced),
        60,
        every=0.5,
    )
    # increase() extrapolates from the samples it has: once the series have a few dozen
    # samples after the traffic, it is within a couple of counts of the truth.
    samples = 'count_over_time(mailfleet_delivery_attempts_total{result="bounced"}[10m])'
    wait_for("30 more samples", lambda: (prom.value(samples) or 0) >= 40, 120, every=1)

    result = check(eng, a_pool(prometheus={"url": prom.url}))
    figures = result.status["health"][0]
    # increase() extrapolates over the window: within a couple of the engine's own counts.
    assert abs(figures["bounced"] - truth.bounced) <= 2, figures
    assert abs(figures["delivered"] - truth.delivered) <= 2, figures
    assert figures["bounceRate"] == pytest.approx(truth.bounced / truth.attempts, abs=0.1)
    verdict = result.verdicts.ips[SOURCE]
    assert verdict.state == "quarantined" and verdict.reason.startswith("BounceRate")

    # Without Prometheus, a first look at a pod is a baseline: nothing is judged yet.
    local = check(eng, a_pool())
    assert local.status["health"][0]["attempts"] == 0
    assert SOURCE not in local.verdicts.ips

    # Prometheus unreachable: the operator's own scrapes are used (logged, not fatal).
    down = check(eng, a_pool(prometheus={"url": f"http://127.0.0.1:{free_port()}"}))
    assert down.status["health"][0]["attempts"] == 0
