"""The chart's delivery KPI alerts (templates/_delivery_rules.tpl), run by `promtool test rules`
on synthetic series: each fires on the situation it is named after, and stays quiet on a healthy
pool next to it (and on the near misses: too little traffic to judge, a rate that was always
there, a baseline too small to compare against).

helm is hack/helm.sh's pinned build; promtool comes from Debian's `prometheus` package.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
NAMESPACE = "mail-system"
JOB = "mf-mailfleet-metrics"
RUNBOOK = "https://runbooks.example/mailfleet"
DELIVERY_ALERTS = {
    "MailfleetDeliveryRateLow",
    "MailfleetHardBounceRateHigh",
    "MailfleetComplaintRateHigh",
    "MailfleetComplaintRateCritical",
    "MailfleetDeferralSpike",
    "MailfleetSendRateDrop",
    "MailfleetSendRateSurge",
    "MailfleetQueueMessageOld",
    "MailfleetWarmupHeld",
    "MailfleetNoHealthyIP",
    "MailfleetNoHealthyIPForProvider",
}


def rules(helm: str, *sets: str) -> dict[str, Any]:
    args = [helm, "template", "mf", str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", "1.34.4", "--set", "prometheus.rules.enabled=true"]
    args += ["--set", f"prometheus.rules.runbookBaseURL={RUNBOOK}"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "PrometheusRule"]
    assert len(docs) == 1
    spec: dict[str, Any] = docs[0]["spec"]
    return spec


def series(metric: str, **labels: str) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def engine(pool: str = "transactional", pod: str = "0", **labels: str) -> dict[str, str]:
    """Labels of an engine series as the chart's PodMonitor scrapes it."""
    return {
        "namespace": "mail",
        "mailfleet_io_pool": pool,
        "pod": f"{pool}-{pod}",
        **labels,
    }


OPERATOR = {"job": JOB, "namespace": NAMESPACE}


def counter(per_step: Sequence[float]) -> str:
    """promtool values of a counter that grows by per_step[i] at step i (from 0)."""
    total, out = 0.0, ["0"]
    for inc in per_step:
        total += inc
        out.append(f"{total:g}")
    return " ".join(out)


def attempts(result: str, per_step: Sequence[float], **labels: str) -> dict[str, str]:
    return {
        "series": series(
            "mailfleet_delivery_attempts_total",
            **engine(**labels),
            domain="x.test",
            result=result,
            reply_class="ok" if result == "delivered" else "throttled",
        ),
        "values": counter(per_step),
    }


def fired(name: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": labels} for labels in expected],
    }


def pool_labels(pool: str, severity: str = "warning", **more: str) -> dict[str, str]:
    return {"severity": severity, "namespace": "mail", "mailfleet_io_pool": pool, **more}


DAY_1M = 24 * 60
DAY_5M = 24 * 12
DAY_10M = 24 * 6

# (test id, extra --set values, one promtool test: interval, input_series, alert_rule_test)
CASES: list[tuple[str, list[str], dict[str, Any]]] = [
    (
        "delivery-rate-below-the-floor",
        [],
        {
            "interval": "1m",
            "input_series": [
                attempts("delivered", [50] * 90, pool="bad"),
                attempts("deferred", [50] * 90, pool="bad"),
                attempts("delivered", [95] * 90, pool="good"),
                attempts("deferred", [5] * 90, pool="good"),
                # Half deferred, but 20 attempts in 30 minutes say nothing.
                attempts("delivered", [1 if i % 3 == 0 else 0 for i in range(90)], pool="tiny"),
                attempts("deferred", [1 if i % 3 == 0 else 0 for i in range(90)], pool="tiny"),
            ],
            "alert_rule_test": [
                fired("MailfleetDeliveryRateLow", "10m"),
                fired("MailfleetDeliveryRateLow", "60m", pool_labels("bad")),
            ],
        },
    ),
    (
        "delivery-rate-drops-against-its-own-day",
        ["prometheus.rules.delivery.successRateMin=0.5"],
        {
            "interval": "5m",
            "input_series": [
                # A day at 100 %, then 70 %: above the floor, 30 points under its own day.
                attempts("delivered", [100] * DAY_5M + [70] * 24, pool="dropped"),
                attempts("deferred", [0] * DAY_5M + [30] * 24, pool="dropped"),
                # Always 70 %: no drop, and above the floor.
                attempts("delivered", [70] * (DAY_5M + 24), pool="steady"),
                attempts("deferred", [30] * (DAY_5M + 24), pool="steady"),
            ],
            "alert_rule_test": [
                fired("MailfleetDeliveryRateLow", "23h"),
                fired("MailfleetDeliveryRateLow", "25h", pool_labels("dropped")),
            ],
        },
    ),
    (
        "hard-bounces-per-provider",
        [],
        {
            "interval": "1m",
            "input_series": [
                attempts("delivered", [90] * 90, provider="gmail"),
                attempts("bounced", [10] * 90, provider="gmail"),
                attempts("delivered", [99] * 90, provider="outlook"),
                attempts("bounced", [1] * 90, provider="outlook"),
                # Every attempt bounces, but 60 in an hour is below minAttempts.
                attempts("bounced", [1] * 90, provider="yahoo"),
            ],
            "alert_rule_test": [
                fired("MailfleetHardBounceRateHigh", "10m"),
                fired(
                    "MailfleetHardBounceRateHigh",
                    "80m",
                    pool_labels("transactional", provider="gmail"),
                ),
            ],
        },
    ),
    (
        "complaints-against-the-providers-lines",
        [],
        {
            "interval": "10m",
            "input_series": [
                *(
                    attempts("delivered", [1000] * (DAY_10M + 18), provider="gmail", source_ip=ip)
                    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3")
                ),
                attempts(
                    "delivered", [5] * (DAY_10M + 18), provider="gmail", source_ip="192.0.2.4"
                ),
                # ARF reports reach whichever pod the feedback address routes to.
                *(
                    {
                        "series": series(
                            "mailfleet_complaints_total",
                            **engine(pod="1"),
                            source_ip=ip,
                            provider="gmail",
                        ),
                        "values": counter([per] * (DAY_10M + 18)),
                    }
                    for ip, per in (
                        ("192.0.2.1", 2),  # 0.2 %: warning
                        ("192.0.2.2", 5),  # 0.5 %: critical
                        ("192.0.2.3", 0.5),  # 0.05 %: fine
                        ("192.0.2.4", 1),  # 20 % of 720 a day: too few to judge
                    )
                ),
            ],
            "alert_rule_test": [
                fired(
                    "MailfleetComplaintRateHigh",
                    "26h",
                    pool_labels("transactional", provider="gmail", source_ip="192.0.2.1"),
                ),
                fired(
                    "MailfleetComplaintRateCritical",
                    "26h",
                    pool_labels(
                        "transactional", "critical", provider="gmail", source_ip="192.0.2.2"
                    ),
                ),
            ],
        },
    ),
    (
        "deferral-spike-against-the-pools-own-day",
        [],
        {
            "interval": "5m",
            "input_series": [
                attempts("delivered", [98] * DAY_5M + [70] * 24, provider="gmail"),
                attempts("deferred", [2] * DAY_5M + [30] * 24, provider="gmail"),
                # Outlook always defers a fifth: that is its normal, not a spike.
                attempts("delivered", [80] * (DAY_5M + 24), provider="outlook"),
                attempts("deferred", [20] * (DAY_5M + 24), provider="outlook"),
                # Yahoo never deferred before: the first deferrals are a spike too.
                attempts("delivered", [100] * DAY_5M + [60] * 24, provider="yahoo"),
                attempts("deferred", [0] * DAY_5M + [40] * 24, provider="yahoo"),
            ],
            "alert_rule_test": [
                fired("MailfleetDeferralSpike", "23h"),
                fired(
                    "MailfleetDeferralSpike",
                    "25h",
                    pool_labels("transactional", provider="gmail"),
                    pool_labels("transactional", provider="yahoo"),
                ),
            ],
        },
    ),
]


def daily(busy: float, quiet: float, steps_per_hour: int, days: int, extra: int) -> list[float]:
    """Per-step increments of a sender busy from 08:00 to 20:00 each day, quiet otherwise."""
    out = []
    for i in range(days * 24 * steps_per_hour + extra):
        hour = (i // steps_per_hour) % 24
        out.append(busy if 8 <= hour < 20 else quiet)
    return out


SEND_STEPS = DAY_10M + 18  # a day, then 3 hours
CASES += [
    (
        "send-rate-against-the-same-hour",
        [],
        {
            "interval": "10m",
            "input_series": [
                # 1/s for a day and an hour, then a tenth of it.
                attempts("delivered", [600] * (DAY_10M + 6) + [60] * 12, pool="stopped"),
                # 0.2/s, then five times that.
                attempts("delivered", [120] * (DAY_10M + 6) + [600] * 12, pool="surging"),
                attempts("delivered", [600] * SEND_STEPS, pool="steady"),
                # Busy by day, quiet by night: the same hour the day before says it is normal.
                attempts("delivered", daily(1200, 30, 6, 1, 18), pool="office"),
                # 0.01/s the day before, then 0.5/s: a baseline too small to compare with.
                attempts("delivered", [6] * (DAY_10M + 6) + [300] * 12, pool="night"),
            ],
            "alert_rule_test": [
                fired("MailfleetSendRateDrop", "24h50m"),
                fired("MailfleetSendRateSurge", "24h50m"),
                fired("MailfleetSendRateDrop", "26h50m", pool_labels("stopped")),
                fired("MailfleetSendRateSurge", "26h50m", pool_labels("surging")),
            ],
        },
    ),
    (
        "oldest-queued-message",
        [],
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series("mailfleet_queue_oldest_age_seconds", **engine(pod="1")),
                    "values": "0+60x300",
                },
                {
                    "series": series("mailfleet_queue_oldest_age_seconds", **engine(pool="bulk")),
                    "values": "600x300",
                },
            ],
            "alert_rule_test": [
                fired("MailfleetQueueMessageOld", "245m"),
                fired("MailfleetQueueMessageOld", "260m", pool_labels("transactional")),
            ],
        },
    ),
    (
        "warmup-held-for-a-day",
        [],
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        "mailfleet_warmup_phase",
                        **OPERATOR,
                        warmup_namespace="mail",
                        warmup=w,
                        pool="transactional",
                        phase=phase,
                    ),
                    "values": values,
                }
                for w, phase, values in (
                    ("held", "Holding", "1x1800"),
                    ("warming", "Warming", "1x1800"),
                    # Held half a day, then warming again.
                    ("recovered", "Holding", "1x720 _x1080"),
                    ("recovered", "Warming", "_x720 1x1080"),
                )
            ],
            "alert_rule_test": [
                fired("MailfleetWarmupHeld", "20h"),
                fired(
                    "MailfleetWarmupHeld",
                    "26h",
                    {
                        "severity": "warning",
                        "warmup_namespace": "mail",
                        "warmup": "held",
                        "pool": "transactional",
                    },
                ),
            ],
        },
    ),
    (
        "no-healthy-ip",
        [],
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        "mailfleet_pool_ip_state",
                        **OPERATOR,
                        pool_namespace="mail",
                        pool=pool,
                        address=address,
                        state=state,
                    ),
                    "values": "1x20",
                }
                for pool, address, state in (
                    ("stranded", "192.0.2.1", "quarantined"),
                    ("stranded", "192.0.2.2", "standby"),
                    ("fine", "192.0.2.3", "quarantined"),
                    ("fine", "192.0.2.4", "active"),
                    ("new", "192.0.2.5", "warming"),
                )
            ]
            + [
                {
                    "series": series(
                        "mailfleet_pool_condition",
                        **OPERATOR,
                        pool_namespace="mail",
                        pool="judged",
                        type="Ready",
                        status="False",
                        reason="NoHealthyIP",
                    ),
                    "values": "1x20",
                }
            ],
            "alert_rule_test": [
                fired("MailfleetNoHealthyIP", "3m"),
                fired(
                    "MailfleetNoHealthyIP",
                    "10m",
                    {"severity": "critical", "pool_namespace": "mail", "pool": "judged"},
                    {"severity": "critical", "pool_namespace": "mail", "pool": "stranded"},
                ),
            ],
        },
    ),
    (
        "no-healthy-ip-for-a-provider",
        [],
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": series(
                        f"mailfleet_shaping_{what}",
                        **engine(pod=pod),
                        source_ip=ip,
                        provider=provider,
                    ),
                    "values": values,
                }
                for what, pod, ip, provider, values in (
                    ("quarantined", "0", "192.0.2.1", "outlook", "1x20"),
                    ("quarantined", "1", "192.0.2.2", "outlook", "0x20"),
                    ("suspended", "1", "192.0.2.2", "outlook", "1x20"),
                    ("quarantined", "0", "192.0.2.1", "gmail", "1x20"),
                    ("quarantined", "1", "192.0.2.2", "gmail", "0x20"),
                    ("suspended", "1", "192.0.2.2", "gmail", "0x20"),
                )
            ],
            "alert_rule_test": [
                fired("MailfleetNoHealthyIPForProvider", "3m"),
                fired(
                    "MailfleetNoHealthyIPForProvider",
                    "10m",
                    pool_labels("transactional", "critical", provider="outlook"),
                ),
            ],
        },
    ),
]


def test_every_delivery_alert_has_a_test_severity_and_a_runbook(helm: str) -> None:
    groups = {g["name"]: g["rules"] for g in rules(helm)["groups"]}
    alerts = {r["alert"]: r for r in groups["mailfleet-delivery"]}
    assert set(alerts) == DELIVERY_ALERTS
    tested = {t["alertname"] for _, _, case in CASES for t in case["alert_rule_test"]}
    assert tested == DELIVERY_ALERTS
    docs = (REPO / "docs" / "operations.md").read_text()
    for name, a in alerts.items():
        assert a["labels"]["severity"] in ("warning", "critical")
        assert a["annotations"]["summary"] and a["annotations"]["description"]
        assert a["annotations"]["runbook_url"] == f"{RUNBOOK}#{name.lower()}"
        assert f"### {name}" in docs, f"docs/operations.md has no runbook for {name}"


@pytest.mark.parametrize(
    ("sets", "case"), [(s, c) for _, s, c in CASES], ids=[i for i, _, _ in CASES]
)
def test_alert_fires_on_its_situation_and_not_on_a_healthy_pool(
    helm: str, promtool: str, tmp_path: Path, sets: list[str], case: dict[str, Any]
) -> None:
    spec = rules(helm, *sets)
    for g in spec["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)  # promtool compares all annotations or none
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [case]})
    )
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_complaint_alert_says_where_and_how_much(
    helm: str, promtool: str, tmp_path: Path
) -> None:
    """What the on-call reads: the rate, the IP, the provider, the pool and the runbook."""
    spec = rules(helm)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    case = dict(CASES[3][2])
    case["alert_rule_test"] = [
        {
            "eval_time": "26h",
            "alertname": "MailfleetComplaintRateCritical",
            "exp_alerts": [
                {
                    "exp_labels": pool_labels(
                        "transactional", "critical", provider="gmail", source_ip="192.0.2.2"
                    ),
                    "exp_annotations": {
                        "summary": "Complaint rate 0.5% from 192.0.2.2 at gmail",
                        "description": "0.5% of the messages SendingPool mail/transactional"
                        " delivered from 192.0.2.2 to gmail over the last 1d were reported as"
                        " spam (above 0.003). Providers throttle and then block senders above"
                        " 0.3 %.",
                        "runbook_url": f"{RUNBOOK}#mailfleetcomplaintratecritical",
                    },
                }
            ],
        }
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [case]})
    )
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
