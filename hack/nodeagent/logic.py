"""The node agent's decisions, as pure functions over plain dicts (the API's JSON).

Nothing here does I/O: the agent feeds observations in (the pod, container processes' states,
probe outcomes, ConfigMap/Secret data) and acts on what comes back. Semantics follow the kubelet
where the kubelet's are documented (sources named per function).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

# --------------------------------------------------------------------------- $(VAR) expansion


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (k8s.io/kubernetes third_party/forked/golang/expansion).

    ``$(NAME)`` becomes env[NAME] when NAME is defined and stays as written otherwise; ``$$``
    is an escaped ``$``; a ``$`` before anything else, or an unclosed ``$(``, is kept literally.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    n = len(text)
    while cursor < n:
        if text[cursor] == "$" and cursor + 1 < n:
            out.append(text[checkpoint:cursor])
            nxt = text[cursor + 1]
            if nxt == "$":
                out.append("$")
                advance = 1
            elif nxt == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2 : close]
                    out.append(env.get(name, f"$({name})"))
                    advance = close - cursor
            else:
                out.append("$" + nxt)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


# --------------------------------------------------------------------------- env


class ConfigError(Exception):
    """A container cannot be configured (the kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class PodContext:
    """What the downward API can reveal about a running pod besides its own object."""

    pod_ip: str
    host_ip: str
    node_name: str


# (namespace, name) -> data (ConfigMap: str values; Secret: base64-decoded bytes), or None.
Lookup = Callable[[str], Mapping[str, bytes] | None]


def field_ref(pod: Obj, path: str, ctx: PodContext) -> str:
    """The value of a downward-API fieldRef.fieldPath (the set the kubelet supports in env)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or ctx.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ctx.pod_ip,
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted(meta.get(path.split(".")[1], {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _key_ref(
    kind: str, ref: Mapping[str, Any], lookup: Lookup, default: str | None = None
) -> str | None:
    name = ref.get("name", "")
    data = lookup(name)
    optional = bool(ref.get("optional", False))
    if data is None:
        if optional:
            return default
        raise ConfigError(f'{kind} "{name}" not found')
    key = ref.get("key", "")
    if key not in data:
        if optional:
            return default
        raise ConfigError(f"couldn't find key {key} in {kind} {name}")
    return data[key].decode("utf-8", errors="replace")


def container_env(
    pod: Obj,
    container: Obj,
    ctx: PodContext,
    *,
    config_maps: Lookup,
    secrets: Lookup,
    defaults: Mapping[str, str] = {},
) -> dict[str, str]:
    """The environment of a container, as the kubelet builds it (kubelet_pods.go makeEnvironment).

    ``defaults`` (PATH, HOSTNAME, service variables) come first; envFrom, then env in order,
    each env value $(VAR)-expanded against what is defined before it. Raises ConfigError for a
    missing non-optional ConfigMap/Secret/key, as the kubelet does.
    """
    env: dict[str, str] = dict(defaults)
    for src in container.get("envFrom", []) or []:
        prefix = src.get("prefix", "")
        if "configMapRef" in src or "secretRef" in src:
            kind = "configmap" if "configMapRef" in src else "secret"
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            data = (config_maps if kind == "configmap" else secrets)(ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind} "{ref.get("name", "")}" not found')
            for k, v in data.items():
                env[prefix + k] = v.decode("utf-8", errors="replace")
    for item in container.get("env", []) or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", "") or "", env)
            continue
        vf = item["valueFrom"]
        value: str | None
        if "fieldRef" in vf:
            value = field_ref(pod, vf["fieldRef"]["fieldPath"], ctx)
        elif "configMapKeyRef" in vf:
            value = _key_ref("configmap", vf["configMapKeyRef"], config_maps)
        elif "secretKeyRef" in vf:
            value = _key_ref("secret", vf["secretKeyRef"], secrets)
        elif "resourceFieldRef" in vf:
            value = resource_field(container, vf["resourceFieldRef"])
        else:
            raise ConfigError(f"unsupported valueFrom for {name}: {sorted(vf)}")
        if value is not None:
            env[name] = value
    return env


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    """command + args with $(VAR) expansion. Without ``command`` the image's entrypoint would
    run; there is no image here, so ``args`` alone is the command line."""
    cmd = [expand(c, env) for c in container.get("command", []) or []]
    args = [expand(a, env) for a in container.get("args", []) or []]
    return cmd + args


# --------------------------------------------------------------------------- quantities

_SUFFIX = {
    "": 1,
    "m": 0.001,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity ("100m", "64Mi", "1.5", "2e3") as a number."""
    s = str(text).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", s)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def resource_field(container: Obj, ref: Mapping[str, Any]) -> str:
    """resourceFieldRef: the container's request/limit divided by divisor, rounded up (as the
    kubelet does); an unset limit reads as the node's allocatable, which is not known here, so
    it is an error."""
    import math

    res = ref.get("resource", "")
    kind, _, name = res.partition(".")
    values = (container.get("resources") or {}).get(kind, {}) or {}
    if name not in values:
        raise ConfigError(f"resourceFieldRef {res}: not set on the container")
    divisor = quantity(ref.get("divisor", "1") or "1")
    return str(math.ceil(quantity(values[name]) / divisor))


# --------------------------------------------------------------------------- cgroups

CFS_PERIOD_US = 100_000


def cgroup_settings(container: Obj) -> dict[str, dict[str, str]]:
    """cgroup v1 files per controller for a container's resources, as the kubelet sets them
    (pkg/kubelet/cm: cpu.shares from requests.cpu, CFS quota from limits.cpu, the memory limit).
    """
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    out: dict[str, dict[str, str]] = {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    cpu: dict[str, str] = {}
    if cpu_request is not None:
        cpu["cpu.shares"] = str(max(2, int(quantity(cpu_request) * 1024)))
    if "cpu" in limits:
        quota = max(1000, int(quantity(limits["cpu"]) * CFS_PERIOD_US))
        cpu["cpu.cfs_period_us"] = str(CFS_PERIOD_US)
        cpu["cpu.cfs_quota_us"] = str(quota)
    if cpu:
        out["cpu"] = cpu
    if "memory" in limits:
        out["memory"] = {"memory.limit_in_bytes": str(int(quantity(limits["memory"])))}
    return out


# --------------------------------------------------------------------------- restart decisions


def should_restart(restart_policy: str, exit_code: int) -> bool:
    """Whether a container that exited with exit_code is started again."""
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True


BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0  # a container that ran this long starts with a fresh backoff


def restart_delay(
    crashes: int,
    *,
    initial: float = BACKOFF_INITIAL,
    maximum: float = BACKOFF_MAX,
) -> float:
    """Seconds to wait before restarting after the crashes-th consecutive crash (1-based).

    The kubelet restarts the first time at once and then backs off 10 s, 20 s, 40 s ... up to
    5 min (pkg/kubelet/kuberuntime: backOff.Next), which kubectl shows as CrashLoopBackOff."""
    if crashes <= 1:
        return 0.0
    return float(min(maximum, initial * 2 ** (crashes - 2)))


def should_restart_init(restart_policy: str, exit_code: int) -> bool:
    """An init container runs until it succeeds: it is retried after a failure unless the
    pod's restartPolicy is Never (then the pod fails)."""
    return exit_code != 0 and restart_policy != "Never"


def init_progress(restart_policy: str, init: Sequence[ContainerView]) -> str:
    """Where the pod's init containers stand: "done" (all exited 0, in order), "failed" (one
    failed and will not be retried), else "running"."""
    for c in init:
        term = c.state.get("terminated")
        if term is None:
            return "running"
        if term.get("exitCode", 1) != 0:
            return "failed" if not should_restart_init(restart_policy, 1) else "running"
    return "done"


def crashes_after_exit(previous_crashes: int, ran_for: float) -> int:
    """The consecutive-crash count after an exit: reset when the container had run long."""
    return 1 if ran_for >= BACKOFF_RESET_AFTER else previous_crashes + 1


def exit_reason(exit_code: int, *, start_error: bool = False, oom_killed: bool = False) -> str:
    """terminated.reason as container runtimes report it."""
    if start_error:
        return "StartError"
    if oom_killed:
        return "OOMKilled"
    if exit_code == 0:
        return "Completed"
    return "Error"


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ProbeSpec:
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_api(cls, probe: Mapping[str, Any]) -> ProbeSpec:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds", 0) or 0),
            period=float(probe.get("periodSeconds", 10) or 10),
            timeout=float(probe.get("timeoutSeconds", 1) or 1),
            success_threshold=int(probe.get("successThreshold", 1) or 1),
            failure_threshold=int(probe.get("failureThreshold", 3) or 3),
        )


@dataclass(frozen=True)
class ProbeState:
    """One probe's running result (pkg/kubelet/prober/worker.go): the result only flips after
    successThreshold consecutive successes or failureThreshold consecutive failures."""

    result: bool
    successes: int = 0
    failures: int = 0

    @classmethod
    def initial(cls, kind: str) -> ProbeState:
        # Readiness and startup start failed (not ready / not started); liveness starts ok.
        return cls(result=kind == "liveness")


def probe_observe(state: ProbeState, ok: bool, spec: ProbeSpec) -> ProbeState:
    """The state after one probe outcome."""
    if ok:
        successes = state.successes + 1
        flip = not state.result and successes >= spec.success_threshold
        return replace(state, result=state.result or flip, successes=successes, failures=0)
    failures = state.failures + 1
    flip = state.result and failures >= spec.failure_threshold
    return replace(state, result=state.result and not flip, successes=0, failures=failures)


def probe_due(started_at: float, last_run: float | None, spec: ProbeSpec, now: float) -> bool:
    """Whether the probe runs now: after initialDelaySeconds, then every periodSeconds."""
    if now < started_at + spec.initial_delay:
        return False
    return last_run is None or now >= last_run + spec.period


def probe_verdict(kind: str, state: ProbeState, spec: ProbeSpec) -> str:
    """What the agent does after a probe outcome (pkg/kubelet/prober, kuberuntime):

    startup: "started" once it succeeded, "restart" after failureThreshold failures in a row;
    liveness: "restart" once failed; readiness: "ready" or "unready"; otherwise "none"."""
    if kind == "startup":
        if state.result:
            return "started"
        return "restart" if state.failures >= spec.failure_threshold else "none"
    if kind == "liveness":
        return "none" if state.result else "restart"
    if kind == "readiness":
        return "ready" if state.result else "unready"
    raise ValueError(f"unknown probe kind {kind!r}")


def http_probe_ok(status: int) -> bool:
    """HTTP probes succeed on 200 <= status < 400 (pkg/probe/http)."""
    return 200 <= status < 400


def probe_port(port: int | str, container: Obj) -> int:
    """A probe's numeric or named port (the name of one of the container's ports)."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports", []) or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ConfigError(f"port {port!r} is not a named port of container {container.get('name')}")


# --------------------------------------------------------------------------- status


@dataclass
class ContainerView:
    """What the agent knows about one container, the input of the status functions."""

    name: str
    image: str
    state: Obj  # {"waiting": {...}} | {"running": {...}} | {"terminated": {...}}
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str = ""

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def pod_phase(restart_policy: str, containers: Sequence[ContainerView]) -> str:
    """The pod phase from its containers' states (pkg/kubelet/kubelet_pods.go getPhase)."""
    pending = running = stopped = succeeded = 0
    for c in containers:
        if "running" in c.state:
            running += 1
        elif "terminated" in c.state:
            stopped += 1
            if c.state["terminated"].get("exitCode", 1) == 0:
                succeeded += 1
        elif c.last_state.get("terminated"):
            stopped += 1  # waiting to restart after having run
        else:
            pending += 1
    if pending > 0:
        return "Pending"
    if running > 0:
        return "Running"
    if stopped == 0:
        return "Pending"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded and all("terminated" in c.state for c in containers):
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


def _condition(
    ctype: str, ok: bool, previous: Mapping[str, Obj], now: str, reason: str = ""
) -> Obj:
    status = "True" if ok else "False"
    old = previous.get(ctype)
    changed = old is None or old.get("status") != status
    cond: Obj = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": now if old is None or changed else old.get("lastTransitionTime", now),
    }
    if not ok and reason:
        cond["reason"] = reason
    return cond


def pod_conditions(
    previous: Sequence[Obj],
    containers: Sequence[ContainerView],
    now: str,
    *,
    sandbox: bool,
    init: Sequence[ContainerView] = (),
) -> list[Obj]:
    """PodReadyToStartContainers, Initialized, ContainersReady, Ready and PodScheduled (kept as
    the scheduler wrote it), with lastTransitionTime moved only when a status changes."""
    prev = {c["type"]: c for c in previous}
    all_ready = bool(containers) and all(c.ready for c in containers)
    not_ready = [c.name for c in containers if not c.ready]
    reason = "ContainersNotReady" if not_ready else ""
    incomplete = [c.name for c in init if c.state.get("terminated", {}).get("exitCode", 1) != 0]
    initialized = _condition("Initialized", not incomplete, prev, now, "ContainersNotInitialized")
    if incomplete:
        initialized["message"] = f"containers with incomplete status: [{' '.join(incomplete)}]"
    out = [
        _condition("PodReadyToStartContainers", sandbox, prev, now),
        initialized,
        _condition("Ready", all_ready, prev, now, reason),
        _condition("ContainersReady", all_ready, prev, now, reason),
    ]
    if not_ready:
        msg = f"containers with unready status: [{' '.join(not_ready)}]"
        out[2]["message"] = msg
        out[3]["message"] = msg
    if "PodScheduled" in prev:
        out.append(prev["PodScheduled"])
    return out


def pod_status(
    pod: Obj,
    containers: Sequence[ContainerView],
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    now: str,
    init: Sequence[ContainerView] = (),
) -> Obj:
    """The status the agent reports through pods/status (merge patch)."""
    spec = pod.get("spec", {})
    policy = spec.get("restartPolicy", "Always")
    previous = pod.get("status", {}).get("conditions", []) or []
    progress = init_progress(policy, init)
    if progress == "failed":
        phase = "Failed"
    elif progress == "running":
        phase = "Pending"
    else:
        phase = pod_phase(policy, containers)
    out: Obj = {
        "phase": phase,
        "conditions": pod_conditions(previous, containers, now, sandbox=bool(pod_ip), init=init),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip or None,
        "podIPs": [{"ip": pod_ip}] if pod_ip else None,
        "startTime": start_time,
        "containerStatuses": [c.status() for c in containers],
    }
    if init:
        out["initContainerStatuses"] = [c.status() for c in init]
    return out


def status_changed(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether desired differs from what the pod's status already says (keys of desired)."""
    return any(current.get(k) != v for k, v in desired.items())


# --------------------------------------------------------------------------- pod IPs

POD_NETWORK = ipaddress.IPv4Network("127.10.0.0/16")


def allocate_ip(used: Iterable[str], network: ipaddress.IPv4Network = POD_NETWORK) -> str:
    """The lowest free address of the pod network; none ends in .0, .1 or .255 (gateway-like
    addresses some tools treat as special)."""
    taken = set(used)
    for addr in network.hosts():
        s = str(addr)
        if s not in taken and s.rsplit(".", 1)[1] not in ("0", "1", "255"):
            return s
    raise RuntimeError(f"pod network {network} is exhausted")


# --------------------------------------------------------------------------- projection


class ProjectionError(Exception):
    """A volume source cannot be projected (missing object or key that is not optional)."""


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def config_map_data(cm: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return out


def project(
    data: Mapping[str, bytes] | None,
    *,
    items: Sequence[Mapping[str, Any]] | None,
    default_mode: int | None,
    optional: bool,
    what: str,
) -> dict[str, tuple[bytes, int]]:
    """The files (relative path -> (content, mode)) of a configMap/secret volume source
    (pkg/volume/configmap, secret: MakePayload). Without items every key is a file named by
    the key; with items only those keys, at their paths, with their modes."""
    mode = 0o644 if default_mode is None else default_mode
    if data is None:
        if optional:
            return {}
        raise ProjectionError(f"{what} not found")
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        key = item["key"]
        if key not in data:
            if optional:
                continue
            raise ProjectionError(f"configmap references non-existent config key: {key}")
        path = item.get("path") or key
        check_rel_path(path)
        out[path] = (data[key], int(item["mode"]) if item.get("mode") is not None else mode)
    return out


def check_rel_path(path: str) -> None:
    """Projection paths are relative, without '..' elements and not starting with '..'."""
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or path.startswith(".."):
        raise ProjectionError(f"invalid path {path!r}")


def downward_files(
    pod: Obj, items: Sequence[Mapping[str, Any]], ctx: PodContext, default_mode: int | None
) -> dict[str, tuple[bytes, int]]:
    """A downwardAPI volume (or projected source): fieldRef items as files."""
    mode = 0o644 if default_mode is None else default_mode
    out: dict[str, tuple[bytes, int]] = {}
    for item in items:
        path = item["path"]
        check_rel_path(path)
        if "fieldRef" in item:
            value = field_ref(pod, item["fieldRef"]["fieldPath"], ctx)
        else:
            raise ProjectionError(f"downwardAPI item {path}: only fieldRef is supported")
        out[path] = (value.encode(), int(item.get("mode", mode)))
    return out


# --------------------------------------------------------------------------- honoured or not

# Volume sources the agent materialises; everything else is reported.
SUPPORTED_VOLUMES = (
    "configMap",
    "secret",
    "emptyDir",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "hostPath",
)


def not_honoured(pod: Obj, *, limits_enforced: bool = False) -> list[str]:
    """Fields of the pod spec the agent cannot honour, as "path: why" lines (sorted, unique).

    Images are a separate (Normal) event: every pod has one. limits_enforced: the node has
    writable cgroup v1 cpu and memory controllers, so cpu/memory limits are enforced."""
    spec = pod.get("spec", {})
    out: set[str] = set()
    psc = spec.get("securityContext") or {}
    for key in ("seccompProfile", "seLinuxOptions", "appArmorProfile", "sysctls", "windowsOptions"):
        if psc.get(key):
            out.add(f"spec.securityContext.{key}")
    for key in ("hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(key):
            out.add(f"spec.{key}")
    if spec.get("hostUsers") is False:
        out.add("spec.hostUsers=false (no user namespace)")
    if spec.get("dnsConfig") or spec.get("hostAliases"):
        out.add("spec.dnsConfig/hostAliases (the node's /etc/resolv.conf and /etc/hosts apply)")
    for ic in spec.get("initContainers", []) or []:
        if ic.get("restartPolicy") == "Always":
            out.add(f"initContainer {ic['name']}: restartPolicy=Always (sidecar; run as init)")
    if spec.get("readinessGates"):
        out.add("spec.readinessGates")
    if spec.get("resources"):
        out.add("spec.resources (pod-level)")
    for v in spec.get("volumes", []) or []:
        kinds = [k for k in v if k != "name"]
        for k in kinds:
            if k not in SUPPORTED_VOLUMES:
                out.add(f"volume {v['name']}: {k}")
        if "emptyDir" in v and (v["emptyDir"] or {}).get("medium") == "Memory":
            out.add(f"volume {v['name']}: emptyDir.medium=Memory (a directory on disk)")
        if "emptyDir" in v and (v["emptyDir"] or {}).get("sizeLimit"):
            out.add(f"volume {v['name']}: emptyDir.sizeLimit")
        for src in (v.get("projected") or {}).get("sources", []) or []:
            for k in src:
                if k not in ("configMap", "secret", "downwardAPI", "serviceAccountToken"):
                    out.add(f"volume {v['name']}: projected {k}")
    for c in spec.get("containers", []) or []:
        where = f"container {c['name']}"
        res = c.get("resources") or {}
        limits = res.get("limits") or {}
        unenforced = sorted(k for k in limits if not limits_enforced or k not in ("cpu", "memory"))
        if unenforced:
            out.add(f"{where}: resources.limits {', '.join(unenforced)} (not enforced)")
        if res.get("claims"):
            out.add(f"{where}: resources.claims")
        sc = c.get("securityContext") or {}
        if sc.get("capabilities"):
            out.add(f"{where}: securityContext.capabilities")
        for key in ("seccompProfile", "seLinuxOptions", "appArmorProfile", "procMount"):
            if sc.get(key):
                out.add(f"{where}: securityContext.{key}")
        if sc.get("privileged"):
            out.add(f"{where}: securityContext.privileged")
        if sc.get("allowPrivilegeEscalation") is False:
            out.add(f"{where}: securityContext.allowPrivilegeEscalation=false (no_new_privs)")
        for p in c.get("ports", []) or []:
            if p.get("hostPort"):
                out.add(f"{where}: ports hostPort {p['hostPort']}")
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            pr = c.get(kind) or {}
            if "grpc" in pr:
                out.add(f"{where}: {kind}.grpc")
        if c.get("lifecycle", {}).get("postStart", {}).get("sleep") or c.get("lifecycle", {}).get(
            "preStop", {}
        ).get("tcpSocket"):
            out.add(f"{where}: lifecycle handler type")
        if c.get("stdin") or c.get("tty"):
            out.add(f"{where}: stdin/tty")
        for m in c.get("volumeMounts", []) or []:
            if m.get("mountPropagation") not in (None, "None"):
                out.add(f"{where}: volumeMounts {m['name']} mountPropagation")
            if m.get("subPathExpr"):
                out.add(f"{where}: volumeMounts {m['name']} subPathExpr")
    return sorted(out)


def images(pod: Obj) -> list[str]:
    return sorted({c.get("image", "") for c in pod.get("spec", {}).get("containers", []) or []})


def security(pod: Obj, container: Obj) -> tuple[int | None, int | None, list[int], bool]:
    """(uid, gid, supplementary groups, runAsNonRoot) with container settings over pod ones."""
    psc = pod.get("spec", {}).get("securityContext") or {}
    csc = container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    groups = [int(g) for g in psc.get("supplementalGroups", []) or []]
    if psc.get("fsGroup") is not None:
        groups.append(int(psc["fsGroup"]))
    non_root = bool(csc.get("runAsNonRoot", psc.get("runAsNonRoot", False)))
    return (
        None if uid is None else int(uid),
        None if gid is None else int(gid),
        sorted(set(groups)),
        non_root,
    )


def mount_order(mounts: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Mounts sorted so a parent mountPath is mounted before one nested inside it."""
    return sorted(mounts, key=lambda m: len(str(m["mountPath"]).rstrip("/").split("/")))


def _may(st: os.stat_result, uid: int, gids: set[int], bit: int) -> bool:
    """Whether uid (with groups gids) has permission `bit` (4 r, 2 w, 1 x) on a file: owner,
    then group, then other bits, as the kernel checks them."""
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid in gids:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def reachable_by(
    path: str, uid: int, gids: set[int], stat: Callable[[str], os.stat_result] = os.stat
) -> bool:
    """Whether uid can execute `path`: search permission on every directory above it, and
    read and execute on the file itself (a script is read by its interpreter)."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    try:
        for d in reversed(list(parts)):
            if not _may(stat(str(d)), uid, gids, 1):
                return False
        st = stat(real)
    except OSError:
        return False
    return _may(st, uid, gids, 1) and _may(st, uid, gids, 4)


def interpreter(path: str) -> str | None:
    """The interpreter a script names on its #! line, if any."""
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words[0] if words else None


def command_reachable(argv: Sequence[str], path_env: str, uid: int, gids: set[int]) -> str | None:
    """None when uid can run argv[0] (found on path_env) and its interpreter; else the first
    file it cannot reach."""
    if not argv:
        return None
    found = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=path_env)
    if found is None:
        return None  # the exec reports a missing command itself
    for f in (found, interpreter(found)):
        if f is not None and not reachable_by(f, uid, gids):
            return os.path.realpath(f)
    return None
