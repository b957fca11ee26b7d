"""`helm install` of the chart on the local cluster and its node: the operator runs as a pod with
the chart's least-privilege RBAC and reconciles a pool whose engine pod takes mail; `helm upgrade`
after the CRDs are applied server-side (as `make deploy` does) rolls the operator; `helm
uninstall` removes the operator and leaves the pool, its pod and its queued mail alone, which
the engine then delivers by itself.

On the local node every pod shares one network namespace, so the test gives the operator free
ports (liveness, metrics) and one replica; the webhook is off because Service ClusterIPs route
nowhere here (tests/operator/test_admission_webhook.py covers it)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.fleet import Gate, fast_retry_policy, message_ids, pool_manifest, submit, wait_pods
from fixtures.keys import RSA_KEY
from fixtures.operator import free_port, kget, wait_for
from fixtures.smtppeers import RecordingMX

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
RELEASE = "mf"


def helm_binary() -> str:
    proc = subprocess.run([str(REPO / "hack" / "helm.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def operator_pods(kube: Any, ns: str) -> list[dict[str, Any]]:
    pods = kget(kube, ns, "pods", "-l", "app.kubernetes.io/name=mailfleet-operator")["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None]


def ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def test_helm_install_upgrade_and_uninstall_on_the_local_node(
    kube_cluster: Any, kube_namespace: str, recording_mx: Callable[..., RecordingMX]
) -> None:
    kube, ns = kube_cluster, kube_namespace
    system = f"{ns}-sys"[:63].rstrip("-")
    helm = helm_binary()

    def run_helm(*args: str) -> str:
        proc = subprocess.run(
            [helm, *args, "--namespace", system], capture_output=True, text=True,
            env=kube.env, timeout=400,
        )  # fmt: skip
        if proc.returncode != 0:
            pods = kube.kubectl("get", "pods,events", "-n", system, check=False).stdout
            raise AssertionError(f"helm {' '.join(args)}:\n{proc.stderr}\n{pods}")
        return proc.stdout

    values = [
        "--set", "replicaCount=1",
        "--set", "watch.allNamespaces=false", "--set", f"watch.namespaces={{{ns}}}",
        "--set", f"liveness.port={free_port()}", "--set", f"metrics.port={free_port()}",
        "--set", "webhook.enabled=false",
    ]  # fmt: skip
    # Kopf's peering CRDs may be there already (another Kopf operator, or a test that applied
    # deploy/kopf-peering.yaml): the chart then must not own them (peering.installCRDs).
    peering_crd = kube.kubectl("get", "crd", "clusterkopfpeerings.kopf.dev", check=False)
    if peering_crd.returncode == 0:
        values += ["--set", "peering.installCRDs=false"]
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    try:
        run_helm("install", RELEASE, str(CHART), "--create-namespace", "--wait",
                 "--timeout", "300s", *values)  # fmt: skip
        (pod,) = wait_for(
            "the operator pod Ready",
            lambda: [p for p in operator_pods(kube, system) if ready(p)],
            120,
        )
        sa = pod["spec"]["serviceAccountName"]

        def operator_log() -> str:
            log = kube.pod_log(system, pod["metadata"]["name"], "operator")
            return log.read_text(errors="replace")[-5000:] if log.exists() else "(no log)"

        assert sa == f"{RELEASE}-mailfleet"

        def can(verb: str, what: str, *extra: str) -> bool:
            who = f"--as=system:serviceaccount:{system}:{sa}"
            proc = kube.kubectl("auth", "can-i", verb, what, "-n", ns, who, *extra, check=False)
            return proc.stdout.strip() == "yes"

        assert can("patch", "sendingpools", "--subresource=status")
        assert can("create", "statefulsets.apps")
        assert not can("patch", "sendingpools") and not can("delete", "statefulsets.apps")
        assert not can("get", "nodes") and not can("delete", "secrets")

        # A pool reconciled by the operator the chart installed; its engine takes mail that the
        # MX defers for now.
        mx = recording_mx("127.0.0.1")
        gate = Gate()
        mx.on_rcpt = gate
        kube.kubectl("create", "secret", "generic", "dkim-example-test", "-n", ns,
                     f"--from-file=rsa.pem={RSA_KEY.key_file}")  # fmt: skip
        kube.kubectl("apply", "-f", "-", input=json.dumps(fast_retry_policy(ns)))
        pool = pool_manifest(ns, "helm", mx, ["127.0.0.1"],
                             replicas={"min": 1, "max": 1, "desired": 1})  # fmt: skip
        pool["metadata"]["labels"] = {}
        kube.kubectl("apply", "-f", "-", input=json.dumps(pool))
        try:
            (engine_pod,) = wait_pods(kube, ns, "helm", 1, 180)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- the operator's log:\n{operator_log()}") from None
        ids = submit(engine_pod["status"]["podIP"], 3, "helm")

        def status() -> dict[str, Any]:
            return (kget(kube, ns, "sendingpool", "helm") or {}).get("status") or {}

        wait_for("the pool Ready with its queue reported",
                 lambda: status().get("queueDepth") == 3 and any(
                     c["type"] == "Ready" and c["status"] == "True"
                     for c in status().get("conditions", [])), 120)  # fmt: skip

        # Upgrade: CRDs first, server-side (Helm never upgrades crds/), then the release.
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        crd = json.loads(kube.kubectl("get", "crd", "sendingpools.mailfleet.io", "-o", "json",
                                      "--show-managed-fields").stdout)  # fmt: skip
        assert any(f["operation"] == "Apply" for f in crd["metadata"]["managedFields"])
        run_helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "verbose=true",
                 "--wait", "--timeout", "300s")  # fmt: skip
        wait_for(
            "the upgraded operator Ready",
            lambda: [p for p in operator_pods(kube, system)
                     if ready(p) and "--verbose" in p["spec"]["containers"][0]["args"]],
            180,
        )  # fmt: skip
        before = status()["observedGeneration"]
        kube.kubectl("patch", "sendingpool", "helm", "-n", ns, "--type=merge",
                     "-p", json.dumps({"spec": {"replicas": {"max": 2}}}))  # fmt: skip
        wait_for("the upgraded operator to reconcile a change",
                 lambda: status().get("observedGeneration", 0) > before, 90)  # fmt: skip

        # Uninstall: the operator goes; the pool, its pod and its queue stay.
        run_helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
        wait_for("the operator pods gone", lambda: not operator_pods(kube, system), 120)
        assert kget(kube, ns, "sendingpool", "helm") is not None
        assert kget(kube, ns, "statefulset", "helm") is not None
        (still,) = wait_pods(kube, ns, "helm", 1, 30)
        assert still["metadata"]["uid"] == engine_pod["metadata"]["uid"]
        assert mx.messages() == []
        gate.open = True
        wait_for("the queued mail delivered without an operator",
                 lambda: set(ids) <= message_ids(mx), 120)  # fmt: skip
    finally:
        subprocess.run([helm, "uninstall", RELEASE, "--namespace", system, "--ignore-not-found"],
                       capture_output=True, env=kube.env, timeout=120)  # fmt: skip
        kube.kubectl("delete", "sendingpools", "--all", "-n", ns, "--wait=false", check=False)
        kube.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_every_rendered_object_passes_a_server_side_dry_run(
    kube_cluster: Any, kube_namespace: str
) -> None:
    """What the install above leaves out (the webhook's Service, configuration and RBAC, the
    dashboard) is at least accepted by the API server as rendered; the Prometheus Operator's and
    cert-manager's kinds need their CRDs, which this cluster does not have."""
    kube, ns = kube_cluster, kube_namespace
    out = subprocess.run(
        [helm_binary(), "template", "dry", str(CHART), "--namespace", ns,
         "--kube-version", "1.34.4", "--set", "grafana.dashboard.enabled=true",
         "--set", "webhook.failurePolicy=Ignore"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"ValidatingWebhookConfiguration", "ConfigMap", "Deployment"} <= kinds
    # The peering CRDs are installed with the objects that use them: apply those for real (a
    # release installed before may hold them: same content).
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    crd_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_list)
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    proc = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rest}), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(rest)
