"""The operator's validating admission webhook on the local API server: the chart's
ValidatingWebhookConfiguration (its rules, failurePolicy, paths) pointed at an operator that
manages its own certificate and puts its CA into the configuration; then what `kubectl apply`
answers a user: an IP claimed by two pools and a warmup address outside its pool refused with
the field named, a policy no pool selects and a missing DKIM Secret let through with a warning.

The API server reaches the operator by URL: on the local node Service ClusterIPs route nowhere,
so the chart's `service:` clientConfig is replaced by the operator's loopback address."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.operator import free_port, kget, wait_for
from fixtures.tools import helm_path

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]


def chart_configuration(namespace: str) -> dict[str, Any]:
    """The chart's ValidatingWebhookConfiguration, scoped to the test's namespace."""
    out = subprocess.run(
        [helm_path(), "template", "wh", str(REPO / "charts" / "mailfleet"),
         "--namespace", "mf-system", "--kube-version", "1.34.4", "--set",
         f"webhook.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={namespace}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    return next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")


@pytest.fixture
def webhook(mailfleet_crds: Any, kube_namespace: str, run_operator: Any) -> Iterator[str]:
    kube, ns = mailfleet_crds, kube_namespace
    port = free_port()
    vwc = chart_configuration(ns)
    name = f"mailfleet-{ns}"[:63]
    vwc["metadata"] = {"name": name}
    for w in vwc["webhooks"]:
        path = w["clientConfig"]["service"]["path"]
        w["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}"}
    kube.kubectl("apply", "-f", "-", input=json.dumps(vwc))
    secret = f"webhook-tls-{ns}"[:63]
    run_operator(
        ns,
        args=[
            f"--webhook-listen=127.0.0.1:{port}",
            f"--webhook-tls-secret={secret}",
            "--webhook-san=127.0.0.1",
            f"--webhook-configuration={name}",
            f"--webhook-work-dir={kube.state_dir / f'webhook-{port}'}",
        ],
    )

    def ca_set() -> bool:
        got = json.loads(kube.kubectl("get", "validatingwebhookconfiguration", name, "-o",
                                      "json").stdout)  # fmt: skip
        return all(w["clientConfig"].get("caBundle") for w in got["webhooks"])

    wait_for("the operator to put its CA into the configuration", ca_set, 60)
    # The CA in the configuration is the one of the Secret the operator keeps.
    stored = kget(kube, "default", "secret", secret)
    got = json.loads(
        kube.kubectl("get", "validatingwebhookconfiguration", name, "-o", "json").stdout
    )
    assert got["webhooks"][0]["clientConfig"]["caBundle"] == stored["data"]["ca.crt"]
    assert base64.b64decode(stored["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
    yield ns
    kube.kubectl("delete", "validatingwebhookconfiguration", name, "--wait=false", check=False)
    kube.kubectl("delete", "secret", "-n", "default", secret, "--wait=false", check=False)


def pool(name: str, ns: str, *addresses: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": {"min": 0, "max": 1, "desired": 0},
            "ips": [
                {"address": a, "hostname": f"mta{i}.example.com"} for i, a in enumerate(addresses)
            ],
            "policySelector": {"matchLabels": {"tier": "transactional"}},
            **spec,
        },
    }


def apply(kube: Any, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = kube.kubectl(
        "apply", "-f", "-", input=json.dumps(obj), check=False
    )
    return result


def test_cross_object_checks_at_kubectl_apply(mailfleet_crds: Any, webhook: str) -> None:
    kube, ns = mailfleet_crds, webhook
    policy = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "DeliveryPolicy",
        "metadata": {"name": "transactional", "namespace": ns, "labels": {"tier": "transactional"}},
        "spec": {"providers": [{"name": "gmail", "match": {"mxSuffixes": ["google.com"]}}]},
    }
    # No pool selects it yet: admitted, with a warning.
    proc = apply(kube, policy)
    assert proc.returncode == 0, proc.stderr
    assert "Warning: metadata.labels: no SendingPool in namespace" in proc.stderr

    proc = apply(kube, pool("a", ns, "192.0.2.10", "2001:db8::10"))
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr
    # The webhook reads what it compares with from the API server (a standby replica, which
    # does not watch, answers as the active one does): no waiting for the operator's watch.

    # Another pool claiming one of a's addresses (written differently) is refused.
    proc = apply(kube, pool("b", ns, "192.0.2.11", "2001:db8:0:0::10"))
    assert proc.returncode != 0
    assert (
        "spec.ips[1].address: 2001:db8:0:0::10 is already claimed by SendingPool "
        f"{ns}/a; an address belongs to one pool"
    ) in proc.stderr
    assert kget(kube, ns, "sendingpool", "b") is None

    # A pool whose DKIM Secret does not exist is admitted with a warning naming the field.
    dkim = [{"domain": "example.com", "selector": "s1", "secretRef": "dkim-example"}]
    proc = apply(kube, pool("c", ns, "192.0.2.12", dkim=dkim))
    assert proc.returncode == 0, proc.stderr
    assert (
        f"Warning: spec.dkim[0].secretRef: Secret dkim-example does not exist in namespace {ns}"
    ) in proc.stderr

    warmup = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "IPWarmup",
        "metadata": {"name": "w", "namespace": ns},
        "spec": {"poolRef": "a", "addresses": ["192.0.2.10", "198.51.100.7"]},
    }
    proc = apply(kube, warmup)
    assert proc.returncode != 0
    assert "spec.addresses[1]: 198.51.100.7 is not an address of SendingPool a" in proc.stderr
    warmup["spec"]["addresses"] = ["192.0.2.10"]
    proc = apply(kube, warmup)
    assert proc.returncode == 0, proc.stderr

    # Changing pool a without adding a conflict goes through.
    proc = apply(kube, pool("a", ns, "192.0.2.10", "2001:db8::10", "192.0.2.13"))
    assert proc.returncode == 0, proc.stderr
