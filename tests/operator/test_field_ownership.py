"""A GitOps tool owns the manifests; the operator owns status. Applied server-side by another
field manager (as Argo CD or Flux do), a pool, policy, warmup and domain are reconciled without
the operator taking any field of their spec or metadata: the tool re-applies, and applies a
change, with no conflict (no --force-conflicts). Once reconciled, every printer column
`kubectl get -o wide` shows has a value (no <none>)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.operator import kget, wait_for

pytestmark = pytest.mark.kube

GITOPS = "argocd-controller"
HEALTH = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "health"


def argocd_health(kind: str, obj: dict[str, Any]) -> str:
    """The Argo CD health check of the kind (deploy/argocd/health) on the live object, with
    lua5.1 (Argo CD hands the object over as a table; JSON is the same literal syntax here)."""
    lua = shutil.which("lua5.1")
    assert lua, "lua5.1 not installed (make deps)"

    def literal(v: Any) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"[{json.dumps(k)}] = {literal(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "{" + ", ".join(literal(x) for x in v) + "}"
        if isinstance(v, bool):
            return "true" if v else "false"
        return "nil" if v is None else json.dumps(v)

    script = (
        f"obj = {literal(obj)}\n"
        f"local hs = assert(loadfile({json.dumps(str(HEALTH / f'{kind}.lua'))}))()\n"
        'io.write(hs.status, " ", hs.message or "")\n'
    )
    proc = subprocess.run([lua, "-"], input=script, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def manifests(ns: str, max_pods: int = 1) -> list[dict[str, Any]]:
    api = "mailfleet.io/v1alpha1"
    return [
        {"apiVersion": api, "kind": "DeliveryPolicy",
         "metadata": {"name": "big", "namespace": ns, "labels": {"tier": "transactional"}},
         "spec": {"providers": [{"name": "gmail", "match": {"mxSuffixes": ["google.com"]}}]}},
        {"apiVersion": api, "kind": "SendingPool",
         "metadata": {"name": "transactional", "namespace": ns},
         "spec": {"replicas": {"min": 0, "max": max_pods, "desired": 0},
                  "ips": [{"address": "192.0.2.10", "hostname": "mta1.example.com"},
                          {"address": "192.0.2.11", "hostname": "mta2.example.com"}],
                  "policySelector": {"matchLabels": {"tier": "transactional"}}}},
        {"apiVersion": api, "kind": "IPWarmup",
         "metadata": {"name": "mta2", "namespace": ns},
         "spec": {"poolRef": "transactional", "addresses": ["192.0.2.11"]}},
        {"apiVersion": api, "kind": "SendingDomain",
         "metadata": {"name": "example-com", "namespace": ns},
         "spec": {"domain": "example.com", "pools": ["transactional"],
                  "dns": {"nameservers": ["127.0.0.1"], "port": 9},
                  "checkInterval": "1h"}},
    ]  # fmt: skip


PLURALS = {
    "DeliveryPolicy": "deliverypolicy",
    "SendingPool": "sendingpool",
    "IPWarmup": "ipwarmup",
    "SendingDomain": "sendingdomain",
}


def gitops_apply(kube: Any, objs: list[dict[str, Any]]) -> None:
    """Server-side apply as the GitOps tool: fails on any field another manager owns."""
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    proc = kube.kubectl(
        "apply", "--server-side", f"--field-manager={GITOPS}", "-f", "-",
        input=json.dumps(doc), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"the GitOps apply conflicted:\n{proc.stderr}"


def reconciled(kube: Any, ns: str) -> bool:
    for kind, name in (("sendingpool", "transactional"), ("deliverypolicy", "big"),
                       ("ipwarmup", "mta2"), ("sendingdomain", "example-com")):  # fmt: skip
        obj = kget(kube, ns, kind, name) or {}
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj.get("metadata", {}).get("generation"):
            return False
    return True


def test_the_operator_never_takes_a_field_the_gitops_tool_owns(
    mailfleet_crds: Any, kube_namespace: str, run_operator: Any
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    gitops_apply(kube, manifests(ns))
    run_operator(ns)
    wait_for("every object reconciled", lambda: reconciled(kube, ns), 90)
    # Let the operator's poll loop and the domain's first DNS check run too.
    wait_for(
        "the domain's DNS check",
        lambda: any(
            c["type"] == "SPFValid"
            for c in (kget(kube, ns, "sendingdomain", "example-com") or {})
            .get("status", {})
            .get("conditions", [])
        ),
        90,
    )
    for obj in manifests(ns):
        live = json.loads(
            kube.kubectl("get", "-n", ns, PLURALS[obj["kind"]], obj["metadata"]["name"],
                         "-o", "json", "--show-managed-fields").stdout
        )  # fmt: skip
        for entry in live["metadata"]["managedFields"]:
            if entry["manager"] == GITOPS:
                assert entry["operation"] == "Apply"
                continue
            # Anything else (the operator) writes status only.
            assert entry.get("subresource") == "status", (obj["kind"], entry)
            assert set(entry["fieldsV1"]) <= {"f:status"}, (obj["kind"], entry)
    # The tool re-applies, and applies a change, without forcing anything.
    gitops_apply(kube, manifests(ns))
    gitops_apply(kube, manifests(ns, max_pods=2))
    wait_for(
        "the change reconciled",
        lambda: (
            reconciled(kube, ns)
            and kget(kube, ns, "sendingpool", "transactional")["metadata"]["generation"] == 2
        ),
        60,
    )

    # Argo CD's view of the live objects: the pool warms an IP, so do the warmup; the policy is
    # in use; the domain's DNS cannot be asked (nothing on port 9): no verdict yet.
    expected = {
        "SendingPool": "Progressing Warming 1 IP(s)",
        "DeliveryPolicy": "Healthy InUse",
        "IPWarmup": "Progressing Warming: day 1",
        "SendingDomain": "Progressing ",
    }
    for obj in manifests(ns):
        live = kget(kube, ns, PLURALS[obj["kind"]], obj["metadata"]["name"])
        got = argocd_health(obj["kind"], live)
        assert got.startswith(expected[obj["kind"]]), (obj["kind"], got)

    # What `kubectl get -o wide` shows: a value in every column.
    for kind in PLURALS.values():
        table = kube.kubectl("get", "-n", ns, kind, "-o", "wide").stdout
        assert "<none>" not in table, f"kubectl get {kind} -o wide shows an empty column:\n{table}"
