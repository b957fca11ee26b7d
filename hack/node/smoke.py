#!/usr/bin/env python3
"""Smoke check of the real node: the mailfleet image as a restricted pod, its pod IP and a
Service ClusterIP reached from the host; prints measured figures.

    python3 hack/node/smoke.py [--state-dir .local/realnode] [--cold] [--keep]

--cold rebuilds the image from debootstrap on (FORCE=base hack/image.sh) before the warm run.
Brings the node up if it is not running (and leaves it running: `make node-down` stops it).
Traffic goes only to the pod's address (inside the node's bridge) and to a ClusterIP that
kube-proxy's iptables rules translate to it (checked before any packet is sent; the Service
CIDR is routed into the bridge anyway), in bounded loops.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cluster
import realnode as n

NS = "mailfleet-smoke"
ADMIN_PORT = 8025
SUBMISSION_PORT = 2525
TOKEN = "smoke-admin-token-0123456789abcdef"
ENGINE_YAML = f"""hostname: mta.example.test
submission:
  listen: 0.0.0.0:{SUBMISSION_PORT}
  trustedNetworks: [127.0.0.1/32]
admin:
  listen: 0.0.0.0:{ADMIN_PORT}
  tokenFile: /var/run/secrets/mailfleet/admin/token
spool:
  path: /var/spool/mailfleet
routing:
  routes:
    "*": 127.0.0.1:2526
logging:
  level: info
  format: json
"""


def image(force: str = "") -> tuple[str, Path, float]:
    env = {**os.environ, "FORCE": force} if force else None
    t0 = time.monotonic()
    out = subprocess.run([str(n.IMAGE_SH)], stdout=subprocess.PIPE, text=True, env=env, check=True)
    ref, tar = out.stdout.split()[-2:]
    return ref, Path(tar), time.monotonic() - t0


def objects(ref: str) -> list[dict]:
    labels = {"app.kubernetes.io/name": "mailfleet-smoke"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "engine", "namespace": NS},
            "data": {"engine.yaml": ENGINE_YAML},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "admin", "namespace": NS},
            "stringData": {"token": TOKEN},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "mta", "namespace": NS},
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": "submission", "port": SUBMISSION_PORT, "targetPort": "submission"},
                    {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"},
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "mta-0", "namespace": NS, "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 10,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "fsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "mta",
                        "image": ref,
                        "imagePullPolicy": "Never",
                        "command": [
                            "mailfleet",
                            "mta",
                            "--config",
                            "/etc/mailfleet/engine.yaml",
                            "--listen-address",
                            "$(POD_IP)",
                        ],
                        "env": [
                            {
                                "name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            }
                        ],
                        "ports": [
                            {"name": "submission", "containerPort": SUBMISSION_PORT},
                            {"name": "admin", "containerPort": ADMIN_PORT},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/readyz", "port": "admin"},
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                        "securityContext": {
                            "runAsNonRoot": True,
                            "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/mailfleet", "readOnly": True},
                            {
                                "name": "admin",
                                "mountPath": "/var/run/secrets/mailfleet/admin",
                                "readOnly": True,
                            },
                            {"name": "spool", "mountPath": "/var/spool/mailfleet"},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": "engine"}},
                    {"name": "admin", "secret": {"secretName": "admin", "defaultMode": 0o440}},
                    {"name": "spool", "emptyDir": {}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    ]


def kjson(cp: cluster.ControlPlane, *args: str) -> dict:
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def smtp_banner(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        banner = s.recv(512).decode(errors="replace").strip()
        s.sendall(b"QUIT\r\n")
        return banner


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read(200).decode(errors="replace")


def kube_proxy_translates(ip: str) -> bool:
    rules = subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True,
                           text=True, check=False).stdout  # fmt: skip
    return f"-d {ip}/32" in rules


def bounded(what: str, fn, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            out = fn()
            if out:
                return out
        except Exception as e:
            last = e
        time.sleep(0.5)
    raise SystemExit(f"FAIL: {what} within {timeout:.0f}s ({last})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--state-dir", default=str(cluster.REPO_ROOT / ".local" / "realnode"))
    ap.add_argument("--cold", action="store_true", help="rebuild the image from debootstrap first")
    ap.add_argument("--keep", action="store_true", help="leave the smoke namespace in place")
    ns = ap.parse_args()
    figs: dict[str, str] = {}

    if ns.cold:
        _, _, secs = image("base")
        figs["image build, cold (debootstrap+deps+code)"] = f"{secs:.1f}s"
    ref, tar, secs = image()
    figs["image build, as found (cached layers reused)"] = f"{secs:.1f}s"
    ref, tar, secs = image()
    figs["image build, warm (nothing changed)"] = f"{secs:.2f}s"
    figs["image size (docker-archive)"] = f"{tar.stat().st_size / 2**20:.0f} MiB"

    cp = cluster.ControlPlane.load(Path(ns.state_dir))
    if cp is None:
        cp = cluster.ControlPlane(cluster.ensure_binaries(), Path(ns.state_dir), node="real")
    node = cp.real_node
    if len(node.running()) < 3 or len(cp.running()) < 4:
        t0 = time.monotonic()
        cp.start()
        figs["cluster start (control plane + node Ready)"] = f"{time.monotonic() - t0:.1f}s"
    else:
        figs["node"] = "already running (make node-down first to measure its start)"
    figs["image import into containerd"] = f"{node.load_image(tar):.1f}s"
    size = [ln for ln in node.ctr("images", "ls").splitlines() if ref.split(":")[1] in ln]
    if size:
        figs["image size (containerd, compressed)"] = " ".join(size[0].split()[3:5])

    cp.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true", timeout=180)
    cp.kubectl("create", "namespace", NS)
    cp.kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")  # fmt: skip
    t0 = time.monotonic()
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects(ref)})
    cp.kubectl("apply", "-f", "-", input=doc)

    def ready() -> dict | None:
        pod = kjson(cp, "-n", NS, "get", "pod", "mta-0")
        conds = {c["type"]: c for c in pod.get("status", {}).get("conditions", [])}
        return pod if conds.get("Ready", {}).get("status") == "True" else None

    try:
        pod = bounded("pod mta-0 Ready", ready, 120)
    except SystemExit:
        print(cp.kubectl("-n", NS, "describe", "pod", "mta-0", check=False).stdout[-3000:])
        print(cp.kubectl("-n", NS, "logs", "mta-0", check=False).stdout[-3000:])
        raise
    figs["pod create to Ready (wall clock)"] = f"{time.monotonic() - t0:.1f}s"
    st = pod["status"]
    started = ts(pod["metadata"]["creationTimestamp"])
    ready_at = ts(next(c for c in st["conditions"] if c["type"] == "Ready")["lastTransitionTime"])
    figs["pod start to Ready (API timestamps)"] = f"{ready_at - started:.0f}s"
    pod_ip = st["podIP"]
    assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(n.POD_CIDR), pod_ip
    figs["pod IP"] = pod_ip

    # Its own network namespace, and who runs in the container.
    cid = st["containerStatuses"][0]["containerID"].split("://")[1]
    info = json.loads(node.crictl("inspect", cid))["info"]
    pid = info["pid"]
    netns_pod, netns_host = os.readlink(f"/proc/{pid}/ns/net"), os.readlink("/proc/self/ns/net")
    assert netns_pod != netns_host, "pod shares the host's netns"
    uid_line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ln.startswith("Uid:"))  # fmt: skip
    readonly = info["runtimeSpec"]["root"].get("readonly", False)
    figs["container"] = (
        f"uid {uid_line.split()[1:3]}, readonly rootfs {readonly}, netns {netns_pod}"
    )

    # Host -> pod IP.
    code, body = bounded(
        "GET /readyz on the pod IP", lambda: http_get(f"http://{pod_ip}:{ADMIN_PORT}/readyz")
    )
    figs["host -> pod IP /readyz"] = f"{code} {body[:40]!r}"
    figs["host -> pod IP SMTP"] = bounded(
        "SMTP banner on the pod IP", lambda: smtp_banner(pod_ip, SUBMISSION_PORT)
    )[:60]

    # Endpoints and the ClusterIP through kube-proxy.
    svc = kjson(cp, "-n", NS, "get", "service", "mta")
    cip = svc["spec"]["clusterIP"]
    eps = bounded("an EndpointSlice with the pod", lambda: [
        a for s in kjson(cp, "-n", NS, "get", "endpointslices",
                         "-l", "kubernetes.io/service-name=mta")["items"]
        for e in s.get("endpoints") or [] for a in e["addresses"]])  # fmt: skip
    figs["endpoints"] = ",".join(eps)
    t1 = time.monotonic()
    bounded(f"kube-proxy's rule for {cip}", lambda: kube_proxy_translates(cip), 60)
    figs["Service ClusterIP"] = f"{cip} (iptables rule after {time.monotonic() - t1:.1f}s)"
    figs["host -> ClusterIP SMTP"] = bounded(
        "SMTP banner on the ClusterIP", lambda: smtp_banner(cip, SUBMISSION_PORT)
    )[:60]
    code, _ = bounded(
        "GET /readyz on the ClusterIP", lambda: http_get(f"http://{cip}:{ADMIN_PORT}/readyz")
    )
    figs["host -> ClusterIP /readyz"] = str(code)

    if not ns.keep:
        cp.kubectl("delete", "namespace", NS, "--wait=false")
    print("\nreal node smoke: OK")
    for k, v in figs.items():
        print(f"  {k:52} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
