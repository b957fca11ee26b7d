"""The real node of the local cluster: containerd + runc, kubelet, kube-proxy and the CNI plugins,
on this machine, started and stopped by hack/cluster.py (``ControlPlane(node="real")``).

All on this machine, all stopped by PID (PID files and logs beside the control plane's, under
``<state>/run`` and ``<state>/log``; the node's own state under ``<state>/node``):

- a bridge ``mfbr0`` holding NODE_IP (the node's InternalIP, the pods' gateway and the address
  the API server listens on, so pods reach it through the ``kubernetes`` Service) and the routes
  for the pod and Service CIDRs, so nothing addressed to them leaves the machine even when
  kube-proxy is not running;
- containerd (Debian's, 1.6, CRI v1) with its own root, state, socket and config under
  ``<state>/node/containerd``; runc; the pause image built by hack/nodebuild.sh;
- the kubelet (KubeletConfiguration in ``<state>/node/kubelet-config.json``; the node client
  certificate cluster.py issues for system:node:mailfleet-node; a serving certificate for NODE_IP);
- kube-proxy in iptables mode, NodePorts on NODE_IP only, no route_localnet, no conntrack sysctls;
- the CNI conflist (bridge + host-local + portmap; containerd adds loopback itself).

The bridge and the CIDRs are fixed, so one real node runs on a machine at a time: ``up`` refuses
while another state directory's node runs (see OWNER_FILE). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nodeaddons  # hack/nodeaddons.py

HACK = Path(__file__).resolve().parent
NODEBUILD_SH = HACK / "nodebuild.sh"
IMAGE_SH = HACK / "image.sh"
NODE_NAME = "mailfleet-node"  # = cluster.NODE_NAME
LOOPBACK = "127.0.0.1"
# kind's default pod CIDR; the host has nothing in 10.0.0.0/8 but the Service CIDR we add.
POD_CIDR = "10.244.0.0/16"
BRIDGE = "mfbr0"
NODE_IP = "10.244.0.1"  # on the bridge: the pods' gateway, the node's and the API server's address
SERVICE_CIDR = "10.0.0.0/16"  # = cluster.SERVICE_CIDR
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "mailfleet.local/pause:3.10.1"  # = hack/nodebuild.sh
HELPER_IMAGE = (
    "mailfleet.local/local-path-helper:1"  # = hack/nodebuild.sh (busybox, for local-path)
)
COMPONENTS = ("containerd", "kubelet", "kube-proxy", *nodeaddons.COMPONENTS)
K8S_NS = "k8s.io"  # containerd namespace of the CRI
# Which state directory's node holds the bridge (one real node per machine).
OWNER_FILE = Path("/run/mailfleet-realnode.owner")
# Both nodes' pod networks: kube-proxy (one, in the host's network both nodes share) treats
# traffic from either as the cluster's own.
CLUSTER_POD_CIDR = "10.244.0.0/15"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the local cluster: its name, its address (on its own bridge: its pods'
    gateway and its InternalIP), its pod subnet, and how its files and PIDs are told apart."""

    name: str
    ip: str
    bridge: str
    cidr: str
    suffix: str = ""  # of its PID/log files and certificates ("" for the first node)

    @property
    def first(self) -> bool:
        return self.suffix == ""


FIRST = NodeSpec(NODE_NAME, NODE_IP, BRIDGE, POD_CIDR)
# A second kubelet with its own containerd on this machine: no kube-proxy or add-ons of its own
# (the host's network, where kube-proxy's rules and the add-ons live, is shared), no QoS cgroups
# (the first kubelet owns /kubepods), no NetworkPolicy enforcement for its pods.
SECOND = NodeSpec("mailfleet-node-2", "10.245.0.1", "mfbr1", "10.245.0.0/16", "-2")


class NodeError(RuntimeError):
    pass


class ControlPlaneLike(Protocol):
    """What the node needs of hack/cluster.py's ControlPlane (not imported: no cycle)."""

    state_dir: Path
    die_with_parent: bool

    @property
    def pki(self) -> Path: ...
    @property
    def server(self) -> str: ...
    @property
    def node_state_dir(self) -> Path: ...
    def pid_file(self, component: str) -> Path: ...
    def log_file(self, component: str) -> Path: ...
    def _node_schedulable(self) -> bool: ...
    def kubectl(self, *args: str, **kw: Any) -> Any: ...


def _run(*argv: str, check: bool = True, timeout: float = 120.0, **kw: Any) -> str:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def build_node_binaries(*, build: bool = True) -> Path:
    """The cache dir of hack/nodebuild.sh (kubelet, kube-proxy, crictl, CNI plugins, pause)."""
    args = [str(NODEBUILD_SH)] + ([] if build else ["--check"])
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise NodeError(
            "hack/nodebuild.sh failed" if build else "node binaries not built: run make node-build"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


def build_image() -> tuple[str, Path, float]:
    """hack/image.sh (cached by content): (image ref, docker-archive tar, seconds)."""
    t0 = time.monotonic()
    out = subprocess.run([str(IMAGE_SH)], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise NodeError("hack/image.sh failed (see its output above)")
    ref, tar = out.stdout.split()[-2:]
    return ref, Path(tar), time.monotonic() - t0


def ensure_bridge(spec: NodeSpec = FIRST) -> None:
    """The node's bridge with its address (the first node's before the API server binds it);
    idempotent."""
    bridge = spec.bridge
    if _run("ip", "-br", "link", "show", bridge, check=False).strip() == "":
        _run("ip", "link", "add", bridge, "type", "bridge")
    prefix = spec.cidr.split("/")[1]
    if f"{spec.ip}/" not in _run("ip", "-br", "addr", "show", bridge):
        _run("ip", "addr", "add", f"{spec.ip}/{prefix}", "dev", bridge)
    _run("ip", "link", "set", bridge, "up")
    if spec.first:
        # ClusterIPs that kube-proxy has not (yet) translated go into the bridge, not out eth0.
        _run("ip", "route", "replace", SERVICE_CIDR, "dev", bridge)


def remove_bridge(spec: NodeSpec = FIRST) -> None:
    if spec.first:
        _run("ip", "route", "del", SERVICE_CIDR, "dev", spec.bridge, check=False)
    _run("ip", "link", "del", spec.bridge, check=False)


@dataclass
class NodePorts:
    kubelet: int = 0
    kubelet_healthz: int = 0
    proxy_healthz: int = 0
    proxy_metrics: int = 0
    dns_health: int = 0
    dns_ready: int = 0
    router_health: int = 0

    def fill(self, free_port: Callable[[], int], in_use: Callable[[int], bool]) -> None:
        taken: set[int] = set()
        for name, port in asdict(self).items():
            if port == 0 or in_use(port):
                new = free_port()
                while new in taken:
                    new = free_port()
                setattr(self, name, new)
            taken.add(getattr(self, name))


@dataclass
class Helpers:
    """hack/cluster.py's process and PKI helpers, handed in (this module never imports it)."""

    issue: Callable[..., None]
    write_kubeconfig: Callable[..., None]
    spawn: Callable[..., subprocess.Popen[bytes]]  # cluster.spawn_logged
    stop: Callable[..., bool]  # cluster.stop_recorded
    pid_runs: Callable[[int, str], bool]
    tail: Callable[..., str]
    free_port: Callable[[], int]
    port_in_use: Callable[[int], bool]


@dataclass
class RealNode:
    """containerd, the kubelet and kube-proxy of one ControlPlane."""

    cp: ControlPlaneLike
    node_dir: Path  # hack/nodebuild.sh's cache: bin/, cni/bin/, images/pause.tar
    h: Helpers
    ports: NodePorts = field(default_factory=NodePorts)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    spec: NodeSpec = FIRST

    def __post_init__(self) -> None:
        meta = self.state_dir / "node.json"
        if meta.exists() and not any(asdict(self.ports).values()):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.ports = NodePorts(**json.loads(meta.read_text())["ports"])

    # paths -----------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        base = Path(self.cp.node_state_dir)
        return base if self.spec.first else base / f"node{self.spec.suffix}"

    @property
    def components(self) -> tuple[str, ...]:
        return COMPONENTS if self.spec.first else ("containerd", "kubelet")

    def second(self) -> RealNode:
        """The local cluster's second node (SECOND), sharing this one's control plane, helpers
        and binaries; start it with up()."""
        if not self.spec.first:
            raise NodeError("the second node has no second node")
        return RealNode(self.cp, self.node_dir, self.h, spec=SECOND)

    @property
    def pki(self) -> Path:
        return self.cp.pki

    @property
    def ctr_dir(self) -> Path:
        return self.state_dir / "containerd"

    @property
    def socket(self) -> Path:
        return self.ctr_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state_dir / "cni" / "net.d"

    @property
    def addons(self) -> nodeaddons.Addons:
        try:
            addons_dir = nodeaddons.build(check_only=True)
        except nodeaddons.AddonError as e:
            raise NodeError(str(e)) from e
        return nodeaddons.Addons(
            node=self, addons_dir=addons_dir, node_ip=NODE_IP, server=self.cp.server,
            kubectl=self.cp.kubectl, issue=self.h.issue,
            write_kubeconfig=self.h.write_kubeconfig, ports=self.ports,
        )  # fmt: skip

    def pid_file(self, c: str) -> Path:
        return self.cp.pid_file(c + self.spec.suffix)

    def log_file(self, c: str) -> Path:
        return self.cp.log_file(c + self.spec.suffix)

    def running(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.components:
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.pid_file(c).read_text().strip())
                if self.h.pid_runs(pid, c):
                    out[c] = pid
        return out

    # tools -----------------------------------------------------------------
    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> str:
        return _run(
            "ctr", f"--address={self.socket}", "-n", K8S_NS, *args, check=check, timeout=timeout
        )

    def crictl(self, *args: str, check: bool = True, timeout: float = 120.0) -> str:
        ep = f"unix://{self.socket}"
        return _run(
            str(self.node_dir / "bin" / "crictl"),
            f"--runtime-endpoint={ep}",
            f"--image-endpoint={ep}",
            "--timeout=30s",
            *args,
            check=check,
            timeout=timeout,
        )

    def has_image(self, ref: str) -> bool:
        return any(
            name in (ref, f"docker.io/library/{ref}", f"docker.io/{ref}")
            for name in self.ctr("images", "list", "-q", check=False).split()
        )

    def load_image(self, tar: Path) -> float:
        """Import a docker-archive into the CRI's namespace; returns the seconds it took."""
        t0 = time.monotonic()
        self.ctr("images", "import", "--no-unpack=false", str(tar))
        return time.monotonic() - t0

    # config files ------------------------------------------------------------
    def _issue_certs(self) -> None:
        name, ip, sfx = self.spec.name, self.spec.ip, self.spec.suffix
        leaves = [
            # The kubelet's serving certificate for its node IP (cluster.py's node-serving is
            # for 127.0.0.1, which the kubelet refuses as a node IP).
            (f"node-real-serving{sfx}", f"/O=system:nodes/CN=system:node:{name}",
             [f"IP:{ip}", f"DNS:{name}"], False),
        ]  # fmt: skip
        if self.spec.first:
            # Bound to system:node-proxier by the API server's bootstrap RBAC.
            leaves.append(("kube-proxy-client", "/CN=system:kube-proxy", [], True))
        else:
            # The first node's client certificate is cluster.py's node-client; the Node
            # authorizer lets each kubelet write only its own Node and pods.
            leaves.append((f"node-client{sfx}", f"/O=system:nodes/CN=system:node:{name}", [], True))
        for name, subject, sans, client in leaves:
            if not (self.pki / f"{name}.crt").exists():
                self.h.issue(self.pki, name, subject, sans=sans, client=client)
                (self.pki / f"{name}.key").chmod(0o600)

    def _write_configs(self) -> None:
        for d in ("containerd", "kubelet", "cni/net.d", "cni/ipam", "pod-logs"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        server = self.cp.server
        self.h.write_kubeconfig(
            self.state_dir / "kubelet.kubeconfig",
            server=server,
            pki=self.pki,
            user=f"system:node:{self.spec.name}",
            cert=f"node-client{self.spec.suffix}",
        )
        self.h.write_kubeconfig(
            self.state_dir / "kube-proxy.kubeconfig",
            server=server,
            pki=self.pki,
            user="system:kube-proxy",
            cert="kube-proxy-client",
        )
        cd = self.ctr_dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        root, state, ttrpc, opt, runc_root = (
            cd / "root",
            cd / "state",
            cd / "containerd.sock.ttrpc",
            cd / "opt",
            cd / "runc",
        )
        cni_bin = self.node_dir / "cni" / "bin"
        (cd / "config.toml").write_text(
            f"""# Written by hack/realnode.py; containerd {_containerd_version()} (CRI v1).
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{ttrpc}"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Non-root pods may bind ports below 1024 (as containerd 2 and kind do).
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  device_ownership_from_security_context = true
  # This machine withholds CAP_SYS_RESOURCE even from root: runc cannot lower oom_score_adj
  # (the pause container's -998), so keep every container at or above containerd's own.
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [{cri}.cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{self.cni_conf_dir}"
    max_conf_num = 1
"""
        )
        conflist = {
            "cniVersion": "1.0.0",
            "name": "mailfleet",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.spec.bridge,
                    "isGateway": True,
                    "ipMasq": False,  # pods never reach beyond this machine
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.spec.cidr, "gateway": self.spec.ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.state_dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.cni_conf_dir / "10-mailfleet.conflist").write_text(json.dumps(conflist, indent=2))
        # Pods of dnsPolicy Default (and the node) get no nameserver: nothing leaves the host.
        (self.state_dir / "resolv.conf").write_text("options ndots:1\n")
        kubelet_cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.spec.ip,
            "port": self.ports.kubelet,
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": self.ports.kubelet_healthz,
            "tlsCertFile": str(self.pki / f"node-real-serving{self.spec.suffix}.crt"),
            "tlsPrivateKeyFile": str(self.pki / f"node-real-serving{self.spec.suffix}.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            # This machine has cgroup v1; kubelet 1.34 still runs there when told to.
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [nodeaddons.DNS_IP],
            "resolvConf": str(self.state_dir / "resolv.conf"),
            "podLogsDir": str(self.state_dir / "pod-logs"),
            "volumePluginDir": str(self.kubelet_dir / "volume-plugins"),
            "staticPodPath": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            # A shared test machine: never evict or garbage-collect images for disk.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 250,
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
        }  # fmt: skip
        if not self.spec.first:
            # The first kubelet owns the QoS cgroups (/kubepods); this one's pods go directly
            # under the root, and it enforces no allocatable of its own.
            kubelet_cfg["cgroupsPerQOS"] = False
            kubelet_cfg["enforceNodeAllocatable"] = []
        (self.state_dir / "kubelet-config.json").write_text(json.dumps(kubelet_cfg, indent=2))
        proxy_cfg = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.state_dir / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "mode": "iptables",
            "clusterCIDR": CLUSTER_POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"{LOOPBACK}:{self.ports.proxy_healthz}",
            "metricsBindAddress": f"{LOOPBACK}:{self.ports.proxy_metrics}",
            # NodePorts only on the node's own address; never on the host's loopback or eth0.
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "iptables": {"localhostNodePorts": False, "minSyncPeriod": "1s", "syncPeriod": "30s"},
            # Leave the host's conntrack sysctls alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }  # fmt: skip
        (self.state_dir / "kube-proxy-config.json").write_text(json.dumps(proxy_cfg, indent=2))

    # network (iptables) ------------------------------------------------------
    def _remove_kubelet_chains(self) -> None:
        """The kubelet's own iptables chains (KUBE-FIREWALL drops non-loopback sources to
        127.0.0.0/8; the canaries and hint are empty); kube-proxy --cleanup leaves them."""
        for tool in ("iptables", "ip6tables"):
            for chain in ("INPUT", "OUTPUT"):
                _run(tool, "-t", "filter", "-D", chain, "-j", "KUBE-FIREWALL", check=False)
            for table, chain in (
                ("filter", "KUBE-FIREWALL"),
                ("filter", "KUBE-KUBELET-CANARY"),
                ("nat", "KUBE-KUBELET-CANARY"),
                ("mangle", "KUBE-KUBELET-CANARY"),
                ("mangle", "KUBE-IPTABLES-HINT"),
            ):
                _run(tool, "-t", table, "-F", chain, check=False)
                _run(tool, "-t", table, "-X", chain, check=False)

    # network -----------------------------------------------------------------
    def _claim_bridge(self) -> None:
        """One real node per machine: refuse while another state directory's node runs."""
        if not self.spec.first:
            return  # the first node's claim covers it
        mine = str(self.state_dir)
        with contextlib.suppress(OSError):
            owner = OWNER_FILE.read_text().strip()
            if owner and owner != mine:
                pid_file = Path(owner).parent / "run" / "kubelet.pid"
                with contextlib.suppress(OSError, ValueError):
                    if self.h.pid_runs(int(pid_file.read_text().strip()), "kubelet"):
                        raise NodeError(
                            f"a real node already runs from {Path(owner).parent} (bridge {BRIDGE}"
                            f", {POD_CIDR}); stop it first: hack/cluster.py down --state-dir "
                            f"{Path(owner).parent}"
                        )
        OWNER_FILE.write_text(mine + "\n")

    def _release_bridge(self) -> None:
        if not self.spec.first:
            return
        with contextlib.suppress(OSError):
            if OWNER_FILE.read_text().strip() == str(self.state_dir):
                OWNER_FILE.unlink()

    # processes ---------------------------------------------------------------
    def _spawn(self, c: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.procs[c] = self.h.spawn(
            argv, log=self.log_file(c), pid_file=self.pid_file(c), cwd=self.state_dir, env=env,
            die_with_parent=self.cp.die_with_parent,
        )  # fmt: skip

    def _alive(self, c: str) -> None:
        proc = self.procs.get(c)
        if proc is not None and proc.poll() is not None:
            raise NodeError(f"{c} exited ({proc.returncode}); last lines of {self.log_file(c)}:\n"
                            f"{self.h.tail(self.log_file(c))}")  # fmt: skip

    def _wait(
        self, what: str, ok: Callable[[], Any], timeout: float, watch: tuple[str, ...]
    ) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for c in watch:
                self._alive(c)
            with contextlib.suppress(Exception):
                if ok():
                    return time.monotonic() - t0
            time.sleep(0.25)
        tails = "\n".join(f"--- {c}:\n{self.h.tail(self.log_file(c), 25)}" for c in watch)
        raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")

    def up(self, *, timeout: float = 240.0) -> dict[str, float]:
        """Start what does not run (the control plane runs already); returns timings (s)."""
        figures: dict[str, float] = {}
        self._claim_bridge()
        self._issue_certs()
        running = self.running()
        if not running:
            self.ports.fill(self.h.free_port, self.h.port_in_use)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "node.json").write_text(
            json.dumps({"ports": asdict(self.ports), "node_dir": str(self.node_dir),
                        "node_ip": self.spec.ip, "pod_cidr": self.spec.cidr}, indent=2) + "\n"
        )  # fmt: skip
        self._write_configs()
        ensure_bridge(self.spec)
        t1 = time.monotonic()
        if "containerd" not in running:
            env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
            self._spawn(
                "containerd", ["containerd", f"--config={self.ctr_dir / 'config.toml'}"], env
            )
        self._wait("containerd's socket", lambda: self.ctr("version", timeout=5) != "", 30,
                   ("containerd",))  # fmt: skip
        if not self.has_image(PAUSE_IMAGE):
            self.load_image(self.node_dir / "images" / "pause.tar")
        if "kubelet" not in running:
            self._spawn("kubelet", [
                str(self.node_dir / "bin" / "kubelet"),
                f"--config={self.state_dir / 'kubelet-config.json'}",
                f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
                f"--root-dir={self.kubelet_dir}",
                f"--cert-dir={self.kubelet_dir / 'pki'}",
                f"--hostname-override={self.spec.name}",
                f"--node-ip={self.spec.ip}",
                "--v=1",
            ])  # fmt: skip
        if not self.spec.first:
            if not self.has_image(HELPER_IMAGE):  # the local-path provisioner's, for its PVs
                self.load_image(self.node_dir / "images" / "local-path-helper.tar")
            self._wait(f"Node {self.spec.name} Ready", self.node_ready, timeout,
                       ("containerd", "kubelet"))  # fmt: skip
            figures["node_ready"] = time.monotonic() - t1
            return figures
        if "kube-proxy" not in running:
            self._spawn("kube-proxy", [
                str(self.node_dir / "bin" / "kube-proxy"),
                f"--config={self.state_dir / 'kube-proxy-config.json'}",
                "--v=1",
            ])  # fmt: skip
        core = ("containerd", "kubelet", "kube-proxy")
        self._wait(f"Node {NODE_NAME} Ready and schedulable", self.cp._node_schedulable,
                   timeout, core)  # fmt: skip
        figures["node_ready"] = time.monotonic() - t1
        t2 = time.monotonic()
        if not self.has_image(HELPER_IMAGE):
            self.load_image(self.node_dir / "images" / "local-path-helper.tar")
        addons = self.addons
        _enable_bridge_netfilter()
        try:
            addons.prepare(HELPER_IMAGE)
            addons.start(running)
        except (nodeaddons.AddonError, subprocess.SubprocessError) as e:
            raise NodeError(f"starting the node's add-ons: {e}") from e
        self._wait("cluster DNS (CoreDNS /ready)", addons.dns_ready, 60, COMPONENTS)
        figures["addons_ready"] = time.monotonic() - t2
        return figures

    def node_ready(self) -> bool:
        """The Node is registered and Ready (its scheduling taints are the scheduler's business:
        a test that wants it schedulable waits for that)."""
        out = self.cp.kubectl("get", "node", self.spec.name, "-o", "json", check=False)
        if getattr(out, "returncode", 1) != 0:
            return False
        conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def stop_kubelet(self) -> bool:
        """The kubelet alone, by PID, as a node whose kubelet dies: its containers keep running
        under containerd, the Node goes NotReady after the grace period."""
        return self._stop("kubelet")

    def start_kubelet(self, timeout: float = 120.0) -> float:
        """The kubelet again (after stop_kubelet); returns the seconds until the Node is Ready."""
        return self.up(timeout=timeout).get("node_ready", 0.0)

    def tasks(self) -> list[str]:
        """The IDs of the containers running under this node's containerd."""
        out = self.ctr("tasks", "list", check=False, timeout=30)
        return [ln.split()[0] for ln in out.splitlines()[1:] if ln.strip()]

    def partition(self) -> list[str]:
        """The node goes away as a machine cut off does: its kubelet stops (the Node goes
        NotReady) and every container of it freezes (cgroup freezer: no packet answered, no
        mail sent, the queues kept). Returns the frozen containers."""
        self.stop_kubelet()
        frozen = []
        for task in self.tasks():
            with contextlib.suppress(NodeError):
                self.ctr("tasks", "pause", task, timeout=30)
                frozen.append(task)
        return frozen

    def heal(self, timeout: float = 120.0) -> float:
        """Back after partition(): the containers thaw, the kubelet starts; returns the seconds
        until the Node is Ready."""
        for task in self.tasks():
            self.ctr("tasks", "resume", task, check=False, timeout=30)
        return self.start_kubelet(timeout)

    def down(self) -> list[str]:
        """kube-proxy and the kubelet, then every pod sandbox (CNI DEL, shims exit), then
        containerd; all by PID."""
        stopped: list[str] = []
        if self.spec.first:
            with contextlib.suppress(NodeError, OSError):
                second = self.second()
                if second.running():
                    stopped += [f"{c}{SECOND.suffix}" for c in second.down()]
        for c in (*reversed(nodeaddons.COMPONENTS), "kube-proxy", "kubelet"):
            if self._stop(c):
                stopped.append(c)
        if "containerd" in self.running():
            with contextlib.suppress(NodeError, subprocess.TimeoutExpired, OSError):
                self.crictl("rmp", "--all", "--force", timeout=180)
        if self._stop("containerd"):
            stopped.append("containerd")
        self._release_bridge()
        return stopped

    def _stop(self, c: str) -> bool:
        return self.h.stop(self.procs.pop(c, None), self.pid_file(c), c, timeout=30.0)

    def clean(self) -> None:
        """down, then kube-proxy's and the kubelet's iptables rules, the bridge, and the node's
        state (its mounts first)."""
        self.down()
        if self.running():
            raise NodeError("refusing to clean: node components still running")
        if self.spec.first:
            proxy = self.node_dir / "bin" / "kube-proxy"
            if proxy.exists():
                _run(str(proxy), "--cleanup", "--v=0", check=False)
            nodeaddons.remove_router_rules()
            self._remove_kubelet_chains()
            remove_bridge(SECOND)
        remove_bridge(self.spec)
        prefix = str(self.state_dir) + "/"

        def mounts() -> list[str]:
            return [
                line.split()[1]
                for line in Path("/proc/self/mounts").read_text().splitlines()
                if line.split()[1].startswith(prefix)
            ]

        # The kubelet's volumes (tmpfs for secrets) and containerd's mounts, deepest first.
        for m in sorted(mounts(), key=len, reverse=True):
            _run("umount", m, check=False)
        if still := mounts():
            raise NodeError(f"still mounted, not removing {self.state_dir}: {still[:5]}")
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _enable_bridge_netfilter() -> None:
    """Pod-to-pod traffic on one bridge passes iptables only with this on: without it the
    NetworkPolicy controller's rules never see it (kind's nodes set it too)."""
    knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if knob.exists() and knob.read_text().strip() != "1":
        knob.write_text("1\n")


def _containerd_version() -> str:
    try:
        return _run("containerd", "--version", timeout=10).split()[2]
    except (NodeError, OSError, IndexError):
        return "?"
