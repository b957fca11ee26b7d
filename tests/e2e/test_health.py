"""Deliverability automation on the local fleet: a pool IP listed on a blocklist (dnsmasq
serving the zone) is quarantined and its standby promoted, after which no mail leaves from it,
and it sends again once delisted and cooled down; a throttling provider slows a pod to its floor
and it recovers when the throttling stops; an IPWarmup moves day by day on a short day and
holds a day whose mail bounced. Every decision is in `kubectl get events` and in the objects'
status."""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.fleet import SUBMISSION_PORT, apply, pool_manifest, pool_status, submit, wait_pods
from fixtures.isp import IspSimulator
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

from mailfleet.operator.api.naming import ADMIN_PORT

pytestmark = [pytest.mark.kube, pytest.mark.slow]

ZONE = "bl.e2e.test"


@pytest.fixture
def dnsbl(tmp_path: Path) -> Iterator[DnsServer]:
    # TTL 0: a listing added during the test is what the next check sees.
    with DnsServer(workdir=tmp_path / "dnsbl", ttl=0) as server:
        server.add_txt("e2e.test", "a record so that dnsmasq serves something")
        server.start()
        yield server


def events(kube: Any, ns: str, kind: str, name: str) -> list[dict[str, Any]]:
    items = kget(kube, ns, "events")["items"]
    return [
        e
        for e in items
        if e["involvedObject"].get("kind") == kind and e["involvedObject"].get("name") == name
    ]


def reasons(kube: Any, ns: str, kind: str, name: str) -> list[str]:
    return [e["reason"] for e in events(kube, ns, kind, name)]


def test_a_listed_ip_is_quarantined_and_its_standby_sends_instead(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess], dnsbl: DnsServer
) -> None:
    kube, ns, mx, _ = fleet
    active, standby = "127.0.7.1", "127.0.7.2"
    manifest = pool_manifest(
        ns,
        "bl",
        mx,
        [active, standby],
        replicas={"min": 1, "max": 1, "desired": 1},
        health={"interval": "2s", "blocklists": [ZONE], "cooldown": "10s"},
    )
    manifest["spec"]["ips"][1]["standby"] = True
    manifest["spec"]["routing"]["dns"] = {"nameservers": [dnsbl.host], "port": dnsbl.port}
    apply(kube, manifest)
    pod_ip = wait_pods(kube, ns, "bl", 1)[0]["status"]["podIP"]

    submit(pod_ip, 2, "before")
    assert {m.peer_ip for m in mx.wait_for(2, timeout=60)} == {active}
    healthy = wait_for(
        "a first health check",
        lambda: (s := pool_status(kube, ns, "bl")).get("health") and s,
        60,
    )
    assert [h["address"] for h in healthy["health"]] == [active, standby]
    cond = {c["type"]: c for c in healthy["conditions"]}["IPsHealthy"]
    assert (cond["status"], cond["reason"]) == ("True", "Healthy")

    dnsbl.add_dnsbl_listing(ZONE, active, "127.0.0.2", reason="listed for the e2e test")
    listed_at = time.monotonic()
    status = wait_for(
        "the listed IP quarantined and the standby promoted, on the pod's config",
        lambda: (
            (s := pool_status(kube, ns, "bl"))
            and {i["address"]: i["state"] for i in s.get("ips", [])}
            == {active: "quarantined", standby: "active"}
            and s.get("updatedPods") == 1
            and s
        ),
        90,
    )
    print(
        f"\nlisting -> quarantine on the pod's config: {time.monotonic() - listed_at:.1f}s "
        f"(check interval 2s)"
    )
    ips = {i["address"]: i for i in status["ips"]}
    assert ips[active]["reason"].startswith(f"Listed:{ZONE} (127.0.0.2)")
    assert "listed for the e2e test" in ips[active]["reason"]
    assert ips[standby]["pod"] == "bl-0"
    cond = {c["type"]: c for c in status["conditions"]}["IPsHealthy"]
    assert (cond["status"], cond["reason"]) == ("False", "Quarantined")
    listed = {h["address"]: h.get("listedOn", []) for h in status["health"]}
    assert listed[active] and listed[standby] == []
    seen = wait_for(
        "IPQuarantined and StandbyPromoted events",
        lambda: (
            {"IPQuarantined", "StandbyPromoted"} <= set(r := reasons(kube, ns, "SendingPool", "bl"))
            and r
        ),
        30,
    )
    assert "IPQuarantined" in seen

    # After the decision reached the pod, mail leaves from the standby only.
    before = len(mx.messages())
    submit(pod_ip, 3, "after")
    got = mx.wait_for(before + 3, timeout=60)[before:]
    assert {m.peer_ip for m in got} == {standby}

    # Delisted and past the cooldown: the IP sends again and the standby stands by.
    dnsbl.remove(f"{'.'.join(reversed(active.split('.')))}.{ZONE}")
    wait_for(
        "the IP back in rotation",
        lambda: (
            {i["address"]: i["state"] for i in pool_status(kube, ns, "bl").get("ips", [])}
            == {active: "active", standby: "standby"}
        ),
        90,
    )
    wait_for(
        "IPRecovered and StandbyReleased events",
        lambda: {"IPRecovered", "StandbyReleased"} <= set(reasons(kube, ns, "SendingPool", "bl")),
        30,
    )


def test_a_warmup_advances_day_by_day_and_holds_a_day_that_bounced(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    ip = "127.0.8.1"
    apply(
        kube,
        pool_manifest(
            ns,
            "wu",
            mx,
            [ip],
            replicas={"min": 1, "max": 1, "desired": 1},
            health={"interval": "2s"},
        ),
    )
    pod_ip = wait_pods(kube, ns, "wu", 1)[0]["status"]["podIP"]
    apply(
        kube,
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "IPWarmup",
            "metadata": {"name": "wu", "namespace": ns},
            "spec": {
                "poolRef": "wu",
                "addresses": [ip],
                "schedule": {"days": [3, 4, 5, 6], "dayLength": "30s"},
                "gates": {"minAttempts": 2, "maxBounceRate": 0.2, "minUsage": 0.5},
            },
        },
    )

    def warmup() -> dict[str, Any]:
        status: dict[str, Any] = (kget(kube, ns, "ipwarmup", "wu") or {}).get("status") or {}
        return status

    wait_for("the warmup started", lambda: warmup().get("startTime"), 30)
    # Day 1: the whole cap delivered, under every gate.
    submit(pod_ip, 3, "day1")
    mx.wait_for(3, timeout=60)
    counted = wait_for(
        "day 1's deliveries counted in status.today",
        lambda: (
            (w := warmup()).get("today", {}).get("providers", {}).get("*", {}).get("delivered") == 3
            and w
        ),
        30,
    )
    assert counted["day"] == 1
    day2 = wait_for("day 2", lambda: (w := warmup()).get("day") == 2 and w, 60)
    assert day2["todayCap"] == 4 and day2["phase"] == "Warming"
    assert "advanced after day 1" in day2["lastVerdict"]

    # Day 2: every recipient refused for good: bounces over the gate, the day is repeated.
    mx.on_rcpt = lambda call: "550 5.1.1 no such user here"
    submit(pod_ip, 4, "day2")
    held = wait_for(
        "day 2 held",
        lambda: (w := warmup()).get("phase") == "Holding" and w,
        90,
    )
    assert held["day"] == 2
    assert "bounce rate" in held["lastVerdict"]
    got = set(reasons(kube, ns, "IPWarmup", "wu"))
    assert {"WarmupAdvanced", "WarmupHeld"} <= got, got


def pair_rate(pod_ip: str, ip: str, provider: str) -> float | None:
    """The engine's current rate for (ip, provider), from its open /v1/status."""
    with urllib.request.urlopen(f"http://{pod_ip}:{ADMIN_PORT}/v1/status", timeout=5) as rsp:
        status = json.load(rsp)
    for row in status.get("shaping", []):
        if row["ip"] == ip and row["provider"] == provider:
            rate = row.get("rate")
            return float(rate) if rate is not None else None
    return None


def test_a_throttling_provider_slows_the_pods_and_they_recover_when_it_stops(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess], tmp_path: Path
) -> None:
    kube, ns, mx, _ = fleet
    ip = "127.0.9.1"
    with IspSimulator(["gmail"]) as isp, DnsServer(workdir=tmp_path / "isp-dns") as dns:
        isp.add_to_dns(dns)
        dns.start()
        gmail = isp["gmail"]
        gmail.set_limit(5, window=60)  # then 421-4.7.28 for the rest of the minute
        apply(
            kube,
            {
                "apiVersion": "mailfleet.io/v1alpha1",
                "kind": "DeliveryPolicy",
                "metadata": {"name": "gmail", "namespace": ns},
                "spec": {
                    "providers": [
                        {
                            "name": "gmail",
                            "match": {"mxSuffixes": ["gmail-sim.test"]},
                            "perIP": {"maxMessageRate": "10/s", "maxConnections": 2},
                            "adaptive": {
                                "decrease": 0.5,
                                "increase": "3/s",
                                "recoveryInterval": "1s",
                                "floor": "1/s",
                            },
                            "rules": [{"match": r"4\.7\.28", "action": "throttle"}],
                            "retry": {"initial": "1s", "max": "2s", "maxAge": "1h"},
                        }
                    ]
                },
            },
        )
        manifest = pool_manifest(
            ns, "thr", mx, [ip], replicas={"min": 1, "max": 1, "desired": 1},
            health={"interval": "2s"},
        )  # fmt: skip
        manifest["spec"]["routing"] = {
            "mxPort": isp.port,
            "dns": {"nameservers": [dns.host], "port": dns.port},
            "allowPrivateMX": True,  # the simulated providers' MX hosts are on loopback
        }
        apply(kube, manifest)
        pod_ip = wait_pods(kube, ns, "thr", 1)[0]["status"]["podIP"]
        rcpts = [isp.rcpt("gmail", f"u{i}") for i in range(40)]
        with smtplib.SMTP(pod_ip, SUBMISSION_PORT, local_hostname="app.test", timeout=30) as s:
            for i, r in enumerate(rcpts):
                body = f"From: <app@example.test>\r\nTo: <{r}>\r\nSubject: t{i}\r\n\r\nhi\r\n"
                s.sendmail("app@example.test", [r], body.encode())

        # Throttled: the pod's rate for gmail at its floor, deferrals in the pool's figures.
        wait_for("the 421s", lambda: len(gmail.refusals(ip, "4.7.28")) >= 3, 90)
        wait_for("the rate at the floor", lambda: pair_rate(pod_ip, ip, "gmail") == 1.0, 60)
        deferred = wait_for(
            "deferrals in status.health",
            lambda: next(
                (h for h in pool_status(kube, ns, "thr").get("health", []) if h["deferred"]),
                None,
            ),
            60,
        )
        assert deferred["address"] == ip and deferred["deferralRate"] > 0

        # The provider stops throttling: the rate climbs back to the policy's 10/s and every
        # message arrives.
        gmail.throttle(False)
        wait_for("every message accepted", lambda: gmail.count(ip) >= len(rcpts), 120, every=1)
        assert {a.recipient for a in gmail.accepted(ip)} >= set(rcpts)
        wait_for("the rate back at 10/s", lambda: (pair_rate(pod_ip, ip, "gmail") or 0) >= 9, 60)
