"""The cluster faults of `make reliability` (`--cluster`, or `make reliability-cluster`).

On the local node (hack/cluster.py: etcd, kube-apiserver, controller-manager, scheduler and the
node agent running pods as local processes on loopback pod IPs), with `mailfleet operator` as a
subprocess and pools routed to the scripted MX of bench/reliability.py:

- api-restart: kube-apiserver stopped by PID and started again while pools are created, changed
  (a re-rendered engine config, a scale-up) and mail flows through a pool's pods; the operator
  must converge afterwards (every pod on the new config, the new pool's pod ready);
- operator-kill-drain: a pool scaled from 3 pods to 1 while its pods hold a queue (the MX
  defers); the operator is SIGKILLed once the drain has begun, a new one started; the StatefulSet
  must shrink only after the handoff;
- pod-delete: pods deleted under load, one with a 3 s grace period while the MX defers (its queue
  stays in its volume until the same ordinal returns), one with its preStop drain delivering.

Clients keep submitting to the ready pods' IPs (port 2525) all along; the list of pods is
refreshed from the API server every second (the last one known is kept while it is down).
Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import smtplib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.fixtures.fleet import running_pods
from tests.fixtures.keys import RSA_KEY
from tests.fixtures.kube import cluster
from tests.fixtures.operator import MAILFLEET, OperatorProcess, free_port, kget

if TYPE_CHECKING:
    from bench.reliability import FaultyMX, Row

REPO = Path(__file__).resolve().parents[1]
SUBMISSION_PORT = 2525
CONVERGE_DEADLINE = 240.0


class Timeout(RuntimeError):
    pass


def wait(what: str, fn: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """fn() until truthy (exceptions count as not yet); Timeout naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except (AssertionError, OSError, subprocess.SubprocessError, ValueError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what} ({last!r})")
        time.sleep(every)


# -- traffic to the pods -------------------------------------------------------------------------


@dataclass
class PodTraffic:
    """Numbered messages (X-Seq) to the ready pods of one pool; counts the 250s and refusals."""

    cp: Any  # hack/cluster.py ControlPlane
    ns: str
    pool: str
    seq: int
    base: int = 0
    accepted: set[int] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)
    ips: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    pause: float = 0.01  # between messages of one client: a steady load, not a flood

    def __post_init__(self) -> None:
        self.base = self.seq

    def refresh(self) -> None:
        """The ready pods' IPs; kept as they were when the API server cannot say."""
        with contextlib.suppress(AssertionError, OSError, subprocess.SubprocessError, ValueError):
            pods = running_pods(self.cp, self.ns, self.pool)
            ips = sorted(p["status"]["podIP"] for p in pods if p["status"].get("podIP"))
            with self.lock:
                self.ips = ips

    def _refresher(self) -> None:
        while not self.stop.wait(1.0):
            self.refresh()

    def _count(self, key: str) -> None:
        with self.lock:
            self.refused[key] = self.refused.get(key, 0) + 1

    def _message(self, n: int) -> bytes:
        return (
            f"From: <app@example.test>\r\nTo: <user@example.org>\r\nSubject: cluster {n}\r\n"
            f"X-Seq: {n}\r\n\r\nmessage {n}\r\n"
        ).encode() + (b"x" * 76 + b"\r\n") * 26

    def _sender(self, index: int) -> None:
        turn = index
        while not self.stop.is_set():
            with self.lock:
                ips = list(self.ips)
            if not ips:
                self.stop.wait(0.5)
                continue
            turn += 1
            ip = ips[turn % len(ips)]
            try:
                client = smtplib.SMTP(ip, SUBMISSION_PORT, local_hostname="load.test", timeout=15)
            except (OSError, smtplib.SMTPException):
                self._count("conn")
                self.stop.wait(0.2)
                continue
            try:
                for _ in range(50):  # then another pod
                    if self.stop.is_set():
                        break
                    with self.lock:
                        self.seq += 1
                        n = self.seq
                    try:
                        client.sendmail("app@example.test", ["user@example.org"], self._message(n))
                    except smtplib.SMTPResponseException as e:
                        self._count(str(e.smtp_code))
                        if e.smtp_code == 421:
                            break
                        with contextlib.suppress(Exception):
                            client.rset()
                        continue
                    with self.lock:
                        self.accepted.add(n)
                    time.sleep(self.pause)
            except (OSError, smtplib.SMTPException):
                self._count("conn")
                self.stop.wait(0.2)
            finally:
                with contextlib.suppress(Exception):
                    client.quit()
                with contextlib.suppress(Exception):
                    client.close()

    def start(self, clients: int = 2) -> PodTraffic:
        self.refresh()
        self.threads = [threading.Thread(target=self._refresher, daemon=True)]
        self.threads += [
            threading.Thread(target=self._sender, args=(i,), daemon=True) for i in range(clients)
        ]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


# -- the cluster ---------------------------------------------------------------------------------


class ClusterWorld:
    """A local control plane with its node, the CRDs, and the operators started on it."""

    def __init__(self, workdir: Path, mx: FaultyMX) -> None:
        self.workdir = workdir
        self.mx = mx
        self.operators: list[OperatorProcess] = []
        self.seq_base = 900_000_000
        self.cp = cluster.ControlPlane(
            cluster.ensure_binaries(), workdir / "kube", fsync=False, die_with_parent=True
        )
        self.cp.start()
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        self.cp.wait_crds_established()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.cp.kubectl(
            *args, input=input, check=check, timeout=timeout
        )
        return result

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def namespace(self, name: str) -> str:
        """A namespace with the DKIM Secret and a fast retry policy (seconds, not minutes)."""
        self.kubectl("create", "namespace", name)
        self.kubectl(
            "create", "secret", "generic", "dkim-example-test", "-n", name,
            f"--from-file=rsa.pem={RSA_KEY.key_file}",
        )  # fmt: skip
        self.apply(
            {
                "apiVersion": "mailfleet.io/v1alpha1",
                "kind": "DeliveryPolicy",
                "metadata": {"name": "fast-retry", "namespace": name},
                "spec": {"default": {"retry": {"initial": "2s", "max": "4s", "maxAge": "1h"}}},
            }
        )
        return name

    def pool(self, ns: str, name: str, pods: int, max_recipients: int = 100) -> dict[str, Any]:
        return {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingPool",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": {"min": 0, "max": 3, "desired": pods},
                "autoscaling": {"enabled": False},
                "ips": [
                    {"address": f"127.0.6.{i}", "hostname": f"mta{i}.example.test"}
                    for i in range(1, 4)
                ],
                "submission": {
                    "port": SUBMISSION_PORT,
                    "trustedCIDRs": ["127.0.0.0/8"],
                    "maxRecipients": max_recipients,
                },
                "dkim": [
                    {
                        "domain": "example.test",
                        "selector": RSA_KEY.selector,
                        "secretRef": "dkim-example-test",
                        "secretKey": "rsa.pem",
                    }
                ],
                "routing": {"routes": {"*": f"127.0.0.1:{self.mx.port}"}},
                "storage": {"size": "1Gi"},
            },
        }

    def operator(self, ns: str) -> OperatorProcess:
        port = free_port()
        log_path = self.workdir / f"operator-{len(self.operators)}.log"
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig), "PYTHONUNBUFFERED": "1"}
        cmd = [
            str(MAILFLEET), "operator", "--standalone", "--namespace", ns,
            "--metrics-port", str(port), "--metrics-addr", "127.0.0.1",
        ]  # fmt: skip
        with log_path.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        op = OperatorProcess(proc, log_path, port)
        self.operators.append(op)

        def serving() -> bool:
            if not op.alive():
                raise RuntimeError(f"the operator exited:\n{op.log()[-3000:]}")
            op.metrics()
            return True

        wait("the operator's /metrics", serving, 30, every=0.3)
        return op

    def ready_pods(self, ns: str, pool: str) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = running_pods(self.cp, ns, pool)
        return pods

    def wait_pods(self, ns: str, pool: str, n: int, timeout: float = 180) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = wait(
            f"{n} ready pods of {pool}",
            lambda: (p := self.ready_pods(ns, pool)) and len(p) == n and p,
            timeout,
        )
        return pods

    def status(self, ns: str, pool: str) -> dict[str, Any]:
        obj = kget(self.cp, ns, "sendingpool", pool) or {}
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def sts_replicas(self, ns: str, pool: str) -> int:
        return int(kget(self.cp, ns, "statefulset", pool)["spec"]["replicas"])

    def traffic(self, ns: str, pool: str) -> PodTraffic:
        self.seq_base += 10_000_000
        return PodTraffic(self.cp, ns, pool, self.seq_base)

    def restart_apiserver(self, down: float) -> float:
        """Stop kube-apiserver by PID, wait `down` seconds, start it again (and whatever
        stopped with it). Returns the seconds until /readyz answered again."""
        pid = self.cp.running()["kube-apiserver"]
        self.cp.procs.pop("kube-apiserver", None)
        cluster.stop_pid(pid, "kube-apiserver")
        self.cp.pid_file("kube-apiserver").unlink(missing_ok=True)
        time.sleep(down)
        t0 = time.monotonic()
        self.cp.start()
        return time.monotonic() - t0

    def close(self) -> None:
        for op in self.operators:
            op.stop()
        self.cp.stop()
        shutil.rmtree(self.workdir / "kube", ignore_errors=True)


# -- the faults ----------------------------------------------------------------------------------


def _drained(mx: FaultyMX, traffic: PodTraffic, deadline: float) -> float:
    start = time.monotonic()
    end = start + deadline
    while time.monotonic() < end and not traffic.accepted <= mx.delivered():
        time.sleep(0.5)
    return time.monotonic() - start


def _row(name: str, world: ClusterWorld, traffic: PodTraffic, drain: float, dup: int) -> Row:
    from bench.reliability import Row

    got = world.mx.delivered()
    delivered = len(traffic.accepted & got)
    if delivered < len(traffic.accepted):
        missing = sorted(n - traffic.base for n in traffic.accepted - got)
        print(f"{name}: not delivered: {missing[:20]}", flush=True)
    return Row(
        name,
        len(traffic.accepted),
        delivered,
        len(traffic.accepted) - delivered,
        dict(traffic.refused),
        world.mx.duplicates() - dup,
        drain,
    )


def api_restart(world: ClusterWorld, window: float, restarts: int = 2) -> Row:
    """The API server stopped and started again `restarts` times, each right after changes."""
    ns = world.namespace("rel-api")
    world.operator(ns)
    world.apply(world.pool(ns, "api", 2))
    world.wait_pods(ns, "api", 2)
    dup = world.mx.duplicates()
    traffic = world.traffic(ns, "api").start()
    downs: list[str] = []
    try:
        time.sleep(window)
        for i in range(restarts):
            # Changes the operator is reconciling when the API server goes: a re-rendered
            # engine config (pushed to the pods) and a new pool; the first one scales up too.
            world.apply(world.pool(ns, "api", 3, max_recipients=60 + i))
            world.apply(world.pool(ns, f"new{i}", 1))
            time.sleep(0.5)
            back = world.restart_apiserver(down=window)
            downs.append(f"{window + back:.0f}s")
            time.sleep(window)
        t0 = time.monotonic()
        world.wait_pods(ns, "api", 3, CONVERGE_DEADLINE)
        for i in range(restarts):
            world.wait_pods(ns, f"new{i}", 1, CONVERGE_DEADLINE)
        wait(
            "every pod of api on the last config",
            lambda: (
                (s := world.status(ns, "api")).get("updatedPods") == 3
                and len(s.get("pods") or []) == 3
            ),
            CONVERGE_DEADLINE,
        )
        converged = time.monotonic() - t0
        time.sleep(window)
    finally:
        traffic.finish()
    row = _row("api-restart", world, traffic, _drained(world.mx, traffic, 180), dup)
    row.note = f"API server down {', '.join(downs)}; converged {converged:.0f}s after"
    return row


def operator_kill_drain(world: ClusterWorld, window: float) -> Row:
    """Scale 3 -> 1 with queues in the pods (the MX defers); SIGKILL the operator mid-drain."""
    ns = world.namespace("rel-drain")
    op = world.operator(ns)
    world.apply(world.pool(ns, "drain", 3))
    world.wait_pods(ns, "drain", 3)
    dup = world.mx.duplicates()
    traffic = world.traffic(ns, "drain").start()
    try:
        time.sleep(window)
        world.mx.set_mode("defer")  # the pods keep what they accept: a queue to hand off
        time.sleep(window)
        queued = int(world.status(ns, "drain").get("queueDepth") or 0)
        world.kubectl("scale", "sendingpool", "drain", "-n", ns, "--replicas=1")
        draining = wait(
            "the drain to begin",
            lambda: world.status(ns, "drain").get("drainingPods"),
            60,
            every=0.2,
        )
        op.kill()
        replicas_at_kill = world.sts_replicas(ns, "drain")
        time.sleep(2)
        t0 = time.monotonic()
        world.operator(ns)
        wait(
            "the StatefulSet shrunk to 1 by the new operator",
            lambda: world.sts_replicas(ns, "drain") == 1,
            CONVERGE_DEADLINE,
        )
        shrunk = time.monotonic() - t0
        world.wait_pods(ns, "drain", 1)
        world.mx.set_mode("ok")
        time.sleep(window)
    finally:
        world.mx.set_mode("ok")
        traffic.finish()
    row = _row("operator-kill", world, traffic, _drained(world.mx, traffic, 180), dup)
    row.note = (
        f"SIGKILL mid-drain of {','.join(draining)} (queue ~{queued}, StatefulSet at"
        f" {replicas_at_kill}); the next operator shrank it {shrunk:.0f}s after its start"
    )
    return row


def pod_delete(world: ClusterWorld, window: float) -> Row:
    """Pods deleted under load: one with a 3 s grace period while the MX defers, one with the
    preStop drain delivering."""
    ns = world.namespace("rel-del")
    world.operator(ns)
    world.apply(world.pool(ns, "del", 2))
    world.wait_pods(ns, "del", 2)
    dup = world.mx.duplicates()
    traffic = world.traffic(ns, "del").start()
    try:
        time.sleep(window)
        world.mx.set_mode("defer")
        time.sleep(window)
        pods = {p["name"]: p for p in (world.status(ns, "del").get("pods") or [])}
        held = int((pods.get("del-1") or {}).get("queued") or 0)
        world.kubectl("delete", "pod", "del-1", "-n", ns, "--grace-period=3", "--wait=true")
        world.wait_pods(ns, "del", 2)
        time.sleep(window)
        world.mx.set_mode("ok")
        t0 = time.monotonic()
        world.kubectl("delete", "pod", "del-0", "-n", ns, "--wait=true", timeout=300)
        prestop = time.monotonic() - t0
        world.wait_pods(ns, "del", 2)
        time.sleep(window)
    finally:
        world.mx.set_mode("ok")
        traffic.finish()
    row = _row("pod-delete", world, traffic, _drained(world.mx, traffic, 180), dup)
    row.note = (
        f"del-1 deleted with 3s grace holding ~{held} queued; del-0 deleted, its preStop drain"
        f" took {prestop:.0f}s"
    )
    return row


CLUSTER_FAULTS = ["api-restart", "operator-kill", "pod-delete"]


def run_cluster_faults(
    names: list[str], mx: FaultyMX, workdir: Path, window: float, report: Callable[[Row], None]
) -> None:
    """Start the local cluster once and run the named cluster faults, reporting each row."""
    world = ClusterWorld(workdir, mx)
    runs: dict[str, Callable[[], Row]] = {
        "api-restart": lambda: api_restart(world, window),
        "operator-kill": lambda: operator_kill_drain(world, window),
        "pod-delete": lambda: pod_delete(world, window),
    }
    try:
        for name in names:
            report(runs[name]())
    finally:
        world.close()
