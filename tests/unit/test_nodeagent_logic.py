"""The node agent's decisions (hack/nodeagent/logic.py): kubelet semantics as pure functions."""

from __future__ import annotations

import importlib
import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest

_HACK = str(Path(__file__).resolve().parents[2] / "hack")
if _HACK not in sys.path:
    sys.path.insert(0, _HACK)
logic: Any = importlib.import_module("nodeagent.logic")

CTX = logic.PodContext(pod_ip="127.10.0.2", host_ip="127.0.0.1", node_name="n1")
POD: dict[str, Any] = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "x", "tier": "web"},
        "annotations": {"a": "b"},
    },
    "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
}


# --------------------------------------------------------------------------- expansion

ENV = {"A": "a", "B": "b", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "a"),
        ("___$(B)___", "___b___"),
        ("$(A)-$(A)", "a-a"),
        ("$(A)$(B)", "ab"),
        ("$(EMPTY)", ""),
        ("$(MISSING)", "$(MISSING)"),
        ("$()", "$()"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$a"),
        ("$$$$(A)", "$$(A)"),
        ("f-$$A", "f-$A"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("${A}", "${A}"),
        ("$", "$"),
        ("A$", "A$"),
        ("$$", "$"),
        ("$$$", "$$"),
        ("no vars", "no vars"),
        ("", ""),
    ],
)
def test_expand_follows_kubernetes(text: str, expected: str) -> None:
    assert logic.expand(text, ENV) == expected


# --------------------------------------------------------------------------- env


def _lookup(objs: dict[str, dict[str, str]]) -> Any:
    def get(name: str) -> dict[str, bytes] | None:
        data = objs.get(name)
        return None if data is None else {k: v.encode() for k, v in data.items()}

    return get


CMS = _lookup({"cm": {"greeting": "hello", "LEVEL": "debug"}})
SECRETS = _lookup({"s": {"token": "t0k"}})


def env_of(container: dict[str, Any], **kw: Any) -> dict[str, str]:
    result: dict[str, str] = logic.container_env(
        POD, container, CTX, config_maps=CMS, secrets=SECRETS, **kw
    )
    return result


def test_env_values_expand_against_what_is_defined_before() -> None:
    c = {
        "env": [
            {"name": "X", "value": "x"},
            {"name": "Y", "value": "$(X)-$(Z)"},
            {"name": "Z", "value": "z"},
            {"name": "P", "value": "$(PATH)"},
        ]
    }
    env = env_of(c, defaults={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "X": "x", "Y": "x-$(Z)", "Z": "z", "P": "/bin"}


def test_env_downward_api_and_key_refs() -> None:
    c = {
        "env": [
            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "G", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "URL", "value": "http://$(IP):80"},
        ]
    }
    assert env_of(c) == {
        "N": "p",
        "NS": "ns",
        "UID": "u-1",
        "IP": "127.10.0.2",
        "HOST": "127.0.0.1",
        "NODE": "n1",
        "SA": "sa",
        "APP": "x",
        "G": "hello",
        "T": "t0k",
        "URL": "http://127.10.0.2:80",
    }


def test_env_from_with_prefix_then_env_overrides() -> None:
    c = {
        "envFrom": [
            {"configMapRef": {"name": "cm"}, "prefix": "CFG_"},
            {"secretRef": {"name": "s"}},
        ],
        "env": [{"name": "token", "value": "mine"}],
    }
    assert env_of(c) == {"CFG_greeting": "hello", "CFG_LEVEL": "debug", "token": "mine"}


def test_missing_refs_are_config_errors_unless_optional() -> None:
    missing_cm = {
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "no", "key": "k"}}}]
    }
    with pytest.raises(logic.ConfigError, match='configmap "no" not found'):
        env_of(missing_cm)
    missing_key = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(logic.ConfigError, match="couldn't find key k in secret s"):
        env_of(missing_key)
    optional = {
        "env": [
            {
                "name": "X",
                "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}},
            }
        ],
        "envFrom": [{"configMapRef": {"name": "no", "optional": True}}],
    }
    assert env_of(optional) == {}


def test_unsupported_field_ref_is_a_config_error() -> None:
    c = {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}
    with pytest.raises(logic.ConfigError, match=r"spec\.nope"):
        env_of(c)


def test_resource_field_ref_rounds_up_by_divisor() -> None:
    c = {
        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
        "env": [
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
        ],
    }
    assert env_of(c) == {"MEM": "64", "CPU": "1"}


def test_command_line_expands_command_and_args() -> None:
    c = {"command": ["run", "--ip=$(IP)"], "args": ["$(MISSING)", "$$(IP)"]}
    assert logic.command_line(c, {"IP": "127.10.0.9"}) == [
        "run",
        "--ip=127.10.0.9",
        "$(MISSING)",
        "$(IP)",
    ]
    assert logic.command_line({"args": ["sleep", "1"]}, {}) == ["sleep", "1"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", 0.1),
        ("2", 2),
        ("64Mi", 64 * 2**20),
        ("1G", 1e9),
        ("1.5Gi", 1.5 * 2**30),
        ("2e3", 2000),
    ],
)
def test_quantity(text: str, value: float) -> None:
    assert logic.quantity(text) == pytest.approx(value)


# --------------------------------------------------------------------------- restarts


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 137, True),
        ("Never", 1, False),
        ("Never", 0, False),
    ],
)
def test_should_restart(policy: str, code: int, restart: bool) -> None:
    assert logic.should_restart(policy, code) is restart


def test_backoff_first_restart_at_once_then_doubling_to_five_minutes() -> None:
    delays = [logic.restart_delay(n) for n in range(1, 10)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300, 300]
    assert logic.restart_delay(3, initial=1, maximum=3) == 2
    assert logic.restart_delay(5, initial=1, maximum=3) == 3


def test_backoff_resets_after_a_long_run() -> None:
    assert logic.crashes_after_exit(4, ran_for=5) == 5
    assert logic.crashes_after_exit(4, ran_for=logic.BACKOFF_RESET_AFTER) == 1


def test_exit_reason() -> None:
    assert logic.exit_reason(0) == "Completed"
    assert logic.exit_reason(137) == "Error"
    assert logic.exit_reason(128, start_error=True) == "StartError"


# --------------------------------------------------------------------------- probes


def run(kind: str, outcomes: list[bool], spec: Any) -> list[Any]:
    state = logic.ProbeState.initial(kind)
    out = []
    for ok in outcomes:
        state = logic.probe_observe(state, ok, spec)
        out.append(logic.probe_verdict(kind, state, spec))
    return out


def test_readiness_needs_success_threshold_and_failure_threshold() -> None:
    spec = logic.ProbeSpec(success_threshold=2, failure_threshold=3)
    assert run("readiness", [True, True, False, False, True, False, False, False], spec) == [
        "unready",
        "ready",
        "ready",
        "ready",
        "ready",  # a success resets the failures
        "ready",
        "ready",
        "unready",
    ]


def test_liveness_restarts_after_failure_threshold_in_a_row() -> None:
    spec = logic.ProbeSpec(failure_threshold=2)
    assert run("liveness", [False, True, False, False], spec) == [
        "none",
        "none",
        "none",
        "restart",
    ]


def test_startup_probe_gates_then_restarts_when_it_never_succeeds() -> None:
    spec = logic.ProbeSpec(failure_threshold=3)
    assert run("startup", [False, True], spec) == ["none", "started"]
    assert run("startup", [False, False, False], spec) == ["none", "none", "restart"]


def test_probe_due_after_initial_delay_then_every_period() -> None:
    spec = logic.ProbeSpec(initial_delay=5, period=2)
    assert not logic.probe_due(100, None, spec, 104.9)
    assert logic.probe_due(100, None, spec, 105)
    assert not logic.probe_due(100, 105, spec, 106.5)
    assert logic.probe_due(100, 105, spec, 107)


def test_probe_spec_defaults_like_the_api() -> None:
    assert logic.ProbeSpec.from_api({}) == logic.ProbeSpec(0, 10, 1, 1, 3)
    assert logic.ProbeSpec.from_api(
        {"initialDelaySeconds": 3, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 6}
    ) == logic.ProbeSpec(3, 1, 2, 1, 6)


def test_probe_port_by_number_or_name() -> None:
    c = {"name": "c", "ports": [{"name": "admin", "containerPort": 8025}]}
    assert logic.probe_port("admin", c) == 8025
    assert logic.probe_port(80, c) == 80
    assert logic.probe_port("8080", c) == 8080
    with pytest.raises(logic.ConfigError, match="not a named port"):
        logic.probe_port("http", c)


def test_http_probe_status_range() -> None:
    assert [logic.http_probe_ok(s) for s in (199, 200, 302, 399, 400, 503)] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]


# --------------------------------------------------------------------------- phase, conditions


def view(state: dict[str, Any], last: dict[str, Any] | None = None, ready: bool = False) -> Any:
    return logic.ContainerView(name="c", image="i", state=state, last_state=last or {}, ready=ready)


RUNNING = {"running": {"startedAt": "t"}}
WAITING = {"waiting": {"reason": "ContainerCreating"}}
OK = {"terminated": {"exitCode": 0}}
FAILED = {"terminated": {"exitCode": 1}}


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Always", [WAITING], "Pending"),
        ("Always", [RUNNING, WAITING], "Pending"),
        ("Always", [RUNNING], "Running"),
        ("Always", [RUNNING, OK], "Running"),
        ("Never", [OK, OK], "Succeeded"),
        ("Never", [OK, FAILED], "Failed"),
        ("OnFailure", [OK], "Succeeded"),
        ("Always", [OK], "Running"),
    ],
)
def test_pod_phase(policy: str, states: list[dict[str, Any]], phase: str) -> None:
    assert logic.pod_phase(policy, [view(s) for s in states]) == phase


def test_pod_phase_of_a_container_in_back_off_is_running() -> None:
    backoff = view(
        {"waiting": {"reason": "CrashLoopBackOff"}}, last={"terminated": {"exitCode": 1}}
    )
    assert logic.pod_phase("Always", [backoff]) == "Running"
    assert logic.pod_phase("OnFailure", [backoff]) == "Running"


def test_conditions_keep_transition_times_and_the_scheduler_condition() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}
    first = logic.pod_conditions([scheduled], [view(RUNNING, ready=False)], "t1", sandbox=True)
    by = {c["type"]: c for c in first}
    assert by["PodScheduled"] == scheduled
    assert by["Ready"]["status"] == "False" and by["Ready"]["reason"] == "ContainersNotReady"
    assert by["Ready"]["message"] == "containers with unready status: [c]"
    assert by["Initialized"]["status"] == "True"
    second = logic.pod_conditions(first, [view(RUNNING, ready=False)], "t2", sandbox=True)
    assert second == first  # nothing changed: same transition times
    third = {
        c["type"]: c
        for c in logic.pod_conditions(second, [view(RUNNING, ready=True)], "t3", sandbox=True)
    }
    assert third["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": "t3",
    }
    assert third["Initialized"]["lastTransitionTime"] == "t1"


def test_pod_status_shape() -> None:
    c = logic.ContainerView(
        name="c", image="img", state=RUNNING, ready=True, started=True, container_id="x://1"
    )
    st = logic.pod_status(
        {"spec": {}, "status": {}},
        [c],
        pod_ip="127.10.0.5",
        host_ip="127.0.0.1",
        start_time="s",
        now="t",
    )
    assert st["phase"] == "Running"
    assert st["podIP"] == "127.10.0.5" and st["podIPs"] == [{"ip": "127.10.0.5"}]
    assert st["hostIPs"] == [{"ip": "127.0.0.1"}]
    assert st["containerStatuses"] == [
        {
            "name": "c",
            "image": "img",
            "imageID": "",
            "state": RUNNING,
            "lastState": {},
            "ready": True,
            "started": True,
            "restartCount": 0,
            "containerID": "x://1",
        }
    ]


# --------------------------------------------------------------------------- addresses


def test_allocate_ip_skips_used_and_special_addresses() -> None:
    net = ipaddress.ip_network("127.10.3.0/24")
    assert logic.allocate_ip([], net) == "127.10.3.2"
    assert logic.allocate_ip(["127.10.3.2", "127.10.3.3"], net) == "127.10.3.4"
    every = [f"127.10.3.{i}" for i in range(2, 255)]
    with pytest.raises(RuntimeError, match="exhausted"):
        logic.allocate_ip(every, net)
    assert logic.allocate_ip(every[:-1], net) == "127.10.3.254"


# --------------------------------------------------------------------------- projection

DATA = {"a.conf": b"A", "b": b"B"}


def test_project_every_key_with_default_mode() -> None:
    common = {"items": None, "optional": False, "what": "cm"}
    assert logic.project(DATA, default_mode=None, **common) == {
        "a.conf": (b"A", 0o644),
        "b": (b"B", 0o644),
    }
    assert logic.project(DATA, default_mode=0o440, **common)["b"] == (b"B", 0o440)


def test_project_items_choose_keys_paths_and_modes() -> None:
    items = [{"key": "a.conf", "path": "dir/x.conf", "mode": 0o400}, {"key": "b", "path": "y"}]
    assert logic.project(DATA, items=items, default_mode=0o444, optional=False, what="s") == {
        "dir/x.conf": (b"A", 0o400),
        "y": (b"B", 0o444),
    }


def test_project_missing_objects_and_keys() -> None:
    with pytest.raises(logic.ProjectionError, match='configmap "x" not found'):
        logic.project(None, items=None, default_mode=None, optional=False, what='configmap "x"')
    assert logic.project(None, items=None, default_mode=None, optional=True, what="x") == {}
    items = [{"key": "nope", "path": "p"}]
    with pytest.raises(logic.ProjectionError, match="non-existent config key: nope"):
        logic.project(DATA, items=items, default_mode=None, optional=False, what="x")
    assert logic.project(DATA, items=items, default_mode=None, optional=True, what="x") == {}


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../../b", "..x"])
def test_project_rejects_escaping_paths(path: str) -> None:
    with pytest.raises(logic.ProjectionError, match="invalid path"):
        logic.project(
            DATA, items=[{"key": "b", "path": path}], default_mode=None, optional=False, what="x"
        )


def test_secret_and_config_map_data_decoding() -> None:
    assert logic.decode_secret({"t": "czNjcmV0"}) == {"t": b"s3cret"}
    cm = {"data": {"a": "x"}, "binaryData": {"bin": "AAE="}}
    assert logic.config_map_data(cm) == {"a": b"x", "bin": b"\x00\x01"}


def test_downward_files() -> None:
    items = [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
    ]
    assert logic.downward_files(POD, items, CTX, None) == {
        "name": (b"p", 0o644),
        "labels": (b'app="x"\ntier="web"', 0o644),
    }


# --------------------------------------------------------------------------- not honoured


def test_a_plain_pod_has_nothing_not_honoured() -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "i",
                    "command": ["x"],
                    "resources": {"requests": {"cpu": "1"}},
                }
            ],
            "volumes": [
                {"name": "v", "configMap": {"name": "c"}},
                {
                    "name": "t",
                    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]},
                },
            ],
            "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
        }
    }
    assert logic.not_honoured(pod) == []


def test_what_cannot_be_honoured_is_named() -> None:
    pod = {
        "spec": {
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "i"}],
            "volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}],
            "containers": [
                {
                    "name": "mta",
                    "resources": {"limits": {"memory": "1Gi"}},
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                        "allowPrivilegeEscalation": False,
                    },
                    "ports": [{"containerPort": 25, "hostPort": 25}],
                    "livenessProbe": {"grpc": {"port": 1}},
                }
            ],
        }
    }
    assert logic.not_honoured(pod) == [
        "container mta: livenessProbe.grpc",
        "container mta: ports hostPort 25",
        "container mta: resources.limits memory (not enforced)",
        "container mta: securityContext.allowPrivilegeEscalation=false (no_new_privs)",
        "container mta: securityContext.capabilities",
        "spec.securityContext.seccompProfile",
        "volume n: nfs",
    ]


def test_security_context_container_over_pod() -> None:
    pod = {
        "spec": {
            "securityContext": {
                "runAsUser": 1,
                "runAsGroup": 2,
                "fsGroup": 3,
                "supplementalGroups": [4],
            }
        }
    }
    assert logic.security(pod, {}) == (1, 2, [3, 4], False)
    c = {"securityContext": {"runAsUser": 5, "runAsNonRoot": True}}
    assert logic.security(pod, c) == (5, 2, [3, 4], True)
    assert logic.security({"spec": {}}, {}) == (None, None, [], False)


def test_mounts_parent_before_child() -> None:
    mounts = [{"mountPath": "/a/b/c"}, {"mountPath": "/a"}, {"mountPath": "/a/b/"}]
    assert [m["mountPath"] for m in logic.mount_order(mounts)] == ["/a", "/a/b/", "/a/b/c"]


def test_tail_lines() -> None:
    server: Any = importlib.import_module("nodeagent.server")
    assert server.tail_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert server.tail_lines(b"a\nb\nc", 1) == b"c"
    assert server.tail_lines(b"a\n", 5) == b"a\n"
    assert server.tail_lines(b"a\n", 0) == b""


# --------------------------------------------------------------------------- runAsUser reach


def _stat(modes: dict[str, tuple[int, int, int]]) -> Any:
    """A stat function over a fake tree: path -> (mode, uid, gid)."""
    import os as _os

    def stat(path: str) -> Any:
        if path not in modes:
            raise FileNotFoundError(path)
        mode, uid, gid = modes[path]
        return _os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    return stat


def test_reachable_by_needs_search_on_every_parent_and_rx_on_the_file() -> None:
    tree = {
        "/": (0o755, 0, 0),
        "/nahome": (0o700, 0, 0),
        "/nahome/py": (0o755, 0, 0),
        "/nausr": (0o755, 0, 0),
        "/nausr/bin": (0o755, 0, 0),
        "/nausr/bin/sh": (0o755, 0, 0),
        "/nausr/bin/grp": (0o750, 0, 10001),
    }
    stat = _stat(tree)
    assert logic.reachable_by("/nausr/bin/sh", 10001, {10001}, stat)
    assert not logic.reachable_by("/nahome/py", 10001, {10001}, stat)
    assert logic.reachable_by("/nahome/py", 0, {0}, stat)  # the owner may search it
    assert logic.reachable_by("/nausr/bin/grp", 10001, {10001}, stat)  # by group
    assert not logic.reachable_by("/nausr/bin/grp", 10002, {10002}, stat)
    assert not logic.reachable_by("/nausr/bin/missing", 10001, {10001}, stat)


def test_init_containers_gate_the_phase_and_initialized() -> None:
    done = view({"terminated": {"exitCode": 0}})
    failed = view({"terminated": {"exitCode": 2}})
    backoff = view(
        {"waiting": {"reason": "CrashLoopBackOff"}}, last={"terminated": {"exitCode": 2}}
    )
    assert logic.init_progress("Always", [done, done]) == "done"
    assert logic.init_progress("Always", [done, view(RUNNING)]) == "running"
    assert logic.init_progress("OnFailure", [backoff]) == "running"
    assert logic.init_progress("Never", [done, failed]) == "failed"
    assert logic.should_restart_init("Always", 0) is False
    assert logic.should_restart_init("Always", 1) is True
    assert logic.should_restart_init("Never", 1) is False

    app = [view({"waiting": {"reason": "PodInitializing"}})]
    common = {"pod_ip": "127.10.0.2", "host_ip": "127.0.0.1", "start_time": "s", "now": "t"}
    pending = logic.pod_status({"spec": {}}, app, init=[done, view(RUNNING)], **common)
    assert pending["phase"] == "Pending"
    init_cond = next(c for c in pending["conditions"] if c["type"] == "Initialized")
    assert (init_cond["status"], init_cond["reason"]) == ("False", "ContainersNotInitialized")
    assert init_cond["message"] == "containers with incomplete status: [c]"
    assert [s["name"] for s in pending["initContainerStatuses"]] == ["c", "c"]
    never = {"spec": {"restartPolicy": "Never"}}
    assert logic.pod_status(never, app, init=[failed], **common)["phase"] == "Failed"
    running = logic.pod_status({"spec": {}}, [view(RUNNING)], init=[done], **common)
    assert running["phase"] == "Running"
    assert "initContainerStatuses" not in logic.pod_status({"spec": {}}, [view(RUNNING)], **common)


def test_limits_are_not_reported_where_cgroups_enforce_them() -> None:
    c = {"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}}
    pod = {"spec": {"containers": [c]}}
    assert logic.not_honoured(pod) == [
        "container c: resources.limits cpu, memory, nvidia.com/gpu (not enforced)"
    ]
    assert logic.not_honoured(pod, limits_enforced=True) == [
        "container c: resources.limits nvidia.com/gpu (not enforced)"
    ]


def test_cgroup_settings_like_the_kubelet() -> None:
    c = {"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1500m", "memory": "64Mi"}}}
    assert logic.cgroup_settings(c) == {
        "cpu": {"cpu.shares": "256", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "150000"},
        "memory": {"memory.limit_in_bytes": str(64 * 2**20)},
    }
    # A limit without a request: the request defaults to the limit.
    assert logic.cgroup_settings({"resources": {"limits": {"cpu": "1m"}}})["cpu"] == {
        "cpu.shares": "2",
        "cpu.cfs_period_us": "100000",
        "cpu.cfs_quota_us": "1000",
    }
    assert logic.cgroup_settings({}) == {}
    assert logic.exit_reason(137, oom_killed=True) == "OOMKilled"
