"""The operator with only deploy/rbac.yaml's permissions (a ServiceAccount token, not admin), and
two peered operators of which one works."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.operator import OperatorProcess, kget, wait_for

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[2]
# A refusal as Kopf or the client logs it; the log line's own timestamp
# (",403]" as milliseconds) is cut off first so it cannot match.
FORBIDDEN = re.compile(r"Forbidden|\b403\b")


def _refused(line: str) -> bool:
    return bool(FORBIDDEN.search(re.sub(r"^\[[^\]]*\]", "", line)))


SA = "system:serviceaccount:mailfleet-system:mailfleet-operator"
RunOperator = Callable[..., OperatorProcess]


@pytest.fixture(scope="module")
def operator_kubeconfig(mailfleet_crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kube = mailfleet_crds
    if kube.kubectl("get", "namespace", "mailfleet-system", check=False).returncode != 0:
        kube.kubectl("create", "namespace", "mailfleet-system")
    kube.kubectl("apply", "-f", str(REPO / "deploy" / "kopf-peering.yaml"))
    kube.kubectl("apply", "-f", str(REPO / "deploy" / "rbac.yaml"))
    token = kube.kubectl(
        "create", "token", "mailfleet-operator", "-n", "mailfleet-system", "--duration=1h"
    ).stdout.strip()
    ca = kube.state_dir / "pki" / "ca.crt"
    assert ca.exists()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": kube.server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path = tmp_path_factory.mktemp("rbac") / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can(kube: Any, verb: str, what: str, ns: str = "default") -> bool:
    what, _, sub = what.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    out = kube.kubectl(
        "auth", "can-i", verb, what, *extra, "-n", ns, f"--as={SA}", check=False
    ).stdout
    return bool(out.strip() == "yes")


def test_the_role_is_least_privilege(mailfleet_crds: Any, operator_kubeconfig: Path) -> None:
    kube = mailfleet_crds
    assert can(kube, "patch", "statefulsets.apps") and can(
        kube, "patch", "sendingpools.mailfleet.io/status"
    )
    assert can(kube, "watch", "secrets") and can(kube, "create", "events")
    # get and patch secrets: the SendingDomains' DKIM key Secrets, which the operator writes and
    # reads back (list/watch already grant what get does); never deleted, never by name.
    assert can(kube, "get", "secrets") and can(kube, "patch", "secrets")
    for verb, what in [
        ("delete", "secrets"),
        ("delete", "statefulsets.apps"),  # children go by garbage collection
        ("delete", "configmaps"),
        ("patch", "sendingpools.mailfleet.io"),  # specs belong to users
        ("create", "pods"),
        ("update", "clusterroles.rbac.authorization.k8s.io"),
    ]:
        assert not can(kube, verb, what), f"the operator may {verb} {what}"


def test_operator_reconciles_fully_with_only_its_role(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator, operator_kubeconfig: Path
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    kube.kubectl("apply", "-n", ns, "-f", str(REPO / "examples"))
    kube.kubectl("create", "secret", "generic", "dkim-a", "-n", ns, "--from-literal=private.key=x")
    pool = yaml.safe_load((REPO / "examples" / "sendingpool.yaml").read_text())
    pool["metadata"]["name"] = "signed"
    pool["spec"]["dkim"] = [
        {"domain": "example.com", "selector": "s1", "secretRef": "dkim-a"},
        {"domain": "example.com", "selector": "s2", "secretRef": "dkim-b"},
    ]
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(pool))
    op = run_operator(ns, kubeconfig=operator_kubeconfig)

    def status(name: str) -> dict[str, Any]:
        got: dict[str, Any] = (kget(kube, ns, "sendingpool", name) or {}).get("status") or {}
        return got

    def reason(name: str) -> str | None:
        for c in status(name).get("conditions", []):
            if c["type"] == "Ready":
                return str(c["reason"])
        return None

    wait_for("transactional PodsNotReady", lambda: reason("transactional") == "PodsNotReady")
    wait_for("signed DKIMSecretMissing", lambda: reason("signed") == "DKIMSecretMissing")
    for kind, name in [
        ("statefulset", "transactional"),
        ("service", "transactional"),
        ("service", "transactional-headless"),
        ("configmap", "transactional-config"),
        ("poddisruptionbudget", "transactional"),
        ("serviceaccount", "transactional-mta"),
    ]:
        assert kget(kube, ns, kind, name) is not None, f"{kind}/{name}"
    wait_for("StatefulSet status in the pool", lambda: status("transactional").get("replicas") == 2)
    wait_for(
        "policy status",
        lambda: (
            ((kget(kube, ns, "deliverypolicy", "big-providers") or {}).get("status") or {}).get(
                "poolCount"
            )
            == 2
        ),
    )
    wait_for(
        "warmup status",
        lambda: (
            ((kget(kube, ns, "ipwarmup", "transactional-mta3") or {}).get("status") or {}).get(
                "phase"
            )
            == "Warming"
        ),
    )
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["kind"] == "SendingPool"}
    assert {"Created", "ConfigRendered", "DKIMSecretMissing"} <= reasons
    # The Secret appears: the watch the role allows is enough to recover.
    kube.kubectl("create", "secret", "generic", "dkim-b", "-n", ns, "--from-literal=private.key=y")
    wait_for("signed recovers", lambda: reason("signed") == "PodsNotReady")
    log = op.log()
    refusals = [line for line in log.splitlines() if _refused(line)]
    assert not refusals, "\n".join(refusals[:20])


def test_two_peered_operators_one_works(
    mailfleet_crds: Any, kube_namespace: str, run_operator: RunOperator, operator_kubeconfig: Path
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "mailfleet"},
    }
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(peering))
    args = ["--peering", "mailfleet"]
    first = run_operator(
        ns, kubeconfig=operator_kubeconfig, standalone=False, args=[*args, "--priority", "200"]
    )
    second = run_operator(
        ns, kubeconfig=operator_kubeconfig, standalone=False, args=[*args, "--priority", "100"]
    )
    kube.kubectl("apply", "-n", ns, "-f", str(REPO / "examples"))
    wait_for(
        "the pool's StatefulSet", lambda: kget(kube, ns, "statefulset", "transactional") is not None
    )
    wait_for(
        "the pool's status",
        lambda: (kget(kube, ns, "sendingpool", "transactional").get("status") or {}).get(
            "conditions"
        ),
    )
    # The lower priority waits (Kopf starts it paused and says so only when it resumes).
    assert first.writes() > 0 and second.writes() == 0
    assert "Resuming operations" not in second.log()
    # The active one goes away: the other takes over.
    first.stop()
    wait_for("the other resumes", lambda: "Resuming operations" in second.log(), timeout=90)
    # The built-in autoscaler off, three pods asked for: only a working operator applies it.
    patch = {"spec": {"autoscaling": {"enabled": False}, "replicas": {"desired": 3}}}
    kube.kubectl(
        "patch", "-n", ns, "sendingpool", "transactional", "--type=merge", "-p", json.dumps(patch)
    )
    wait_for(
        "the survivor reconciles",
        lambda: kget(kube, ns, "statefulset", "transactional")["spec"]["replicas"] == 3,
    )
    assert second.writes() > 0
