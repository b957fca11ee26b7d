"""The Helm chart: its RBAC is deploy/rbac.yaml's, it lints, and it renders what an operator
deployment needs (peering replicas, probes on Kopf's liveness endpoint, metrics, least privilege,
non-root), with Prometheus objects only when asked for and alert rules that promtool accepts and
that fire on the situations they are named after.

helm is the pinned build of hack/helm.sh (built once from the Go module proxy, cached in
~/.cache/mailfleet); promtool comes from Debian's `prometheus` package.
"""

from __future__ import annotations

import base64
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
RBAC_SOURCE = REPO / "deploy" / "rbac.yaml"
KUBE_VERSION = "1.34.4"
RELEASE, NAMESPACE = "mf", "mail-system"
FULLNAME = "mf-mailfleet"
ALL_MONITORING = [
    "prometheus.serviceMonitor.enabled=true",
    "prometheus.podMonitor.enabled=true",
    "prometheus.rules.enabled=true",
]


def _load_sync_chart() -> ModuleType:
    name = "mailfleet_hack_sync_chart"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "hack" / "sync-chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sync_chart = _load_sync_chart()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}", pytrace=False)
    return proc


def render(helm: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def operator_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = one(objs, "Deployment")
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


# --------------------------------------------------------------------------- RBAC generator

SAMPLE_RBAC = """
apiVersion: v1
kind: Namespace
metadata: {name: mailfleet-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: mailfleet-operator, namespace: mailfleet-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: mailfleet-operator}
rules:
  - {apiGroups: [mailfleet.io], resources: [sendingpools], verbs: [get, list, watch, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mailfleet-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mailfleet-operator}
subjects: [{kind: ServiceAccount, name: mailfleet-operator, namespace: mailfleet-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: mailfleet-operator-leases, namespace: mailfleet-system}
rules:
  - {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: mailfleet-operator-view, namespace: mailfleet-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects:
  - {kind: ServiceAccount, name: mailfleet-operator, namespace: mailfleet-system}
  - {kind: Group, name: sre, apiGroup: rbac.authorization.k8s.io}
"""


@pytest.fixture
def sample_chart(tmp_path: Path) -> Iterator[Path]:
    """A copy of the chart whose RBAC template is generated from SAMPLE_RBAC."""
    root = tmp_path / "repo"
    shutil.copytree(CHART, root / "charts" / "mailfleet")
    (root / "deploy").mkdir()
    (root / "deploy" / "rbac.yaml").write_text(SAMPLE_RBAC)
    assert sync_chart.main(["--root", str(root)]) == 0
    yield root / "charts" / "mailfleet"


def test_generated_rbac_maps_names_namespaces_and_subjects(helm: str, sample_chart: Path) -> None:
    out = run_helm(
        helm,
        "template",
        RELEASE,
        str(sample_chart),
        "-n",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    source = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(SAMPLE_RBAC)}

    role = one(objs, "ClusterRole", FULLNAME)
    assert role["rules"] == source["ClusterRole", "mailfleet-operator"]["rules"]
    leases = one(objs, "Role", f"{FULLNAME}-leases")
    assert leases["metadata"]["namespace"] == NAMESPACE
    assert leases["rules"] == source["Role", "mailfleet-operator-leases"]["rules"]

    sa = one(objs, "ServiceAccount")
    me = {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    crb = one(objs, "ClusterRoleBinding", FULLNAME)
    assert crb["roleRef"]["name"] == FULLNAME
    assert crb["subjects"] == [me]
    view = one(objs, "RoleBinding", f"{FULLNAME}-view")
    assert view["metadata"]["namespace"] == NAMESPACE
    assert view["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "view",  # not one of the file's roles: left alone
    }
    assert view["subjects"] == [
        me,
        {"kind": "Group", "name": "sre", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    # The chart's own ServiceAccount, not a second one from the file; no Namespace object.
    assert kinds(objs).count("ServiceAccount") == 1
    assert "Namespace" not in kinds(objs)


def test_generator_check_mode_reports_drift(sample_chart: Path) -> None:
    root = sample_chart.parents[1]
    assert sync_chart.main(["--root", str(root), "--check"]) == 0
    src = root / "deploy" / "rbac.yaml"
    src.write_text(src.read_text().replace("verbs: [get, update]", "verbs: [get, update, delete]"))
    assert sync_chart.main(["--root", str(root), "--check"]) == 1
    assert sync_chart.main(["--root", str(root)]) == 0
    assert "- delete" in (sample_chart / "templates" / "rbac.yaml").read_text()


def test_generator_refuses_non_rbac_objects() -> None:
    bad = SAMPLE_RBAC + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
    with pytest.raises(sync_chart.SyncError, match="ConfigMap x: not an RBAC object"):
        sync_chart.render(bad)


# --------------------------------------------------------------------------- the real chart


def rbac_source() -> list[dict[str, Any]]:
    if not RBAC_SOURCE.is_file():
        pytest.skip("deploy/rbac.yaml (the operator's RBAC) is not in the repository yet")
    return [d for d in yaml.safe_load_all(RBAC_SOURCE.read_text()) if d]


def test_chart_rbac_template_is_generated_from_deploy_rbac() -> None:
    rbac_source()
    assert sync_chart.main(["--check"]) == 0, "run `make chart`"


def test_rendered_rbac_grants_exactly_deploy_rbac(helm: str) -> None:
    source = rbac_source()
    # The webhook's own ClusterRole (one VWC, by name) is test_webhook_chart.py's.
    objs = render(helm, "webhook.enabled=false")
    src_roles = {
        (d["kind"], d["metadata"]["name"]): d
        for d in source
        if d["kind"] in ("Role", "ClusterRole")
    }
    rendered_roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    assert len(rendered_roles) == len(src_roles)
    for (kind, name), doc in src_roles.items():
        chart_name = sync_chart.chart_name(name, sync_chart.operator_identity(source)[0])
        chart_name = chart_name.replace('{{ include "mailfleet.fullname" . }}', FULLNAME)
        assert one(objs, kind, chart_name)["rules"] == doc["rules"]
    sa_name = one(objs, "ServiceAccount")["metadata"]["name"]
    for b in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert {"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE} in b["subjects"]


def test_chart_peering_crds_are_deploy_kopf_peering(helm: str) -> None:
    source = REPO / "deploy" / "kopf-peering.yaml"
    if not source.is_file():
        pytest.skip("deploy/kopf-peering.yaml is not in the repository yet")
    want = {
        d["metadata"]["name"]: d["spec"]
        for d in yaml.safe_load_all(source.read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    }
    got = {
        o["metadata"]["name"]: o["spec"]
        for o in render(helm)
        if o["kind"] == "CustomResourceDefinition"
    }
    assert got == want


@pytest.mark.parametrize("monitoring", [False, True], ids=["defaults", "monitoring"])
def test_helm_lint_strict(helm: str, monitoring: bool) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    for s in ALL_MONITORING if monitoring else []:
        args += ["--set", s]
    out = run_helm(helm, *args).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_defaults_render_the_operator_with_peering_and_no_prometheus_objects(helm: str) -> None:
    objs = render(helm)
    # (the RBAC objects are deploy/rbac.yaml's: test_rendered_rbac_grants_exactly_deploy_rbac)
    assert set(kinds(objs)) >= {
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "ClusterKopfPeering",
    }
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & set(kinds(objs))
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"} == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    for o in objs:
        if o["kind"] not in (
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterKopfPeering",
            "ValidatingWebhookConfiguration",
        ):
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]

    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    c = operator_container(objs)
    assert c["args"][:1] == ["operator"]
    assert "--all-namespaces" in c["args"]
    assert "--peering=mailfleet" in c["args"]
    assert "--standalone" not in c["args"]
    assert c["image"] == "mailfleet:0.1.0"
    assert "--engine-image=mailfleet:0.1.0" in c["args"]
    # Both replicas share the peering object the chart creates.
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "mailfleet"
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_probes_and_ports_match_the_operator_arguments(helm: str) -> None:
    c = operator_container(
        render(helm, "liveness.port=8181", "metrics.port=9191", "webhook.port=9444")
    )
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"liveness": 8181, "metrics": 9191, "webhook": 9444}
    assert "--webhook-listen=0.0.0.0:9444" in c["args"]
    assert "--liveness=http://0.0.0.0:8181/healthz" in c["args"]
    assert "--metrics-port=9191" in c["args"]
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "liveness"}


def test_operator_runs_non_root_read_only_without_capabilities(helm: str) -> None:
    objs = render(helm)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = operator_container(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile
    assert 'ENTRYPOINT ["mailfleet"]' in dockerfile


def test_namespaced_mode_watches_the_listed_namespaces_with_a_peering_in_each(helm: str) -> None:
    objs = render(helm, "watch.allNamespaces=false", "watch.namespaces={mail-a,mail-b}")
    args = operator_container(objs)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=mail-a",
        "--namespace=mail-b",
    ]
    assert "ClusterKopfPeering" not in kinds(objs)
    assert sorted(o["metadata"]["namespace"] for o in objs if o["kind"] == "KopfPeering") == [
        "mail-a",
        "mail-b",
    ]


def test_namespaced_mode_without_namespaces_is_refused(helm: str) -> None:
    proc = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
         "--set", "watch.allNamespaces=false"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "watch.namespaces must list at least one namespace" in proc.stderr


def test_standalone_has_no_peering(helm: str) -> None:
    objs = render(helm, "peering.enabled=false", "replicaCount=1")
    args = operator_container(objs)["args"]
    assert "--standalone" in args
    assert not [a for a in args if a.startswith("--peering")]
    assert not {"ClusterKopfPeering", "KopfPeering", "CustomResourceDefinition"} & set(kinds(objs))
    assert "PodDisruptionBudget" not in kinds(objs)  # one replica: nothing to keep available


def test_engine_image_and_extra_args(helm: str) -> None:
    args = operator_container(
        render(
            helm,
            "image.repository=registry.example/mailfleet",
            "image.tag=1.2.3",
            "engineImage=registry.example/mailfleet-mta:1.2.3",
            "extraArgs={--verbose}",
        )
    )["args"]
    assert "--engine-image=registry.example/mailfleet-mta:1.2.3" in args
    assert args[-1] == "--verbose"


# --------------------------------------------------------------------------- Prometheus


def test_service_monitor_scrapes_the_metrics_service(helm: str) -> None:
    objs = render(helm, *ALL_MONITORING)
    svc = one(objs, "Service", f"{FULLNAME}-metrics")
    sm = one(objs, "ServiceMonitor")
    labels = svc["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [svc["spec"]["ports"][0]["name"]]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    pods = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pods.items()
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def rule_groups(helm: str, *sets: str) -> dict[str, Any]:
    rule = one(render(helm, *ALL_MONITORING, *sets), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def test_alerts_cover_what_an_sre_needs(helm: str) -> None:
    # The delivery KPI group has its own tests (test_delivery_alerts.py).
    groups = [g for g in rule_groups(helm)["groups"] if g["name"] != "mailfleet-delivery"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(alerts) == {
        "MailfleetOperatorDown",
        "MailfleetReconcileErrors",
        "MailfleetPoolNotReady",
        "MailfleetDKIMSecretMissing",
        "MailfleetIPQuarantined",
        "MailfleetQueueDepthHigh",
        "MailfleetDrainStuck",
    }
    for a in alerts.values():
        assert a["labels"]["severity"] in ("critical", "warning")
        assert a["annotations"]["summary"] and a["annotations"]["description"]


def test_promtool_accepts_the_rules(helm: str, promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            rule_groups(helm, "prometheus.rules.runbookBaseURL=https://runbooks.example/mailfleet")
        )
    )
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 18 rules found" in proc.stdout


OPERATOR = {"job": f"{FULLNAME}-metrics", "namespace": NAMESPACE}
POOL = {**OPERATOR, "pool_namespace": "mail", "pool": "transactional"}


def series(metric: str, *bases: dict[str, str], **labels: str) -> str:
    """A promtool series selector: metric{label="value", ...}."""
    merged = {k: v for b in bases for k, v in b.items()} | labels
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in merged.items()) + "}"


NOT_READY = {"type": "Ready", "status": "False"}
# Engine series as the PodMonitor labels them (mailfleet_io_pool from the pods' instance label:
# tests/unit/test_false_promises.py derives it from a pod the operator renders).
ENGINE = {"namespace": "mail", "mailfleet_io_pool": "transactional"}

# promtool unit tests: each alert fires on its situation (after its `for`) and not otherwise.
ALERT_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            {"series": series("up", OPERATOR, pod="a"), "values": "1x9 0x30"},
            {"series": series("up", OPERATOR, pod="b"), "values": "1x40"},
        ],
        # One replica down is not an outage.
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "MailfleetOperatorDown", "exp_alerts": []}
        ],
    },
    {
        "interval": "1m",
        "input_series": [{"series": series("up", OPERATOR), "values": "1x9 0x30"}],
        "alert_rule_test": [
            {"eval_time": "12m", "alertname": "MailfleetOperatorDown", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "MailfleetOperatorDown",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": NAMESPACE}}],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": series(
                    "mailfleet_operator_reconciles_total", OPERATOR, kind="SendingPool"
                ),
                "values": "0+10x60",
            },
            {
                "series": series(
                    "mailfleet_operator_reconcile_errors_total", OPERATOR, kind="SendingPool"
                ),
                "values": "0x10 0+5x50",
            },
            {
                "series": series("mailfleet_operator_reconciles_total", OPERATOR, kind="IPWarmup"),
                "values": "0+10x60",
            },
            {
                "series": series(
                    "mailfleet_operator_reconcile_errors_total", OPERATOR, kind="IPWarmup"
                ),
                "values": "0x30 1x30",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "50m",
                "alertname": "MailfleetReconcileErrors",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "kind": "SendingPool"},
                        "exp_annotations": {
                            "summary": "mailfleet SendingPool reconciles are failing",
                            "description": "50% of SendingPool reconciles failed over the last 10"
                            " minutes. See the operator's log and the resources' events (kubectl"
                            " get events --field-selector type=Warning).",
                            "runbook_url": "https://runbooks.example/mailfleet#mailfleetreconcileerrors",
                        },
                    }
                ],
            }
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": series(
                    "mailfleet_pool_condition", POOL, NOT_READY, reason="DKIMSecretMissing"
                ),
                "values": "0x5 1x30",
            },
            {
                "series": series(
                    "mailfleet_pool_condition", POOL, NOT_READY, pool="bulk", reason="Progressing"
                ),
                "values": "1x10 0x20",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "15m",
                "alertname": "MailfleetDKIMSecretMissing",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "pool_namespace": "mail",
                            "pool": "transactional",
                        }
                    }
                ],
            },
            # Not Ready for 10 minutes is a rollout, not an alert.
            {"eval_time": "15m", "alertname": "MailfleetPoolNotReady", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "MailfleetPoolNotReady",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "pool_namespace": "mail",
                            "pool": "transactional",
                            "reason": "DKIMSecretMissing",
                        },
                        "exp_annotations": {
                            "summary": "SendingPool mail/transactional is not Ready",
                            "description": "SendingPool mail/transactional has been Ready=False"
                            " (reason DKIMSecretMissing) for 15m: kubectl -n mail describe"
                            " sendingpool transactional",
                            "runbook_url": "https://runbooks.example/mailfleet#mailfleetpoolnotready",
                        },
                    }
                ],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": series(
                    "mailfleet_pool_ip_state", POOL, address="203.0.113.10", state="quarantined"
                ),
                "values": "0x5 1x5",
            },
            {
                "series": series(
                    "mailfleet_pool_ip_state", POOL, address="203.0.113.11", state="active"
                ),
                "values": "1x10",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "MailfleetIPQuarantined", "exp_alerts": []},
            {
                "eval_time": "8m",
                "alertname": "MailfleetIPQuarantined",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "pool_namespace": "mail",
                            "pool": "transactional",
                            "address": "203.0.113.10",
                        }
                    }
                ],
            },
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": series(
                    "mailfleet_queue_recipients", ENGINE, pod="transactional-0", state="active"
                ),
                "values": "30000x40",
            },
            {
                "series": series(
                    "mailfleet_queue_recipients", ENGINE, pod="transactional-1", state="deferred"
                ),
                "values": "10000x5 30000x35",
            },
            {
                "series": series(
                    "mailfleet_queue_recipients",
                    ENGINE,
                    mailfleet_io_pool="bulk",
                    pod="bulk-0",
                    state="active",
                ),
                "values": "40000x40",
            },
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": "MailfleetQueueDepthHigh", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "MailfleetQueueDepthHigh",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "namespace": "mail",
                            "mailfleet_io_pool": "transactional",
                        }
                    }
                ],
            },
        ],
    },
]


ALERT_TESTS.append(
    {
        "interval": "1m",
        "input_series": [
            {"series": series("mailfleet_pool_draining_pods", POOL), "values": "0x5 2x60"},
            # Handing off for 20 minutes, then stuck at 400 messages.
            {
                "series": series("mailfleet_pool_handoff_left", POOL),
                "values": "0x5 9000-400x20 400x40",
            },
            {"series": series("mailfleet_pool_draining_pods", POOL, pool="bulk"), "values": "0x65"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "MailfleetDrainStuck", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "MailfleetDrainStuck", "exp_alerts": []},
            {
                "eval_time": "62m",
                "alertname": "MailfleetDrainStuck",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "pool_namespace": "mail",
                            "pool": "transactional",
                        }
                    }
                ],
            },
        ],
    }
)

# Alerts whose rendered annotations the promtool tests compare too (promtool compares all or
# nothing per alert); the others have theirs removed for the test.
ANNOTATIONS_CHECKED = {"MailfleetReconcileErrors", "MailfleetPoolNotReady"}


def test_alerts_fire_on_their_situations(helm: str, promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(helm, "prometheus.rules.runbookBaseURL=https://runbooks.example/mailfleet")
    for g in groups["groups"]:
        for r in g["rules"]:
            if r["alert"] not in ANNOTATIONS_CHECKED:
                del r["annotations"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": ALERT_TESTS}
        )
    )
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["watch.allNamespaces=false", "watch.namespaces={a,b}", "verbose=true"],
        ["peering.enabled=false"],
        ["dmarcReports.enabled=true"],
    ],
    ids=["defaults", "namespaced", "standalone", "dmarc"],
)
def test_operator_accepts_the_rendered_arguments(helm: str, sets: list[str]) -> None:
    main = pytest.importorskip("mailfleet.operator.main", reason="the operator is not there yet")
    args = operator_container(render(helm, *sets))["args"]
    assert args[0] == "operator"
    ns = main.build_parser().parse_args(args[1:])
    assert ns.metrics_port == 9090
    assert main.liveness_url(ns.liveness) == "http://0.0.0.0:8080/healthz"
    assert ns.standalone == ("peering.enabled=false" in sets)


def test_dmarc_reports_endpoint_is_off_by_default(helm: str) -> None:
    objs = render(helm)
    assert not [a for a in operator_container(objs)["args"] if a.startswith("--dmarc")]
    assert not [o for o in objs if "dmarc" in o["metadata"]["name"]]


def test_dmarc_reports_endpoint_is_served_behind_a_token_and_reachable_by_the_pools(
    helm: str,
) -> None:
    objs = render(helm, "dmarcReports.enabled=true", "dmarcReports.port=8123")
    container = operator_container(objs)
    args = container["args"]
    assert "--dmarc-listen=0.0.0.0:8123" in args
    (url,) = [a.split("=", 1)[1] for a in args if a.startswith("--dmarc-url=")]
    service = one(objs, "Service", f"{RELEASE}-mailfleet-dmarc")
    assert (
        url == f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:8123"
    )
    assert service["spec"]["ports"][0]["targetPort"] == "dmarc"
    assert {"name": "dmarc", "containerPort": 8123, "protocol": "TCP"} in container["ports"]
    # The token file the operator reads is the generated Secret, mounted read-only.
    (token_arg,) = [a for a in args if a.startswith("--dmarc-token-file=")]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "dmarc-token")
    assert token_arg.split("=", 1)[1] == mount["mountPath"] + "/token" and mount["readOnly"]
    secret = one(objs, "Secret", f"{RELEASE}-mailfleet-dmarc-token")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
