"""The node agent's I/O: the Node and its Lease, one worker thread per pod, the volume provisioner.

Decisions live in logic.py; this module observes (processes, probes, the API) and acts.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import ipaddress
import json
import logging
import os
import platform
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import logic, volumes
from .kubeapi import Api, ApiError, Credentials, Informer, now_micro, now_rfc3339
from .server import KubeletServer

log = logging.getLogger("nodeagent")
Obj = dict[str, Any]

RUNNER = Path(__file__).resolve().parent / "runner.py"
PROVISIONER = "mailfleet.local/hostpath"
STORAGE_CLASS = "mailfleet-local"
MIN_GRACE_AFTER_HOOK = 2.0  # the kubelet's minimum grace after a preStop hook used it all up
POLL = 0.25


@dataclass
class Config:
    node_name: str
    state_dir: Path
    node: Credentials
    provisioner: Credentials | None
    apiserver_port: int
    kubelet_version: str = "v0.0.0"
    path_prefix: str = ""
    # Directories of the node's programs that stay visible in every container, whatever volume
    # is mounted over them.
    keep_visible: tuple[str, ...] = ()
    python: str = sys.executable
    backoff_initial: float = logic.BACKOFF_INITIAL
    max_pods: int = 110
    serving_cert: str = ""  # with serving_key: serve the kubelet API (kubectl logs)
    serving_key: str = ""
    shutdown_grace: float = 10.0
    volume_refresh: float = 2.0


# --------------------------------------------------------------------------- helpers


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _machine() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def _grace(pod: Obj) -> float:
    meta = pod.get("metadata", {})
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    g = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return float(30 if g is None else g)


class Cgroups:
    """Per-container cgroups (v1 cpu and memory controllers) under one directory per agent:
    resources are enforced, an OOM kill is recognised, and every process of a container is
    found (and killed) when it stops. Disabled where the controllers are not writable."""

    ROOT = Path("/sys/fs/cgroup")
    CONTROLLERS = ("cpu", "memory")

    def __init__(self, name: str) -> None:
        self.base: dict[str, Path] = {}
        try:
            for ctl in self.CONTROLLERS:
                d = self.ROOT / ctl / name
                d.mkdir(exist_ok=True)
                self.base[ctl] = d
        except OSError as e:
            log.warning("cgroups not available (%s): resources.limits are not enforced", e)
            self.base = {}

    @property
    def enabled(self) -> bool:
        return len(self.base) == len(self.CONTROLLERS)

    def _dirs(self, uid: str, container: str) -> list[Path]:
        return [b / uid / container for b in self.base.values()]

    def create(self, uid: str, container: str, settings: dict[str, dict[str, str]]) -> list[str]:
        """Fresh cgroups for one start of a container; returns the cgroup.procs files the
        container's first process joins."""
        if not self.enabled:
            return []
        self.remove(uid, container)
        procs = []
        for ctl, base in self.base.items():
            d = base / uid / container
            d.mkdir(parents=True, exist_ok=True)
            for name, value in settings.get(ctl, {}).items():
                (d / name).write_text(value)
            procs.append(str(d / "cgroup.procs"))
        return procs

    def procs_files(self, uid: str, container: str) -> list[str]:
        return [str(d / "cgroup.procs") for d in self._dirs(uid, container) if d.is_dir()]

    def pids(self, uid: str, container: str) -> set[int]:
        out: set[int] = set()
        for d in self._dirs(uid, container):
            with contextlib.suppress(OSError, ValueError):
                out.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return out

    def oom_killed(self, uid: str, container: str) -> bool:
        if "memory" not in self.base:
            return False
        text = _read(str(self.base["memory"] / uid / container / "memory.oom_control"))
        for line in text.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1]) > 0
        return False

    def kill_all(self, uid: str, container: str) -> None:
        """SIGKILL whatever still runs in the container (a runtime stops the whole cgroup)."""
        for _ in range(20):
            left = self.pids(uid, container)
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def remove(self, uid: str, container: str | None = None) -> None:
        for base in self.base.values():
            targets = (
                [base / uid / container] if container else [*(base / uid).glob("*"), base / uid]
            )
            for d in targets:
                if d.is_dir():
                    for _ in range(20):  # a killed process leaves its cgroup a moment later
                        try:
                            d.rmdir()
                            break
                        except FileNotFoundError:
                            break
                        except OSError:
                            time.sleep(0.05)

    def close(self) -> None:
        """The agent's own directories, once its pods are stopped."""
        self.sweep(set())
        for base in self.base.values():
            with contextlib.suppress(OSError):
                base.rmdir()

    def sweep(self, live: set[str]) -> None:
        for base in self.base.values():
            for d in base.glob("*"):
                if d.is_dir() and d.name not in live:
                    for c in d.glob("*"):
                        if c.is_dir():
                            self.kill_all(d.name, c.name)
                    self.remove(d.name)


class PodNetwork:
    """A /24 of 127.10.0.0/16 held (flock) for the agent's life, so agents of several local
    clusters on one machine never hand out the same pod address."""

    LOCK_DIR = Path("/tmp/mailfleet-podnet")

    def __init__(self, preferred: int | None) -> None:
        self.LOCK_DIR.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            self.LOCK_DIR.chmod(0o1777)
        order = list(range(256))
        if preferred is not None:
            order.remove(preferred)
            order.insert(0, preferred)
        self._fh: IO[str] | None = None
        for n in order:
            fh = (self.LOCK_DIR / f"127.10.{n}.lock").open("a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            self._fh = fh
            self.index = n
            self.network = ipaddress.IPv4Network(f"127.10.{n}.0/24")
            return
        raise RuntimeError("every pod network 127.10.N.0/24 is held by another node agent")


# --------------------------------------------------------------------------- containers


@dataclass
class Container:
    spec: Obj
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    started_mono: float = 0.0
    started_wall: str = ""
    restart_count: int = 0
    crashes: int = 0
    next_start: float = 0.0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    started: bool = False
    ready: bool = False
    ever_ran: bool = False
    probes: dict[str, logic.ProbeState] = field(default_factory=dict)
    probe_last: dict[str, float] = field(default_factory=dict)
    config_error: str = ""
    user_warned: bool = False  # the runAsUser-not-honoured event was posted
    kill_reason: str = ""
    init: bool = False  # an init container: runs to completion before the app containers
    log_start: int = 0  # offset in <container>.log where this instance's output begins
    prev_log: tuple[int, int] | None = None  # the previous instance's output (kubectl logs -p)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None

    def view(self) -> logic.ContainerView:
        return logic.ContainerView(
            name=self.name,
            image=str(self.spec.get("image", "")),
            state=self.state,
            last_state=self.last_state,
            ready=self.ready,
            started=self.started,
            restart_count=self.restart_count,
            container_id=f"nodeagent://{self.pid}" if self.pid else "",
        )


# --------------------------------------------------------------------------- pod worker


class PodWorker(threading.Thread):
    def __init__(self, agent: Agent, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.dir = agent.cfg.state_dir / "pods" / f"{self.ns}_{self.pod_name}"
        # Per pod UID: a StatefulSet's replacement (same name) starts while the old pod's
        # worker still cleans up. Container logs stay at <dir>/<container>.log across both.
        self.vol_dir = self.dir / self.uid / "volumes"
        self.run_dir = self.dir / self.uid / "run"
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.gone = False  # the pod object was removed from the API
        self.shutdown = False  # the agent is stopping
        self.finished = False
        self.prepared = False
        self.ip = ""
        self.start_time = ""
        self.containers = [Container(spec=c) for c in pod["spec"].get("containers", [])]
        # Run in order, each to a successful exit, before the app containers start.
        self.init_containers = [
            Container(spec=c, init=True) for c in pod["spec"].get("initContainers", []) or []
        ]
        self.init_done = not self.init_containers
        self.volume_paths: dict[str, Path] = {}
        self.volumes_at = 0.0
        self.volume_error = ""
        self.events_sent: set[str] = set()
        self.last_pushed: Obj = {}
        self.tokens: dict[str, tuple[bytes, float]] = {}
        prev = {s["name"]: s for s in pod.get("status", {}).get("containerStatuses", []) or []}
        for c in self.containers:
            # After an agent restart the pod's processes are gone; count their restart.
            s = prev.get(c.name)
            if s is not None:
                ran = "running" in s.get("state", {}) or "terminated" in s.get("state", {})
                c.restart_count = int(s.get("restartCount", 0)) + (1 if ran else 0)
                c.last_state = s.get("lastState") or {}
                if "terminated" in s.get("state", {}):
                    c.last_state = {"terminated": s["state"]["terminated"]}

    # -- inputs from the agent --------------------------------------------------------
    def update(self, pod: Obj) -> None:
        with self.lock:
            self.pod = pod
        self.wake.set()

    def mark_gone(self) -> None:
        self.gone = True
        self.wake.set()

    def stop_for_shutdown(self) -> None:
        self.shutdown = True
        self.wake.set()

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> None:
        while not self.finished:
            try:
                self.sync()
            except Exception:
                log.exception("%s: sync failed", self.name)
                time.sleep(1)
            if self.finished:
                break
            self.wake.wait(POLL)
            self.wake.clear()
        self.agent.worker_done(self)

    @property
    def ctx(self) -> logic.PodContext:
        return logic.PodContext(self.ip, "127.0.0.1", self.agent.cfg.node_name)

    def sync(self) -> None:
        with self.lock:
            pod = self.pod
        if self.shutdown:
            self.stop_all(min(_grace(pod), self.agent.cfg.shutdown_grace), hooks=False)
            self.finished = True
            return
        if self.gone:
            self.stop_all(min(_grace(pod), MIN_GRACE_AFTER_HOOK), hooks=False)
            self.cleanup()
            self.finished = True
            return
        if pod["metadata"].get("deletionTimestamp"):
            self.terminate(pod)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and not self.prepared:
            return  # finished before this agent started: nothing to run
        if not self.prepared:
            self.prepare(pod)
        if all("terminated" in c.state for c in self.containers) or self.init_failed:
            return  # the pod has finished (Succeeded/Failed): only its deletion is left
        now = time.monotonic()
        if now >= self.volumes_at:
            self.refresh_volumes(pod)
            self.volumes_at = now + self.agent.cfg.volume_refresh
        if not self.volume_error:
            if not self.init_done:
                self.sync_init(pod)
            if self.init_done:
                for c in self.containers:
                    self.sync_container(pod, c)
        self.push_status(pod)

    @property
    def init_failed(self) -> bool:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        return logic.init_progress(policy, [c.view() for c in self.init_containers]) == "failed"

    def sync_init(self, pod: Obj) -> None:
        """The first init container that has not succeeded runs (or waits out its back-off);
        the app containers wait in PodInitializing."""
        for c in self.containers:
            if not c.ever_ran:
                c.state = {"waiting": {"reason": "PodInitializing"}}
        for ic in self.init_containers:
            if ic.state.get("terminated", {}).get("exitCode") == 0:
                continue
            self.sync_container(pod, ic)
            if ic.state.get("terminated", {}).get("exitCode") != 0:
                return  # running, backing off, or failed for good
        self.init_done = True

    # -- preparation ----------------------------------------------------------------------
    def prepare(self, pod: Obj) -> None:
        self.vol_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ip = "127.0.0.1" if pod["spec"].get("hostNetwork") else self.agent.pod_ip(self.uid)
        self.start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
        imgs = ", ".join(logic.images(pod))
        self.event(
            "Normal",
            "ImageNotPulled",
            f"image {imgs} is not pulled: the node agent runs the command with the node's "
            f"programs (PATH starts with {self.agent.cfg.path_prefix or '/usr/local/bin'})",
        )
        missing = logic.not_honoured(pod, limits_enforced=self.agent.cgroups.enabled)
        if missing:
            self.event(
                "Warning",
                "NotHonoured",
                "the local node agent cannot honour: " + "; ".join(missing),
            )
        self.prepared = True

    # -- volumes ------------------------------------------------------------------------
    def _get(self, kind: str, name: str) -> Obj | None:
        path = f"/api/v1/namespaces/{self.ns}/{kind}/{name}"
        try:
            obj: Obj = self.agent.api.get(path)
            return obj
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def _lookups(self) -> tuple[logic.Lookup, logic.Lookup]:
        cache: dict[tuple[str, str], Any] = {}

        def cm(name: str) -> dict[str, bytes] | None:
            if ("cm", name) not in cache:
                obj = self._get("configmaps", name)
                cache[("cm", name)] = None if obj is None else logic.config_map_data(obj)
            result: dict[str, bytes] | None = cache[("cm", name)]
            return result

        def secret(name: str) -> dict[str, bytes] | None:
            if ("secret", name) not in cache:
                obj = self._get("secrets", name)
                cache[("secret", name)] = (
                    None if obj is None else logic.decode_secret(obj.get("data"))
                )
            result: dict[str, bytes] | None = cache[("secret", name)]
            return result

        return cm, secret

    def _token(self, pod: Obj, src: Obj) -> bytes:
        sa = pod["spec"].get("serviceAccountName") or "default"
        aud = src.get("audience") or ""
        key = f"{sa}|{aud}|{src.get('expirationSeconds', 3600)}"
        cached = self.tokens.get(key)
        if cached and time.time() < cached[1]:
            return cached[0]
        expiration = int(src.get("expirationSeconds", 3600) or 3600)
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [aud] if aud else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        rsp = self.agent.api.request(
            "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body
        )
        token = str(rsp["status"]["token"]).encode()
        # Refresh at 80% of the lifetime, as the kubelet's token manager does.
        self.tokens[key] = (token, time.time() + 0.8 * expiration)
        return token

    def _payload(self, pod: Obj, vol: Obj) -> dict[str, tuple[bytes, int]] | None:
        cm, secret = self._lookups()
        if "configMap" in vol:
            src = vol["configMap"]
            return logic.project(
                cm(src.get("name", "")),
                items=src.get("items"),
                default_mode=src.get("defaultMode"),
                optional=bool(src.get("optional")),
                what=f'configmap "{src.get("name", "")}"',
            )
        if "secret" in vol:
            src = vol["secret"]
            return logic.project(
                secret(src.get("secretName", "")),
                items=src.get("items"),
                default_mode=src.get("defaultMode"),
                optional=bool(src.get("optional")),
                what=f'secret "{src.get("secretName", "")}"',
            )
        if "downwardAPI" in vol:
            src = vol["downwardAPI"]
            return logic.downward_files(pod, src.get("items", []), self.ctx, src.get("defaultMode"))
        if "projected" in vol:
            src = vol["projected"]
            mode = src.get("defaultMode")
            out: dict[str, tuple[bytes, int]] = {}
            for s in src.get("sources", []) or []:
                if "configMap" in s:
                    c = s["configMap"]
                    out.update(
                        logic.project(
                            cm(c.get("name", "")),
                            items=c.get("items"),
                            default_mode=mode,
                            optional=bool(c.get("optional")),
                            what=f'configmap "{c.get("name", "")}"',
                        )
                    )
                elif "secret" in s:
                    c = s["secret"]
                    out.update(
                        logic.project(
                            secret(c.get("name", "")),
                            items=c.get("items"),
                            default_mode=mode,
                            optional=bool(c.get("optional")),
                            what=f'secret "{c.get("name", "")}"',
                        )
                    )
                elif "downwardAPI" in s:
                    out.update(
                        logic.downward_files(pod, s["downwardAPI"].get("items", []), self.ctx, mode)
                    )
                elif "serviceAccountToken" in s:
                    t = s["serviceAccountToken"]
                    path = t.get("path", "token")
                    out[path] = (self._token(pod, t), 0o600 if mode is None else mode)
            return out
        return None

    def refresh_volumes(self, pod: Obj) -> None:
        fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
        errors: list[str] = []
        for vol in pod["spec"].get("volumes", []) or []:
            name = vol["name"]
            target = self.vol_dir / name
            try:
                if "emptyDir" in vol:
                    if not target.exists():
                        target.mkdir(parents=True)
                        target.chmod(0o777)
                        if fs_group is not None:
                            os.chown(target, -1, int(fs_group))
                            target.chmod(0o2777)
                    self.volume_paths[name] = target
                elif "persistentVolumeClaim" in vol:
                    if name not in self.volume_paths:
                        self.volume_paths[name] = self._claim_path(vol, fs_group)
                elif "hostPath" in vol:
                    hp = vol["hostPath"]
                    p = Path(hp["path"])
                    if hp.get("type") == "DirectoryOrCreate":
                        p.mkdir(parents=True, exist_ok=True)
                    elif hp.get("type") == "FileOrCreate" and not p.exists():
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.touch()
                    if not p.exists():
                        raise logic.ProjectionError(f"hostPath {p} does not exist")
                    self.volume_paths[name] = p
                else:
                    payload = self._payload(pod, vol)
                    if payload is None:
                        continue  # reported as not honoured
                    gid = None if fs_group is None else int(fs_group)
                    if volumes.write_atomic(target, payload, gid=gid) and name in self.volume_paths:
                        log.info("%s: volume %s updated", self.name, name)
                    self.volume_paths[name] = target
            except (logic.ProjectionError, logic.ConfigError, ApiError, OSError) as e:
                errors.append(f"volume {name}: {e}")
        error = "; ".join(errors)
        if error and error != self.volume_error:
            self.event("Warning", "FailedMount", f"MountVolume.SetUp failed: {error}")
        self.volume_error = error
        if error:
            for c in self.containers:
                if not c.running and not c.ever_ran:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": error}}

    def _claim_path(self, vol: Obj, fs_group: Any) -> Path:
        claim = vol["persistentVolumeClaim"]["claimName"]
        pvc = self._get("persistentvolumeclaims", claim)
        if pvc is None:
            raise logic.ProjectionError(f'persistentvolumeclaim "{claim}" not found')
        pv_name = pvc.get("spec", {}).get("volumeName")
        if not pv_name or pvc.get("status", {}).get("phase") != "Bound":
            raise logic.ProjectionError(f'persistentvolumeclaim "{claim}" is not bound')
        pv = self.agent.api.get(f"/api/v1/persistentvolumes/{pv_name}")
        src = pv["spec"].get("hostPath") or pv["spec"].get("local")
        if not src:
            raise logic.ProjectionError(f"persistentvolume {pv_name} is neither hostPath nor local")
        p = Path(src["path"])
        p.mkdir(parents=True, exist_ok=True)
        if fs_group is not None and p.stat().st_gid != int(fs_group):
            # fsGroupChangePolicy OnRootMismatch: chown the tree when the root's group differs.
            for dirpath, _dirs, files in os.walk(p):
                os.chown(dirpath, -1, int(fs_group))
                os.chmod(dirpath, os.stat(dirpath).st_mode | 0o2070)
                for f in files:
                    fp = os.path.join(dirpath, f)
                    os.chown(fp, -1, int(fs_group), follow_symlinks=False)
                    if not os.path.islink(fp):
                        os.chmod(fp, os.stat(fp).st_mode | 0o060)
        return p

    # -- containers ----------------------------------------------------------------------
    def _env(self, pod: Obj, c: Container) -> dict[str, str]:
        cm, secret = self._lookups()
        cfg = self.agent.cfg
        path = ":".join(
            p
            for p in (
                cfg.path_prefix,
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            if p
        )
        port = str(cfg.apiserver_port)
        defaults = {
            "PATH": path,
            "HOSTNAME": pod["spec"].get("hostname") or self.pod_name,
            # The API server listens on loopback: in-cluster clients reach it there.
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://127.0.0.1:{port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_PORT": port,
            "KUBERNETES_PORT_443_TCP_ADDR": "127.0.0.1",
        }
        env = logic.container_env(
            pod, c.spec, self.ctx, config_maps=cm, secrets=secret, defaults=defaults
        )
        uid, _gid, _groups, _ = logic.security(pod, c.spec)
        env.setdefault("HOME", "/root" if not uid else "/")
        return env

    def _mounts(self, c: Container) -> list[Obj]:
        out: list[Obj] = []
        for m in logic.mount_order(c.spec.get("volumeMounts", []) or []):
            base = self.volume_paths.get(m["name"])
            if base is None:
                raise logic.ConfigError(f"volume {m['name']!r} is not available")
            src = base
            if m.get("subPath"):
                logic.check_rel_path(m["subPath"])
                src = Path(os.path.realpath(base / m["subPath"]))
                if not src.exists():
                    src.mkdir(parents=True)
            out.append(
                {"src": str(src), "dst": m["mountPath"], "readOnly": bool(m.get("readOnly"))}
            )
        return out

    def _runner_spec(
        self, pod: Obj, c: Container, argv: list[str], env: dict[str, str], *, mounts: bool
    ) -> Obj:
        uid, gid, groups, non_root = logic.security(pod, c.spec)
        sc = c.spec.get("securityContext") or {}
        if non_root and not uid:
            raise logic.ConfigError(
                "container has runAsNonRoot and image will run as root (set runAsUser)"
            )
        if uid:
            # The node's programs stand in for the image: where the pod's user cannot reach
            # them (a Python under /root, say), the container runs as the agent's user.
            gids = {gid if gid is not None else uid, *groups}
            blocked = logic.command_reachable(argv, env.get("PATH", ""), uid, gids)
            if blocked is not None:
                if not c.user_warned:
                    self.event(
                        "Warning",
                        "NotHonoured",
                        f"runAsUser {uid} not honoured: {blocked} is not reachable by uid "
                        f"{uid} on this node; the container runs as uid {os.getuid()}",
                        container=c.name,
                    )
                    c.user_warned = True
                uid, gid, groups = None, None, []
        return {
            "argv": argv,
            "env": env,
            "cwd": c.spec.get("workingDir") or "/",
            "uid": uid,
            "gid": gid if gid is not None else uid,
            "groups": groups,
            "mounts": self._mounts(c) if mounts else [],
            "keep": list(self.agent.cfg.keep_visible) if mounts else [],
            # Only when starting: an exec (probe, hook) enters the namespace already made so.
            "readOnlyRoot": mounts and bool(sc.get("readOnlyRootFilesystem")),
            "hostname": (pod["spec"].get("hostname") or self.pod_name) if mounts else None,
        }

    def sync_container(self, pod: Obj, c: Container) -> None:
        now = time.monotonic()
        if c.proc is not None:
            code = c.proc.poll()
            if code is not None:
                self.on_exit(pod, c, code)
            else:
                self.run_probes(pod, c, now)
                return
        if "terminated" in c.state:
            return  # done for good (restartPolicy)
        if now < c.next_start:
            return
        self.start_container(pod, c)

    def start_container(self, pod: Obj, c: Container) -> None:
        try:
            env = self._env(pod, c)
            argv = logic.command_line(c.spec, env)
            spec = self._runner_spec(pod, c, argv, env, mounts=True)
        except (logic.ConfigError, logic.ProjectionError, ApiError) as e:
            msg = str(e)
            if msg != c.config_error:
                self.event("Warning", "Failed", f"Error: {msg}", container=c.name)
            c.config_error = msg
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": msg}}
            c.next_start = time.monotonic() + 2.0
            return
        c.config_error = ""
        errfile = self.run_dir / f"{c.name}.err"
        # Opened here, in the node's mount namespace: a file the runner opened for writing in
        # the container's would keep it from making that namespace's root read-only.
        with (self.dir / f"{c.name}.log").open("ab") as logf, errfile.open("wb") as errf:
            spec["errfd"] = errf.fileno()
            # The runner says when the container's namespace is set up, so that hooks and
            # probes entering it (nsenter) never see the node's mounts instead.
            try:
                spec["cgroupProcs"] = self.agent.cgroups.create(
                    self.uid, c.name, logic.cgroup_settings(c.spec)
                )
            except (OSError, ValueError) as e:
                self.event(
                    "Warning", "NotHonoured", f"resources not applied: {e}", container=c.name
                )
                spec["cgroupProcs"] = []
            ready_r, ready_w = os.pipe()
            spec["readyfd"] = ready_w
            size = logf.seek(0, os.SEEK_END)
            c.prev_log = (c.log_start, size) if c.ever_ran else None
            c.log_start = size
            proc = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "--",
                    self.agent.cfg.python,
                    str(RUNNER),
                ],
                stdin=subprocess.PIPE,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                pass_fds=(errf.fileno(), ready_w),
            )
            os.close(ready_w)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        with os.fdopen(ready_r, "rb") as ready:
            # One byte just before exec, or EOF when the runner failed (the exit is seen next).
            if select.select([ready], [], [], 60)[0]:
                ready.read(1)
        if c.ever_ran:
            c.restart_count += 1
        c.ever_ran = True
        c.proc = proc
        c.pid = proc.pid
        (self.run_dir / f"{c.name}.pid").write_text(f"{proc.pid} {_proc_starttime(proc.pid)}\n")
        c.started_mono = time.monotonic()
        c.started_wall = now_rfc3339()
        c.state = {"running": {"startedAt": c.started_wall}}
        c.probes = {
            kind: logic.ProbeState.initial(kind)
            for kind in ("startup", "liveness", "readiness")
            if c.spec.get(f"{kind}Probe")
        }
        c.probe_last = {}
        c.started = "startup" not in c.probes
        c.ready = c.started and "readiness" not in c.probes
        c.kill_reason = ""
        self.event(
            "Normal", "Started", f"Started container {c.name} (pid {proc.pid})", container=c.name
        )
        hook = (c.spec.get("lifecycle") or {}).get("postStart")
        if hook and not self.run_hook(pod, c, hook, deadline=time.monotonic() + 30):
            self.event("Warning", "FailedPostStartHook", "PostStartHook failed", container=c.name)
            self.kill(pod, c, grace=_grace(pod), hooks=False, reason="FailedPostStartHook")

    def on_exit(self, pod: Obj, c: Container, code: int) -> None:
        assert c.proc is not None
        _killpg(c.pid, signal.SIGKILL)  # the rest of the container's processes go with it
        cg = self.agent.cgroups
        oom = cg.oom_killed(self.uid, c.name)
        cg.kill_all(self.uid, c.name)
        cg.remove(self.uid, c.name)
        err = _read(str(self.run_dir / f"{c.name}.err"))
        start_error = code == 128 and bool(err)
        exit_code = code if code >= 0 else 128 - code
        reason = logic.exit_reason(exit_code, start_error=start_error, oom_killed=oom)
        terminated: Obj = {
            "exitCode": exit_code,
            "reason": c.kill_reason or reason,
            "startedAt": c.started_wall,
            "finishedAt": now_rfc3339(),
            "containerID": f"nodeagent://{c.pid}",
        }
        if code < 0:
            terminated["signal"] = -code
        if start_error:
            terminated["message"] = err
        ran_for = time.monotonic() - c.started_mono
        c.proc = None
        c.ready = False
        c.started = False
        policy = pod["spec"].get("restartPolicy", "Always")
        if c.init:
            restart = logic.should_restart_init(policy, exit_code)
            c.ready = exit_code == 0
        else:
            restart = logic.should_restart(policy, exit_code)
        if self.shutdown:
            c.state = {"terminated": terminated}  # the node stops; nothing restarts
        elif restart:
            c.last_state = {"terminated": terminated}
            c.crashes = logic.crashes_after_exit(c.crashes, ran_for)
            delay = logic.restart_delay(c.crashes, initial=self.agent.cfg.backoff_initial)
            c.next_start = time.monotonic() + delay
            if delay > 0:
                c.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:.0f}s restarting failed container={c.name} "
                        f"pod={self.pod_name}_{self.ns}({self.uid})",
                    }
                }
                self.event(
                    "Warning", "BackOff", "Back-off restarting failed container", container=c.name
                )
            else:
                c.state = {"waiting": {"reason": "ContainerCreating"}}
        else:
            c.state = {"terminated": terminated}

    # -- probes -------------------------------------------------------------------------
    def run_probes(self, pod: Obj, c: Container, now: float) -> None:
        order = ["startup"] if not c.started else ["liveness", "readiness"]
        for kind in order:
            probe = c.spec.get(f"{kind}Probe")
            if not probe or kind not in c.probes:
                continue
            spec = logic.ProbeSpec.from_api(probe)
            if not logic.probe_due(c.started_mono, c.probe_last.get(kind), spec, now):
                continue
            c.probe_last[kind] = now
            ok, detail = self.probe(pod, c, probe, spec.timeout)
            after = logic.probe_observe(c.probes[kind], ok, spec)
            c.probes[kind] = after
            if not ok:
                self.event(
                    "Warning",
                    "Unhealthy",
                    f"{kind.capitalize()} probe failed: {detail}",
                    container=c.name,
                    once=False,
                )
            verdict = logic.probe_verdict(kind, after, spec)
            if verdict == "started":
                c.started = True
                c.ready = "readiness" not in c.probes
            elif verdict == "restart":
                self.event(
                    "Normal",
                    "Killing",
                    f"Container {c.name} failed {kind} probe, will be restarted",
                    container=c.name,
                    once=False,
                )
                g = probe.get("terminationGracePeriodSeconds")
                self.kill(pod, c, grace=float(g) if g is not None else _grace(pod), hooks=True)
                return
            elif kind == "readiness":
                c.ready = verdict == "ready"

    def probe(self, pod: Obj, c: Container, probe: Obj, timeout: float) -> tuple[bool, str]:
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                status = self._http(h, c, timeout)
                return logic.http_probe_ok(status), f"HTTP probe failed with statuscode: {status}"
            if "tcpSocket" in probe:
                t = probe["tcpSocket"]
                port = logic.probe_port(t["port"], c.spec)
                with socket.create_connection((t.get("host") or self.ip, port), timeout=timeout):
                    return True, ""
            if "exec" in probe:
                code, out = self._exec(pod, c, probe["exec"].get("command", []), timeout)
                return code == 0, f"command exited {code}: {out[-200:]}"
        except (OSError, http.client.HTTPException, logic.ConfigError) as e:
            return False, str(e)
        return True, "unsupported probe type (not run)"

    def _http(self, h: Obj, c: Container, timeout: float) -> int:
        port = logic.probe_port(h["port"], c.spec)
        host = h.get("host") or self.ip
        if h.get("scheme", "HTTP") == "HTTPS":
            ctx = ssl._create_unverified_context()  # the kubelet does not verify either
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            headers = {"User-Agent": "kube-probe/nodeagent", "Accept": "*/*"}
            headers.update({x["name"]: x["value"] for x in h.get("httpHeaders", []) or []})
            conn.request("GET", h.get("path") or "/", headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()

    def _exec(
        self,
        pod: Obj,
        c: Container,
        argv: list[str],
        timeout: float,
        deadline: Callable[[], float] | None = None,
    ) -> tuple[int, str]:
        """Run argv in the container's mount and UTS namespaces with its env and user; killed
        after timeout, or when deadline() (re-read while it runs) has passed."""
        if not c.pid:
            return 1, "container is not running"
        spec = self._runner_spec(pod, c, list(argv), self._env(pod, c), mounts=False)
        # In the container's cgroups too: limited with it, and stopped with it.
        spec["cgroupProcs"] = self.agent.cgroups.procs_files(self.uid, c.name)
        proc = subprocess.Popen(
            ["nsenter", "-t", str(c.pid), "-m", "-u", "--", self.agent.cfg.python, str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        start = time.monotonic()

        def end() -> float:
            return deadline() if deadline is not None else start + max(timeout, 0.1)

        data: bytes | None = json.dumps(spec).encode()
        while True:
            try:
                left = min(max(end() - time.monotonic(), 0.05), 0.5)
                out, _ = proc.communicate(data, timeout=left)
                return proc.returncode, out.decode(errors="replace")
            except subprocess.TimeoutExpired:
                data = None  # sent with the first call
                if time.monotonic() >= end():
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
                    return -1, f"timed out after {time.monotonic() - start:.0f}s"

    def run_hook(
        self, pod: Obj, c: Container, hook: Obj, *, deadline: float | Callable[[], float]
    ) -> bool:
        end = deadline if callable(deadline) else (lambda: float(deadline))
        remaining = max(end() - time.monotonic(), 0.1)
        try:
            if "exec" in hook:
                argv = hook["exec"].get("command", [])
                code, out = self._exec(pod, c, argv, remaining, deadline=end)
                if code != 0:
                    log.info("%s: hook exited %s: %s", self.name, code, out[-300:])
                return code == 0
            if "httpGet" in hook:
                return logic.http_probe_ok(self._http(hook["httpGet"], c, remaining))
            if "sleep" in hook:
                time.sleep(min(float(hook["sleep"].get("seconds", 0)), remaining))
                return True
        except (OSError, http.client.HTTPException, logic.ConfigError) as e:
            log.info("%s: hook failed: %s", self.name, e)
            return False
        return True

    def kill(self, pod: Obj, c: Container, *, grace: float, hooks: bool, reason: str = "") -> None:
        """preStop (if hooks), SIGTERM, SIGKILL when the grace period (hook time included) is
        over; then the exit is recorded as for any exit."""
        if c.proc is None:
            return
        start = time.monotonic()

        def deadline() -> float:
            """As the kubelet does: a later deletion with a shorter grace period (kubectl
            delete --grace-period=N while the pod terminates) shortens this one."""
            with self.lock:
                later = self.pod.get("metadata", {}).get("deletionGracePeriodSeconds")
            return start + (grace if later is None else min(grace, float(later)))

        floor = 0.0
        hook = (c.spec.get("lifecycle") or {}).get("preStop")
        if hooks and hook:
            if not self.run_hook(pod, c, hook, deadline=deadline):
                self.event("Warning", "FailedPreStopHook", "PreStopHook failed", container=c.name)
            floor = time.monotonic() + MIN_GRACE_AFTER_HOOK
        c.kill_reason = reason
        _killpg(c.pid, signal.SIGTERM)
        while time.monotonic() < max(deadline(), floor) and c.proc.poll() is None:
            time.sleep(0.05)
        if c.proc.poll() is None:
            _killpg(c.pid, signal.SIGKILL)
        code = c.proc.wait()
        self.on_exit(pod, c, code)

    def stop_all(self, grace: float, *, hooks: bool) -> None:
        running = [c for c in self.init_containers + self.containers if c.proc is not None]
        for c in self.containers:
            c.ready = False
        threads = [
            threading.Thread(
                target=self.kill, args=(self.pod, c), kwargs={"grace": grace, "hooks": hooks}
            )
            for c in running
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # -- deletion -----------------------------------------------------------------------
    def terminate(self, pod: Obj) -> None:
        """Graceful deletion: preStop, SIGTERM, SIGKILL after the grace period, a terminal
        status, then the final delete (gracePeriodSeconds=0) that removes the pod object."""
        for c in self.containers:
            c.ready = False
        if self.prepared:
            self.push_status(pod)
            self.event("Normal", "Killing", "Stopping the pod's containers", once=True)
        self.stop_all(_grace(pod), hooks=True)
        for c in self.containers:
            if "terminated" not in c.state:
                last = c.last_state.get("terminated")
                c.state = (
                    {"terminated": last}
                    if last
                    else {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "finishedAt": now_rfc3339(),
                        }
                    }
                )
        final = dict(pod)
        final["spec"] = {**pod["spec"], "restartPolicy": "Never"}
        if self.prepared:  # else: it finished before this agent ran; its status stands
            self.push_status(final)
        with contextlib.suppress(ApiError):
            self.agent.api.request(
                "DELETE",
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
                ok=(200, 202, 404, 409),
            )
        self.cleanup()
        self.finished = True

    def cleanup(self) -> None:
        shutil.rmtree(self.dir / self.uid, ignore_errors=True)
        self.agent.cgroups.remove(self.uid)
        self.agent.release_ip(self.uid)

    # -- reporting ------------------------------------------------------------------------
    def push_status(self, pod: Obj) -> None:
        view = dict(pod)
        if self.last_pushed.get("conditions"):
            view["status"] = {"conditions": self.last_pushed["conditions"]}
        desired = logic.pod_status(
            view,
            [c.view() for c in self.containers],
            pod_ip=self.ip,
            host_ip="127.0.0.1",
            start_time=self.start_time or now_rfc3339(),
            now=now_rfc3339(),
            init=[c.view() for c in self.init_containers],
        )
        if desired == self.last_pushed:
            return
        try:
            self.agent.api.merge_patch(
                f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}/status", {"status": desired}
            )
            self.last_pushed = desired
        except ApiError as e:
            if e.status == 404:
                self.gone = True
            else:
                log.warning("%s: status update: %s", self.name, e)
        except OSError as e:
            log.warning("%s: status update: %s", self.name, e)

    def event(
        self, etype: str, reason: str, message: str, *, container: str = "", once: bool = True
    ) -> None:
        key = f"{reason}|{container}|{message}"
        if once and key in self.events_sent:
            return
        self.events_sent.add(key)
        self.agent.event(self.pod, etype, reason, message, container=container)


# --------------------------------------------------------------------------- the agent


class Agent:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.api = Api(cfg.node, user_agent=f"nodeagent/{cfg.node_name}")
        self.papi = (
            Api(cfg.provisioner, user_agent="local-volume-provisioner") if cfg.provisioner else None
        )
        self.stop = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.state_file = cfg.state_dir / "agent.json"
        saved = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.podnet = PodNetwork(saved.get("podNetwork"))
        self.cgroups = Cgroups(f"mailfleet-nodeagent-{self.podnet.index}")
        self.ips: dict[str, str] = {
            uid: ip
            for uid, ip in saved.get("ips", {}).items()
            if ip in {str(a) for a in self.podnet.network.hosts()}
        }
        self.node_uid = ""
        self.kubelet_port = 0
        self._transitions: dict[str, str] = {}
        # (pod uid, container, reason, message) -> (Event name, count)
        self.events: dict[tuple[str, str, str, str], tuple[str, int]] = {}
        self._save()

    # -- state ----------------------------------------------------------------------------
    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"podNetwork": self.podnet.index, "ips": self.ips}, indent=1))
        tmp.replace(self.state_file)

    def pod_ip(self, uid: str) -> str:
        with self.lock:
            if uid not in self.ips:
                self.ips[uid] = logic.allocate_ip(self.ips.values(), self.podnet.network)
                self._save()
            return self.ips[uid]

    def release_ip(self, uid: str) -> None:
        with self.lock:
            if self.ips.pop(uid, None) is not None:
                self._save()

    def find_container(
        self, ns: str, pod: str, container: str
    ) -> tuple[PodWorker, Container] | None:
        """The newest worker's container for a pod name (a StatefulSet pod is replaced under
        the same name)."""
        with self.lock:
            workers = [w for w in self.workers.values() if (w.ns, w.pod_name) == (ns, pod)]
        workers.sort(key=lambda w: (w.finished, bool(w.pod["metadata"].get("deletionTimestamp"))))
        for w in workers:
            for c in w.init_containers + w.containers:
                if c.name == container:
                    return w, c
        return None

    def worker_done(self, w: PodWorker) -> None:
        with self.lock:
            if self.workers.get(w.uid) is w:
                del self.workers[w.uid]

    # -- events ----------------------------------------------------------------------------
    def event(
        self, pod: Obj, etype: str, reason: str, message: str, *, container: str = ""
    ) -> None:
        meta = pod["metadata"]
        ref: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
        }
        if container:
            ref["fieldPath"] = f"spec.containers{{{container}}}"
        now = now_rfc3339()
        ns = meta["namespace"]
        key = (meta["uid"], container, reason, message)
        with self.lock:
            seen = self.events.get(key)
        if seen is not None:
            # The same event again (a probe failing every period): count it on the one
            # Event object, as the kubelet's event correlator does.
            name, count = seen
            try:
                self.api.merge_patch(
                    f"/api/v1/namespaces/{ns}/events/{name}",
                    {"count": count + 1, "lastTimestamp": now},
                )
                with self.lock:
                    self.events[key] = (name, count + 1)
                return
            except (ApiError, OSError):
                pass  # expired or deleted: post a new one
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": ref,
            "reason": reason,
            "message": message[:1024],
            "type": etype,
            "source": {"component": "nodeagent", "host": self.cfg.node_name},
            "reportingComponent": "nodeagent",
            "reportingInstance": self.cfg.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            created = self.api.request("POST", f"/api/v1/namespaces/{ns}/events", body)
            with self.lock:
                if len(self.events) > 10000:
                    self.events.clear()
                self.events[key] = (created["metadata"]["name"], 1)
        except (ApiError, OSError) as e:
            log.warning("event %s for %s/%s: %s", reason, ns, meta["name"], e)
        log.info("%s/%s %s %s: %s", ns, meta["name"], etype, reason, message)

    # -- node ---------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        now = now_rfc3339()
        mem_kb = 0
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        st = os.statvfs(self.cfg.state_dir)
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_kb}Ki",
            "pods": str(self.cfg.max_pods),
            "ephemeral-storage": f"{st.f_blocks * st.f_frsize // 1024}Ki",
        }

        def cond(t: str, s: str, reason: str, msg: str) -> Obj:
            return {
                "type": t,
                "status": s,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._transitions.setdefault(t, now),
            }

        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "sufficient PIDs"),
                cond("Ready", "True", "KubeletReady", "the mailfleet node agent is ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.cfg.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id", "local"),
                "systemUUID": _read("/etc/machine-id", "local"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": os.uname().release,
                "osImage": _os_image(),
                "containerRuntimeVersion": "nodeagent://0.1.0",
                "kubeletVersion": self.cfg.kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _machine(),
            },
        }

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.cfg.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _machine(),
        }
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.cfg.node_name,
                "labels": labels,
                "annotations": {"mailfleet.io/pod-network": str(self.podnet.network)},
            },
            "status": self._node_status(),
        }
        try:
            node = self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = self.api.merge_patch(
                f"/api/v1/nodes/{self.cfg.node_name}",
                {"metadata": {"annotations": body["metadata"]["annotations"]}},
            )
        self.node_uid = node["metadata"]["uid"]
        self.api.merge_patch(
            f"/api/v1/nodes/{self.cfg.node_name}/status", {"status": self._node_status()}
        )

    def renew_lease(self) -> None:
        path = (
            f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.cfg.node_name}"
        )
        try:
            self.api.merge_patch(
                path,
                {"spec": {"holderIdentity": self.cfg.node_name, "renewTime": now_micro()}},
            )
        except ApiError as e:
            if e.status != 404:
                raise
            self.api.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.cfg.node_name,
                        "namespace": "kube-node-lease",
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.cfg.node_name,
                                "uid": self.node_uid,
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": self.cfg.node_name,
                        "leaseDurationSeconds": 40,
                        "renewTime": now_micro(),
                    },
                },
            )

    def heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stop.is_set():
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= 30:
                    self.api.merge_patch(
                        f"/api/v1/nodes/{self.cfg.node_name}/status",
                        {"status": self._node_status()},
                    )
                    last_status = time.monotonic()
            except (ApiError, OSError) as e:
                log.warning("heartbeat: %s", e)
            self.stop.wait(10)

    # -- pods ---------------------------------------------------------------------------
    def on_pod(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if kind == "DELETED":
                if w is not None:
                    w.mark_gone()
                return
            if w is None:
                if self.stop.is_set():
                    return
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                for other in self.workers.values():
                    if (other.ns, other.pod_name) == key:
                        other.mark_gone()  # replaced while a watch was down
                w = PodWorker(self, pod)
                self.workers[uid] = w
                w.start()
                return
        w.update(pod)

    # -- provisioner ------------------------------------------------------------------------
    def on_claim(self, kind: str, pvc: Obj) -> None:
        assert self.papi is not None
        spec, meta = pvc.get("spec", {}), pvc["metadata"]
        if (
            kind == "DELETED"
            or spec.get("volumeName")
            or spec.get("storageClassName") != STORAGE_CLASS
        ):
            return
        if pvc.get("status", {}).get("phase") != "Pending":
            return
        name = f"pvc-{meta['uid']}"
        path = self.cfg.state_dir / "pvc" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # like local-path-provisioner: any pod user may write
        size = (spec.get("resources", {}).get("requests") or {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            },
        }
        try:
            self.papi.request("POST", "/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for %s/%s at %s", name, meta["namespace"], meta["name"], path)
        except ApiError as e:
            if e.status != 409:
                raise

    def on_volume(self, kind: str, pv: Obj) -> None:
        assert self.papi is not None
        meta = pv["metadata"]
        if meta.get("annotations", {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        if kind == "DELETED" or pv.get("status", {}).get("phase") != "Released":
            return
        if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
            return
        path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
        if path.parent == self.cfg.state_dir / "pvc":
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(ApiError):
            self.papi.request(
                "DELETE", f"/api/v1/persistentvolumes/{meta['name']}", ok=(200, 202, 404)
            )
        log.info("deleted released volume %s", meta["name"])

    # -- lifecycle ----------------------------------------------------------------------------
    def kill_leftovers(self) -> None:
        """Processes of a previous agent that died without stopping its pods."""
        for pid_file in (self.cfg.state_dir / "pods").glob("*/*/run/*.pid"):
            parts = pid_file.read_text().split()
            if len(parts) == 2 and _proc_starttime(int(parts[0])) == parts[1]:
                log.info("stopping leftover process %s (%s)", parts[0], pid_file)
                _killpg(int(parts[0]), signal.SIGKILL)
            pid_file.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Volumes and run files of pods that are gone (deleted while the agent was down); the
        container logs stay."""
        with self.lock:
            live = set(self.workers)
            for d in (self.cfg.state_dir / "pods").glob("*/*"):
                if d.is_dir() and d.name not in live:
                    shutil.rmtree(d, ignore_errors=True)
            self.cgroups.sweep(live)
            stale = set(self.ips) - live
            for uid in stale:
                del self.ips[uid]
            if stale:
                self._save()

    def run(self) -> None:
        (self.cfg.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        (self.cfg.state_dir / "pvc").mkdir(parents=True, exist_ok=True)
        self.kill_leftovers()
        if self.cfg.serving_cert:
            server = KubeletServer(
                self, ca=self.cfg.node.ca, cert=self.cfg.serving_cert, key=self.cfg.serving_key
            )
            server.start()
            self.kubelet_port = server.port
        while not self.stop.is_set():
            try:
                self.register()
                break
            except (ApiError, OSError) as e:
                log.warning("registering node %s: %s", self.cfg.node_name, e)
                self.stop.wait(1)
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        node = self.cfg.node_name
        informers = [
            Informer(
                self.api,
                f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}",
                self.on_pod,
                self.stop,
                name="pods",
            )
        ]
        if self.papi is not None:
            informers += [
                Informer(
                    self.papi,
                    "/api/v1/persistentvolumeclaims",
                    self.on_claim,
                    self.stop,
                    name="pvcs",
                ),
                Informer(
                    self.papi, "/api/v1/persistentvolumes", self.on_volume, self.stop, name="pvs"
                ),
            ]
        for inf in informers:
            inf.start()
        log.info("node %s ready (pod network %s)", node, self.podnet.network)
        if informers[0].synced.wait(60):
            self.sweep()
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop every pod's processes (bounded by shutdown_grace), leave the API objects."""
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.stop_for_shutdown()
        deadline = time.monotonic() + self.cfg.shutdown_grace + 5
        for w in workers:
            if w.ident is not None:
                w.join(timeout=max(deadline - time.monotonic(), 0.1))
        # Whatever a stuck worker left behind.
        for w in workers:
            for c in w.init_containers + w.containers:
                if c.proc is not None and c.proc.poll() is None:
                    _killpg(c.pid, signal.SIGKILL)
        self.cgroups.close()


def serve(cfg: Config, on_ready: Callable[[], None] | None = None) -> None:
    agent = Agent(cfg)

    def _term(signum: int, _frame: Any) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    agent.run()
