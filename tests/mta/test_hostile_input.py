"""Hostile input at the submission listener (issue 10, part 1): each test is what an attacker's
probe found, and asserts the reply a client gets and what the receiving MX got."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fixtures.dkimverify import dkim_verify
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc
from fixtures.keys import RSA_KEY
from fixtures.rawsmtp import RawSMTP
from fixtures.rawsmtp import ehlo_session as _session
from fixtures.rawsmtp import route_all_to as _route
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.dkimkeys import dns_txt_record

BODY = b"From: <app@example.test>\r\nTo: <x@example.org>\r\nSubject: t\r\n\r\nhello\r\n"


def _data(c: RawSMTP, body: bytes) -> str:
    assert c.cmd("DATA").startswith("354")
    c.send(body + b".\r\n")
    return c.reply()


# -- 1: bare CR / bare LF in DATA ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b"hello\r\n", b"hello\nworld\r\n"),  # bare LF
        BODY.replace(b"hello\r\n", b"hello\rInjected: header\r\n"),  # bare CR
        BODY.replace(b"Subject: t\r\n", b"Subject: t\rBcc: victim@example.org\r\n"),
    ],
    ids=["bare-lf", "bare-cr", "bare-cr-in-header"],
)
def test_bare_newlines_in_data_are_refused_by_default(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, body: bytes
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        reply = _data(c, body)
        assert reply.startswith("550 5.5.2 "), reply
        assert "bare" in reply
        # The session stays usable: a clean message right after is accepted.
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c, BODY).startswith("250 2.0.0 Ok: queued as")
    got = mx.wait_for(1)
    assert len(got) == 1 and b"Injected" not in got[0].content


def test_normalize_mode_signs_what_it_sends(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns_server: DnsServer
) -> None:
    dns_server.add_txt(f"{RSA_KEY.selector}._domainkey.{RSA_KEY.domain}", dns_txt_record(RSA_KEY))
    dns_server.start()
    eng = mta_engine(
        _route(
            mx,
            submission={"bareNewlines": "normalize"},
            dkim={"keys": [RSA_KEY.model_dump(mode="json", by_alias=True)]},
        )
    )
    body = BODY.replace(b"hello\r\n", b"hello\nbare lf\rbare cr\r\n")
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c, body).startswith("250 2.0.0")
    got = mx.wait_for(1)[0]
    assert b"hello\r\nbare lf\r\nbare cr\r\n" in got.content
    results = dkim_verify(got.content, dns_server)
    assert [r["result"] for r in results] == ["pass"], results


# -- 2: EHLO argument ---------------------------------------------------------------------------


def test_ehlo_with_cr_is_refused_and_never_reaches_a_header(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        reply = c.cmd(b"EHLO evil\rX-Injected: yes")
        assert reply.startswith("501 5.5.4 "), reply
        assert c.cmd(b"HELO evil\x00x").startswith("501 5.5.4 ")
        # Without a valid EHLO there is no transaction.
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("503")
        assert c.cmd("EHLO good.client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c, BODY).startswith("250")
    got = mx.wait_for(1)[0]
    assert b"X-Injected" not in got.content
    assert b"Received: from good.client.test " in got.content


# -- 3, 4, 5: envelope addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        (b"<a\x00b@example.org>", "501 5.1.3"),
        (b"<a\x01@example.org>", "501 5.1.3"),
        (b"<a\x7f@example.org>", "501 5.1.3"),
        (b"<a@b.org@evil.org>", "501 5.1.3"),
        (b"<@dest.org>", "501 5.1.3"),
        (b"<u@>", "501 5.1.3"),
        (b"<a@dest..org>", "501 5.1.3"),
        (b"<a\xff\xfe@example.org>", "501 5.1.3"),  # not UTF-8
        (b"<j\xc3\xb6e@example.org>", "553 5.6.7"),  # UTF-8 without SMTPUTF8
    ],
)
def test_bad_recipients_get_a_permanent_reply_at_rcpt(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, arg: bytes, code: str
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        reply = c.cmd(b"RCPT TO:" + arg)
        assert reply.startswith(code + " "), reply
        assert c.cmd("RCPT TO:<ok@example.org>").startswith("250")
        assert _data(c, BODY).startswith("250")
    got = mx.wait_for(1)[0]
    assert got.rcpt_tos == ["ok@example.org"]
    assert eng.status()["queue"]["messages"] in (0, 1)


@pytest.mark.parametrize(
    "arg", [b"<a\x00@example.test>", b"<a@b.test@evil.org>", b"<\xff@example.test>", b"<u@>"]
)
def test_bad_senders_get_501_5_1_7_at_mail(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, arg: bytes
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        reply = c.cmd(b"MAIL FROM:" + arg)
        assert reply.startswith("501 5.1.7 "), reply
        # No transaction was opened.
        assert c.cmd("RCPT TO:<x@example.org>").startswith("503")


def test_quoted_local_part_source_route_and_smtputf8_are_accepted(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test> SMTPUTF8").startswith("250")
        assert c.cmd('RCPT TO:<"john doe"@example.org>').startswith("250")
        assert c.cmd("RCPT TO:<@relay.example:routed@example.org>").startswith("250")
        assert c.cmd("RCPT TO:<jöe@exämple.org>".encode()).startswith("250")
        assert _data(c, BODY).startswith("250")
    # One delivery per recipient domain.
    got = sorted(r for m in mx.wait_for(2) for r in m.rcpt_tos)
    assert got == ['"john doe"@example.org', "jöe@exämple.org", "routed@example.org"]


# -- 8: address literals ------------------------------------------------------------------------


def test_address_literal_recipients_refused_by_default(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        reply = c.cmd("RCPT TO:<x@[127.0.0.9]>")
        assert reply.startswith("550 5.7.1 "), reply


def test_address_literal_recipients_follow_static_routes(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    # A catch-all route to the smarthost: the literal must not make the engine connect to
    # 127.0.0.9 on the MX port; the mail goes to the smarthost like every other.
    eng = mta_engine(
        _route(mx, submission={"addressLiterals": "accept"}, routing={"mxPort": mx.port})
    )
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@[127.0.0.9]>").startswith("250")
        assert _data(c, BODY).startswith("250")
    got = mx.wait_for(1)[0]
    assert got.rcpt_tos == ["x@[127.0.0.9]"]


# -- 10: a suppression reason never breaks the reply --------------------------------------------


def test_suppression_reason_with_crlf_cannot_inject_a_reply(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    answer = eng.post(
        "/v1/suppressions",
        {"recipient": "gone@example.org", "reason": "x)\r\n250 2.1.5 Ok\r\n550 5.0.0 (y"},
    )
    # Refused on input, naming the field.
    assert "reason" in answer.get("error", ""), answer
    assert eng.post("/v1/suppressions", {"recipient": "gone@example.org", "reason": "ok"})
    with _session(eng) as c:
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        reply = c.cmd("RCPT TO:<gone@example.org>")
        assert reply.startswith("550 5.7.1 <gone@example.org>") and "(ok)" in reply
        # The next command gets its own reply, not one the reason smuggled in.
        assert c.cmd("NOOP").startswith("250")
        assert c.cmd("RSET").startswith("250")


def test_vrfy_never_echoes_its_argument(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    # Found by the SMTP fuzzer: aiosmtpd's VRFY echoed undecodable bytes and raised.
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        assert c.cmd(b"VRFY <a\xff\xfe@example.org>").startswith("502 5.5.1 ")
        assert c.cmd(b"VRFY a\rb").startswith("502 5.5.1 ")
        assert c.cmd("NOOP").startswith("250")
    assert "Traceback" not in eng.log()
