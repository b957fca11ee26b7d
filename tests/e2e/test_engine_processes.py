"""A pod uses the cores it is given: a SendingPool requesting 2 CPUs runs `mailfleet mta
--processes 2` on the local node, the two engine processes share the pod's submission port
(SO_REUSEPORT spreads the sessions), both deliver DKIM-signed mail, and one killed with -9 while
mail is queued and flowing is restarted by the supervisor inside the running container, losing
nothing. Lowered to one CPU, the pod rolls to one process, which delivers the second one's
spool."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.fleet import (
    Gate,
    apply,
    engine_metrics,
    engine_status,
    fast_retry_policy,
    message_ids,
    pool_manifest,
    pool_status,
    running_pods,
    submit,
    wait_pods,
)
from fixtures.keys import RSA_KEY
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.procs import pid_alive
from fixtures.smtppeers import RecordingMX
from prometheus_client.parser import text_string_to_metric_families

from mailfleet.mta.dkimkeys import dns_txt_record

pytestmark = [pytest.mark.kube, pytest.mark.slow]

POOL = "procs"
IPS = ["127.0.11.1", "127.0.11.2"]


def end_finished_tests_pods(kube: Any) -> None:
    """A pod requesting 2 CPUs needs the whole local node. The pods of tests that have ended
    (their namespace being deleted) can hold it for the 10 minutes of their preStop drain when
    they still hold mail for an MX that is gone: they end now instead (their test is over)."""
    namespaces = json.loads(kube.kubectl("get", "namespaces", "-o", "json").stdout)["items"]
    for ns in namespaces:
        if ns["status"].get("phase") != "Terminating":
            continue
        name = ns["metadata"]["name"]
        pods = kube.kubectl("get", "pods", "-n", name, "-o", "name", check=False).stdout.split()
        if pods:
            print(f"engine processes: ending {len(pods)} pods of the finished test in {name}")
            kube.kubectl("delete", "pods", "--all", "-n", name, "--grace-period=1",
                         "--wait=false", check=False)  # fmt: skip


@pytest.fixture
def two_cpu_fleet(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> Iterator[tuple[Any, str, RecordingMX, OperatorProcess]]:
    end_finished_tests_pods(fleet[0])
    yield fleet
    # A pod requesting 2 CPUs takes the whole local node: after a failure it must not sit out a
    # 10-minute preStop drain (the MX defers or is gone) while the next tests' pods wait for it.
    kube, ns, _, _ = fleet
    kube.kubectl("delete", "sendingpool", POOL, "-n", ns, "--timeout=30s", check=False)
    kube.kubectl("wait", "--for=delete", f"statefulset/{POOL}", "-n", ns, "--timeout=30s",
                 check=False)  # fmt: skip
    kube.kubectl(
        "delete", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={POOL}",
        "--grace-period=1", "--wait=false", check=False,
    )  # fmt: skip


def by_process(pod: dict[str, Any], family: str, **labels: str) -> dict[str, float]:
    """The pod's samples of one metric family summed per `process` label, e.g.
    {"0": 93.0, "1": 107.0}; `labels` selects samples (state="queued")."""
    out: dict[str, float] = {}
    for f in text_string_to_metric_families(engine_metrics(pod)):
        if f.name != family:
            continue
        for s in f.samples:
            if s.name.endswith("_created") or any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            out[s.labels["process"]] = out.get(s.labels["process"], 0.0) + s.value
    return out


def submit_in_parallel(ip: str, sessions: int, per_session: int, tag: str) -> list[str]:
    """`sessions` SMTP connections at once, `per_session` messages on each; the Message-IDs."""
    with ThreadPoolExecutor(sessions) as pool:
        batches = pool.map(lambda k: submit(ip, per_session, f"{tag}{k}"), range(sessions))
        return [mid for batch in batches for mid in batch]


class Trickle(threading.Thread):
    """One message per connection to the pod until stopped (at most `limit`): mail flowing in
    while a worker dies. Remembers the Message-IDs the pod accepted (250 after DATA); a session
    the dying worker held fails and counts as not accepted, as its client would see it."""

    def __init__(self, ip: str, tag: str, limit: int = 3000) -> None:
        super().__init__(daemon=True)
        self.ip, self.tag, self.limit = ip, tag, limit
        self.accepted: list[str] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        for k in range(self.limit):
            if self.stop.is_set():
                return
            try:
                self.accepted += submit(self.ip, 1, f"{self.tag}{k}")
            except (smtplib.SMTPException, OSError):
                self.failed += 1
                self.stop.wait(0.05)

    def finish(self) -> list[str]:
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the trickle of mail did not stop"
        return self.accepted


def log_records(log: Path, offset: int) -> list[dict[str, Any]]:
    """The engine's JSON log lines written after `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


def parent_pid(pid: int) -> int:
    # The state and the parent follow the parenthesised command name.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def test_a_two_cpu_pod_runs_two_engine_processes_that_share_the_port_and_survive_a_kill(
    two_cpu_fleet: tuple[Any, str, RecordingMX, OperatorProcess],
    dns_server: DnsServer,
    dkim_verifier: DkimVerifier,
) -> None:
    kube, ns, mx, _ = two_cpu_fleet
    dns_server.add_txt(f"{RSA_KEY.selector}._domainkey.example.test", dns_txt_record(RSA_KEY))
    dns_server.start()
    apply(kube, fast_retry_policy(ns))  # deferred mail is retried within seconds
    apply(
        kube,
        pool_manifest(
            ns,
            POOL,
            mx,
            IPS,
            replicas={"min": 1, "max": 1},
            resources={"requests": {"cpu": "2", "memory": "256Mi"}},
        ),
    )
    # 2 CPUs is the whole local node: the pod is scheduled once earlier tests' pods are gone.
    applied = time.monotonic()
    (pod,) = wait_pods(kube, ns, POOL, 1, timeout=180)
    print(f"engine processes: the 2-CPU pod ready {time.monotonic() - applied:.1f} s after apply")
    ip = pod["status"]["podIP"]
    assert pod["spec"]["nodeName"] == kube.node_name

    # 1. The operator renders one engine process per whole CPU, and the pod runs two.
    sts = kget(kube, ns, "statefulset", POOL)
    (rendered,) = sts["spec"]["template"]["spec"]["containers"]
    assert rendered["resources"]["requests"]["cpu"] == "2"
    assert rendered["command"][-2:] == ["--processes", "2"], rendered["command"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == rendered["command"]
    (cstatus,) = pod["status"]["containerStatuses"]
    supervisor = int(cstatus["containerID"].removeprefix("nodeagent://"))
    status = wait_for(
        "both engine processes ready in /v1/status",
        lambda: (s := engine_status(pod))["ready"] and s,
        30,
    )
    assert status["processes"] == 2, status
    workers = status["workers"]
    assert [w["process"] for w in workers] == [0, 1]
    assert all(w["ready"] and w["restarts"] == 0 for w in workers), workers
    pids = [w["pid"] for w in workers]
    # Real processes on this machine, started by the container's process (the supervisor).
    assert len(set(pids)) == 2 and all(pid_alive(p) for p in pids), pids
    assert [parent_pid(p) for p in pids] == [supervisor, supervisor]

    # 2. 200 messages over 20 sessions at once: the kernel spreads the sessions over both
    # processes, every message is delivered from the pool's addresses, DKIM-signed.
    ids = submit_in_parallel(ip, 20, 10, "spread")
    assert len(set(ids)) == 200
    wait_for("every message delivered", lambda: message_ids(mx) >= set(ids), 90, every=1)
    got = mx.messages()
    assert {m.peer_ip for m in got} <= set(IPS)
    assert all(b"DKIM-Signature:" in m.content for m in got)
    for m in got[:1] + got[-1:]:
        results = dkim_verifier(m.content)
        assert [r["result"] for r in results] == ["pass"], results
        assert results[0]["domain"] == "example.test"
    received = by_process(pod, "mailfleet_messages_received")
    assert sum(received.values()) == 200, received
    assert received.get("0", 0) > 0 and received.get("1", 0) > 0, received
    # The pool's status reads the pod through the supervisor: on the rendered config, queue empty.
    status = wait_for(
        "the pod's report in the pool's status",
        lambda: (s := pool_status(kube, ns, POOL)).get("updatedPods") == 1 and s,
        30,
    )
    assert status["pods"][0]["configHash"] == status["configHash"]
    assert status["queueDepth"] == 0

    # 3. Worker 1 killed with -9 while its spool holds deferred mail and more is coming in: the
    # supervisor starts it again on the same spool, the container never restarts, and every
    # message the pod accepted is delivered once the MX takes mail again.
    gate = Gate()
    mx.on_rcpt = gate
    queued = submit_in_parallel(ip, 20, 5, "queued")
    wait_for(
        "deferred mail in both processes' spools",
        lambda: all(
            by_process(pod, "mailfleet_queue_messages", state="queued").get(p, 0) > 0
            for p in ("0", "1")
        ),
        30,
    )
    trickle = Trickle(ip, "flowing")
    trickle.start()
    try:
        wait_for("mail flowing in", lambda: len(trickle.accepted) >= 20, 30, every=0.1)
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        at_kill = len(trickle.accepted)
        restarted = wait_for(
            "worker 1 restarted by the supervisor and ready",
            lambda: (
                (w := engine_status(pod)["workers"][1])["restarts"] == 1
                and w["ready"]
                and w["pid"] not in pids
                and w
            ),
            60,
            every=0.5,
        )
        at_restart, back_in = len(trickle.accepted), time.monotonic() - killed_at
        wait_for(
            "mail flowing in after the restart",
            lambda: len(trickle.accepted) >= at_restart + 20,
            30,
            every=0.1,
        )
    finally:
        flowing = trickle.finish()
    print(
        f"engine processes: worker 1 pid {pids[1]} -> {restarted['pid']}; trickle accepted "
        f"{at_kill} before the kill, {at_restart} by the restart ({back_in:.1f} s), "
        f"{len(flowing)} in all; refused {trickle.failed}"
    )
    assert at_kill < at_restart < len(flowing) < trickle.limit  # flowing all along
    assert not pid_alive(pids[1])
    assert parent_pid(restarted["pid"]) == supervisor
    status = engine_status(pod)
    assert [w["restarts"] for w in status["workers"]] == [0, 1], status["workers"]
    assert status["workers"][0]["pid"] == pids[0]
    (after,) = wait_pods(kube, ns, POOL, 1)
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    (cstatus,) = after["status"]["containerStatuses"]
    assert cstatus["restartCount"] == 0
    assert cstatus["containerID"] == f"nodeagent://{supervisor}"
    restarts = by_process(after, "mailfleet_process_restarts")
    assert restarts == {"0": 0, "1": 1}, restarts

    gate.open = True
    accepted = set(queued) | set(flowing)
    wait_for(
        f"all {len(accepted)} accepted messages delivered",
        lambda: not (accepted - message_ids(mx)) or None,
        120,
        every=1,
    )
    assert not accepted - message_ids(mx)
    print(
        f"engine processes: {len(accepted)} accepted while worker 1 was killed, "
        f"{len(mx.messages())} deliveries in all ({len(ids) + len(accepted)} messages)"
    )
    assert running_pods(kube, ns, POOL)[0]["status"]["containerStatuses"][0]["restartCount"] == 0

    # 4. The request lowered to one CPU: the pod rolls to one process, which takes over the
    # spool the second process left behind; that mail is delivered too.
    gate.open = False
    stranded = set(submit_in_parallel(ip, 20, 3, "stranded"))
    spools = wait_for(
        "the new mail deferred in both spools",
        lambda: (
            (q := by_process(pod, "mailfleet_queue_messages", state="queued"))
            and sum(q.values()) == len(stranded)
            and q.get("1")
            and q
        ),
        30,
    )
    # The pool's status sums what both processes hold.
    wait_for(
        "the pool's status showing the deferred mail",
        lambda: pool_status(kube, ns, POOL).get("queueDepth") == len(stranded),
        60,
    )
    generation = kget(kube, ns, "statefulset", POOL)["metadata"]["generation"]
    apply(kube, pool_manifest(ns, POOL, mx, IPS, replicas={"min": 1, "max": 1},
                              resources={"requests": {"cpu": "1", "memory": "256Mi"}}))  # fmt: skip
    sts = wait_for(
        "the StatefulSet rolling to one process",
        lambda: (
            (s := kget(kube, ns, "statefulset", POOL))["metadata"]["generation"] > generation
            and s["status"].get("observedGeneration") == s["metadata"]["generation"]
            and s
        ),
        30,
    )
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--processes" not in command, command
    # The rolling update would wait out the preStop drain (which cannot deliver while the MX
    # defers) for the whole grace period: a short one, as an impatient SRE would.
    log = kube.pod_log(ns, f"{POOL}-0", "mta")
    seen = log.stat().st_size  # the log carries on across pods of the same name
    kube.kubectl("delete", "pod", f"{POOL}-0", "-n", ns, "--grace-period=3", "--wait=true")
    (rolled,) = wait_pods(kube, ns, POOL, 1)
    assert rolled["metadata"]["uid"] != pod["metadata"]["uid"]
    assert rolled["spec"]["containers"][0]["command"] == command
    single = engine_status(rolled)
    assert "workers" not in single and single.get("processes", 1) == 1, single
    assert single["queue"]["messages"] == len(stranded), single["queue"]
    # The one process moved both workers' spools into its own before it took mail.
    adopted = {
        Path(r["path"]).name: float(r["messages"])
        for r in log_records(log, seen)
        if r.get("msg") == "adopted an orphaned spool"
    }
    assert adopted == spools, adopted
    gate.open = True
    wait_for(
        f"the {len(stranded)} messages left in two spools delivered by one process",
        lambda: message_ids(mx) >= stranded,
        60,
        every=1,
    )
    print(f"engine processes: left in the spools of processes 0 and 1 before the roll: {spools}")
