"""`mailfleet operator` against the real API server: children, status, events, edits, policy and
warmup changes, missing Secrets, garbage collection, and quiet restarts.

There is no kubelet: pods stay Pending, so readyReplicas stays 0 and Ready says PodsNotReady.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.operator import OperatorProcess, kget, wait_for

from mailfleet.mta.config import EngineConfig, parse_config
from mailfleet.operator.api.crd_models import SendingPoolStatus

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CHILDREN = (
    "statefulset",
    "service",
    "configmap",
    "poddisruptionbudget",
    "serviceaccount",
    "networkpolicy",
)
RunOperator = Callable[..., OperatorProcess]


def apply(kube: Any, namespace: str, doc: dict[str, Any] | str) -> None:
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            found: dict[str, Any] = c
            return found
    return None


def ready_reason(kube: Any, ns: str, pool: str) -> str | None:
    c = condition(kget(kube, ns, "sendingpool", pool), "Ready")
    return c["reason"] if c else None


def engine_config(kube: Any, ns: str, pool: str) -> EngineConfig:
    cm = kget(kube, ns, "configmap", f"{pool}-config")
    assert cm is not None, f"no ConfigMap {pool}-config"
    return parse_config(yaml.safe_load(cm["data"]["engine.yaml"]))


def versions(kube: Any, ns: str) -> dict[str, str]:
    """resourceVersion of every child and every mailfleet object in the namespace."""
    out = {}
    for kind in (*CHILDREN, "sendingpools", "deliverypolicies", "ipwarmups"):
        items = kget(kube, ns, kind)["items"]
        for item in items:
            if item["metadata"]["name"] in ("kube-root-ca.crt", "default"):
                continue
            out[f"{item['kind']}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def events(kube: Any, ns: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kget(
        kube, ns, "events", f"--field-selector=involvedObject.name={name}"
    )["items"]
    return items


def settled(kube: Any, ns: str, pool: str, generation: int = 1) -> bool:
    obj = kget(kube, ns, "sendingpool", pool)
    status = (obj or {}).get("status") or {}
    return status.get("observedGeneration") == generation and bool(status.get("conditions"))


def start_with_examples(kube: Any, ns: str, run_operator: RunOperator) -> OperatorProcess:
    kube.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))
    op = run_operator(ns)
    wait_for("the pool's status", lambda: settled(kube, ns, "transactional"))
    wait_for(
        "the StatefulSet's status",
        lambda: kget(kube, ns, "sendingpool", "transactional")["status"].get("replicas") == 2,
    )
    return op


def running_and_reported(kube: Any, ns: str) -> None:
    """Until the node agent runs both pods and their engines reported to the operator."""
    wait_for(
        "both pods ready and reporting",
        lambda: (
            (s := kget(kube, ns, "sendingpool", "transactional")["status"]).get("readyReplicas")
            == 2
            and s.get("updatedPods") == 2
        ),
        120,
    )


def quiesce(op: OperatorProcess, seconds: float = 2.0, timeout: float = 30.0) -> None:
    """Until the operator has written nothing for `seconds`."""
    deadline = time.monotonic() + timeout
    last = op.writes()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = op.writes()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= seconds:
            return
    raise AssertionError("the operator kept writing")


# --- children and status -----------------------------------------------------------------------


def test_examples_become_children_status_and_events(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    start_with_examples(kube, ns, run_operator)
    pool = kget(kube, ns, "sendingpool", "transactional")
    uid = pool["metadata"]["uid"]

    # Every child is owned (controller) by the pool.
    for kind, name in [
        ("statefulset", "transactional"),
        ("service", "transactional"),
        ("service", "transactional-headless"),
        ("configmap", "transactional-config"),
        ("poddisruptionbudget", "transactional"),
        ("networkpolicy", "transactional-admin"),
        ("serviceaccount", "transactional-mta"),
        ("secret", "transactional-admin"),
    ]:
        obj = kget(kube, ns, kind, name)
        assert obj is not None, f"{kind}/{name} missing"
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == ("SendingPool", "transactional", uid)
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True

    sts = kget(kube, ns, "statefulset", "transactional")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == "transactional-headless"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cmd = ["mailfleet", "mta", "--config", "/etc/mailfleet/engine.yaml"]
    assert c["command"] == [*cmd, "--listen-address", "$(POD_IP)"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
    } in c["env"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert "mailfleet mta drain" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    # The admin token the engines require, made once by the operator.
    token = kget(kube, ns, "secret", "transactional-admin")
    assert len(base64.b64decode(token["data"]["token"])) >= 32
    assert (
        pod["serviceAccountName"] == "transactional-mta"
        and pod["automountServiceAccountToken"] is False
    )
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "transactional-config"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # The StatefulSet controller made the pods (they stay Pending without a kubelet).
    pods = kget(kube, ns, "pods", "-l", "app.kubernetes.io/instance=transactional")["items"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["transactional-0", "transactional-1"]

    sub = kget(kube, ns, "service", "transactional")
    assert [p["port"] for p in sub["spec"]["ports"]] == [2525]
    assert kget(kube, ns, "service", "transactional-headless")["spec"]["clusterIP"] == "None"
    assert kget(kube, ns, "poddisruptionbudget", "transactional")["spec"]["maxUnavailable"] == 1

    cfg = engine_config(kube, ns, "transactional")
    assert [p.name for p in cfg.shaping.providers] == ["gmail", "outlook", "yahoo"]
    assert [(str(s.address), s.state, s.owner) for s in cfg.delivery.source_ips] == [
        ("203.0.113.10", "active", "transactional-0"),
        ("203.0.113.11", "standby", None),
        ("203.0.113.12", "warming", "transactional-1"),
    ]
    assert {(str(w.address), w.provider, w.daily_cap) for w in cfg.shaping.warmup} >= {
        ("203.0.113.12", "*", 50),
        ("203.0.113.12", "gmail", 25),
    }

    # The node agent runs the pods: the pool turns Ready once both engines are.
    wait_for(
        "the pool Ready with both pods",
        lambda: (
            (c := condition(kget(kube, ns, "sendingpool", "transactional"), "Ready"))
            and c["reason"] == "PodsReady"
        ),
        120,
    )
    status = kget(kube, ns, "sendingpool", "transactional")["status"]
    SendingPoolStatus.model_validate(status)
    assert status["observedGeneration"] == 1
    assert (status["replicas"], status["readyReplicas"], status["activeIPs"]) == (2, 2, 2)
    assert (
        status["selector"]
        == "app.kubernetes.io/instance=transactional,app.kubernetes.io/name=mailfleet-mta"
    )
    ready = condition(kget(kube, ns, "sendingpool", "transactional"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "PodsReady")
    assert ready["message"].startswith("2/2 pods ready")
    assert [ip["state"] for ip in status["ips"]] == ["active", "standby", "warming"]
    # What `kubectl get` shows, once the engines have reported their queue and config.
    wait_for(
        "both pods on the rendered config",
        lambda: kget(kube, ns, "sendingpool", "transactional")["status"].get("updatedPods") == 2,
        30,
    )
    table = kube.kubectl("get", "-n", ns, "mfpool").stdout.splitlines()
    row = table[1].split()
    # NAME READY REASON REPLICAS DESIRED READY-PODS QUEUE CONFIG-CURRENT ACTIVE-IPS QUARANTINED
    assert row[:10] == ["transactional", "True", "PodsReady", "2", "2", "2", "0", "2", "2", "0"]
    policy_row = kube.kubectl("get", "-n", ns, "mfpolicy").stdout.splitlines()[1].split()
    assert policy_row[:3] == ["big-providers", "3", "1"]
    warm_row = kube.kubectl("get", "-n", ns, "mfwarmup").stdout.splitlines()[1].split()
    assert warm_row[:5] == ["transactional-mta3", "transactional", "Warming", "1", "50"]

    reasons = {
        (e["type"], e["reason"])
        for e in wait_for("events", lambda: events(kube, ns, "transactional") or None)
    }
    wait_for(
        "Created and ConfigRendered events",
        lambda: (
            {("Normal", "Created"), ("Normal", "ConfigRendered")}
            <= {(e["type"], e["reason"]) for e in events(kube, ns, "transactional")}
        ),
    )
    assert reasons


def test_steady_state_and_restart_write_nothing(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    op = start_with_examples(kube, ns, run_operator)
    running_and_reported(kube, ns)
    quiesce(op, seconds=6.0, timeout=60.0)  # a poll (5 s) that found nothing new
    before, writes = versions(kube, ns), op.writes()
    assert len(before) == 10, before
    time.sleep(15)
    assert versions(kube, ns) == before
    assert op.writes() == writes
    # A restart re-reads everything and writes nothing.
    op.stop()
    op2 = run_operator(ns)
    wait_for("the restarted operator to reconcile", lambda: op2.reconciles() >= 1)
    time.sleep(5)
    assert op2.writes() == 0
    assert versions(kube, ns) == before
    n = op2.reconciles()
    print(f"steady state: {len(before)} objects unchanged; restart: {n:.0f} reconciles, 0 writes")


def test_edits_propagate(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    start_with_examples(kube, ns, run_operator)
    # kubectl scale drives the pool when the built-in autoscaler is off.
    off = {"spec": {"autoscaling": {"enabled": False}}}
    kube.kubectl(
        "patch", "-n", ns, "sendingpool", "transactional", "--type=merge", "-p", json.dumps(off)
    )
    kube.kubectl("scale", "-n", ns, "sendingpool/transactional", "--replicas=3")
    wait_for(
        "3 replicas",
        lambda: kget(kube, ns, "statefulset", "transactional")["spec"]["replicas"] == 3,
    )
    patch = {
        "spec": {
            "ips": [
                {"address": "203.0.113.10", "hostname": "mta1.example.com"},
                {"address": "203.0.113.11", "hostname": "mta2.example.com", "standby": True},
                {"address": "203.0.113.12", "hostname": "mta3.example.com"},
                {"address": "203.0.113.13", "hostname": "mta4.example.com"},
            ]
        }
    }
    kube.kubectl(
        "patch", "-n", ns, "sendingpool", "transactional", "--type=merge", "-p", json.dumps(patch)
    )
    wait_for("generation 4 observed", lambda: settled(kube, ns, "transactional", 4))
    cfg = engine_config(kube, ns, "transactional")
    assert [(str(s.address), s.owner) for s in cfg.delivery.source_ips] == [
        ("203.0.113.10", "transactional-0"),
        ("203.0.113.11", None),
        ("203.0.113.12", "transactional-1"),
        ("203.0.113.13", "transactional-2"),
    ]
    status = kget(kube, ns, "sendingpool", "transactional")["status"]
    assert status["desiredReplicas"] == 3 and status["activeIPs"] == 3
    # Someone edits a child by hand: the operator puts it back.
    kube.kubectl("scale", "-n", ns, "statefulset/transactional", "--replicas=1")
    wait_for(
        "the StatefulSet restored",
        lambda: kget(kube, ns, "statefulset", "transactional")["spec"]["replicas"] == 3,
    )


def test_policy_and_warmup_changes_rerender_affected_pools_only(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", str(EXAMPLES))
    bulk = example("sendingpool.yaml")
    bulk["metadata"] = {"name": "bulk", "labels": {"tier": "bulk"}}
    bulk["spec"]["policySelector"] = {"matchLabels": {"tier": "bulk"}}
    bulk["spec"]["ips"] = [{"address": "198.51.100.1", "hostname": "bulk1.example.com"}]
    apply(kube, ns, bulk)
    op = run_operator(ns)
    wait_for("both pools", lambda: settled(kube, ns, "transactional") and settled(kube, ns, "bulk"))
    quiesce(op)
    cm_rv = {
        p: kget(kube, ns, "configmap", f"{p}-config")["metadata"]["resourceVersion"]
        for p in ("transactional", "bulk")
    }
    bulk_cfg = engine_config(kube, ns, "bulk")
    assert bulk_cfg.shaping.providers == []
    no_policy = condition(kget(kube, ns, "sendingpool", "bulk"), "PoliciesResolved")
    assert no_policy is not None and no_policy["reason"] == "NoPolicySelected"

    policy = example("deliverypolicy.yaml")
    policy["spec"]["providers"][0]["perIP"]["maxConnections"] = 2
    apply(kube, ns, policy)
    wait_for(
        "gmail maxConnections 2 in transactional's config",
        lambda: (
            engine_config(kube, ns, "transactional").shaping.providers[0].per_ip.max_connections
            == 2
        ),
    )
    quiesce(op)
    assert (
        kget(kube, ns, "configmap", "bulk-config")["metadata"]["resourceVersion"] == cm_rv["bulk"]
    )
    ev = wait_for(
        "a ConfigRendered event naming generation 1",
        lambda: [
            e
            for e in events(kube, ns, "transactional")
            if e["reason"] == "ConfigRendered" and "Updated" in e["message"]
        ],
    )
    assert "generation 1" in ev[0]["message"]

    # Relabel the policy to the bulk tier: both pools re-render.
    policy["metadata"]["labels"] = {"tier": "bulk"}
    apply(kube, ns, policy)
    wait_for(
        "bulk gets the providers",
        lambda: len(engine_config(kube, ns, "bulk").shaping.providers) == 3,
    )
    wait_for(
        "transactional loses them",
        lambda: engine_config(kube, ns, "transactional").shaping.providers == [],
    )
    wait_for(
        "policy status names the bulk pool",
        lambda: (
            kget(kube, ns, "deliverypolicy", "big-providers")["status"].get("pools") == ["bulk"]
        ),
    )

    # A warmup schedule change moves today's cap.
    warm = example("ipwarmup.yaml")
    warm["spec"]["schedule"] = {"days": [7, 70, 700]}
    apply(kube, ns, warm)
    wait_for(
        "cap 7",
        lambda: (
            ("203.0.113.12", "*", 7)
            in {
                (str(w.address), w.provider, w.daily_cap)
                for w in engine_config(kube, ns, "transactional").shaping.warmup
            }
        ),
    )
    wait_for(
        "warmup status cap 7",
        lambda: kget(kube, ns, "ipwarmup", "transactional-mta3")["status"].get("todayCap") == 7,
    )
    # Deleting the warmup makes the address active.
    kube.kubectl("delete", "-n", ns, "ipwarmup", "transactional-mta3")
    wait_for(
        "203.0.113.12 active",
        lambda: (
            [s.state for s in engine_config(kube, ns, "transactional").delivery.source_ips]
            == ["active", "standby", "active"]
        ),
    )


SECRET_VALUE = "PLANTED-SECRET-0c4f9d2e7b1a"


def test_missing_dkim_secret_then_recovery_without_leaking_secrets(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    pool = example("sendingpool.yaml")
    pool["spec"]["dkim"] = [
        {"domain": "example.com", "selector": "s2026a", "secretRef": "dkim-example-com"}
    ]
    apply(kube, ns, pool)
    op = run_operator(ns, args=["--verbose"])
    wait_for(
        "DKIMSecretMissing", lambda: ready_reason(kube, ns, "transactional") == "DKIMSecretMissing"
    )
    ready = condition(kget(kube, ns, "sendingpool", "transactional"), "Ready")
    assert (
        ready is not None and ready["status"] == "False" and "dkim-example-com" in ready["message"]
    )
    warning = wait_for(
        "a DKIMSecretMissing Warning event",
        lambda: [
            e for e in events(kube, ns, "transactional") if e["reason"] == "DKIMSecretMissing"
        ],
    )
    assert warning[0]["type"] == "Warning" and "dkim-example-com" in warning[0]["message"]
    # The children are there anyway; the pods wait for the Secret.
    sts = kget(kube, ns, "statefulset", "transactional")
    secrets = [
        v["secret"]["secretName"]
        for v in sts["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert secrets == ["dkim-example-com", "transactional-admin"]
    cfg = engine_config(kube, ns, "transactional")
    assert [str(k.key_file) for k in cfg.dkim.keys] == [
        "/var/run/secrets/mailfleet/dkim/dkim-example-com/private.key"
    ]
    quiesce(op, seconds=6.0, timeout=60.0)  # past a poll of the pods (which cannot start)
    rv = kget(kube, ns, "sendingpool", "transactional")["metadata"]["resourceVersion"]
    time.sleep(5)  # no crash loop, no retry storm: nothing is rewritten while the Secret is missing
    assert kget(kube, ns, "sendingpool", "transactional")["metadata"]["resourceVersion"] == rv
    assert op.alive()

    kube.kubectl(
        "create",
        "secret",
        "generic",
        "dkim-example-com",
        "-n",
        ns,
        f"--from-literal=private.key={SECRET_VALUE}",
    )
    wait_for("recovery", lambda: ready_reason(kube, ns, "transactional") == "PodsNotReady")
    wait_for(
        "a SecretsFound event",
        lambda: [e for e in events(kube, ns, "transactional") if e["reason"] == "SecretsFound"],
    )
    # Touch the Secret too (an update event): still nothing of it in the log.
    kube.kubectl("label", "secret", "dkim-example-com", "-n", ns, "rotated=yes")
    quiesce(op)
    log = op.log()
    assert "dkim-example-com" in log  # the log does talk about the Secret by name ...
    for leak in (SECRET_VALUE, base64.b64encode(SECRET_VALUE.encode()).decode()):
        assert leak not in log  # ... never about its content


def test_deleting_a_pool_garbage_collects_its_children(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    start_with_examples(kube, ns, run_operator)
    kube.kubectl("delete", "-n", ns, "sendingpool", "transactional", "--wait=true", "--timeout=60s")

    def leftovers() -> list[str]:
        out = []
        for kind in CHILDREN:
            for item in kget(kube, ns, kind, "-l", "app.kubernetes.io/instance=transactional")[
                "items"
            ]:
                out.append(f"{kind}/{item['metadata']['name']}")
        return out

    wait_for("the garbage collector", lambda: leftovers() == [] or None, timeout=60)
    wait_for(
        "the policy counts no pool",
        lambda: kget(kube, ns, "deliverypolicy", "big-providers")["status"].get("poolCount") == 0,
    )
    wait_for(
        "the warmup says its pool is gone",
        lambda: (
            (condition(kget(kube, ns, "ipwarmup", "transactional-mta3"), "Ready") or {}).get(
                "reason"
            )
            == "PoolNotFound"
        ),
    )
