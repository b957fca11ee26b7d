"""Hostile input, second round (issue 21): where a recipient may make the engine connect, and
what recipient domains may make of the open /metrics.

- A recipient domain whose MX (or an address literal) is a private or loopback address must not
  make the engine connect inside the cluster: the mail bounces at once (5.4.4, saying why)
  unless routing.allowPrivateMX is on, as it is for the local world.
- Recipient domains are not label values of /metrics unless the config names them: 1,000
  domains leave the attempts counter with a handful of series and say nothing of whom the
  fleet mails.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.engine import EngineProc
from fixtures.peers import DnsServer
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.config import RoutingConfig
from mailfleet.mta.routing import Destination, Router

ATTEMPTS = "mailfleet_delivery_attempts_total"
BODY = b"From: <app@example.test>\r\nSubject: hi\r\n\r\nhello\r\n"


class Trap:
    """A listener standing in for a service inside the cluster: counts who connects."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def sender_mx() -> Iterator[RecordingMX]:
    """The sender's MX (example.test), reached by a static route: it receives the DSNs."""
    with RecordingMX("127.0.0.1", hostname="mx.example.test") as m:
        yield m


def _engine(
    mta_engine: Callable[..., EngineProc],
    dns: DnsServer,
    mx_port: int,
    sender_mx: RecordingMX,
    **routing: Any,
) -> EngineProc:
    return mta_engine(
        {
            "routing": {
                "routes": {"example.test": f"{sender_mx.host}:{sender_mx.port}"},
                "mxPort": mx_port,
                "dns": {"nameservers": [dns.host], "port": dns.port, "timeout": "2s"},
                **routing,
            },
            "submission": {"addressLiterals": "accept"},
            "retry": {"initial": "1s", "max": "2s", "jitter": 0},
        }
    )


def _attempts(eng: EngineProc, domain: str) -> list[dict[str, Any]]:
    return [
        line
        for line in eng.log_lines()
        if line.get("msg") == "delivery attempt" and line.get("recipient_domain") == domain
    ]


def _dsn_report(sender_mx: RecordingMX) -> str:
    raw = sender_mx.wait_for(1)[0]
    return email.message_from_bytes(raw.content, policy=email.policy.default).as_string()


# -- MX answers in private ranges -----------------------------------------------------------------


def test_mx_on_loopback_bounces_at_once_with_the_reason_and_nothing_connects(
    mta_engine: Callable[..., EngineProc],
    dns_server: DnsServer,
    trap: Trap,
    sender_mx: RecordingMX,
) -> None:
    dns_server.add_mx("evil.test", "mx.evil.test", 10)
    dns_server.add_a("mx.evil.test", "127.0.0.1")
    eng = _engine(mta_engine, dns_server, trap.port, sender_mx)
    eng.send("app@example.test", ["victim@evil.test"], BODY)

    report = _dsn_report(sender_mx)
    assert "Final-Recipient: rfc822; victim@evil.test" in report
    assert "Status: 5.4.4" in report
    # The sender reads why, not "no reply from the remote side".
    assert "mx.evil.test 127.0.0.1 is loopback" in report
    assert "routing.allowPrivateMX is off" in report
    eng.wait_queue_empty()
    [attempt] = _attempts(eng, "evil.test")  # one attempt: a bounce, never a retry
    assert attempt["result"] == "bounced"
    assert attempt["reply"] == (
        "550 5.4.4 no usable MX host for evil.test: mx.evil.test 127.0.0.1 is loopback;"
        " mail is not sent to non-public addresses (routing.allowPrivateMX is off)"
    )
    assert trap.connections == 0
    assert eng.metric(ATTEMPTS, result="deferred") == 0


async def test_private_addresses_of_mx_hosts_are_skipped_for_public_ones(
    dns_server: DnsServer,
) -> None:
    # The preferred MX points inside the cluster; the next one is public: only it is tried.
    dns_server.add_mx("half.test", "mx1.half.test", 10)
    dns_server.add_mx("half.test", "mx2.half.test", 20)
    dns_server.add_mx("half.test", "192.168.0.25", 30)  # an address as the exchange name
    dns_server.add_a("mx1.half.test", "169.254.169.254")
    dns_server.add_aaaa("mx1.half.test", "fd00::25")
    dns_server.add_a("mx2.half.test", "192.88.99.25")
    dns_server.add_a("mx2.half.test", "10.0.0.25")
    cfg = RoutingConfig.model_validate(
        {"dns": {"nameservers": [dns_server.host], "port": dns_server.port, "timeout": 2}}
    )
    assert await Router(cfg, mx_port=2525).resolve("half.test") == [
        Destination("mx2.half.test", "192.88.99.25", 2525, 20)
    ]
    # Allowed, every address is a destination again, in MX order.
    allowed = cfg.model_copy(update={"allow_private_mx": True})
    got = await Router(allowed, mx_port=2525).resolve("half.test")
    assert [d.preference for d in got] == [10, 10, 20, 20, 30]
    assert {(d.hostname, d.address) for d in got} == {
        ("mx1.half.test", "169.254.169.254"),
        ("mx1.half.test", "fd00::25"),
        ("mx2.half.test", "192.88.99.25"),
        ("mx2.half.test", "10.0.0.25"),
        ("192.168.0.25", "192.168.0.25"),
    }


def test_every_mx_host_in_private_ranges_bounces_naming_each(
    mta_engine: Callable[..., EngineProc],
    dns_server: DnsServer,
    trap: Trap,
    sender_mx: RecordingMX,
) -> None:
    dns_server.add_mx("mixed.test", "mx1.mixed.test", 10)
    dns_server.add_mx("mixed.test", "mx2.mixed.test", 20)
    dns_server.add_a("mx1.mixed.test", "127.0.0.1")
    dns_server.add_aaaa("mx1.mixed.test", "::ffff:10.1.2.3")
    dns_server.add_a("mx2.mixed.test", "10.9.8.7")
    eng = _engine(mta_engine, dns_server, trap.port, sender_mx)
    eng.send("app@example.test", ["victim@mixed.test"], BODY)

    assert "Status: 5.4.4" in _dsn_report(sender_mx)
    eng.wait_queue_empty()
    [attempt] = _attempts(eng, "mixed.test")
    for part in (
        "mx1.mixed.test 127.0.0.1 is loopback",
        "mx1.mixed.test ::ffff:10.1.2.3 is private",
        "mx2.mixed.test 10.9.8.7 is private",
    ):
        assert part in attempt["reply"], attempt["reply"]
    assert trap.connections == 0


def test_mx_on_loopback_is_used_when_allowed(
    mta_engine: Callable[..., EngineProc], dns_server: DnsServer, sender_mx: RecordingMX
) -> None:
    with RecordingMX("127.0.0.1", hostname="mx.local.test") as mx:
        dns_server.add_mx("local.test", "mx.local.test", 10)
        dns_server.add_a("mx.local.test", "127.0.0.1")
        eng = _engine(mta_engine, dns_server, mx.port, sender_mx, allowPrivateMX=True)
        eng.send("app@example.test", ["someone@local.test"], BODY)
        assert mx.wait_for(1)[0].rcpt_tos == ["someone@local.test"]
    assert eng.metric(ATTEMPTS, result="delivered") == 1


def test_implicit_mx_on_a_private_address_bounces(
    mta_engine: Callable[..., EngineProc],
    dns_server: DnsServer,
    trap: Trap,
    sender_mx: RecordingMX,
) -> None:
    # No MX record: the domain's own A record is its mail host (RFC 5321 §5.1).
    dns_server.add_a("bare.test", "127.0.0.1")
    eng = _engine(mta_engine, dns_server, trap.port, sender_mx)
    eng.send("app@example.test", ["victim@bare.test"], BODY)
    assert "Status: 5.4.4" in _dsn_report(sender_mx)
    eng.wait_queue_empty()
    [attempt] = _attempts(eng, "bare.test")
    assert "bare.test 127.0.0.1 is loopback" in attempt["reply"]
    assert trap.connections == 0


# -- address literals -----------------------------------------------------------------------------


def test_private_address_literals_are_refused_at_rcpt_even_when_literals_are_accepted(
    mta_engine: Callable[..., EngineProc],
    dns_server: DnsServer,
    trap: Trap,
    sender_mx: RecordingMX,
) -> None:
    # A reply that can never succeed is a 5xx at the command, not a 250 and a bounce.
    eng = _engine(mta_engine, dns_server, trap.port, sender_mx)
    with eng.smtp() as c:
        c.ehlo("client.test")
        assert c.mail("app@example.test")[0] == 250
        for rcpt, why in (("x@[10.0.0.1]", "private"), ("y@[127.0.0.1]", "loopback")):
            code, text = c.rcpt(rcpt)
            assert (code, text.decode()) == (
                550,
                f"5.7.1 <{rcpt}>: the address literal is {why}; mail is not sent to"
                " non-public addresses (routing.allowPrivateMX is off)",
            )
        # A public literal is still taken (the transaction is reset: nothing is sent to it).
        assert c.rcpt("z@[1.1.1.1]")[0] == 250
        c.rset()
    assert trap.connections == 0
    assert eng.metric("mailfleet_submission_rejections_total", reason="address-literal") == 2


# -- recipient domains on /metrics ----------------------------------------------------------------


def test_a_thousand_recipient_domains_leave_metrics_bounded_and_anonymous(
    mta_engine: Callable[..., EngineProc],
) -> None:
    with RecordingMX("127.0.0.1", hostname="mx.example.org") as mx:
        eng = mta_engine(
            {
                "routing": {
                    "routes": {
                        "named.example": f"{mx.host}:{mx.port}",
                        "*": f"{mx.host}:{mx.port}",
                    }
                },
                "spool": {"activeLimit": 2000, "activeLimitPerDomain": 10},
            }
        )
        baseline = len(eng.metrics_text())
        domains = [f"customer{i:04d}.example" for i in range(1000)]
        with eng.smtp() as s:
            s.ehlo()
            for start in range(0, len(domains), 100):
                rcpts = [f"user@{d}" for d in domains[start : start + 100]]
                # The null sender: no DSN either way, the MX sees only these messages.
                s.sendmail("<>", rcpts, BODY)
            s.sendmail("<>", ["user@named.example"], BODY)
        eng.wait_until(
            lambda: eng.metric(ATTEMPTS, result="delivered") == 1001, 120, "1001 deliveries"
        )
        text = eng.metrics_text()

    series = [line for line in text.splitlines() if line.startswith(ATTEMPTS + "{")]
    labels = {m for line in series for m in re.findall(r'domain="([^"]*)"', line)}
    # What the config names keeps its own series; every other domain is "other".
    assert labels == {"other", "named.example"}
    assert len(series) == 2, series
    assert not [d for d in domains if d in text]
    # Nothing else grows per domain either: a few kilobytes over the idle engine's text.
    assert len(text) < baseline + 8000, len(text) - baseline
