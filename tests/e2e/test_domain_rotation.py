"""A SendingDomain's keys sign the mail of its pool on the local node, and a rotation with mail
flowing loses no signature: every message the MX receives is verified by Perl Mail::DKIM as it
arrives, against the records DNS serves at that moment, before, during and after the switch."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fixtures.dkimverify import DkimVerifier
from fixtures.dnsserver import DnsServer
from fixtures.fleet import apply, pool_manifest, running_pods, submit, wait_pods
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def test_pool_signs_with_the_domain_keys_across_a_rotation(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
    dns_server: DnsServer,
    dkim_verifier: DkimVerifier,
) -> None:
    kube, ns, mx, _ = fleet
    apply(
        kube,
        pool_manifest(
            ns, "dom", mx, ["127.0.6.1"], replicas={"min": 1, "max": 1, "desired": 1}, dkim=[]
        ),
    )
    wait_pods(kube, ns, "dom", 1)
    apply(
        kube,
        {
            "apiVersion": "mailfleet.io/v1alpha1",
            "kind": "SendingDomain",
            "metadata": {"name": "example-test", "namespace": ns},
            "spec": {
                "domain": "example.test",
                "pools": ["dom"],
                "dkim": {"algorithms": ["rsa-sha256"], "rotateEvery": "40s", "gracePeriod": "20s"},
                "dmarc": {"expectedPolicy": "none"},
                "dns": {"nameservers": [dns_server.host], "port": dns_server.port},
                "checkInterval": "1s",
            },
        },
    )

    def status() -> dict[str, Any]:
        out: dict[str, Any] = (kget(kube, ns, "sendingdomain", "example-test") or {}).get(
            "status"
        ) or {}
        return out

    published: set[str] = set()

    def publish_dkim() -> None:
        """What status.records says for DKIM, added to the zone (nothing is taken out)."""
        for r in status().get("records", []):
            if "._domainkey." in r["name"] and r["name"] not in published:
                dns_server.add_txt(r["name"], r["value"])
                published.add(r["name"])

    seen: list[tuple[str, str]] = []  # (selector, result) of every signature, as it arrived
    done = 0

    def pump() -> list[tuple[str, str]]:
        """One more message through the pool; verify whatever arrived since the last call."""
        nonlocal done
        pods = running_pods(kube, ns, "dom")
        if pods:
            submit(pods[0]["status"]["podIP"], 1, "rot")
        msgs = mx.messages()
        new = []
        for m in msgs[done:]:
            for r in dkim_verifier(m.content):
                new.append((str(r["selector"]), str(r["result"])))
        done = len(msgs)
        seen.extend(new)
        return new

    wait_for("a pending key", lambda: status().get("selectors"), timeout=60)
    publish_dkim()
    first = wait_for("the first key active", lambda: status().get("activeSelectors"), timeout=60)
    wait_for(
        f"mail signed with {first}",
        lambda: any(s == first and r == "pass" for s, r in pump()),
        timeout=120,
        every=1.0,
    )

    # (Adding the domain's Secret to the pool restarted its pod once; a rotation does not.)
    (pod,) = running_pods(kube, ns, "dom")
    uid = pod["metadata"]["uid"]

    # Rotation: the new key is published while mail flows; signing moves to it.
    def second_pending() -> str | None:
        pump()
        pend = [s["selector"] for s in status().get("selectors", []) if s["state"] == "pending"]
        return pend[0] if pend else None

    second = wait_for("a new pending selector", second_pending, timeout=120, every=1.0)
    publish_dkim()
    wait_for(
        f"mail signed with {second}",
        lambda: any(s == second and r == "pass" for s, r in pump()),
        timeout=120,
        every=1.0,
    )

    # The old key leaves after its grace period; mail keeps verifying.
    def first_gone() -> bool:
        pump()
        return first not in {s["selector"] for s in status().get("selectors", [])}

    wait_for("the old key removed", first_gone, timeout=120, every=1.0)
    pump()
    assert seen and all(r == "pass" for _, r in seen), seen
    assert {s for s, _ in seen} == {first, second}
    assert all(re.fullmatch(r"mf\d{14}r", s) for s, _ in seen)
    (pod,) = running_pods(kube, ns, "dom")
    assert pod["metadata"]["uid"] == uid, "the pod was replaced during the rotation"
    assert not any(c.get("restartCount") for c in pod["status"]["containerStatuses"])
