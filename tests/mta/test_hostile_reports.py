"""Reports anyone may mail (issue 21, item 5): a feedback report's DKIM signatures are a
stranger's, so only a few of them, of the configured domains, are verified, on threads of their
own, and a flood of them does not keep a real report out. Each asserts the replies a client
gets and the DNS lookups the engine makes."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc
from fixtures.keys import RSA_KEY
from fixtures.rawsmtp import RawSMTP
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.config import DKIMConfig
from mailfleet.mta.dkim import DKIMSigner
from mailfleet.mta.dkimkeys import dns_txt_record

ARF = Path(__file__).parent.parent / "data" / "arf"


@pytest.fixture
def dns_log(tmp_path: Path) -> Iterator[DnsServer]:
    server = DnsServer(workdir=tmp_path / "dns", log_queries=True)
    server.add_txt(f"{RSA_KEY.selector}._domainkey.{RSA_KEY.domain}", dns_txt_record(RSA_KEY))
    server.start()
    try:
        yield server
    finally:
        server.close()


def _queried(server: DnsServer, domain: str) -> list[str]:
    text = "".join(p.read_text(errors="replace") for p in server.workdir.glob("dnsmasq*"))
    return re.findall(rf"query\[TXT\] (\S+\._domainkey\.{re.escape(domain)}) ", text)


def _engine(mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns: DnsServer) -> EngineProc:
    return mta_engine(
        {
            "routing": {
                "routes": {"*": f"{mx.host}:{mx.port}"},
                "dns": {"nameservers": [dns.host], "port": dns.port},
            },
            "suppression": {
                "feedbackAddresses": ["fbl@mta.test"],
                "feedbackDomains": ["example.test"],
            },
        }
    )


def _report() -> bytes:
    raw = (ARF / "rfc5965-b2.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return raw.replace(b"From: <abusedesk@example.com>", b"From: <abusedesk@example.test>", 1)


def _signed() -> bytes:
    report = _report()
    return DKIMSigner(DKIMConfig(keys=[RSA_KEY])).sign(report) + report


def _flood(n: int) -> bytes:
    """The report with n signatures that look like example.test's (each a selector of its own:
    a lookup each) and n of another domain, none of them valid."""
    sig = DKIMSigner(DKIMConfig(keys=[RSA_KEY])).sign(_report())
    forged = [sig.replace(f"s={RSA_KEY.selector}".encode(), f"s=f{i}".encode()) for i in range(n)]
    other = [
        sig.replace(b"d=example.test", b"d=elsewhere.test").replace(
            f"s={RSA_KEY.selector}".encode(), f"s=o{i}".encode()
        )
        for i in range(n)
    ]
    return b"".join(forged + other) + _report()


def _send(eng: EngineProc, source: str, data: bytes) -> str:
    with RawSMTP("127.0.0.1", eng.smtp_port, source=source, timeout=120) as c:
        assert c.cmd("EHLO fbl.provider.test").startswith("250")
        assert c.cmd("MAIL FROM:<fbl@provider.test>").startswith("250")
        assert c.cmd("RCPT TO:<fbl@mta.test>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        body = b"".join(b"." + ln if ln.startswith(b".") else ln for ln in data.splitlines(True))
        c.send(body + b".\r\n")
        return c.reply()


def test_only_a_few_signatures_of_the_feedback_domains_are_verified(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns_log: DnsServer
) -> None:
    eng = _engine(mta_engine, mx, dns_log)
    reply = _send(eng, "127.0.0.8", _flood(30))
    assert reply.startswith("550 5.7.1 Feedback report refused"), reply
    # At most 5 of the 30 example.test signatures looked up; elsewhere.test's never.
    assert 1 <= len(_queried(dns_log, "example.test")) <= 5
    assert _queried(dns_log, "elsewhere.test") == []
    assert eng.get("/v1/suppressions")["count"] == 0


def test_a_flood_of_signed_reports_does_not_keep_a_real_one_out(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns_log: DnsServer
) -> None:
    eng = _engine(mta_engine, mx, dns_log)
    flood = _flood(30)
    replies: dict[str, str] = {}

    def attack(source: str) -> None:
        replies[source] = _send(eng, source, flood)

    threads = [threading.Thread(target=attack, args=(f"127.0.0.{10 + i}",)) for i in range(7)]
    for t in threads:
        t.start()
    real = _send(eng, "127.0.0.8", _signed())
    for t in threads:
        t.join()
    assert real.startswith("250 2.0.0 Ok: complaint recorded"), real
    # Each forged report refused for good, or (past the bound on verifications) for now.
    assert all(r.startswith(("550 5.7.1 ", "451 4.3.2 ")) for r in replies.values()), replies
    assert len(replies) == 7
    assert eng.get("/v1/suppressions")["count"] == 1


def test_a_report_header_too_large_to_verify_is_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns_log: DnsServer
) -> None:
    eng = _engine(mta_engine, mx, dns_log)
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 900) for i in range(80))
    reply = _send(eng, "127.0.0.8", padding + _signed())
    assert reply.startswith("554 5.6.0 Report refused: its header over 65536 bytes"), reply
    assert _queried(dns_log, "example.test") == []
