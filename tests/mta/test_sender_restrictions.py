"""delivery.senderRestrictions on a real engine: a sender domain's mail leaves only from the IPs
not excluded for it; with every IP excluded it waits, across a restart (the loader learns the
sender from the spool), and goes once a reload lifts the restriction. Other senders' mail is not
affected."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fixtures.engine import EngineProc, message
from fixtures.smtppeers import RecordingMX

IPS = ["127.0.0.2", "127.0.0.3"]


def config(mx: RecordingMX, restrictions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "retry": {"initial": "500ms", "max": "1s", "maxAge": "1h", "jitter": 0},
        "delivery": {
            "sourceIPs": [
                {"address": a, "hostname": f"out{i}.mta.test"} for i, a in enumerate(IPS)
            ],
            "senderRestrictions": restrictions,
        },
    }


def sources(mx: RecordingMX, sender_domain: str) -> set[str]:
    return {m.peer_ip for m in mx.messages() if m.mail_from.endswith("@" + sender_domain)}


def test_excluded_ips_never_send_the_domain_mail(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(
        config(mx, [{"domain": "stop.test", "excludedIPs": ["127.0.0.3"], "reason": "no PTR"}])
    )
    for i in range(12):
        eng.send("app@stop.test", [f"u{i}@example.org"], message(f"s{i}", frm="app@stop.test"))
        eng.send("b@bounces.stop.test", [f"u{i}@example.org"], message(f"b{i}"))
        eng.send("app@other.test", [f"u{i}@example.org"], message(f"o{i}", frm="app@other.test"))
    mx.wait_for(36, timeout=60)
    assert sources(mx, "stop.test") == {"127.0.0.2"}
    assert sources(mx, "bounces.stop.test") == {"127.0.0.2"}  # a subdomain follows its parent
    assert sources(mx, "other.test") == set(IPS)


def test_with_every_ip_excluded_mail_waits_across_a_restart_until_a_reload_lifts_it(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(
        config(
            mx,
            [
                {
                    "domain": "stop.test",
                    "excludedIPs": IPS,
                    "reason": "SPF of stop.test authorises neither",
                }
            ],
        )
    )
    eng.send("app@stop.test", ["held@example.org"], message("held", frm="app@stop.test"))
    eng.send("app@other.test", ["free@example.org"], message("free", frm="app@other.test"))
    mx.wait_for(1, timeout=30)
    eng.wait_until(lambda: eng.status()["queue"]["jobsHeldBySenderRestriction"] == 1)
    assert [m.rcpt_tos for m in mx.messages()] == [["free@example.org"]]
    assert eng.metric("mailfleet_shaping_waits_total", reason="sender domain restricted") >= 1
    assert eng.status()["queue"]["senderRestrictions"] == {
        "stop.test": {"excludedIPs": IPS, "reason": "SPF of stop.test authorises neither"}
    }

    eng.stop()
    eng.start()  # recovered from the spool: the sender is read from the message again
    eng.wait_until(lambda: eng.status()["queue"]["jobsHeldBySenderRestriction"] == 1)
    assert eng.status()["queue"]["messages"] == 1

    lifted = copy.deepcopy(eng.config)
    lifted["delivery"]["senderRestrictions"] = [
        {"domain": "stop.test", "excludedIPs": ["127.0.0.3"]}
    ]
    eng.write_config(lifted)
    eng.sighup()
    got = mx.wait_for(2, timeout=30)
    assert got[-1].rcpt_tos == ["held@example.org"] and got[-1].peer_ip == "127.0.0.2"
    eng.wait_queue_empty()
    assert eng.status()["queue"]["jobsHeldBySenderRestriction"] == 0
