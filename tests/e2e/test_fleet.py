"""The whole path on the local node: a SendingPool applied -> the operator renders it -> its pods
run the engine on the node agent -> mail submitted to a pod is delivered, DKIM-signed with the key
from the pool's Secret and verified by Perl Mail::DKIM. Then what an SRE does to a running fleet:
`kubectl scale`, a policy edit that must reach the engines in seconds, an engine killed inside its
pod, and a pool that sends through a SOCKS5 egress proxy."""

from __future__ import annotations

import os
import signal
import smtplib
from typing import Any

import pytest
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.fleet import (
    SUBMISSION_PORT,
    apply,
    message_ids,
    policy_manifest,
    pool_manifest,
    pool_status,
    running_pods,
    submit,
    wait_pods,
)
from fixtures.keys import RSA_KEY
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.dkimkeys import dns_txt_record

pytestmark = [pytest.mark.kube, pytest.mark.slow]


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

    def settled() -> str | None:
        """The config hash once the one pod runs the pool's current config."""
        s = pool_status(kube, ns, "fleet")
        pods = s.get("pods", [])
        one = s.get("updatedPods") == 1 and len(pods) == 1
        if one and pods[0].get("configHash") == s.get("configHash"):
            return str(s["configHash"])
        return None

    # The scale-down moves fleet-1's and fleet-2's IPs to fleet-0, which renders a config of its
    # own: the edit below is made once that has settled, so the hash it moves is the edit's.
    before = wait_for("the pool settled on one pod", settled, 60)

    # A policy edit reaches the running engine in seconds (pushed, not waiting for the kubelet's
    # ConfigMap sync): the config hash in status moves and the pod reports the new one.
    apply(kube, policy_manifest(ns, "300/min"))
    wait_for(
        "the pod on the new config",
        lambda: (h := settled()) is not None and h != before and h,
        30,
    )
    (pod,) = running_pods(kube, ns, "fleet")
    with smtplib.SMTP(pod["status"]["podIP"], SUBMISSION_PORT, timeout=10) as s:
        s.ehlo("probe.test")
    # The engine took it as a reload (no restart): its log says so.
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
