"""The engine against real DNS (dnsmasq) and an independent DKIM verifier (Perl Mail::DKIM):
MX lookups route the mail, and the signatures the engine made verify with the keys published in
that DNS — RSA-2048, Ed25519 and both at once. A null MX bounces at once."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.dkimverify import dkim_verify
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc
from fixtures.keys import ED_KEY, RSA_KEY
from fixtures.smtppeers import RecordingMX, swaks

from mailfleet.mta.config import DKIMKey
from mailfleet.mta.dkimkeys import dns_txt_record


@pytest.fixture
def world(dns_server: DnsServer) -> Iterator[tuple[DnsServer, RecordingMX, RecordingMX]]:
    """DNS, the recipients' MX and the senders' MX; both MX hosts listen on one port (the
    engine's routing.mxPort) on two loopback addresses, as two real MX hosts would on port 25."""
    mx = RecordingMX("127.0.0.1", hostname="mx1.example.org")
    with mx, RecordingMX("127.0.0.6", mx.port, hostname="mx.example.test") as smx:
        yield dns_server, mx, smx


def _engine(
    mta_engine: Callable[..., EngineProc], dns: DnsServer, mx_port: int, keys: list[DKIMKey]
) -> EngineProc:
    cfg: dict[str, Any] = {
        "routing": {
            "mxPort": mx_port,
            "dns": {"nameservers": [dns.host], "port": dns.port},
            "allowPrivateMX": True,  # the MX hosts are on loopback
        },
        "retry": {"initial": "1s"},
        "dkim": {"keys": [k.model_dump(mode="json", by_alias=True) for k in keys]},
    }
    return mta_engine(cfg)


def _publish(dns: DnsServer, mx: RecordingMX, *keys: DKIMKey) -> None:
    dns.add_mx("example.org", "mx1.example.org", 10)
    dns.add_a("mx1.example.org", mx.host)
    for k in keys:
        dns.add_txt(f"{k.selector}._domainkey.{k.domain}", dns_txt_record(k))


@pytest.mark.parametrize(
    ("keys", "algorithms"),
    [
        ([RSA_KEY], ["rsa-sha256"]),
        ([ED_KEY], ["ed25519-sha256"]),
        ([RSA_KEY, ED_KEY], ["rsa-sha256", "ed25519-sha256"]),
    ],
    ids=["rsa", "ed25519", "dual"],
)
def test_signatures_verify_with_the_keys_in_dns(
    mta_engine: Callable[..., EngineProc],
    world: tuple[DnsServer, RecordingMX, RecordingMX],
    keys: list[DKIMKey],
    algorithms: list[str],
) -> None:
    dns, mx, _ = world
    _publish(dns, mx, RSA_KEY, ED_KEY)
    dns.start()
    eng = _engine(mta_engine, dns, mx.port, keys)
    done = swaks(
        f"127.0.0.1:{eng.smtp_port}",
        from_="app@example.test",
        to="someone@example.org",
        headers=["Subject: signed by mailfleet", "From: App <app@example.test>"],
    )
    assert done.returncode == 0, done.stdout
    got = mx.wait_for(1)[0]
    results = dkim_verify(got.content, dns)
    assert sorted(r["algorithm"] for r in results) == sorted(algorithms)
    assert {r["result"] for r in results} == {"pass"}, results
    assert {r["domain"] for r in results} == {"example.test"}
    # Changing the body after signing is caught by the same verifier.
    tampered = got.content.replace(b"This is a test mailing", b"This is a changed mailing")
    assert tampered != got.content
    assert {r["result"] for r in dkim_verify(tampered, dns)} == {"fail"}


def test_mail_from_another_domain_is_not_signed(
    mta_engine: Callable[..., EngineProc], world: tuple[DnsServer, RecordingMX, RecordingMX]
) -> None:
    dns, mx, _ = world
    _publish(dns, mx, RSA_KEY)
    dns.start()
    eng = _engine(mta_engine, dns, mx.port, [RSA_KEY])
    swaks(f"127.0.0.1:{eng.smtp_port}", from_="app@other.test", to="someone@example.org")
    assert dkim_verify(mx.wait_for(1)[0].content, dns) == []


def test_null_mx_bounces_at_once_with_a_dsn(
    mta_engine: Callable[..., EngineProc], world: tuple[DnsServer, RecordingMX, RecordingMX]
) -> None:
    dns, mx, smx = world
    dns.add_null_mx("nomail.example")
    dns.add_mx("example.test", "mx.example.test", 10)
    dns.add_a("mx.example.test", smx.host)
    dns.start()
    eng = _engine(mta_engine, dns, mx.port, [])
    eng.send("app@example.test", ["x@nomail.example"], b"Subject: to nowhere\r\n\r\nhi\r\n")
    dsn_raw = smx.wait_for(1)[0]
    dsn = email.message_from_bytes(dsn_raw.content, policy=email.policy.default)
    report = dsn.as_string()
    assert "Final-Recipient: rfc822; x@nomail.example" in report
    assert "Status: 5.1.10" in report
    assert eng.metric("mailfleet_delivery_attempts_total", result="bounced", reply_class="dns") == 1
    assert mx.messages() == []
