"""onFailingIP: StopSending on the local node: a pool IP whose reverse DNS is wrong stops sending
the domain's mail while other domains still use it; with every IP failing, the domain's mail
waits in the queue; once DNS is fixed the restriction lifts and the mail goes.

Real peers: dnsmasq serves the records, the pool's engine sends to a recording MX, which sees the
source IP of every message."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request
from typing import Any

import pytest
import yaml
from fixtures.dnsserver import DnsServer
from fixtures.fleet import SUBMISSION_PORT, apply, pool_manifest, running_pods, wait_pods
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.config import config_digest

pytestmark = [pytest.mark.kube, pytest.mark.slow]

GOOD, BAD = "127.0.6.21", "127.0.6.22"
DOMAIN, OTHER = "stop.test", "other.test"
N = 12


def send(ip: str, sender_domain: str, n: int, tag: str) -> set[str]:
    """n messages from app@<sender_domain> to the pod at ip; their Message-IDs."""
    ids = set()
    with smtplib.SMTP(ip, SUBMISSION_PORT, local_hostname="app.test", timeout=30) as s:
        for i in range(n):
            mid = f"<{tag}.{i}.{time.time_ns()}@{sender_domain}>"
            body = (
                f"From: <app@{sender_domain}>\r\nTo: <user{i}@example.org>\r\n"
                f"Subject: {tag} {i}\r\nMessage-ID: {mid}\r\n\r\nhello\r\n"
            )
            s.sendmail(f"app@{sender_domain}", [f"user{i}@example.org"], body.encode())
            ids.add(mid)
    return ids


def arrived(mx: RecordingMX) -> dict[str, str]:
    """Message-ID -> the source IP it came from."""
    out = {}
    for m in mx.messages():
        for line in m.content.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                out[line.split(b":", 1)[1].strip().decode()] = m.peer_ip
    return out


def test_an_ip_failing_reverse_dns_stops_sending_the_domain_mail_until_fixed(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
    dns_server: DnsServer,
) -> None:
    kube, ns, mx, _ = fleet
    dns_server.add_txt(DOMAIN, f"v=spf1 ip4:{GOOD} ip4:{BAD} -all")
    dns_server.add_txt(f"_dmarc.{DOMAIN}", "v=DMARC1; p=none")
    dns_server.add_ptr(GOOD, "mta1.example.test")
    dns_server.add_a("mta1.example.test", GOOD)
    dns_server.add_ptr(BAD, "dynamic-22.isp.test")  # not the pool's HELO name mta2.example.test
    dns_server.add_a("mta2.example.test", BAD)
    apply(
        kube,
        pool_manifest(
            ns, "stop", mx, [GOOD, BAD], replicas={"min": 1, "max": 1, "desired": 1}, dkim=[]
        ),
    )
    apply(
        kube,
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingDomain",
            "metadata": {"name": "stop-test", "namespace": ns},
            "spec": {
                "domain": DOMAIN,
                "pools": ["stop"],
                "onFailingIP": "StopSending",
                "dmarc": {"expectedPolicy": "none"},
                "dns": {"nameservers": [dns_server.host], "port": dns_server.port},
                "checkInterval": "1s",
            },
        },
    )
    (pod,) = wait_pods(kube, ns, "stop", 1)
    pod_ip = pod["status"]["podIP"]

    def domain_status() -> dict[str, Any]:
        return (kget(kube, ns, "sendingdomain", "stop-test") or {}).get("status") or {}

    def stopped() -> list[tuple[str, str]]:
        return [(s["address"], s["reason"]) for s in domain_status().get("stoppedIPs", [])]

    def engine() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{pod_ip}:8025/v1/status", timeout=10) as r:
            out: dict[str, Any] = json.load(r)
        return out

    def engine_runs(excluded: set[str]) -> bool:
        """The pod runs the rendered config, whose restriction for the domain is `excluded`."""
        cm = kget(kube, ns, "configmap", "stop-config")
        text = cm["data"]["engine.yaml"]
        rules = yaml.safe_load(text)["delivery"].get("senderRestrictions", [])
        now = {ip for r in rules if r["domain"] == DOMAIN for ip in r["excludedIPs"]}
        return now == excluded and engine().get("configHash") == config_digest(text)

    # The decision: BAD's PTR is wrong, so it stops sending stop.test's mail.
    wait_for("the bad IP stopped", lambda: stopped() == [(BAD, "PTRMismatch")], timeout=90)
    reverse = {c["type"]: c for c in domain_status()["conditions"]}["ReverseDNS"]
    assert (reverse["status"], reverse["reason"]) == ("False", "PTRMismatch")
    wait_for("the engine restricted", lambda: engine_runs({BAD}), timeout=90, every=1.0)
    events = kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert "SendingStopped" in events

    ours = send(pod_ip, DOMAIN, N, "ours")
    theirs = send(pod_ip, OTHER, N, "theirs")
    wait_for("all delivered", lambda: (ours | theirs) <= set(arrived(mx)), timeout=120)
    got = arrived(mx)
    assert {got[m] for m in ours} == {GOOD}, "stop.test mail left from the stopped IP"
    assert {got[m] for m in theirs} == {GOOD, BAD}, "other domains' mail must still use both"

    # Every IP failing: SPF now authorises neither, and the domain's mail waits in the queue.
    dns_server.remove(DOMAIN)
    dns_server.add_txt(DOMAIN, "v=spf1 ip4:192.0.2.1 -all")
    wait_for(
        "both IPs stopped",
        lambda: {a for a, _ in stopped()} == {GOOD, BAD},
        timeout=90,
    )
    wait_for("the engine restricted", lambda: engine_runs({GOOD, BAD}), timeout=90, every=1.0)
    held = send(pod_ip, DOMAIN, 3, "held")
    others = send(pod_ip, OTHER, 3, "others")
    wait_for("the other domain delivered", lambda: others <= set(arrived(mx)), timeout=120)
    wait_for(
        "the domain's mail held",
        lambda: engine()["queue"]["jobsHeldBySenderRestriction"] == 3,
        timeout=60,
        every=1.0,
    )
    assert not held & set(arrived(mx))
    assert "NoSendingIP" in kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout

    # DNS fixed: the restriction lifts at the next check, the held mail goes (from either IP).
    dns_server.remove(DOMAIN)
    dns_server.remove(BAD)
    dns_server.add_txt(DOMAIN, f"v=spf1 ip4:{GOOD} ip4:{BAD} -all")
    dns_server.add_ptr(BAD, "mta2.example.test")
    wait_for("no IP stopped", lambda: stopped() == [], timeout=90)
    wait_for("the held mail delivered", lambda: held <= set(arrived(mx)), timeout=120)
    assert engine()["queue"]["jobsHeldBySenderRestriction"] == 0
    later = send(pod_ip, DOMAIN, N, "later")
    wait_for("delivered", lambda: later <= set(arrived(mx)), timeout=120)
    got = arrived(mx)
    assert {got[m] for m in later} == {GOOD, BAD}
    conds = {c["type"]: c["status"] for c in domain_status()["conditions"]}
    assert conds["ReverseDNS"] == conds["SPFValid"] == "True"
    assert "SendingResumed" in kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout
    assert len(running_pods(kube, ns, "stop")) == 1
