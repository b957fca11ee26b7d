"""`helm install` on the real node, as a user's first day on a cluster: the operator runs from the
image built from the Dockerfile, as uid 10001 in a namespace that enforces the `restricted` Pod
Security Standard, with the chart's least-privilege RBAC and its admission webhook (called by the
API server through the webhook's Service). It runs a pool whose pods are containers in their own
network namespaces: `kubectl get endpoints` lists them, mail submitted to the pool's Service
ClusterIP leaves from the pool's address through a SOCKS5 egress proxy on the node, the claims the
local-path provisioner bound keep queued mail across a pod's deletion, and the pool's
NetworkPolicy keeps a stranger pod off the admin port while its submission port (found by its DNS
name) stays open. `helm upgrade` after the CRDs are applied server-side (as `make deploy` does)
rolls the operator; `helm uninstall` removes it and leaves the pool, its pods and their queued
mail alone, which the engines then deliver by themselves.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.fleet import Gate, fast_retry_policy, message_ids, pool_manifest, submit
from fixtures.keys import RSA_KEY
from fixtures.operator import wait_for
from fixtures.peers import danted
from fixtures.realnode import RealCluster
from fixtures.smtppeers import RecordingMX

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
RELEASE = "mf"
POOL = "edge"
# Two addresses, one per pod (the operator gives each pod its share). Both go through one proxy
# that sends from the first: per-address egress on a real cluster is the next step.
SENDING_IPS = ["127.0.4.1", "127.0.4.2"]
SENDING_IP = SENDING_IPS[0]
SUBMISSION_PORT = 2525
ADMIN_PORT = 8025


def helm_binary() -> str:
    proc = subprocess.run([str(REPO / "hack" / "helm.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def node_proxy(real_cluster: RealCluster, tmp_path: Path) -> Iterator[str]:
    """danted on the node's address (pods reach it through their gateway), sending from
    SENDING_IP: the egress a pool in its own network namespace uses until the operator runs
    one itself."""
    with danted(tmp_path, internal=real_cluster.node_ip, external=SENDING_IP,
                clients="10.244.0.0/16") as url:  # fmt: skip
        yield url


def ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def live(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None]


def edge_pool(ns: str, mx: RecordingMX, proxy: str, node_ip: str) -> dict[str, Any]:
    """The fleet tests' pool, sending through the node's proxy; the host's clients reach the
    pods from the node's address."""
    return pool_manifest(
        ns, POOL, mx, SENDING_IPS,
        replicas={"min": 1, "max": 2, "desired": 2},
        egress={"mode": "socks5", "proxy": proxy},
        submission={"port": SUBMISSION_PORT, "trustedCIDRs": [f"{node_ip}/32"]},
        storage={"size": "64Mi"},
    )  # fmt: skip


def reachable(host: str) -> bool:
    try:
        socket.create_connection((host, SUBMISSION_PORT), timeout=2).close()
    except OSError:
        return False
    return True


def stranger(rc: RealCluster, ns: str, name: str, script: str) -> str:
    """A pod of the image that is neither the operator nor Prometheus runs `script` (Python)
    and exits; returns what it printed. It meets the restricted standard like any pod here."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/name": "x"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "probe",
                    "image": rc.image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    rc.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        f"pod {name} to finish",
        lambda: rc.get("pod", name, "-n", ns)["status"].get("phase") in ("Succeeded", "Failed"),
        90,
    )
    return rc.logs(ns, name)


PROBE = """
import socket, sys
for host, port in [(h, int(p)) for h, p in (a.split(":") for a in sys.argv[1:])]:
    try:
        socket.create_connection((host, port), timeout=4).close()
        print(f"{host}:{port} open")
    except OSError as e:
        print(f"{host}:{port} closed {type(e).__name__}")
"""


def probe(rc: RealCluster, ns: str, name: str, *targets: str) -> dict[str, str]:
    args = ", ".join(repr(t) for t in targets)
    out = stranger(rc, ns, name, f"import sys; sys.argv[1:] = [{args}]\n{PROBE}")
    return {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if " " in ln}


def test_helm_install_runs_the_image_under_the_kubelet_with_services_storage_and_policy(
    real_cluster: RealCluster,
    real_namespace: str,
    recording_mx: Callable[..., RecordingMX],
    node_proxy: str,
) -> None:
    rc, ns = real_cluster, real_namespace
    system = f"{ns}-sys"[:63].rstrip("-")
    rc.kubectl("create", "namespace", system)
    rc.kubectl("label", "namespace", system, "pod-security.kubernetes.io/enforce=restricted")
    repo, tag = rc.image.split(":")
    helm = helm_binary()

    def run_helm(*args: str) -> str:
        proc = subprocess.run(
            [helm, *args, "--namespace", system], capture_output=True, text=True,
            env=rc.env, timeout=400,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{proc.stderr}\n{rc.describe(system)}")
        return proc.stdout

    run_helm("install", RELEASE, str(CHART), "--wait", "--timeout", "300s",
             "--set", f"image.repository={repo}", "--set", f"image.tag={tag}",
             "--set", "image.pullPolicy=Never", "--set", "replicaCount=1",
             "--set", "watch.allNamespaces=false",
             "--set", f"watch.namespaces={{{ns}}}")  # fmt: skip
    try:
        sel = "app.kubernetes.io/component=operator"
        ops = live(rc.get("pods", "-n", system, "-l", sel)["items"])
        assert len(ops) == 1 and ready(ops[0]), rc.describe(system)
        op = ops[0]
        assert op["spec"]["containers"][0]["image"].endswith(rc.image)
        # The container runs as the image's user, not root (checked in the runtime, not the spec).
        cid = op["status"]["containerStatuses"][0]["containerID"].split("//")[1]
        info = json.loads(rc.real_node.crictl("inspect", cid))["info"]
        assert info["runtimeSpec"]["process"]["user"]["uid"] == 10001
        assert info["runtimeSpec"]["root"].get("readonly") is True

        sa = op["spec"]["serviceAccountName"]
        assert sa == f"{RELEASE}-mailfleet"

        def can(verb: str, what: str, *extra: str) -> bool:
            who = f"--as=system:serviceaccount:{system}:{sa}"
            proc = rc.kubectl("auth", "can-i", verb, what, "-n", ns, who, *extra, check=False)
            return proc.stdout.strip() == "yes"

        assert can("patch", "sendingpools", "--subresource=status")
        assert can("create", "statefulsets.apps")
        assert not can("patch", "sendingpools") and not can("delete", "statefulsets.apps")
        assert not can("delete", "secrets")
        # Nodes are read (the sending addresses each holds), never written.
        assert can("get", "nodes") and not can("patch", "nodes")

        mx = recording_mx("127.0.0.1")
        gate = Gate()
        rc.kubectl("create", "secret", "generic", "dkim-example-test", "-n", ns,
                   f"--from-file=rsa.pem={RSA_KEY.key_file}")  # fmt: skip

        # The webhook's Service answers once kube-proxy has the new operator pod's endpoint (up
        # to its sync period after the pod is Ready; until then it rejects): a write right after
        # an install or upgrade retries until then.
        def via_webhook(*args: str, input: str | None = None) -> None:
            def done() -> bool:
                out = rc.kubectl(*args, input=input, check=False)
                if out.returncode != 0 and "failed calling webhook" not in out.stderr:
                    raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
                return out.returncode == 0

            wait_for("the webhook answering through its Service", done, 30)

        via_webhook("apply", "-f", "-", input=json.dumps(fast_retry_policy(ns)))
        pool = edge_pool(ns, mx, node_proxy, rc.node_ip)
        rc.kubectl("apply", "-f", "-", input=json.dumps(pool))

        def pool_pods() -> list[dict[str, Any]]:
            mine = f"app.kubernetes.io/instance={POOL}"
            return live(rc.get("pods", "-n", ns, "-l", mine)["items"])

        pods = wait_for("both pool pods Ready",
                        lambda: len(p := [x for x in pool_pods() if ready(x)]) == 2 and p,
                        240)  # fmt: skip
        pod_ips = sorted(p["status"]["podIP"] for p in pods)
        assert all(ip.startswith("10.244.") for ip in pod_ips), pod_ips

        # The admission webhook answers through its Service: an address another pool holds.
        twin = edge_pool(ns, mx, node_proxy, rc.node_ip)
        twin["metadata"]["name"] = "twin"
        denied = rc.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(twin),
                            check=False)  # fmt: skip
        assert denied.returncode != 0
        assert f"spec.ips[0].address: {SENDING_IP} is already claimed" in denied.stderr

        # The Service has the pods as endpoints; its ClusterIP takes mail from the host.
        endpoints = rc.get("endpoints", POOL, "-n", ns)
        listed = sorted(a["ip"] for s in endpoints["subsets"] for a in s.get("addresses", []))
        assert listed == pod_ips
        cluster_ip = rc.get("service", POOL, "-n", ns)["spec"]["clusterIP"]
        # kube-proxy programs the ClusterIP within its sync period of the endpoints appearing.
        wait_for("kube-proxy routing the ClusterIP", lambda: reachable(cluster_ip), 30)
        ids = submit(cluster_ip, 3, "svc")
        got = mx.wait_for(3, timeout=90)  # whichever pod the Service picked for the session
        assert message_ids(mx) >= set(ids)
        assert {m.peer_ip for m in got} == {SENDING_IP}  # through the node's egress proxy

        # The operator (in its pod) reaches every engine's admin port: both report in status.
        wait_for("both pods' reports in the pool's status",
                 lambda: (rc.get("sendingpool", POOL, "-n", ns).get("status") or {})
                 .get("updatedPods") == 2, 90)  # fmt: skip

        # The NetworkPolicy: a stranger reaches the submission port (by the Service's DNS name)
        # and not the admin port; the pool's claims are the local-path provisioner's.
        target = pod_ips[0]
        seen = probe(rc, ns, "stranger", f"{POOL}.{ns}.svc.cluster.local:{SUBMISSION_PORT}",
                     f"{target}:{SUBMISSION_PORT}", f"{target}:{ADMIN_PORT}")  # fmt: skip
        assert seen == {
            f"{POOL}.{ns}.svc.cluster.local:{SUBMISSION_PORT}": "open",
            f"{target}:{SUBMISSION_PORT}": "open",
            f"{target}:{ADMIN_PORT}": "closed",
        }, seen

        claims = rc.get("pvc", "-n", ns)["items"]
        assert len(claims) == 2 and all(c["status"]["phase"] == "Bound" for c in claims)
        pvs = {c["spec"]["volumeName"] for c in claims}
        assert all(
            rc.get("pv", pv)["metadata"]["annotations"].get("pv.kubernetes.io/provisioned-by")
            == "rancher.io/local-path"
            for pv in pvs
        )

        # Mail queued in a pod survives the pod's deletion: its claim comes back with it.
        mx.on_rcpt = gate
        pod0 = f"{POOL}-0"
        ip0 = next(p["status"]["podIP"] for p in pods if p["metadata"]["name"] == pod0)
        held = submit(ip0, 4, "held")
        uid0 = rc.get("pod", pod0, "-n", ns)["metadata"]["uid"]
        claim0 = rc.get("pvc", f"spool-{pod0}", "-n", ns)["spec"]["volumeName"]
        # A short grace period: the preStop drain (deliver what is queued, up to the grace
        # period) cannot finish while the MX defers, so the kubelet stops the engine with the
        # mail still on its claim.
        rc.kubectl("delete", "pod", pod0, "-n", ns, "--grace-period=10", "--wait=false")
        wait_for(f"{pod0} back and Ready",
                 lambda: any(p["metadata"]["name"] == pod0 and p["metadata"]["uid"] != uid0
                             and ready(p) for p in pool_pods()), 180)  # fmt: skip
        assert rc.get("pvc", f"spool-{pod0}", "-n", ns)["spec"]["volumeName"] == claim0
        gate.open = True
        wait_for("the held mail delivered", lambda: message_ids(mx) >= set(held), 120)

        def status() -> dict[str, Any]:
            return rc.get("sendingpool", POOL, "-n", ns).get("status") or {}

        # Upgrade: CRDs first, server-side (Helm never upgrades crds/), then the release.
        rc.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        crd = json.loads(rc.kubectl("get", "crd", "sendingpools.mailfleet.io", "-o", "json",
                                    "--show-managed-fields").stdout)  # fmt: skip
        assert any(f["operation"] == "Apply" for f in crd["metadata"]["managedFields"])
        run_helm("upgrade", RELEASE, str(CHART), "--reuse-values", "--set", "verbose=true",
                 "--wait", "--timeout", "300s")  # fmt: skip
        wait_for("the upgraded operator Ready",
                 lambda: [p for p in live(rc.get("pods", "-n", system, "-l", sel)["items"])
                          if ready(p) and "--verbose" in p["spec"]["containers"][0]["args"]],
                 180)  # fmt: skip
        before = status()["observedGeneration"]
        via_webhook("patch", "sendingpool", POOL, "-n", ns, "--type=merge",
                    "-p", json.dumps({"spec": {"replicas": {"max": 3}}}))  # fmt: skip
        wait_for("the upgraded operator to reconcile a change",
                 lambda: status().get("observedGeneration", 0) > before, 90)  # fmt: skip

        # Uninstall: the operator goes; the pool, its pods and their queues stay.
        gate.open = False
        queued = submit(cluster_ip, 3, "orphan")
        uids = sorted(p["metadata"]["uid"] for p in pool_pods())
        run_helm("uninstall", RELEASE, "--wait", "--timeout", "120s")
        wait_for(
            "the operator pods gone",
            lambda: not live(rc.get("pods", "-n", system, "-l", sel)["items"]),
            120,
        )
        assert rc.get("sendingpool", POOL, "-n", ns) and rc.get("statefulset", POOL, "-n", ns)
        assert sorted(p["metadata"]["uid"] for p in pool_pods()) == uids
        assert not set(queued) & message_ids(mx)
        gate.open = True
        wait_for("the queued mail delivered without an operator",
                 lambda: set(queued) <= message_ids(mx), 120)  # fmt: skip
    except (AssertionError, TimeoutError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        raise AssertionError(
            f"{e}\n{detail}\n--- the pool's namespace:\n{rc.describe(ns)}\n"
            f"--- the operator's namespace:\n{rc.describe(system)}"
        ) from None
    finally:
        subprocess.run([helm, "uninstall", RELEASE, "--namespace", system, "--ignore-not-found"],
                       capture_output=True, env=rc.env, timeout=120)  # fmt: skip
        rc.kubectl("delete", "sendingpools", "--all", "-n", ns, "--wait=false", check=False)
        rc.kubectl("delete", "namespace", system, "--wait=false", check=False)


def test_every_rendered_object_passes_a_server_side_dry_run(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    """What the install above leaves out (the dashboard; cert-manager's and the Prometheus
    Operator's kinds need their CRDs, which this cluster does not have) is at least accepted by
    the API server as rendered."""
    rc, ns = real_cluster, real_namespace
    out = subprocess.run(
        [helm_binary(), "template", "dry", str(CHART), "--namespace", ns,
         "--kube-version", "1.34.4", "--set", "grafana.dashboard.enabled=true",
         "--set", "webhook.failurePolicy=Ignore"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"ValidatingWebhookConfiguration", "ConfigMap", "Deployment"} <= kinds
    # The peering CRDs are installed with the objects that use them: apply those for real.
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    crd_list = json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
    rc.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_list)
    rc.control_plane.wait_crds_established()
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    proc = rc.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rest}), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(rest)
