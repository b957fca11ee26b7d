#!/usr/bin/env python3
"""A real local Kubernetes cluster on this machine: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and one node, either

- ``node="real"``: containerd + runc, the kubelet, kube-proxy and the CNI plugins
  (hack/realnode.py);
  pods are containers of images loaded into the node's containerd, each in its own network
  namespace on the bridge mfbr0 (pods 10.244.0.0/16, Services 10.0.0.0/16); the API server
  listens on the node's address 10.244.0.1 so pods reach it through the ``kubernetes`` Service;
- ``node="agent"``: hack/nodeagent, the stand-in kubelet that runs pods as local processes on
  loopback addresses (the tests whose world lives on 127.0.0.0/8 still use it);
- ``node="none"``: no scheduler and no node (pods stay Pending), e.g. for operator benchmarks.

Standard library only, so both ``make cluster-up`` and the pytest fixtures
(tests/fixtures/kube.py, tests/fixtures/realnode.py) use this one implementation.

CLI (the Makefile's cluster-* targets call these)::

    hack/cluster.py up     [--state-dir .local] [--bin-dir DIR] [--node agent|real|none] [--image]
                                                                  start, wait until ready
    hack/cluster.py down   [--state-dir .local]                   stop by PID
    hack/cluster.py status [--state-dir .local]                   print what runs where
    hack/cluster.py clean  [--state-dir .local]                   down + remove PKI and etcd data

Library::

    cp = ControlPlane(bin_dir, state_dir)      # free loopback ports unless given
    cp.start()                                 # PKI, kubeconfigs, processes, wait for readiness
    cp.kubectl("get", "ns")
    cp.stop()                                  # SIGTERM (then SIGKILL) to the PIDs it started

Every process is started in its own session with a PID file under ``state_dir/run`` and a log
under ``state_dir/log``, and is only ever stopped by that PID (after checking that the PID still
runs the binary that was started, so a recycled PID is never signalled).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realnode  # hack/realnode.py; it never imports this module

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVTEST_SH = REPO_ROOT / "hack" / "envtest.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "nodeagent")
NODE_NAME = "mailfleet-node"
NODEAGENT_DIR = REPO_ROOT / "hack"
# The node agent's volume provisioner: its StorageClass is the default one, binding Immediate so
# the scheduler sees bound claims (there is one node: no topology to wait for).
STORAGE_CLASS = "mailfleet-local"
PROVISIONER_USER = "system:mailfleet:local-volume-provisioner"
# A /16: one ClusterIP per Service for thousands of pools (a /24 holds only 254).
SERVICE_CIDR = "10.0.0.0/16"
SERVICE_IP = "10.0.0.1"  # first address of SERVICE_CIDR: the "kubernetes" Service
NODE_KINDS = ("agent", "real", "none")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero (check=True); str() includes its stderr and stdout."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr or ''}{self.output or ''}".rstrip()


# --------------------------------------------------------------------------- binaries


def ensure_binaries(*, build: bool = True) -> Path:
    """Return the bin dir holding the pinned binaries, building them first if missing.

    Raises ClusterError (with the build output) when the build fails.
    """
    args = [str(ENVTEST_SH)] + ([] if build else ["--check"])
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        what = "build of" if build else "check for"
        raise ClusterError(
            f"{what} the Kubernetes binaries failed (hack/envtest.sh exit {proc.returncode}):\n"
            f"{proc.stderr[-6000:]}{proc.stdout[-2000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (TIME_WAIT leftovers do not count: the
    Go servers bind with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int = 0  # 0: picked on start (a cluster.json from before the scheduler)

    @classmethod
    def free(cls) -> Ports:
        chosen: list[int] = []
        while len(chosen) < 5:
            p = free_port()
            if p not in chosen:
                chosen.append(p)
        return cls(*chosen)


# --------------------------------------------------------------------------- PKI


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _new_ca(pki: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3650", "-sha256",
        "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=pki,
    )  # fmt: skip


def _issue(
    pki: Path,
    name: str,
    subject: str,
    *,
    sans: Sequence[str] = (),
    client: bool = False,
    ca: str = "ca",
) -> None:
    """Issue pki/<name>.{key,crt} signed by pki/<ca>.{key,crt}."""
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth,clientAuth'}",
    ]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
        "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip
    (pki / f"{name}.csr").unlink()
    (pki / f"{name}.ext").unlink()


def _sans(cert: Path) -> str:
    try:
        return subprocess.run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    except OSError:
        return ""


def _issue_apiserver(pki: Path) -> None:
    _issue(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        sans=[
            f"IP:{LOOPBACK}",
            f"IP:{SERVICE_IP}",
            f"IP:{realnode.NODE_IP}",  # the real node's pods reach it there (and via SERVICE_IP)
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ],
    )
    (pki / "apiserver.key").chmod(0o600)


def ensure_pki(pki: Path) -> None:
    """CA, serving and client certificates and the service-account key pair (once); certificates
    added since a state dir was made are issued into it."""
    if (pki / "complete").exists():
        _ensure_leaf_certs(pki)
        if f"IP Address:{realnode.NODE_IP}" not in _sans(pki / "apiserver.crt"):
            _issue_apiserver(pki)  # a state dir made before the real node's address was added
        return
    if pki.exists():
        shutil.rmtree(pki)
    pki.mkdir(parents=True)
    pki.chmod(0o700)
    _new_ca(pki, "ca", "/CN=mailfleet-local-ca")
    # The aggregation layer's own CA: the API server authenticates to extension API servers
    # with front-proxy-client, and they (and the controller-manager) trust request headers
    # only from certificates of this CA.
    _new_ca(pki, "front-proxy-ca", "/CN=mailfleet-local-front-proxy-ca")
    _issue_apiserver(pki)
    _issue(pki, "controller-manager", "/CN=kube-controller-manager", sans=[f"IP:{LOOPBACK}"])
    _issue(pki, "admin", "/O=system:masters/CN=admin", client=True)
    _issue(pki, "kcm-client", "/CN=system:kube-controller-manager", client=True)
    _issue(pki, "front-proxy-client", "/CN=front-proxy-client", client=True, ca="front-proxy-ca")
    # Service-account token signing key (RS256) and its public half for verification.
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    _ensure_leaf_certs(pki)
    (pki / "complete").write_text("")


def _ensure_leaf_certs(pki: Path) -> None:
    leaves: list[tuple[str, str, list[str], bool]] = [
        ("scheduler", "/CN=kube-scheduler", [f"IP:{LOOPBACK}"], False),
        ("scheduler-client", "/CN=system:kube-scheduler", [], True),
        # The Node authorizer and NodeRestriction know a kubelet by this identity.
        ("node-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", [], True),
        ("provisioner-client", f"/CN={PROVISIONER_USER}", [], True),
        # The node's kubelet API (kubectl logs): its serving cert, and the API server's client.
        (
            "node-serving",
            f"/O=system:nodes/CN=system:node:{NODE_NAME}",
            [f"IP:{LOOPBACK}", f"DNS:{NODE_NAME}"],
            False,
        ),
        (
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            [],
            True,
        ),
    ]
    for name, subject, sans, client in leaves:
        if not (pki / f"{name}.crt").exists():
            _issue(pki, name, subject, sans=sans, client=client)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, *, server: str, pki: Path, user: str, cert: str) -> None:
    """A kubeconfig with absolute paths to the CA and a client certificate (JSON is YAML)."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "mailfleet-local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{cert}.crt"),
                    "client-key": str(pki / f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "mailfleet-local", "context": {"cluster": "mailfleet-local", "user": user}}
        ],
        "current-context": "mailfleet-local",
        "preferences": {},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


# --------------------------------------------------------------------------- processes


def _pid_runs(pid: int, binary: str | None = None) -> bool:
    """Whether pid is alive (and, if binary is given, executes that file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) no longer runs
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            return False
    except (OSError, ValueError):
        pass
    if binary is None:
        return True
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if binary == "nodeagent":  # python3 -m nodeagent
        return b"nodeagent" in argv[1:3]
    return Path(argv[0].decode()).name == Path(binary).name


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, binary: str | None = None, *, timeout: float = 15.0) -> bool:
    """SIGTERM pid (SIGKILL after timeout). Only signals it if it still runs `binary`."""
    if not _pid_runs(pid, binary):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not _pid_runs(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not _pid_runs(pid):
            break
        time.sleep(0.1)
    return True


def spawn_logged(
    argv: list[str],
    *,
    log: Path,
    pid_file: Path,
    cwd: Path,
    env: dict[str, str] | None,
    die_with_parent: bool,
) -> subprocess.Popen[bytes]:
    """Start argv in its own session (it survives the CLI and never gets the terminal's signals)
    with stdout and stderr appended to log, and record its PID."""
    out = log.open("ab")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    finally:
        out.close()
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def stop_recorded(
    proc: subprocess.Popen[bytes] | None, pid_file: Path, binary: str, *, timeout: float
) -> bool:
    """Stop what spawn_logged started (this process's child, or the PID recorded by an earlier
    one), only while that PID still runs binary; forget the PID file."""
    pid: int | None = proc.pid if proc is not None else None
    if pid is None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
    done = pid is not None and stop_pid(pid, binary, timeout=timeout)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    pid_file.unlink(missing_ok=True)
    return done


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux only, best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------- control plane


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + the node agent under
    one state directory.

    state_dir layout: pki/ (certs, keys), etcd/ (data), run/<component>.pid, log/<component>.log,
    kubeconfig (admin, system:masters), controller-manager.kubeconfig, scheduler.kubeconfig,
    bin/kubectl, node/ (the node agent: pods/<ns>_<name>/<container>.log, pvc/<pv>/ volumes),
    cluster.json (ports, versions: lets `down`/`status` and a later `up` find them again).
    """

    bin_dir: Path
    state_dir: Path
    ports: Ports = field(default_factory=Ports.free)
    fsync: bool = True  # False: etcd --unsafe-no-fsync (throwaway test clusters)
    # True: the components get SIGTERM if the starting process dies without stopping them
    # (Linux PR_SET_PDEATHSIG), so a killed test run leaves nothing behind. `up` leaves it off.
    die_with_parent: bool = False
    # Appended to kube-apiserver's arguments (later flags win), e.g. an audit log for a
    # benchmark that counts API writes. Not recorded in cluster.json.
    extra_apiserver_args: list[str] = field(default_factory=list)
    # "agent" | "real" | "none" (see the module's docstring); False/True mean "none"/"agent".
    node: str | bool = "agent"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.bin_dir = Path(self.bin_dir).resolve()
        self.state_dir = Path(self.state_dir).resolve()
        if isinstance(self.node, bool):  # cluster.json written before node kinds
            self.node = "agent" if self.node else "none"
        if self.node not in NODE_KINDS:
            raise ClusterError(f"node must be one of {', '.join(NODE_KINDS)}, not {self.node!r}")
        self._real: realnode.RealNode | None = None

    # paths -----------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def kcm_kubeconfig(self) -> Path:
        return self.state_dir / "controller-manager.kubeconfig"

    @property
    def scheduler_kubeconfig(self) -> Path:
        return self.state_dir / "scheduler.kubeconfig"

    @property
    def node_state_dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def node_name(self) -> str:
        return NODE_NAME

    @property
    def components(self) -> tuple[str, ...]:
        """The control plane's own processes (the real node's are realnode.COMPONENTS)."""
        return {"agent": COMPONENTS, "real": COMPONENTS[:4], "none": COMPONENTS[:3]}[str(self.node)]

    @property
    def real_node(self) -> realnode.RealNode:
        """The real node (node="real"): containerd, kubelet, kube-proxy; built on first use."""
        if self.node != "real":
            raise ClusterError(f"this cluster's node is {self.node!r}, not 'real'")
        if self._real is None:
            recorded = self.node_state_dir / "node.json"
            try:
                node_dir = Path(json.loads(recorded.read_text())["node_dir"])
            except (OSError, ValueError, KeyError):
                try:
                    node_dir = realnode.build_node_binaries()
                except realnode.NodeError as e:
                    raise ClusterError(str(e)) from e
            helpers = realnode.Helpers(
                issue=_issue,
                write_kubeconfig=write_kubeconfig,
                spawn=spawn_logged,
                stop=stop_recorded,
                pid_runs=_pid_runs,
                tail=_tail,
                free_port=free_port,
                port_in_use=port_in_use,
            )
            self._real = realnode.RealNode(self, node_dir, helpers)
        return self._real

    @property
    def host(self) -> str:
        """The API server's address: the node's on a real node (pods reach it), else loopback."""
        return realnode.NODE_IP if self.node == "real" else LOOPBACK

    @property
    def kubectl_path(self) -> Path:
        return self.state_dir / "bin" / "kubectl"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports.apiserver}"

    def pid_file(self, component: str) -> Path:
        return self.state_dir / "run" / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.state_dir / "log" / f"{component}.log"

    def binary(self, component: str) -> Path:
        return self.bin_dir / component

    # state -----------------------------------------------------------------
    @classmethod
    def load(cls, state_dir: Path) -> ControlPlane | None:
        """The control plane recorded in state_dir/cluster.json, if any."""
        meta = Path(state_dir) / "cluster.json"
        if not meta.exists():
            return None
        data = json.loads(meta.read_text())
        return cls(
            bin_dir=Path(data["bin_dir"]),
            state_dir=Path(state_dir),
            ports=Ports(**data["ports"]),
            fsync=bool(data.get("fsync", True)),
            node=data.get("node", True),
        )

    def _save(self) -> None:
        meta = {
            "bin_dir": str(self.bin_dir),
            "ports": asdict(self.ports),
            "fsync": self.fsync,
            "node": self.node,
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
        }
        (self.state_dir / "cluster.json").write_text(json.dumps(meta, indent=2) + "\n")

    def running(self) -> dict[str, int]:
        """component -> pid for each component whose PID file points at a live process."""
        out: dict[str, int] = {}
        for c in self.components:
            try:
                pid = int(self.pid_file(c).read_text().strip())
            except (OSError, ValueError):
                continue
            if _pid_runs(pid, c):
                out[c] = pid
        return out

    # commands --------------------------------------------------------------
    def _etcd_args(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.ports.etcd_client}"
        peer = f"http://{LOOPBACK}:{self.ports.etcd_peer}"
        args = [
            "--name=mailfleet",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mailfleet={peer}",
            "--initial-cluster-state=new",
            "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ]
        if not self.fsync:
            args.append("--unsafe-no-fsync")
        return args

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [
            f"--etcd-servers=http://{LOOPBACK}:{self.ports.etcd_client}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The defaults (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity,
            # ResourceQuota, webhooks, ...) plus NodeRestriction; none needs a node.
            "--enable-admission-plugins=NodeRestriction",
            # kubectl logs: the API server calls the node agent at its InternalIP.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            # A real node: the "kubernetes" Service's endpoint is NODE_IP (the lease reconciler,
            # as on any cluster); loopback cannot be an endpoint, so the agent's cluster has none.
            f"--endpoint-reconciler-type={'lease' if self.node == 'real' else 'none'}",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _controller_manager_args(self) -> list[str]:
        pki = self.pki
        kc = str(self.kcm_kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports.controller_manager}",
            f"--tls-cert-file={pki / 'controller-manager.crt'}",
            f"--tls-private-key-file={pki / 'controller-manager.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            # Every default controller: garbagecollector, namespace, deployment, replicaset,
            # statefulset, serviceaccount, serviceaccount-token, job, cronjob, endpoints, ...
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        pki = self.pki
        kc = str(self.scheduler_kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports.scheduler}",
            f"--tls-cert-file={pki / 'scheduler.crt'}",
            f"--tls-private-key-file={pki / 'scheduler.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]

    def _nodeagent_args(self) -> list[str]:
        pki = self.pki
        return [
            "-m",
            "nodeagent",
            f"--node-name={NODE_NAME}",
            f"--state-dir={self.node_state_dir}",
            f"--server={self.server}",
            f"--ca={pki / 'ca.crt'}",
            f"--cert={pki / 'node-client.crt'}",
            f"--key={pki / 'node-client.key'}",
            f"--provisioner-cert={pki / 'provisioner-client.crt'}",
            f"--provisioner-key={pki / 'provisioner-client.key'}",
            f"--serving-cert={pki / 'node-serving.crt'}",
            f"--serving-key={pki / 'node-serving.key'}",
            f"--kubelet-version={self._version()}",
            # The pods' `mailfleet` and `python3` are the repository's (no image is pulled).
            f"--path-prefix={REPO_ROOT / '.venv' / 'bin'}",
            f"--keep-visible={REPO_ROOT}",
        ]

    def _version(self) -> str:
        name = self.bin_dir.parent.name  # ~/.cache/mailfleet/k8s-vX.Y.Z/bin
        return name[4:] if name.startswith("k8s-v") else "v0.0.0"

    def _spawn(self, component: str, args: list[str]) -> None:
        env = None
        if component == "nodeagent":
            argv = [sys.executable, *args]
            env = {**os.environ, "PYTHONPATH": str(NODEAGENT_DIR), "PYTHONUNBUFFERED": "1"}
        else:
            binary = self.binary(component)
            if not os.access(binary, os.X_OK):
                raise ClusterError(f"{binary} is missing: run hack/envtest.sh (make envtest)")
            argv = [str(binary), *args]
        self.procs[component] = spawn_logged(
            argv,
            log=self.log_file(component),
            pid_file=self.pid_file(component),
            cwd=self.state_dir,
            env=env,
            die_with_parent=self.die_with_parent,
        )

    def _check_alive(self, component: str) -> None:
        pid_text = self.pid_file(component).read_text().strip()
        proc = self.procs.get(component)
        dead = proc.poll() is not None if proc else not _pid_runs(int(pid_text), component)
        if dead:
            raise ClusterError(
                f"{component} (pid {pid_text}) exited; last lines of {self.log_file(component)}:"
                f"\n{_tail(self.log_file(component))}"
            )

    # HTTP --------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET path on the API server as the admin user: (status, body)."""
        req = urllib.request.Request(self.server + path)
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def _wait(self, what: str, ok: Any, deadline: float, watch: Sequence[str]) -> None:
        last = ""
        while time.monotonic() < deadline:
            for c in watch:
                self._check_alive(c)
            try:
                if ok():
                    return
            except (OSError, ssl.SSLError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.25)
        logs = "\n".join(f"--- {c}:\n{_tail(self.log_file(c), 20)}" for c in watch)
        raise ClusterError(f"timed out waiting for {what} ({last})\n{logs}")

    def _node_schedulable(self) -> bool:
        """The Node is Ready and the node lifecycle controller has lifted its not-ready taint."""
        status, body = self.get(f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        node = json.loads(body)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        taints = node.get("spec", {}).get("taints", []) or []
        return ready and not [t for t in taints if t.get("effect") != "PreferNoSchedule"]

    def _apply_node_objects(self) -> None:
        """The provisioner's RBAC and its (default) StorageClass."""
        role = "mailfleet:local-volume-provisioner"
        objs = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["persistentvolumes"],
                        "verbs": ["get", "list", "watch", "create", "delete"],
                    },
                    {
                        "apiGroups": [""],
                        "resources": ["persistentvolumeclaims"],
                        "verbs": ["get", "list", "watch"],
                    },
                    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": PROVISIONER_USER,
                    }
                ],
            },
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {
                    "name": STORAGE_CLASS,
                    "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                },
                "provisioner": "mailfleet.local/hostpath",
                "reclaimPolicy": "Delete",
                "volumeBindingMode": "Immediate",
            },
        ]
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs})
        try:
            self.kubectl("apply", "-f", "-", input=doc)
        except KubectlError as e:
            raise ClusterError(f"applying the node's StorageClass and RBAC failed: {e}") from e

    def _etcd_healthy(self) -> bool:
        url = f"http://{LOOPBACK}:{self.ports.etcd_client}/health"
        with urllib.request.urlopen(url, timeout=2) as r:
            return b'"health":"true"' in r.read()

    # lifecycle -------------------------------------------------------------
    def start(self, *, timeout: float = 180.0) -> None:
        """Start whatever is not running yet and wait until the cluster is usable:
        /readyz ok, namespace "default" and its ServiceAccount "default" exist."""
        for d in ("run", "log", "bin", "etcd"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "etcd").chmod(0o700)
        running = self.running()
        if not running:
            self._repick_busy_ports()
        elif self.ports.scheduler == 0:  # a cluster started before the scheduler was added
            self.ports.scheduler = free_port()
        ensure_pki(self.pki)
        write_kubeconfig(
            self.kubeconfig, server=self.server, pki=self.pki, user="admin", cert="admin"
        )
        write_kubeconfig(
            self.kcm_kubeconfig,
            server=self.server,
            pki=self.pki,
            user="system:kube-controller-manager",
            cert="kcm-client",
        )
        write_kubeconfig(
            self.scheduler_kubeconfig,
            server=self.server,
            pki=self.pki,
            user="system:kube-scheduler",
            cert="scheduler-client",
        )
        shutil.copy2(self.binary("kubectl"), self.kubectl_path)
        self._save()

        deadline = time.monotonic() + timeout
        try:
            if "etcd" not in running:
                self._busy_ports_check([self.ports.etcd_client, self.ports.etcd_peer])
                self._spawn("etcd", self._etcd_args())
            self._wait("etcd /health", self._etcd_healthy, deadline, ["etcd"])
            if "kube-apiserver" not in running:
                self._busy_ports_check([self.ports.apiserver])
                if self.node == "real":
                    realnode.ensure_bridge()  # the API server binds NODE_IP
                self._spawn("kube-apiserver", self._apiserver_args())
            self._wait(
                "kube-apiserver /readyz",
                lambda: self.get("/readyz")[0] == 200,
                deadline,
                ["etcd", "kube-apiserver"],
            )
            if "kube-controller-manager" not in running:
                self._busy_ports_check([self.ports.controller_manager])
                self._spawn("kube-controller-manager", self._controller_manager_args())
            self._wait(
                'ServiceAccount "default" in namespace "default"',
                lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                deadline,
                list(COMPONENTS[:3]),
            )
            if self.node == "real":
                if "kube-scheduler" not in running:
                    self._busy_ports_check([self.ports.scheduler])
                    self._spawn("kube-scheduler", self._scheduler_args())
                try:
                    self.real_node.up(timeout=max(30.0, deadline - time.monotonic()))
                except realnode.NodeError as e:
                    raise ClusterError(str(e)) from e
            elif self.node == "agent":
                self._apply_node_objects()
                if "kube-scheduler" not in running:
                    self._busy_ports_check([self.ports.scheduler])
                    self._spawn("kube-scheduler", self._scheduler_args())
                if "nodeagent" not in running:
                    self.node_state_dir.mkdir(parents=True, exist_ok=True)
                    self._spawn("nodeagent", self._nodeagent_args())
                self._wait(
                    f'Node "{NODE_NAME}" Ready and schedulable',
                    self._node_schedulable,
                    deadline,
                    list(COMPONENTS),
                )
        except BaseException:
            self.stop()
            raise

    def _repick_busy_ports(self) -> None:
        """Nothing of ours runs: a recorded port that something else took meanwhile is replaced
        by a free one (the kubeconfigs are rewritten on every start)."""
        taken = set(asdict(self.ports).values())
        for name, port in asdict(self.ports).items():
            if port == 0 or port_in_use(port):
                new = free_port()
                while new in taken:
                    new = free_port()
                taken.add(new)
                setattr(self.ports, name, new)

    def _busy_ports_check(self, ports: Sequence[int]) -> None:
        busy = [p for p in ports if port_in_use(p)]
        if busy:
            raise ClusterError(
                f"port(s) {busy} on {LOOPBACK} are taken by another process; "
                f"run `hack/cluster.py clean --state-dir {self.state_dir}` to pick new ports"
            )

    def stop(self) -> list[str]:
        """Stop the components (the node agent first, etcd last) by PID; returns what was
        stopped. The node agent stops its pods' processes before it exits (bounded)."""
        stopped: list[str] = []
        if self.node == "real" and (self.node_state_dir / "node.json").exists():
            stopped += self.real_node.down()
        for c in reversed(COMPONENTS):
            timeout = 30.0 if c == "nodeagent" else 15.0
            if stop_recorded(self.procs.pop(c, None), self.pid_file(c), c, timeout=timeout):
                stopped.append(c)
        return stopped

    # kubectl ---------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster as the admin user (text mode).

        check=True raises KubectlError (a subprocess.CalledProcessError) on a non-zero exit."""
        proc = subprocess.run(
            [str(self.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def wait_crds_established(self, names: Sequence[str] = (), timeout: float = 60.0) -> None:
        """Until the CRDs (default: all) are Established. Polled: `kubectl wait` fails outright
        on a CRD whose status has no conditions yet, as it has a moment after its create."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.kubectl("get", "crd", *names, "-o", "json", check=False)
            if out.returncode == 0:
                items = json.loads(out.stdout).get("items", [])
                if items and all(
                    any(
                        c.get("type") == "Established" and c.get("status") == "True"
                        for c in (i.get("status") or {}).get("conditions") or []
                    )
                    for i in items
                ):
                    return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"CRDs not Established after {timeout:.0f}s: {out.stdout[-500:]}"
                )
            time.sleep(0.2)


@contextlib.contextmanager
def running_control_plane(
    bin_dir: Path | None = None, state_dir: Path | None = None, *, fsync: bool = False
) -> Iterator[ControlPlane]:
    """A throwaway control plane on free ports, stopped (by PID) and removed on exit."""
    owned = state_dir is None
    sd = Path(tempfile.mkdtemp(prefix="mailfleet-kube-")) if state_dir is None else state_dir
    cp = ControlPlane(bin_dir or ensure_binaries(), sd, fsync=fsync, die_with_parent=True)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
        if owned:
            shutil.rmtree(sd, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def _cmd_up(ns: argparse.Namespace) -> int:
    state_dir = Path(ns.state_dir).resolve()
    bin_dir = Path(ns.bin_dir) if ns.bin_dir else ensure_binaries()
    cp = ControlPlane.load(state_dir)
    if cp is not None and ns.node and cp.node != ns.node:
        raise ClusterError(
            f"{state_dir} holds a cluster whose node is {cp.node!r}; run `hack/cluster.py clean "
            f"--state-dir {state_dir}` first to start one with --node {ns.node}"
        )
    if cp is None:
        cp = ControlPlane(bin_dir, state_dir, node=ns.node or "agent")
    else:
        cp.bin_dir = bin_dir.resolve()
    t0 = time.monotonic()
    cp.start(timeout=ns.timeout)
    print(f"cluster ready in {time.monotonic() - t0:.1f}s: {cp.server}")
    if ns.image:
        if cp.node != "real":
            raise ClusterError("--image needs --node real (the node agent runs no images)")
        try:
            ref, tar, secs = realnode.build_image()
            load = cp.real_node.load_image(tar)
        except realnode.NodeError as e:
            raise ClusterError(str(e)) from e
        print(f"  image:    {ref} (build/check {secs:.1f}s, import {load:.1f}s)")
    if ns.second_node:
        if cp.node != "real":
            raise ClusterError("--second-node needs --node real")
        second = cp.real_node.second()
        try:
            took = second.up(timeout=ns.timeout).get("node_ready", 0.0)
            if ns.image:
                second.load_image(realnode.build_image()[1])
        except realnode.NodeError as e:
            raise ClusterError(str(e)) from e
        spec = second.spec
        print(f"  node 2:   {spec.name} {spec.ip}, pods {spec.cidr} (Ready in {took:.1f}s)")
    print(f"  export KUBECONFIG={cp.kubeconfig}")
    print(f"  kubectl:  {cp.kubectl_path}")
    print(f"  logs:     {cp.state_dir / 'log'}")
    if cp.node == "agent":
        print(f"  node:     {NODE_NAME} (pods' logs and volumes: {cp.node_state_dir})")
    elif cp.node == "real":
        print(f"  node:     {NODE_NAME} {realnode.NODE_IP}, pods {realnode.POD_CIDR}, "
              f"services {SERVICE_CIDR} (state: {cp.node_state_dir})")  # fmt: skip
    return 0


def _cmd_down(ns: argparse.Namespace) -> int:
    cp = ControlPlane.load(Path(ns.state_dir))
    if cp is None:
        print("no control plane recorded in", ns.state_dir)
        return 0
    stopped = cp.stop()
    print("stopped:", ", ".join(stopped) if stopped else "nothing was running")
    return 0


def _cmd_status(ns: argparse.Namespace) -> int:
    cp = ControlPlane.load(Path(ns.state_dir))
    if cp is None:
        print("no control plane recorded in", ns.state_dir)
        return 1
    running = cp.running()
    comps = list(cp.components)
    if cp.node == "real":
        running |= cp.real_node.running()
        comps += realnode.COMPONENTS
    for c in comps:
        print(f"{c:26} {'pid ' + str(running[c]) if c in running else 'stopped'}")
    print(f"server {cp.server}  kubeconfig {cp.kubeconfig}")
    if cp.node == "agent":
        print(f"node {NODE_NAME}  state {cp.node_state_dir}  log {cp.log_file('nodeagent')}")
    elif cp.node == "real":
        print(f"node {NODE_NAME} {realnode.NODE_IP}  state {cp.node_state_dir}")
    return 0 if all(c in running for c in comps) else 1


def _cmd_clean(ns: argparse.Namespace) -> int:
    state_dir = Path(ns.state_dir)
    cp = ControlPlane.load(state_dir)
    if cp is not None:
        if cp.node == "real" and (cp.node_state_dir / "node.json").exists():
            try:
                cp.real_node.clean()  # iptables rules, the bridge, mounts, then its state
            except realnode.NodeError as e:
                raise ClusterError(str(e)) from e
        cp.stop()
        if cp.running():
            print("refusing to clean: components still running", file=sys.stderr)
            return 1
    for name in (
        "pki",
        "etcd",
        "run",
        "log",
        "kubeconfig",
        "controller-manager.kubeconfig",
        "scheduler.kubeconfig",
        "node",
        "cluster.json",
    ):
        p = state_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    (state_dir / "bin" / "kubectl").unlink(missing_ok=True)
    print("removed the control plane state under", state_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "clean"])
    ap.add_argument("--state-dir", default=str(REPO_ROOT / ".local"))
    ap.add_argument("--bin-dir", default=None, help="default: build/reuse via hack/envtest.sh")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument(
        "--node", choices=NODE_KINDS, default=None, help="up: the node (default agent; see above)"
    )
    ap.add_argument(
        "--image", action="store_true", help="up: build (cached) and load the mailfleet image"
    )
    ap.add_argument(
        "--second-node",
        action="store_true",
        help="up, with --node real: a second node (its own kubelet and containerd) on this machine",
    )
    ns = ap.parse_args(argv)
    handlers = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status, "clean": _cmd_clean}
    try:
        return handlers[ns.command](ns)
    except ClusterError as e:
        print(f"cluster.py {ns.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    import cluster  # one copy of this module (its helpers are handed to realnode)

    sys.exit(cluster.main())
