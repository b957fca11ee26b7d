"""The chart's admission webhook wiring: one webhook per kind whose path is the id of the
operator's Kopf handler for that kind, the failurePolicy a value (and only Fail or Ignore), the
operator's arguments for each certificate mode, and RBAC limited to the one configuration."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from mailfleet.operator import main as operator_main

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
NS = "mail-system"


def render(helm: str, *sets: str, check: bool = True) -> Any:
    args = [helm, "template", "mf", str(CHART), "--namespace", NS, "--kube-version", "1.34.4"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def args_of(objs: list[dict[str, Any]]) -> list[str]:
    dep = of(objs, "Deployment")[0]
    out: list[str] = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    return out


def test_one_webhook_per_kind_on_the_path_of_the_operators_handler(helm: str) -> None:
    from mailfleet.operator import webhook  # registers the handlers

    assert webhook.validate_pool is not None
    registry = kopf.get_default_registry()
    handlers = {
        (h.selector.plural or h.selector.any_name): h.id
        for h in registry._webhooks.get_all_handlers()
        if h.selector
    }
    vwc = of(render(helm), "ValidatingWebhookConfiguration")[0]
    paths = {
        w["rules"][0]["resources"][0]: w["clientConfig"]["service"]["path"] for w in vwc["webhooks"]
    }
    assert paths == {plural: f"/{hid}" for plural, hid in handlers.items()}
    assert set(paths) == {"sendingpools", "deliverypolicies", "ipwarmups", "sendingdomains"}
    for w in vwc["webhooks"]:
        assert w["failurePolicy"] == "Fail"
        assert w["sideEffects"] == "None"
        assert w["rules"][0]["operations"] == ["CREATE", "UPDATE"]  # deletes are never blocked
        assert w["clientConfig"]["service"]["name"] == "mf-mailfleet-webhook"
    svc = next(
        o for o in of(render(helm), "Service") if o["metadata"]["name"] == "mf-mailfleet-webhook"
    )
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"


def test_failure_policy_is_a_value_and_nothing_else_is_accepted(helm: str) -> None:
    vwc = of(render(helm, "webhook.failurePolicy=Ignore"), "ValidatingWebhookConfiguration")[0]
    assert {w["failurePolicy"] for w in vwc["webhooks"]} == {"Ignore"}
    proc = render(helm, "webhook.failurePolicy=Sometimes", check=False)
    assert proc.returncode != 0 and "webhook.failurePolicy must be Fail or Ignore" in proc.stderr


def test_managed_certificate_mode(helm: str) -> None:
    objs = render(helm)
    args = args_of(objs)
    ns = operator_main.build_parser().parse_args(args[1:])
    assert ns.webhook_tls_secret == "mf-mailfleet-webhook-tls"
    assert ns.webhook_configuration == "mf-mailfleet"
    assert ns.webhook_service == "mf-mailfleet-webhook"
    roles = {o["metadata"]["name"]: o for o in of(objs, "ClusterRole")}
    assert roles["mf-mailfleet-webhook"]["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["mf-mailfleet"],
            "verbs": ["get", "patch"],
        }
    ]
    assert not of(objs, "Certificate")


def test_cert_manager_mode(helm: str) -> None:
    objs = render(helm, "webhook.certManager.enabled=true")
    vwc = of(objs, "ValidatingWebhookConfiguration")[0]
    assert vwc["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NS}/mf-mailfleet-webhook"
    }
    cert = of(objs, "Certificate")[0]
    assert cert["spec"]["secretName"] == "mf-mailfleet-webhook-tls"
    assert f"mf-mailfleet-webhook.{NS}.svc" in cert["spec"]["dnsNames"]
    assert of(objs, "Issuer")
    args = args_of(objs)
    assert "--webhook-cert-dir=/var/run/mailfleet/webhook" in args
    pod = of(objs, "Deployment")[0]["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": "mf-mailfleet-webhook-tls"}} in pod[
        "volumes"
    ]
    assert "mf-mailfleet-webhook" not in {o["metadata"]["name"] for o in of(objs, "ClusterRole")}
    issuer = render(helm, "webhook.certManager.enabled=true",
                    "webhook.certManager.issuerRef.name=corp-ca",
                    "webhook.certManager.issuerRef.kind=ClusterIssuer")  # fmt: skip
    assert not of(issuer, "Issuer")
    assert of(issuer, "Certificate")[0]["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
    }


def test_disabled_renders_no_webhook(helm: str) -> None:
    objs = render(helm, "webhook.enabled=false")
    assert not of(objs, "ValidatingWebhookConfiguration")
    assert not any(a.startswith("--webhook") for a in args_of(objs))


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--webhook-listen=0.0.0.0:9443"], "needs --webhook-cert-dir or --webhook-tls-secret"),
        (["--webhook-listen=nowhere", "--webhook-cert-dir=/x"], "wants HOST:PORT"),
        (["--webhook-listen=:9443", "--webhook-tls-secret=s"], "needs --webhook-service or"),
    ],
)
def test_bad_webhook_arguments_are_named(argv: list[str], problem: str) -> None:
    ns = operator_main.build_parser().parse_args(argv)
    got = operator_main.webhook_options(ns)
    assert got is not None and problem in got


def test_in_a_pod_the_api_server_is_where_the_kubelet_says() -> None:
    from mailfleet.operator.handlers import in_cluster_server

    default = "https://kubernetes.default.svc"
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env, default) == "https://10.96.0.1:443"
    env6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_server(env6, default) == "https://[fd00::1]:443"
    assert in_cluster_server({}, default) == default
