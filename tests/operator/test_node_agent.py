"""The local node (hack/nodeagent + kube-scheduler): pods scheduled by the real scheduler run as
local processes, and what a user sees through kubectl is what a kubelet would report."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.kube import KubeCluster

pytestmark = pytest.mark.kube


def wait_for(
    what: str,
    probe: Callable[[], Any],
    timeout: float = 90.0,
    detail: Callable[[], str] | None = None,
) -> Any:
    """probe() once it is truthy; a bound, not a speed requirement (the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{more}")
        time.sleep(0.2)


@pytest.fixture
def ns(kube_cluster: KubeCluster) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(kube: KubeCluster, ns: str, *objs: dict[str, Any]) -> None:
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
    kube.kubectl("apply", "-n", ns, "-f", "-", input=doc)


def get(kube: KubeCluster, ns: str, *what: str) -> Any:
    proc = kube.kubectl("get", "-n", ns, *what, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers, "terminationGracePeriodSeconds": 5, **spec},
    }


def condition(obj: dict[str, Any] | None, ctype: str) -> str | None:
    for c in (obj or {}).get("status", {}).get("conditions", []) or []:
        if c["type"] == ctype:
            return str(c["status"])
    return None


def ready(kube: KubeCluster, ns: str, name: str) -> dict[str, Any] | None:
    p = get(kube, ns, "pod", name)
    return p if condition(p, "Ready") == "True" else None


def container_status(p: dict[str, Any] | None, index: int = 0) -> dict[str, Any]:
    statuses = (p or {}).get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[index])


def events(kube: KubeCluster, ns: str, name: str) -> list[dict[str, Any]]:
    out = get(kube, ns, "events", "--field-selector", f"involvedObject.name={name}")
    return list(out["items"]) if out else []


def log_lines(kube: KubeCluster, ns: str, name: str, container: str) -> list[str]:
    try:
        return kube.pod_log(ns, name, container).read_text().splitlines()
    except FileNotFoundError:
        return []


SLEEP = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


# --------------------------------------------------------------------------- the node


def test_node_is_ready_with_a_heartbeat_lease(kube_cluster: KubeCluster) -> None:
    kube = kube_cluster
    node = json.loads(kube.kubectl("get", "node", kube.node_name, "-o", "json").stdout)
    assert condition(node, "Ready") == "True"
    assert {a["type"]: a["address"] for a in node["status"]["addresses"]} == {
        "InternalIP": "127.0.0.1",
        "Hostname": kube.node_name,
    }
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.") and info["operatingSystem"] == "linux"
    assert int(node["status"]["allocatable"]["pods"]) > 0
    assert not node["spec"].get("taints")
    lease = json.loads(
        kube.kubectl("get", "lease", "-n", "kube-node-lease", kube.node_name, "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"] == kube.node_name
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    renewed = lease["spec"]["renewTime"]

    def renewed_again() -> bool:
        path = "jsonpath={.spec.renewTime}"
        out = kube.kubectl("get", "lease", "-n", "kube-node-lease", kube.node_name, "-o", path)
        return out.stdout != renewed

    wait_for("the lease to be renewed", renewed_again, timeout=30)


# --------------------------------------------------------------------------- a plain pod


def test_pod_becomes_ready_on_its_own_address(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    web = {
        "name": "web",
        "image": "python:3.11-slim",
        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8000"],
        "env": [POD_IP_ENV],
        "workingDir": "/etc",
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/hostname", "port": "http"}, "periodSeconds": 1},
    }
    apply(kube, ns, pod("web", [web]))
    p = wait_for("pod web Ready", lambda: ready(kube, ns, "web"))

    status = p["status"]
    assert p["spec"]["nodeName"] == kube.node_name
    assert status["phase"] == "Running"
    assert status["hostIP"] == "127.0.0.1"
    ip = status["podIP"]
    assert ip.startswith("127.10.") and status["podIPs"] == [{"ip": ip}]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodScheduled": "True",
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    cs = container_status(p)
    assert (cs["name"], cs["ready"], cs["started"], cs["restartCount"]) == ("web", True, True, 0)
    assert "running" in cs["state"] and cs["image"] == "python:3.11-slim"
    assert status["startTime"]
    # It answers on its own address (and serves the node's /etc: there is no image).
    with urllib.request.urlopen(f"http://{ip}:8000/hostname", timeout=10) as rsp:
        assert rsp.read() == Path("/etc/hostname").read_bytes()
    # The probes are in its log, one GET per period.
    assert any("GET /hostname" in line for line in log_lines(kube, ns, "web", "web"))
    reasons = {e["reason"]: e for e in events(kube, ns, "web")}
    assert "Scheduled" in reasons and "Started" in reasons
    assert "python:3.11-slim is not pulled" in reasons["ImageNotPulled"]["message"]
    assert "NotHonoured" not in reasons


def test_two_pods_share_a_port_on_their_own_addresses(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    c = {
        "name": "web",
        "image": "python",
        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
        "env": [POD_IP_ENV],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    apply(kube, ns, pod("a", [c]), pod("b", [c]))
    a = wait_for("pod a Ready", lambda: ready(kube, ns, "a"))
    b = wait_for("pod b Ready", lambda: ready(kube, ns, "b"))
    assert a["status"]["podIP"] != b["status"]["podIP"]


# --------------------------------------------------------------------------- env and volumes


def test_env_downward_api_and_projected_files(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "app"},
        "data": {"greeting": "hello", "app.conf": "v1"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"token": "s3cret"},
    }
    script = (
        'echo "ENV $POD_NAME $POD_NS $POD_UID $POD_IP $NODE $GREETING $TOKEN $HOSTNAME"; '
        'echo "ARG $0"; '
        'echo "SA `cat /var/run/secrets/kubernetes.io/serviceaccount/namespace`"; '
        'echo "LINK `readlink /etc/app/app.conf`"; '
        'echo "MODE `stat -L -c %a /etc/creds/sub/tok` `cat /etc/creds/sub/tok`"; '
        'echo "ONE `cat /etc/one.conf`"; '
        'if touch /etc/app/x 2>/dev/null; then echo "WRITE yes"; else echo "WRITE no"; fi; '
        'last=""; while true; do c=`cat /etc/app/app.conf`; '
        'if [ "$c" != "$last" ]; then echo "CONF $c"; last="$c"; fi; sleep 0.2; done'
    )
    container = {
        "name": "show",
        "image": "busybox",
        "command": ["sh", "-c", script, "$(GREETING)-$(MISSING)-$$(GREETING)"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            POD_IP_ENV,
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {
                "name": "GREETING",
                "valueFrom": {"configMapKeyRef": {"name": "app", "key": "greeting"}},
            },
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        ],
        "volumeMounts": [
            {"name": "app", "mountPath": "/etc/app", "readOnly": True},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
            {"name": "app", "mountPath": "/etc/one.conf", "subPath": "app.conf"},
        ],
    }
    volumes = [
        {"name": "app", "configMap": {"name": "app"}},
        {
            "name": "creds",
            "secret": {
                "secretName": "creds",
                "items": [{"key": "token", "path": "sub/tok", "mode": 0o400}],
            },
        },
    ]
    apply(kube, ns, config, secret, pod("show", [container], volumes=volumes))

    def line(prefix: str) -> str | None:
        for text in log_lines(kube, ns, "show", "show"):
            if text.startswith(prefix + " "):
                return text[len(prefix) + 1 :]
        return None

    wait_for("the CONF line", lambda: line("CONF"))
    p = get(kube, ns, "pod", "show")
    uid, ip = p["metadata"]["uid"], p["status"]["podIP"]
    assert line("ENV") == f"show {ns} {uid} {ip} {kube.node_name} hello s3cret show"
    assert line("ARG") == "hello-$(MISSING)-$(GREETING)"
    assert line("SA") == ns
    assert line("LINK") == "..data/app.conf"
    assert line("MODE") == "400 s3cret"
    assert line("ONE") == "v1"
    assert line("WRITE") == "no"
    assert line("CONF") == "v1"

    kube.kubectl(
        "patch", "-n", ns, "configmap", "app", "--type=merge", "-p", '{"data":{"app.conf":"v2"}}'
    )
    wait_for(
        "the edited ConfigMap in the pod's file",
        lambda: "CONF v2" in log_lines(kube, ns, "show", "show"),
        timeout=30,
    )
    # Each content change was seen whole, once: the swap is atomic.
    confs = [t for t in log_lines(kube, ns, "show", "show") if t.startswith("CONF ")]
    assert confs == ["CONF v1", "CONF v2"]


def test_missing_config_map_key_is_a_config_error(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    c = {
        "name": "c",
        "image": "busybox",
        "command": SLEEP,
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "x"}}}],
    }
    apply(kube, ns, pod("cfg", [c]))

    def waiting_reason() -> str | None:
        state = container_status(get(kube, ns, "pod", "cfg")).get("state", {})
        return state.get("waiting", {}).get("reason")  # type: ignore[no-any-return]

    assert wait_for("a waiting reason", waiting_reason) in (
        "ContainerCreating",
        "CreateContainerConfigError",
    )
    wait_for("CreateContainerConfigError", lambda: waiting_reason() == "CreateContainerConfigError")
    failed = [e for e in events(kube, ns, "cfg") if e["reason"] == "Failed"]
    assert failed and 'configmap "nope" not found' in failed[0]["message"]
    assert get(kube, ns, "pod", "cfg")["status"]["phase"] == "Pending"


# --------------------------------------------------------------------------- restarts


def test_killed_process_is_restarted(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    # "$$$$" is "$$" after Kubernetes' expansion: the shell prints its PID.
    script = "echo boot $$$$; trap 'exit 0' TERM; while true; do sleep 0.2; done"
    c = {"name": "c", "image": "busybox", "command": ["sh", "-c", script]}
    apply(kube, ns, pod("victim", [c]))
    p = wait_for("pod victim Ready", lambda: ready(kube, ns, "victim"))
    cid = container_status(p)["containerID"]
    pid = int(cid.rsplit("://", 1)[1])
    wait_for("the first boot line", lambda: log_lines(kube, ns, "victim", "c"))
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        cs = container_status(get(kube, ns, "pod", "victim"))
        return cs if cs.get("restartCount") == 1 and "running" in cs.get("state", {}) else None

    cs = wait_for("restartCount 1", restarted)
    term = cs["lastState"]["terminated"]
    assert (term["exitCode"], term["reason"], term["containerID"]) == (137, "Error", cid)
    assert cs["containerID"] != cid
    assert wait_for("Ready again", lambda: ready(kube, ns, "victim"))
    new_pid = int(cs["containerID"].rsplit("://", 1)[1])
    wait_for("the second boot line", lambda: len(log_lines(kube, ns, "victim", "c")) == 2)
    # kubectl logs goes through the API server to the node agent, like to a kubelet.
    assert kube.kubectl("logs", "-n", ns, "victim").stdout == f"boot {new_pid}\n"
    assert kube.kubectl("logs", "-n", ns, "victim", "--previous").stdout == f"boot {pid}\n"


def test_liveness_failure_restarts_the_container(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    # Healthy for a while, then not. The probes run inside the container's mount namespace,
    # where /tmp is an emptyDir (as in the engine's pods), covering the node's /tmp.
    script = (
        "touch /tmp/ok; sleep 3; rm /tmp/ok; trap 'exit 0' TERM; while true; do sleep 0.2; done"
    )
    probe = {"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 1}
    c = {
        "name": "c",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "data", "mountPath": "/tmp"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 2},
    }
    apply(kube, ns, pod("sick", [c], volumes=[{"name": "data", "emptyDir": {}}]))
    wait_for("pod sick Ready", lambda: ready(kube, ns, "sick"))

    def restarted() -> dict[str, Any] | None:
        cs = container_status(get(kube, ns, "pod", "sick"))
        return cs if cs.get("restartCount", 0) >= 1 else None

    cs = wait_for("a restart", restarted)
    assert cs["lastState"]["terminated"]["exitCode"] == 0  # it took SIGTERM and exited
    evs = events(kube, ns, "sick")
    reasons = [(e["reason"], e["message"]) for e in evs]
    assert ("Killing", "Container c failed liveness probe, will be restarted") in reasons
    # The failures before the restart are one Event, counted (as the kubelet aggregates).
    failures = [e for e in evs if e["message"].startswith("Liveness probe failed")]
    assert len(failures) == 1 and failures[0]["count"] >= 2


def test_restart_policies_and_crash_loop_back_off(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster

    def exits(code: int) -> list[dict[str, Any]]:
        return [{"name": "c", "image": "busybox", "command": ["sh", "-c", f"exit {code}"]}]

    apply(
        kube,
        ns,
        pod("never", exits(3), restartPolicy="Never"),
        pod("onfailure", exits(0), restartPolicy="OnFailure"),
        pod("always", exits(1)),
        pod(
            "nosuch",
            [{"name": "c", "image": "x", "command": ["no-such-program"]}],
            restartPolicy="Never",
        ),
    )

    def phase(name: str) -> str | None:
        p = get(kube, ns, "pod", name)
        return p["status"].get("phase") if p else None

    wait_for("never Failed", lambda: phase("never") == "Failed")
    term = container_status(get(kube, ns, "pod", "never"))["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    wait_for("onfailure Succeeded", lambda: phase("onfailure") == "Succeeded")
    wait_for("nosuch Failed", lambda: phase("nosuch") == "Failed")
    term = container_status(get(kube, ns, "pod", "nosuch"))["state"]["terminated"]
    assert term["reason"] == "StartError"
    assert term["message"] == 'exec: "no-such-program": executable file not found in $PATH'
    assert container_status(get(kube, ns, "pod", "onfailure"))["restartCount"] == 0

    def backing_off() -> dict[str, Any] | None:
        cs = container_status(get(kube, ns, "pod", "always"))
        waiting = cs.get("state", {}).get("waiting", {})
        return cs if waiting.get("reason") == "CrashLoopBackOff" else None

    cs = wait_for("CrashLoopBackOff", backing_off)
    assert cs["restartCount"] >= 1 and cs["lastState"]["terminated"]["exitCode"] == 1
    assert phase("always") == "Running"
    assert "BackOff" in {e["reason"] for e in events(kube, ns, "always")}


def test_the_repository_engine_is_on_the_path(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    c = {"name": "c", "image": "mailfleet", "command": ["mailfleet", "--help"]}
    apply(kube, ns, pod("help", [c], restartPolicy="Never"))

    def phase() -> str | None:
        p = get(kube, ns, "pod", "help")
        return p["status"].get("phase") if p else None

    wait_for("the pod to finish", lambda: phase() in ("Succeeded", "Failed"))
    assert phase() == "Succeeded", log_lines(kube, ns, "help", "c")
    assert any("mta" in line for line in log_lines(kube, ns, "help", "c"))


def test_startup_probe_and_post_start_hook(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    # postStart writes a file the container waits for; the startup probe passes once the
    # container has seen it, which takes a few probe periods.
    script = (
        "while [ ! -f /tmp/hooked ]; do sleep 0.1; done; echo HOOK `cat /tmp/hooked`; "
        "sleep 2; touch /tmp/started; " + SLEEP[2]
    )
    c = {
        "name": "c",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "lifecycle": {
            "postStart": {"exec": {"command": ["sh", "-c", "echo $HOSTNAME > /tmp/hooked"]}}
        },
        "startupProbe": {
            "exec": {"command": ["test", "-f", "/tmp/started"]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
    }
    apply(kube, ns, pod("slowstart", [c], volumes=[{"name": "tmp", "emptyDir": {}}]))
    p = wait_for("pod slowstart Ready", lambda: ready(kube, ns, "slowstart"))
    cs = container_status(p)
    assert (cs["started"], cs["ready"], cs["restartCount"]) == (True, True, 0)
    assert log_lines(kube, ns, "slowstart", "c") == ["HOOK slowstart"]
    messages = [e["message"] for e in events(kube, ns, "slowstart") if e["reason"] == "Unhealthy"]
    assert messages and all(m.startswith("Startup probe failed") for m in messages)


def test_init_containers_run_in_order_before_the_app(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster

    def step(name: str, script: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": "busybox",
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "work", "mountPath": "/work-dir"}],
        }

    app = step("app", "cat /work-dir/steps; " + SLEEP[2])
    init = [step("one", "echo one >> /work-dir/steps"), step("two", "echo two >> /work-dir/steps")]
    volumes = [{"name": "work", "emptyDir": {}}]
    apply(kube, ns, pod("inits", [app], initContainers=init, volumes=volumes))
    p = wait_for("pod inits Ready", lambda: ready(kube, ns, "inits"))
    assert condition(p, "Initialized") == "True"
    done = [
        (s["name"], s["state"]["terminated"]["reason"])
        for s in p["status"]["initContainerStatuses"]
    ]
    assert done == [("one", "Completed"), ("two", "Completed")]
    wait_for("the app's output", lambda: log_lines(kube, ns, "inits", "app"))
    assert log_lines(kube, ns, "inits", "app") == ["one", "two"]

    failing = [step("bad", "exit 2")]
    apply(
        kube,
        ns,
        pod("badinit", [app], initContainers=failing, volumes=volumes, restartPolicy="Never"),
    )

    def phase() -> str | None:
        got = get(kube, ns, "pod", "badinit")
        return got["status"].get("phase") if got else None

    wait_for("badinit Failed", lambda: phase() == "Failed")
    p = get(kube, ns, "pod", "badinit")
    assert condition(p, "Initialized") == "False"
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    assert container_status(p)["state"]["waiting"]["reason"] == "PodInitializing"
    assert not kube.pod_log(ns, "badinit", "app").exists()


# --------------------------------------------------------------------------- deletion


def _graceful_pod(name: str, out: Path, hook_sleep: float, grace: int) -> dict[str, Any]:
    script = (
        "trap 'echo TERM >> /out/log; exit 0' TERM; echo started >> /out/log; "
        "while true; do sleep 0.1; done"
    )
    hook = f"echo prestop >> /out/log; sleep {hook_sleep}; echo hook-done >> /out/log"
    c = {
        "name": "c",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "out", "mountPath": "/out"}],
        "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", hook]}}},
    }
    volumes = [{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}]
    return pod(name, [c], volumes=volumes, terminationGracePeriodSeconds=grace)


def test_delete_runs_prestop_then_sigterm_and_removes_the_pod(
    kube_cluster: KubeCluster, ns: str, tmp_path: Path
) -> None:
    kube = kube_cluster
    apply(kube, ns, _graceful_pod("bye", tmp_path, hook_sleep=0.5, grace=20))
    wait_for("pod bye Ready", lambda: ready(kube, ns, "bye"))
    kube.kubectl("delete", "-n", ns, "pod", "bye", "--wait=true", timeout=60)
    assert get(kube, ns, "pod", "bye") is None
    assert (tmp_path / "log").read_text().split() == ["started", "prestop", "hook-done", "TERM"]


def test_prestop_is_cut_short_by_the_grace_period(
    kube_cluster: KubeCluster, ns: str, tmp_path: Path
) -> None:
    kube = kube_cluster
    apply(kube, ns, _graceful_pod("slow", tmp_path, hook_sleep=600, grace=2))
    wait_for("pod slow Ready", lambda: ready(kube, ns, "slow"))
    kube.kubectl("delete", "-n", ns, "pod", "slow", "--wait=true", timeout=60)
    assert get(kube, ns, "pod", "slow") is None
    # The hook never finished; SIGTERM still came once the grace period was used up.
    assert (tmp_path / "log").read_text().split() == ["started", "prestop", "TERM"]


def test_a_second_delete_with_a_shorter_grace_period_cuts_the_first_short(
    kube_cluster: KubeCluster, ns: str, tmp_path: Path
) -> None:
    """As the kubelet: a pod terminating with 10 minutes of grace (a StatefulSet's rolling
    update) stops within the shorter grace of a later `kubectl delete --grace-period=2`."""
    kube = kube_cluster
    apply(kube, ns, _graceful_pod("long", tmp_path, hook_sleep=600, grace=600))
    wait_for("pod long Ready", lambda: ready(kube, ns, "long"))
    kube.kubectl("delete", "-n", ns, "pod", "long", "--wait=false")
    wait_for("the preStop hook running", lambda: "prestop" in (tmp_path / "log").read_text())
    # Without the shorter grace this waits out the 10 minutes (and kubectl's timeout fails it).
    kube.kubectl("delete", "-n", ns, "pod", "long", "--grace-period=2", "--wait=true", timeout=60)
    assert get(kube, ns, "pod", "long") is None
    assert (tmp_path / "log").read_text().split() == ["started", "prestop", "TERM"]


# --------------------------------------------------------------------------- StatefulSets


def test_statefulset_volume_survives_pod_deletion_and_scales(
    kube_cluster: KubeCluster, ns: str
) -> None:
    kube = kube_cluster
    script = "hostname >> /data/boots; trap 'exit 0' TERM; while true; do sleep 0.2; done"
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "box"},
        "spec": {
            "serviceName": "box",
            "replicas": 1,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "box"}},
            "template": {
                "metadata": {"labels": {"app": "box"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
                    "containers": [
                        {
                            "name": "box",
                            "image": "busybox",
                            "command": ["sh", "-c", script],
                            "volumeMounts": [{"name": "spool", "mountPath": "/data"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "spool"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    apply(kube, ns, sts)

    def state() -> str:
        out = kube.kubectl("get", "-n", ns, "pods,pvc,events", "-o", "wide", check=False)
        return out.stdout + out.stderr + kube.node_log.read_text()[-3000:]

    first = wait_for("box-0 Ready", lambda: ready(kube, ns, "box-0"), detail=state)
    spool = kube.claim_dir(ns, "spool-box-0")
    wait_for("the first boot recorded", lambda: (spool / "boots").exists())
    assert (spool / "boots").read_text().split() == ["box-0"]
    assert (spool / "boots").stat().st_uid == 10001  # runAsUser; fsGroup lets it write

    kube.kubectl("delete", "-n", ns, "pod", "box-0", "--wait=true", timeout=60)

    def replaced() -> dict[str, Any] | None:
        p = ready(kube, ns, "box-0")
        return p if p and p["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for("a new box-0 Ready", replaced, detail=state)
    wait_for(
        "the second boot",
        lambda: len((spool / "boots").read_text().split()) == 2,
        detail=lambda: (spool / "boots").read_text() + state(),
    )
    assert kube.claim_dir(ns, "spool-box-0") == spool

    def running_pods() -> list[str]:
        pods = get(kube, ns, "pods", "-l", "app=box")
        return sorted(
            p["metadata"]["name"]
            for p in pods["items"]
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        )

    kube.kubectl("scale", "-n", ns, "statefulset", "box", "--replicas=3")
    wait_for("3 running pods", lambda: running_pods() == ["box-0", "box-1", "box-2"], detail=state)
    assert kube.claim_dir(ns, "spool-box-2") != spool
    kube.kubectl("scale", "-n", ns, "statefulset", "box", "--replicas=1")
    wait_for(
        "1 pod left",
        lambda: len(get(kube, ns, "pods", "-l", "app=box")["items"]) == 1,
        detail=state,
    )
    assert running_pods() == ["box-0"]


# --------------------------------------------------------------------------- not honoured


def test_what_cannot_be_honoured_is_a_warning_event(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    # A read-only root is honoured: only the volumes are writable.
    script = (
        "if touch /etc/nodeagent-rw-test 2>/dev/null; then echo ROOT rw; else echo ROOT ro; fi; "
        "if touch /scratch/x; then echo VOLUME rw; else echo VOLUME ro; fi; " + SLEEP[2]
    )
    c = {
        "name": "c",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "resources": {"limits": {"memory": "64Mi", "ephemeral-storage": "1Gi"}},
        "securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    }
    strict = pod(
        "strict",
        [c],
        securityContext={"seccompProfile": {"type": "RuntimeDefault"}},
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    apply(kube, ns, strict)
    wait_for("pod strict Ready", lambda: ready(kube, ns, "strict"))
    wait_for("its output", lambda: len(log_lines(kube, ns, "strict", "c")) == 2)
    assert log_lines(kube, ns, "strict", "c") == ["ROOT ro", "VOLUME rw"]
    assert not Path("/etc/nodeagent-rw-test").exists()

    warnings = [e for e in events(kube, ns, "strict") if e["reason"] == "NotHonoured"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    msg = warnings[0]["message"]
    for what in (
        "container c: resources.limits ephemeral-storage (not enforced)",
        "container c: securityContext.capabilities",
        "spec.securityContext.seccompProfile",
    ):
        assert what in msg
    assert "readOnlyRootFilesystem" not in msg and "memory" not in msg


def test_memory_limit_is_enforced_and_cpu_limit_applied(kube_cluster: KubeCluster, ns: str) -> None:
    kube = kube_cluster
    hog = {
        "name": "hog",
        "image": "python",
        "command": [
            "python3",
            "-c",
            "x = bytearray(256 * 2**20); x[::4096] = b'1' * len(x[::4096])",
        ],
        "resources": {"limits": {"memory": "32Mi", "cpu": "500m"}},
    }
    apply(kube, ns, pod("hog", [hog], restartPolicy="Never"))

    def terminated() -> dict[str, Any] | None:
        cs = container_status(get(kube, ns, "pod", "hog"))
        return cs.get("state", {}).get("terminated")  # type: ignore[no-any-return]

    term = wait_for("the hog to end", terminated)
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)
    assert get(kube, ns, "pod", "hog")["status"]["phase"] == "Failed"

    limited = {
        "name": "c",
        "image": "busybox",
        "command": SLEEP,
        "resources": {"limits": {"cpu": "250m"}},
    }
    apply(kube, ns, pod("limited", [limited]))
    p = wait_for("pod limited Ready", lambda: ready(kube, ns, "limited"))
    pid = container_status(p)["containerID"].rsplit("://", 1)[1]
    # The container's process is in a cgroup with the CFS quota of 250m.
    cpu_path = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if "cpu" in line.split(":")[1].split(",")
    )
    cg = Path("/sys/fs/cgroup/cpu") / cpu_path.lstrip("/")
    quota = int((cg / "cpu.cfs_quota_us").read_text())
    period = int((cg / "cpu.cfs_period_us").read_text())
    assert quota / period == 0.25
