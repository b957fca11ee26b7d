"""Every query of the chart's Grafana dashboard (panels and template variables) returns data
from a real Prometheus (Debian's) that scrapes a running engine, labelled as the chart's
PodMonitor labels it, and a running operator: a metric or label name that is wrong, or that the
code stopped exporting, makes its panel come back empty and fails here, naming the panel.

The engine delivers, bounces and defers mail to a scripted MX from one source IP (warmup cap on,
two providers) and takes one ARF complaint; the operator reconciles a pool (no pods) with a
warmup, so its pool, IP and warmup gauges are there."""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc, message
from fixtures.operator import kget, wait_for
from fixtures.procs import Proc, free_port
from fixtures.smtppeers import SmtpCall, swaks

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "mailfleet" / "dashboards" / "mailfleet.json"
ARF = REPO / "tests" / "data" / "arf" / "rfc5965-b2.eml"
SOURCE_IP = "127.0.0.2"
POOL = "transactional"
# The dashboard's variables are set to one value each, not "All" (.*): a matcher on a misspelt
# label would match everything with .* but matches nothing with a value.
VARIABLES = {"$pool": POOL, "$provider": "gmail", "$__rate_interval": "1m"}


def replies(call: SmtpCall) -> str | None:
    local = (call.address or "").strip("<>").partition("@")[0]
    if local.startswith("gone"):
        return "550 5.1.1 The email account that you tried to reach does not exist"
    if local.startswith("later"):
        return "451 4.7.0 rate limit exceeded, try again later"
    return None


@pytest.fixture
def engine(mta_engine: Callable[..., EngineProc], recording_mx: Any) -> EngineProc:
    mx = recording_mx()
    mx.on_rcpt = replies
    eng: EngineProc = mta_engine(
        {
            "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
            "retry": {"initial": "1h"},
            "delivery": {"sourceIPs": [{"address": SOURCE_IP}]},
            "shaping": {
                "providers": [
                    {"name": "gmail", "match": {"recipientDomains": ["gmail.test"]},
                     "rules": [{"match": "rate limit", "action": "throttle"}]},
                    {"name": "outlook", "match": {"recipientDomains": ["outlook.test"]}},
                ],
                "warmup": [{"address": SOURCE_IP, "provider": "gmail", "day": 1, "dailyCap": 500}],
            },
            "suppression": {
                "feedbackAddresses": ["fbl@mta.test"],
                "feedbackSources": ["127.0.0.9/32"],
            },
        }
    )  # fmt: skip
    return eng


def send_traffic(eng: EngineProc) -> None:
    for rcpts in (
        ["a@gmail.test", "b@gmail.test", "gone@gmail.test", "later@gmail.test"],
        ["c@outlook.test", "gone2@outlook.test", "later2@outlook.test"],
    ):
        eng.send("app@example.test", rcpts, message("dashboard traffic"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 2,
        timeout=60,
        what="the deliveries, bounces and deferrals",
    )
    report = ARF.read_bytes().replace(b"192.0.2.1", SOURCE_IP.encode())
    report = report.replace(b"user@example.com", b"a@gmail.test")
    report = report.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    done = swaks(f"127.0.0.1:{eng.smtp_port}", local_interface="127.0.0.9",
                 from_="abusedesk@example.com", to="fbl@mta.test", data=report)  # fmt: skip
    assert "complaint recorded" in done.stdout, done.stdout


@pytest.fixture
def operator_port(mailfleet_crds: Any, kube_namespace: str, run_operator: Any) -> int:
    kube, ns = mailfleet_crds, kube_namespace
    objs = [
        {"apiVersion": "mailfleet.io/v1alpha1", "kind": "SendingPool",
         "metadata": {"name": "transactional", "namespace": ns},
         "spec": {"replicas": {"min": 0, "max": 1, "desired": 0},
                  "ips": [{"address": "192.0.2.10", "hostname": "mta1.example.com"},
                          {"address": "192.0.2.11", "hostname": "mta2.example.com"}]}},
        {"apiVersion": "mailfleet.io/v1alpha1", "kind": "IPWarmup",
         "metadata": {"name": "mta2", "namespace": ns},
         "spec": {"poolRef": "transactional", "addresses": ["192.0.2.11"]}},
    ]  # fmt: skip
    for o in objs:
        kube.kubectl("apply", "-f", "-", input=json.dumps(o))
    op = run_operator(ns)
    wait_for(
        "the warmup's status",
        lambda: (kget(kube, ns, "ipwarmup", "mta2") or {}).get("status", {}).get("phase"),
        60,
    )
    port: int = op.metrics_port
    return port


@pytest.fixture
def prometheus(
    tmp_path: Path, engine: EngineProc, operator_port: int, kube_namespace: str
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed (Debian package `prometheus`: make deps)")
    port = free_port()
    # As the chart's PodMonitor labels an engine pod's series (the pool's namespace, the pod's
    # mailfleet.io/pool label).
    labels = {"namespace": kube_namespace, "mailfleet_io_pool": POOL, "pod": f"{POOL}-0"}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "mailfleet-mta",
             "static_configs": [{"targets": [f"127.0.0.1:{engine.admin_port}"], "labels": labels}]},
            {"job_name": "mailfleet-operator",
             "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    proc = Proc(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        name="prometheus", log_dir=tmp_path / "logs",
    )  # fmt: skip
    try:
        proc.wait_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as rsp:
        body = json.loads(rsp.read())
    assert body["status"] == "success", body
    return body["data"]


def expand(expr: str, namespace: str) -> str:
    for var, value in {**VARIABLES, "$namespace": namespace}.items():
        expr = expr.replace(var, value)
    assert "$" not in expr.replace("${datasource}", ""), f"unknown variable in {expr}"
    return expr


def panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    return [p for p in dash["panels"] if p.get("targets")]


def test_the_dashboard_covers_what_an_operator_of_the_fleet_watches() -> None:
    dash = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Per pool and provider", "Per IP and provider", "Warmup",
                    "Queue", "Latency"]  # fmt: skip
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for metric in (
        "mailfleet_shaping_rate",
        "mailfleet_warmup_cap",
        "mailfleet_complaints_total",
        "mailfleet_queue_oldest_age_seconds",
        "mailfleet_delivery_latency_seconds",
    ):
        assert metric in exprs  # fmt: skip


def test_every_panel_query_returns_data_from_a_real_prometheus(
    engine: EngineProc, prometheus: str, kube_namespace: str
) -> None:
    send_traffic(engine)
    dash = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]

    def empty() -> list[str]:
        out = []
        for title, expr in queries:
            result = api(prometheus, "query", query=expand(expr, kube_namespace))["result"]
            if not result:
                out.append(f"{title}: {expr}")
        return out

    # Scrapes every second; rates need two samples after the traffic.
    time.sleep(3)
    deadline = time.monotonic() + 60
    missing = empty()
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = empty()
    assert missing == [], "panels whose query returns nothing:\n" + "\n".join(missing)
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(
            r"label_values\((.+), (\w+)\)", expand(var["query"]["query"], kube_namespace)
        )
        assert m, var["query"]
        values = api(prometheus, f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
        assert values, f"variable {var['name']} has no values"
