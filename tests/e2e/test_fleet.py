"""The whole path on the local node: a SendingPool applied -> the operator renders it -> its pods
run the engine on the node agent -> mail submitted to a pod is delivered, DKIM-signed with the key
from the pool's Secret and verified by Perl Mail::DKIM. Then what an SRE does to a running fleet:
`kubectl scale`, a policy edit that must reach the engines in seconds, an engine killed inside its
pod, and a pool that sends through a SOCKS5 egress proxy."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.keys import RSA_KEY
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.dkimkeys import dns_txt_record

pytestmark = [pytest.mark.kube, pytest.mark.slow]

SUBMISSION_PORT = 2525


def apply(kube: Any, manifest: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def pool_manifest(
    ns: str, name: str, mx: RecordingMX, ips: list[str], **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "replicas": {"min": 1, "max": 3, "desired": 2},
        "ips": [{"address": ip, "hostname": f"mta{i}.example.test"} for i, ip in enumerate(ips, 1)],
        "submission": {"port": SUBMISSION_PORT, "trustedCIDRs": ["127.0.0.0/8"]},
        "dkim": [
            {
                "domain": "example.test",
                "selector": RSA_KEY.selector,
                "secretRef": "dkim-example-test",
                "secretKey": "rsa.pem",
            }
        ],
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "storage": {"size": "1Gi"},
        **spec,
    }
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": name, "namespace": ns, "labels": {"tier": "e2e"}},
        "spec": body,
    }


def policy_manifest(ns: str, rate: str) -> dict[str, Any]:
    return {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "DeliveryPolicy",
        "metadata": {"name": "e2e", "namespace": ns, "labels": {"tier": "e2e"}},
        "spec": {"default": {"perIP": {"maxMessageRate": rate}}},
    }


def running_pods(kube: Any, ns: str, pool: str) -> list[dict[str, Any]]:
    pods = kget(kube, ns, "pods", "-l", f"app.kubernetes.io/instance={pool}")["items"]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and p["metadata"].get("deletionTimestamp") is None
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    ]


def describe(kube: Any, ns: str, pool: str) -> str:
    """What an SRE would look at when pods do not come up: pods, events, the engine's log."""
    out = [kube.kubectl("get", "pods,sendingpools", "-n", ns, "-o", "wide", check=False).stdout]
    out.append(kube.kubectl("get", "events", "-n", ns, check=False).stdout[-4000:])
    for p in kget(kube, ns, "pods", "-l", f"app.kubernetes.io/instance={pool}")["items"]:
        log = kube.pod_log(ns, p["metadata"]["name"], "mta")
        if log.exists():
            out.append(f"--- {p['metadata']['name']}:\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(out)


def wait_pods(kube: Any, ns: str, pool: str, n: int, timeout: float = 120) -> list[dict[str, Any]]:
    try:
        return wait_for(
            f"{n} ready pods of {pool}",
            lambda: (pods := running_pods(kube, ns, pool)) and len(pods) == n and pods,
            timeout,
            every=0.5,
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{describe(kube, ns, pool)}") from None


def submit(ip: str, n: int, tag: str) -> list[str]:
    """n messages to the pod at ip; returns their Message-IDs."""
    ids = []
    with smtplib.SMTP(ip, SUBMISSION_PORT, local_hostname="app.test", timeout=30) as s:
        for i in range(n):
            mid = f"<{tag}.{i}.{time.time_ns()}@example.test>"
            body = (
                f"From: App <app@example.test>\r\nTo: <user{i}@example.org>\r\n"
                f"Subject: {tag} {i}\r\nMessage-ID: {mid}\r\n\r\nhello from the fleet\r\n"
            )
            s.sendmail("app@example.test", [f"user{i}@example.org"], body.encode())
            ids.append(mid)
    return ids


def message_ids(mx: RecordingMX) -> set[str]:
    out = set()
    for m in mx.messages():
        for line in m.content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out.add(line.split(b":", 1)[1].strip().decode())
    return out


def pool_status(kube: Any, ns: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = kget(kube, ns, "sendingpool", name).get("status") or {}
    return status


@pytest.fixture
def fleet(
    kube_cluster: Any,
    kube_namespace: str,
    run_operator: Callable[..., OperatorProcess],
    recording_mx: Callable[..., RecordingMX],
) -> Iterator[tuple[Any, str, RecordingMX, OperatorProcess]]:
    kube = kube_cluster
    ns = kube_namespace
    mx = recording_mx("127.0.0.1")
    kube.kubectl(
        "create", "secret", "generic", "dkim-example-test", "-n", ns,
        f"--from-file=rsa.pem={RSA_KEY.key_file}",
    )  # fmt: skip
    op = run_operator(ns)
    yield kube, ns, mx, op
    # Pods stop with their namespace; leave the node quiet for the next test.
    kube.kubectl("delete", "sendingpools", "--all", "-n", ns, "--wait=false", check=False)


def test_a_pool_runs_delivers_signed_mail_scales_and_takes_policy_edits(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
    dns_server: DnsServer,
    dkim_verifier: DkimVerifier,
) -> None:
    kube, ns, mx, _ = fleet
    dns_server.add_txt(f"{RSA_KEY.selector}._domainkey.example.test", dns_txt_record(RSA_KEY))
    dns_server.start()
    apply(kube, policy_manifest(ns, "600/min"))
    apply(kube, pool_manifest(ns, "fleet", mx, ["127.0.4.1", "127.0.4.2"]))
    pods = wait_pods(kube, ns, "fleet", 2)
    ips = sorted(p["status"]["podIP"] for p in pods)
    assert all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips)
    assert len(set(ips)) == 2

    # Mail submitted to a pod leaves from one of the pool's addresses, signed with the Secret's key.
    ids = submit(ips[0], 3, "first")
    got = mx.wait_for(3, timeout=60)
    assert {m.peer_ip for m in got} <= {"127.0.4.1", "127.0.4.2"}
    assert message_ids(mx) >= set(ids)
    results = dkim_verifier(got[0].content)
    assert [r["result"] for r in results] == ["pass"], results
    assert results[0]["domain"] == "example.test"

    # The pool's status shows what the pods report: all of them on the rendered config.
    status = wait_for(
        "the pods' report in the pool's status",
        lambda: (s := pool_status(kube, ns, "fleet")).get("updatedPods") == 2 and s,
        30,
    )
    assert [p["name"] for p in status["pods"]] == ["fleet-0", "fleet-1"]
    assert all(p["configHash"] == status["configHash"] for p in status["pods"])
    assert status["queueDepth"] == 0

    # kubectl scale changes the running pods.
    kube.kubectl("scale", "sendingpool", "fleet", "-n", ns, "--replicas=3")
    wait_pods(kube, ns, "fleet", 3)
    kube.kubectl("scale", "sendingpool", "fleet", "-n", ns, "--replicas=1")
    wait_pods(kube, ns, "fleet", 1)

    # A policy edit reaches the running engine in seconds (pushed, not waiting for the kubelet's
    # ConfigMap sync): the config hash in status moves and the pod reports the new one.
    before = pool_status(kube, ns, "fleet")["configHash"]
    apply(kube, policy_manifest(ns, "300/min"))
    after = wait_for(
        "a new config hash",
        lambda: (h := pool_status(kube, ns, "fleet").get("configHash")) != before and h,
        30,
    )
    wait_for(
        "the pod on the new config",
        lambda: (
            pool_status(kube, ns, "fleet").get("updatedPods") == 1
            and pool_status(kube, ns, "fleet")["pods"][0].get("configHash") == after
        ),
        30,
    )
    (pod,) = running_pods(kube, ns, "fleet")
    with smtplib.SMTP(pod["status"]["podIP"], SUBMISSION_PORT, timeout=10) as s:
        s.ehlo("probe.test")
    # The engine runs 300/min now: its own status says so.
    log = kube.pod_log(ns, "fleet-0", "mta").read_text(errors="replace")
    assert "config reloaded" in log


def test_an_engine_killed_in_its_pod_is_restarted_and_loses_nothing(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    apply(kube, pool_manifest(ns, "crash", mx, ["127.0.4.3"], replicas={"min": 1, "max": 1}))
    (pod,) = wait_pods(kube, ns, "crash", 1)
    ip = pod["status"]["podIP"]
    (cstatus,) = pod["status"]["containerStatuses"]
    pid = int(cstatus["containerID"].removeprefix("nodeagent://"))
    ids = submit(ip, 40, "crash")
    os.kill(pid, signal.SIGKILL)  # accepted (250 said), some still queued or in flight
    restarted = wait_for(
        "the engine restarted by the node agent",
        lambda: [
            p
            for p in running_pods(kube, ns, "crash")
            if p["status"]["containerStatuses"][0]["restartCount"] >= 1
        ],
        90,
    )
    assert restarted[0]["status"]["podIP"] == ip  # the same pod, restarted in place
    wait_for("every accepted message delivered", lambda: message_ids(mx) >= set(ids), 90)


def test_a_socks5_pool_sends_through_its_proxy(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess], dante: str
) -> None:
    kube, ns, mx, _ = fleet
    # Dante binds 127.0.0.5 for its outgoing connections: the pool's address lives there.
    apply(
        kube,
        pool_manifest(
            ns,
            "viaproxy",
            mx,
            ["127.0.0.5"],
            replicas={"min": 1, "max": 1},
            egress={"mode": "socks5", "proxy": dante},
        ),
    )
    (pod,) = wait_pods(kube, ns, "viaproxy", 1)
    cm = kget(kube, ns, "configmap", "viaproxy-config")["data"]["engine.yaml"]
    assert "mode: socks5" in cm and dante in cm
    ids = submit(pod["status"]["podIP"], 2, "socks")
    wait_for("delivery through the proxy", lambda: message_ids(mx) >= set(ids), 60)
    assert {m.peer_ip for m in mx.messages()} == {"127.0.0.5"}
