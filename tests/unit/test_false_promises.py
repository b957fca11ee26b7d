"""Promises the API made that the code did not keep (issue 20's audit), each checked where a
user would see it: the labels Prometheus puts on engine series, the QUARANTINED column, the
scale status, warmup gates, the pod count the autoscaler picks and the proxies a pool takes.
The wire-level ones (connections per provider, the connections gauge) are in
tests/mta/test_connection_reuse.py; Argo CD's in tests/unit/test_argocd_health.py."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.objects import NOW, child, inputs, pool, warmup
from pydantic import ValidationError

from mailfleet.mta.config import EngineConfig
from mailfleet.operator.api.crd_models import Egress, WarmupGates
from mailfleet.operator.api.naming import pool_name
from mailfleet.operator.decide import render, statuses
from mailfleet.operator.decide import warmup as wu
from mailfleet.operator.decide.autoscale import Recommendation, decide
from mailfleet.operator.decide.health import Counts
from mailfleet.operator.decide.policy_merge import merge_policies

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
POOL_LABEL = "mailfleet_io_pool"


# --------------------------------------------------------------------------- pool label


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _relabel(labels: dict[str, str], rule: dict[str, Any]) -> None:
    """Prometheus' `replace` relabeling (the only action the chart uses)."""
    assert rule.get("action", "replace") == "replace", rule
    value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["sourceLabels"])
    m = re.fullmatch(rule.get("regex", "(.*)"), value)
    if m is None:
        return
    out = m.expand(rule.get("replacement", "$1").replace("$", "\\"))
    if out:
        labels[rule["targetLabel"]] = out
    else:
        labels.pop(rule["targetLabel"], None)


def scraped_labels(pod: dict[str, Any], podmonitor: dict[str, Any]) -> dict[str, str]:
    """The target labels an engine pod's series get from the chart's PodMonitor, as Prometheus
    (kubernetes_sd, role pod) and the Prometheus Operator's generated relabelings give them."""
    meta = pod["metadata"]
    pod_labels: dict[str, str] = meta.get("labels") or {}
    spec = podmonitor["spec"]
    selected = spec["selector"].get("matchLabels", {})
    assert selected.items() <= pod_labels.items(), "the PodMonitor does not select engine pods"
    labels = {f"__meta_kubernetes_pod_label_{_sanitize(k)}": v for k, v in pod_labels.items()}
    labels |= {"namespace": meta["namespace"], "pod": meta["name"]}
    rules = [
        {
            "sourceLabels": [f"__meta_kubernetes_pod_label_{_sanitize(name)}"],
            "targetLabel": _sanitize(name),
            "regex": "(.+)",
        }
        for name in spec.get("podTargetLabels") or []
    ]
    (endpoint,) = spec["podMetricsEndpoints"]
    for rule in [*rules, *(endpoint.get("relabelings") or [])]:
        _relabel(labels, rule)
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _chart(helm: str, *sets: str) -> list[dict[str, Any]]:
    args = [helm, "template", "mf", str(CHART), "-n", "mail-system", "--kube-version", "1.34.4"]
    for s in ("prometheus.podMonitor.enabled=true", "prometheus.rules.enabled=true", *sets):
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_engine_series_carry_the_pool_of_the_pods_the_operator_renders(helm: str) -> None:
    """The alerts and the dashboard group engine series by mailfleet_io_pool; the label must
    come from a pod as the operator renders it, not from a static scrape config."""
    rendered = render.render_pool(inputs())
    p = inputs().pool
    sts = child(rendered, "StatefulSet", pool_name(p))
    template = sts["spec"]["template"]
    pod = {
        "metadata": {
            **template["metadata"],
            "namespace": p.metadata["namespace"],
            "name": f"{pool_name(p)}-0",
        }
    }
    objs = _chart(helm)
    (podmonitor,) = [o for o in objs if o["kind"] == "PodMonitor"]
    labels = scraped_labels(pod, podmonitor)
    assert labels.get(POOL_LABEL) == pool_name(p), labels
    # What the chart's queries group by is what the scrape gives.
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    engine_exprs = [
        r["expr"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if "mailfleet_queue_recipients" in r.get("expr", "")
    ]
    assert engine_exprs and all(POOL_LABEL in e for e in engine_exprs)
    dashboard = (CHART / "dashboards" / "mailfleet.json").read_text()
    assert (
        f'label_values(mailfleet_queue_messages{{namespace=~\\"$namespace\\"}}, {POOL_LABEL})'
        in dashboard
    )


def test_extra_pod_target_labels_still_apply(helm: str) -> None:
    objs = _chart(helm, "prometheus.podMonitor.podTargetLabels={app.kubernetes.io/component}")
    (podmonitor,) = [o for o in objs if o["kind"] == "PodMonitor"]
    p = inputs().pool
    sts = child(render.render_pool(inputs()), "StatefulSet", pool_name(p))
    pod = {"metadata": {**sts["spec"]["template"]["metadata"], "namespace": "ns1", "name": "x-0"}}
    labels = scraped_labels(pod, podmonitor)
    assert labels["app_kubernetes_io_component"] == "mta"
    assert labels[POOL_LABEL] == pool_name(p)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def admitted_to_admin_port(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a pod with `labels` in another namespace may reach the admin port."""
    _, admin = policy["spec"]["ingress"]
    return any(
        "namespaceSelector" in peer and _selects(peer["podSelector"], labels)
        for peer in admin["from"]
    )


@pytest.mark.parametrize(
    "sets", [(), ("nameOverride=mail",), ("fullnameOverride=custom",)], ids=str
)
def test_the_operator_reaches_the_engines_admin_port_under_a_name_override(
    helm: str, sets: tuple[str, ...]
) -> None:
    """The engines' NetworkPolicy admits the chart's operator pods (config pushes, status
    polls, drains) whatever the chart's nameOverride made their app.kubernetes.io/name."""
    p = inputs().pool
    policy = child(render.render_pool(inputs()), "NetworkPolicy", f"{pool_name(p)}-admin")
    (deploy,) = [o for o in _chart(helm, *sets) if o["kind"] == "Deployment"]
    operator_pod = deploy["spec"]["template"]["metadata"]["labels"]
    assert admitted_to_admin_port(policy, operator_pod), operator_pod
    # Prometheus pods as the Prometheus Operator labels them; nothing else.
    assert admitted_to_admin_port(policy, {"app.kubernetes.io/name": "prometheus"})
    assert not admitted_to_admin_port(policy, {"app.kubernetes.io/name": "something-else"})


# --------------------------------------------------------------------------- QUARANTINED


def test_the_quarantined_column_counts_the_health_checks_quarantines_too() -> None:
    """MailfleetIPQuarantined fires on the operator's quarantine (status.ips); the column must
    not read 0 then. An IP quarantined both ways counts once."""
    status = {
        "ips": [
            {"address": "192.0.2.1", "state": "quarantined", "reason": "BounceRate"},
            {"address": "192.0.2.2", "state": "active"},
            {"address": "192.0.2.3", "state": "active"},
        ],
        "engineQuarantines": [
            {"address": "192.0.2.3", "provider": "outlook", "pod": "x-0", "until": 1},
            {"address": "192.0.2.1", "provider": "gmail", "pod": "x-0", "until": 1},
        ],
    }
    assert statuses.quarantined_ip_count(status) == 2
    assert statuses.quarantined_ip_count({"ips": status["ips"]}) == 1
    assert statuses.quarantined_ip_count({}) == 0


# --------------------------------------------------------------------------- scale status


def _pool(autoscaling: bool, **replicas: int) -> Any:
    return pool(
        replicas={"min": 1, "max": 10, **replicas},
        autoscaling={"enabled": autoscaling},
    )


def test_scale_reason_says_external_when_someone_else_scaled() -> None:
    """kubectl scale (or an HPA) moved replicas.desired from 2 to 4: the status says so and
    when, instead of the autoscaler's note from before it was switched off."""
    stale = ("queue 12000 messages ...: scaling up to 2", NOW - timedelta(days=3))
    later = NOW + timedelta(hours=1)
    fields = statuses.scale_status(_pool(False, desired=4), stale, 4, {"desiredReplicas": 2}, later)
    assert fields["scaleReason"].startswith("external: replicas.desired")
    assert "from 2 to 4" in fields["scaleReason"]
    assert fields["lastScaleTime"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Nothing moved: the last reason stands (a merge patch keeps it).
    assert (
        statuses.scale_status(_pool(False, desired=4), stale, 4, {"desiredReplicas": 4}, later)
        == {}
    )
    # The autoscaler's own decision while it is on.
    on = statuses.scale_status(_pool(True), stale, 2, {"desiredReplicas": 1}, later)
    assert on["scaleReason"] == stale[0]
    # The bounds moved it.
    clamped = statuses.scale_status(
        _pool(False, min=3, desired=1), None, 3, {"desiredReplicas": 1}, later
    )
    assert "clamped to replicas [3, 10]" in clamped["scaleReason"]


# --------------------------------------------------------------------------- warmup gates


def test_min_usage_compares_with_the_cap_of_every_address_of_the_warmup() -> None:
    """Two addresses at a cap of 100 each, 120 delivered in all: 60 % of each IP's cap, over
    minUsage 0.5. Compared with one address's cap (as before) it looked like 120 % used; with
    three addresses (300) it is 40 %, under the gate."""
    gates = WarmupGates(min_attempts=20, min_usage=0.5)
    today = {"gmail": Counts(120, 120), "*": Counts(120, 120)}
    assert wu.gate_verdict(gates, today, 100, addresses=2).advance
    held = wu.gate_verdict(gates, today, 100, addresses=3)
    assert not held.advance and "120 of the day's cap of 300 (3 IPs at 100)" in held.reason


def test_capped_addresses_are_the_warmups_addresses_in_the_pool() -> None:
    p = pool()
    in_pool = [str(ip.address) for ip in p.spec.ips]
    w = warmup(addresses=[*in_pool[:2], "198.51.100.9"])
    assert wu.capped_addresses(w, p) == 2
    assert wu.capped_addresses(warmup(addresses=["198.51.100.9"]), p) == 1


# --------------------------------------------------------------------------- replicas.min 0

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_autoscaler_never_stops_a_pool_with_min_zero() -> None:
    """With replicas.min 0 and an empty queue, the autoscaler used to go to 0 pods: then no pod
    takes mail or reports a queue, and nothing ever scales the pool up again."""
    history = (Recommendation(T0, 1),)
    d = decide(1, 0, 100, 0, 5, history, T0 + timedelta(seconds=601), 600.0)
    assert d.replicas == 1
    # A stopped pool with the autoscaler switched on comes back to one pod.
    assert decide(0, None, 100, 0, 5, (), T0, 600.0).replicas == 1


def test_min_zero_and_desired_zero_stop_the_pool() -> None:
    """What stops a pool: replicas.desired 0 (kubectl scale --replicas=0) with min 0."""
    p = pool(replicas={"min": 0, "max": 3, "desired": 0})
    rendered = render.render_pool(inputs(p))
    sts = child(rendered, "StatefulSet", pool_name(p))
    assert sts["spec"]["replicas"] == 0
    ready = next(c for c in rendered.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ScaledToZero"


# --------------------------------------------------------------------------- egress.proxy


@pytest.mark.parametrize(
    "proxy", ["socks5h://proxy.example:1080", "http://proxy.example:3128", "socks5://proxy:0"]
)
def test_a_proxy_the_engine_refuses_is_refused_naming_the_field(proxy: str) -> None:
    with pytest.raises(ValidationError) as e:
        Egress.model_validate({"mode": "socks5", "proxy": proxy})
    assert "proxy" in str(e.value)


@pytest.mark.parametrize(
    "proxy",
    ["socks5://proxy.example:1080", "socks5://10.0.0.1:1080", "socks5://[2001:db8::1]:1080"],
)
def test_every_proxy_the_pool_accepts_renders_an_engine_config(proxy: str) -> None:
    p = pool(egress={"mode": "socks5", "proxy": proxy})
    rendered = render.render_pool(inputs(p))
    assert rendered.config is not None, rendered.status["conditions"]
    assert isinstance(rendered.config, EngineConfig)
    assert rendered.config.delivery.egress.proxy == proxy


# --------------------------------------------------------------------------- perIP count


def test_the_policy_count_reaches_the_engine_config() -> None:
    """The operator renders perIP.maxMessagesPerConnection for each provider (the engine
    honours it: tests/mta/test_connection_reuse.py)."""
    rendered = render.render_pool(inputs())
    assert rendered.config is not None
    merged = merge_policies(inputs().policies)
    want = {p.name: p.per_ip.max_messages_per_connection for p in merged.providers}
    got = {p.name: p.per_ip.max_messages_per_connection for p in rendered.config.shaping.providers}
    assert got == want and all(v is not None for v in got.values())
