"""The real node's cluster add-ons, as kind ships them, run as host processes beside the kubelet
(each with a kubeconfig of its own identity, RBAC as narrow as its upstream manifests, a PID file
and a log, stopped by PID):

- **cluster DNS**: CoreDNS (hack/node/gomod/coredns) on NODE_IP:53, behind the ``kube-dns``
  Service at DNS_IP (the kubelet's clusterDNS) in kube-system, whose EndpointSlice names the node.
  Only ``cluster.local`` and the reverse zones: nothing is forwarded off this machine (a pool that
  resolves MX hosts names its resolvers in ``spec.dns``).
- **storage**: rancher's local-path-provisioner (what kind ships), provisioner
  ``rancher.io/local-path``, the default StorageClass ``standard`` binding WaitForFirstConsumer,
  volumes under ``<state>/node/local-path``; its helper pods (mkdir/rm of a volume's directory)
  run the mailfleet image's /bin/sh as root in the local-path-storage namespace.
- **NetworkPolicy**: kube-router's network-policy controller (iptables + ipset; what k3s
  embeds), firewall only (no routing, no service proxy: kube-proxy does that). kind's
  kube-network-policies needs nftables' ``queue`` (CONFIG_NFT_QUEUE), which this kernel lacks.

Standard library only; driven by hack/realnode.py.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LOOPBACK = "127.0.0.1"
NODE_NAME = "mailfleet-node"  # = realnode.NODE_NAME
SERVICE_CIDR = "10.0.0.0/16"  # = realnode.SERVICE_CIDR
ADDONS_SH = Path(__file__).resolve().parent / "node" / "addons.sh"
DNS_IP = "10.0.0.10"  # the 10th address of the Service CIDR, as kubeadm and kind pick it
LOCAL_PATH_NS = "local-path-storage"
STORAGE_CLASS = "standard"  # kind's name for it
PROVISIONER = "rancher.io/local-path"
COMPONENTS = ("coredns", "local-path-provisioner", "kube-router")

# (component, certificate name, user) — each add-on authenticates as its own user.
IDENTITIES = {
    "coredns": ("coredns-client", "system:mailfleet:coredns"),
    "local-path-provisioner": ("local-path-client", "system:mailfleet:local-path-provisioner"),
    "kube-router": ("kube-router-client", "system:mailfleet:kube-router"),
}


class AddonError(RuntimeError):
    pass


def build(*, check_only: bool = False) -> Path:
    """hack/node/addons.sh: the add-ons' cache dir (built once per version)."""
    args = [str(ADDONS_SH)] + (["--check"] if check_only else [])
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise AddonError("the node's add-ons are not built: run make node-build")
    return Path(proc.stdout.strip().splitlines()[-1])


def binary(addons_dir: Path, name: str) -> Path:
    found = sorted(addons_dir.glob(f"{name}-*/{name}"))
    if not found:
        raise AddonError(f"{name} is missing under {addons_dir}: run make node-build")
    return found[-1]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


READ = ["get", "list", "watch"]
RULES: dict[str, list[dict[str, Any]]] = {
    # CoreDNS's own ClusterRole (system:coredns in kubeadm and kind).
    "coredns": [
        _rule([""], ["endpoints", "services", "pods", "namespaces"], ["list", "watch"]),
        _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
    ],
    # local-path-provisioner's ClusterRole, plus its namespaced helper pods and leader lease.
    "local-path-provisioner": [
        _rule([""], ["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"], READ),
        _rule(
            [""],
            ["persistentvolumes"],
            ["get", "list", "watch", "create", "patch", "update", "delete"],
        ),
        _rule([""], ["events"], ["create", "patch"]),
        _rule(["storage.k8s.io"], ["storageclasses"], READ),
    ],
    # kube-router's ClusterRole, as its daemonset manifests grant it, less what routing needs.
    "kube-router": [
        _rule([""], ["namespaces", "pods", "services", "nodes", "endpoints"], READ),
        _rule(["networking.k8s.io"], ["networkpolicies"], READ),
        _rule(["discovery.k8s.io"], ["endpointslices"], READ),
        _rule([""], ["events"], ["create", "patch"]),
    ],
}


def rbac_objects() -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for comp, (_, user) in IDENTITIES.items():
        name = f"mailfleet:node:{comp}"
        objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                     "metadata": {"name": name}, "rules": RULES[comp]})  # fmt: skip
        objs.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })  # fmt: skip
    # The provisioner's helper pods live in its namespace, which it alone writes to.
    lp_user = IDENTITIES["local-path-provisioner"][1]
    objs += [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOCAL_PATH_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "local-path-helper", "namespace": LOCAL_PATH_NS},
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "local-path-provisioner", "namespace": LOCAL_PATH_NS},
         "rules": [_rule([""], ["pods"], ["get", "list", "watch", "create", "patch", "update",
                                          "delete"]),
                   _rule(["coordination.k8s.io"], ["leases"],
                         ["get", "create", "update", "list", "watch"]),
                   _rule([""], ["endpoints"], ["get", "create", "update", "list", "watch"])]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "local-path-provisioner", "namespace": LOCAL_PATH_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "local-path-provisioner"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                       "name": lp_user}]},
    ]  # fmt: skip
    return objs


def dns_objects(node_ip: str) -> list[dict[str, Any]]:
    """kube-dns at DNS_IP; its endpoints are CoreDNS on the node (a host process, no selector)."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "ports": [
                    {"name": n, "port": 53, "targetPort": 53, "protocol": p} for n, p in ports
                ],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "mailfleet.local",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": n, "port": 53, "protocol": p} for n, p in ports],
        },
    ]


def helper_pod(image: str) -> dict[str, Any]:
    """The template of the provisioner's helper pods (--helper-pod-file; the image comes from
    here, v0.0.30 ignores --helper-image)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "serviceAccountName": "local-path-helper",
            "automountServiceAccountToken": False,
            # The image's user is 10001; making and removing a volume's directory needs root.
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "containers": [{"name": "helper-pod", "image": image, "imagePullPolicy": "Never"}],
        },
    }


def storage_objects() -> list[dict[str, Any]]:
    """The scripts helper pods mount (from the ConfigMap) and the default StorageClass."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "local-path-config", "namespace": LOCAL_PATH_NS},
            "data": {
                # What kind ships: each volume a directory anyone on the node may write, so a
                # pod's fsGroup or runAsUser needs no chown (hostPath volumes get no fsGroup).
                "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        },
    ]


class NodeLike(Protocol):
    state_dir: Path

    @property
    def pki(self) -> Path: ...
    def pid_file(self, c: str) -> Path: ...
    def log_file(self, c: str) -> Path: ...
    def _spawn(self, c: str, argv: list[str], env: dict[str, str] | None = None) -> None: ...


@dataclass
class Addons:
    """Writes the add-ons' configs and starts them; the RealNode owns their processes."""

    node: NodeLike
    addons_dir: Path
    node_ip: str
    server: str
    kubectl: Callable[..., Any]  # ControlPlane.kubectl(*args, input=...)
    issue: Callable[..., None]
    write_kubeconfig: Callable[..., None]
    ports: Any  # realnode.NodePorts: dns_health, dns_ready, router_health

    @property
    def dir(self) -> Path:
        return self.node.state_dir / "addons"

    @property
    def volumes_dir(self) -> Path:
        return self.node.state_dir / "local-path"

    def kubeconfig(self, comp: str) -> Path:
        return self.dir / f"{comp}.kubeconfig"

    def prepare(self, helper_image: str) -> None:
        """Certificates, kubeconfigs, RBAC and the add-ons' API objects (idempotent)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.volumes_dir.mkdir(parents=True, exist_ok=True)
        pki = self.node.pki
        for comp, (cert, user) in IDENTITIES.items():
            if not (pki / f"{cert}.crt").exists():
                self.issue(pki, cert, f"/CN={user}", sans=[], client=True)
                (pki / f"{cert}.key").chmod(0o600)
            self.write_kubeconfig(self.kubeconfig(comp), server=self.server, pki=pki,
                                  user=user, cert=cert)  # fmt: skip
        objs = [*rbac_objects(), *dns_objects(self.node_ip), *storage_objects()]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        self.kubectl("apply", "-f", "-", input=doc)
        (self.dir / "Corefile").write_text(self.corefile())
        (self.dir / "local-path.json").write_text(json.dumps({
            "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                             "paths": [str(self.volumes_dir)]}],
        }, indent=2))  # fmt: skip
        (self.dir / "helperPod.yaml").write_text(json.dumps(helper_pod(helper_image)))

    def corefile(self) -> str:
        return f"""# Written by hack/nodeaddons.py: the real node's cluster DNS (nothing forwarded).
.:53 {{
    bind {self.node_ip}
    errors
    health {LOOPBACK}:{self.ports.dns_health}
    ready {LOOPBACK}:{self.ports.dns_ready}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig("coredns")}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    reload
    loadbalance
}}
"""

    def start(self, running: dict[str, int]) -> None:
        if "coredns" not in running:
            self.node._spawn("coredns", [
                str(binary(self.addons_dir, "coredns")), "-conf", str(self.dir / "Corefile"),
            ])  # fmt: skip
        if "local-path-provisioner" not in running:
            self.node._spawn("local-path-provisioner", [
                str(binary(self.addons_dir, "local-path-provisioner")),
                "start",
                f"--kubeconfig={self.kubeconfig('local-path-provisioner')}",
                f"--config={self.dir / 'local-path.json'}",
                f"--provisioner-name={PROVISIONER}",
                f"--namespace={LOCAL_PATH_NS}",
                "--service-account-name=local-path-helper",
                "--configmap-name=local-path-config",
                f"--helper-pod-file={self.dir / 'helperPod.yaml'}",
            ])  # fmt: skip
        if "kube-router" not in running:
            self.node._spawn("kube-router", [
                str(binary(self.addons_dir, "kube-router")),
                f"--kubeconfig={self.kubeconfig('kube-router')}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-cni=false",
                "--enable-ipv6=false",
                "--metrics-port=0",
                f"--health-port={self.ports.router_health}",
                "--v=1",
            ])  # fmt: skip

    def dns_ready(self) -> bool:
        """CoreDNS's /ready: its kubernetes plugin has synced Services and endpoints."""
        url = f"http://{LOOPBACK}:{self.ports.dns_ready}/ready"
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status) == 200


ROUTER_CHAIN_PREFIXES = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")
ROUTER_SET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")


def remove_router_rules() -> None:
    """kube-router's filter chains and ipsets (its own --cleanup-config leaves them in v2.1.0)."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    rules = run("iptables", "-t", "filter", "-S")
    for line in rules.splitlines():
        parts = shlex.split(line)  # comments are quoted
        # The jumps from the built-in chains into kube-router's.
        if parts[:1] == ["-A"] and "-j" in parts:
            target = parts[parts.index("-j") + 1]
            if parts[1] in ("INPUT", "FORWARD", "OUTPUT") and target.startswith("KUBE-ROUTER-"):
                run("iptables", "-t", "filter", "-D", *parts[1:])
    chains = [
        parts[1]
        for parts in (line.split() for line in rules.splitlines())
        if parts[:1] == ["-N"] and parts[1].startswith(ROUTER_CHAIN_PREFIXES)
    ]
    for chain in chains:
        run("iptables", "-t", "filter", "-F", chain)
    for chain in chains:
        run("iptables", "-t", "filter", "-X", chain)
    for name in run("ipset", "list", "-n").split():
        if name.startswith(ROUTER_SET_PREFIXES):
            run("ipset", "destroy", name)
