"""The local control plane (hack/, tests/fixtures/kube.py) is a real Kubernetes API server with
real controllers: version pinning, namespace finalization, Deployments, garbage collection and
RBAC all behave as on a cluster."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.kube import REPO_ROOT, KubeCluster

pytestmark = pytest.mark.kube


def _pinned_version() -> str:
    go_mod = (REPO_ROOT / "hack" / "controlplane" / "go.mod").read_text()
    m = re.search(r"^\s*k8s\.io/kubernetes (v\d+\.\d+\.\d+)\s*$", go_mod, re.MULTILINE)
    assert m, "k8s.io/kubernetes is not required in hack/controlplane/go.mod"
    return m.group(1)


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def _get_json(kube: KubeCluster, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture
def namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_version_is_pinned(kube_cluster: KubeCluster) -> None:
    pinned = _pinned_version()
    v = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == pinned
    assert v["clientVersion"]["gitVersion"] == pinned
    major, minor = pinned[1:].split(".")[:2]
    assert (v["serverVersion"]["major"], v["serverVersion"]["minor"]) == (major, minor)
    assert v["serverVersion"]["gitTreeState"] == "clean"
    assert kube_cluster.bin_dir.parent.name == f"k8s-{pinned}"
    assert kube_cluster.server.startswith("https://127.0.0.1:")


def test_etcd_binary_runs(kube_cluster: KubeCluster) -> None:
    out = subprocess.run(
        [str(kube_cluster.bin_dir / "etcd"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"etcd Version: 3\.\d+\.\d+", out), out


def test_namespace_is_created_and_finalized(kube_cluster: KubeCluster) -> None:
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    kube_cluster.kubectl("-n", name, "create", "configmap", "inside", "--from-literal=a=b")
    ns = _get_json(kube_cluster, "namespace", name)
    assert ns["status"]["phase"] == "Active"
    assert ns["spec"]["finalizers"] == ["kubernetes"]
    # The namespace controller deletes the contents, then removes the finalizer.
    kube_cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s")
    gone = kube_cluster.kubectl("get", "namespace", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_deployment_creates_replicaset_and_pods(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.kubectl(
        "-n", namespace, "create", "deployment", "web", "--image=pause:3.10", "--replicas=2"
    )
    deploy_uid = _get_json(kube_cluster, "-n", namespace, "deployment", "web")["metadata"]["uid"]

    def replicasets() -> list[Any]:
        items: list[Any] = _get_json(kube_cluster, "-n", namespace, "replicasets")["items"]
        return items

    rs = _wait_for("a ReplicaSet owned by the Deployment", replicasets)[0]
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Deployment", "web", deploy_uid)
    assert rs["spec"]["replicas"] == 2

    def pods() -> bool:
        items = _get_json(kube_cluster, "-n", namespace, "pods")["items"]
        return len(items) == 2

    # The ReplicaSet controller creates the pods (they stay Pending: there is no node).
    _wait_for("2 pods created by the ReplicaSet", pods)


def test_garbage_collector_deletes_dependents(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.kubectl("-n", namespace, "create", "configmap", "owner")
    owner_uid = _get_json(kube_cluster, "-n", namespace, "configmap", "owner")["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
        "data": {"k": "v"},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    kube_cluster.kubectl("-n", namespace, "get", "configmap", "dependent")
    kube_cluster.kubectl("-n", namespace, "delete", "configmap", "owner")

    def dependent_gone() -> bool:
        r = kube_cluster.kubectl("-n", namespace, "get", "configmap", "dependent", check=False)
        return r.returncode != 0 and "NotFound" in r.stderr

    _wait_for("the garbage collector to delete the dependent ConfigMap", dependent_gone)


def test_rbac_denies_service_account_without_permissions(
    kube_cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    kube_cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    token = kube_cluster.kubectl("-n", namespace, "create", "token", "nobody").stdout.strip()
    assert token.count(".") == 2  # a signed JWT

    # A kubeconfig with the server and CA only: the token is the sole credential.
    bare = tmp_path / "bare.kubeconfig"
    bare.write_text(json.dumps({"apiVersion": "v1", "kind": "Config"}))
    ca = kube_cluster.state_dir / "pki" / "ca.crt"

    def as_sa(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(kube_cluster.kubectl_path),
                f"--kubeconfig={bare}",
                f"--server={kube_cluster.server}",
                f"--certificate-authority={ca}",
                f"--token={token}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    who = as_sa("auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    user = json.loads(who.stdout)["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{namespace}:nobody"

    denied = as_sa("-n", namespace, "get", "secrets")
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and "cannot list resource" in denied.stderr, denied.stderr
    assert f"system:serviceaccount:{namespace}:nobody" in denied.stderr

    # Granting the permission is what makes the difference.
    kube_cluster.kubectl(
        "-n", namespace, "create", "role", "read-secrets", "--verb=list", "--resource=secrets"
    )
    kube_cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "read-secrets",
        "--role=read-secrets",
        f"--serviceaccount={namespace}:nobody",
    )
    _wait_for(
        "the RoleBinding to take effect",
        lambda: as_sa("-n", namespace, "get", "secrets").returncode == 0,
    )
