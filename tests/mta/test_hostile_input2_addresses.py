"""Hostile input II (issue 21), the envelope and EHLO: each test is a probe of the second round,
bytes in, the reply a client gets out, and what the receiving MX (or the suppression list) got.

- item 2: an IPv6 address literal with a zone id (``[IPv6:::1%<CR>...]``) as the EHLO name;
- item 3: the same literal in MAIL/RCPT, smuggling ESMTP parameters to the next hop, and every
  ESMTP parameter the listener is given;
- item 6: quoted, escaped and upper-case spellings of a suppressed address, and an ARF report
  naming the quoted spelling;
- domains that are not valid IDNA 2008 (bidi controls, zero-width characters) under SMTPUTF8.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc
from fixtures.rawsmtp import RawSMTP
from fixtures.smtppeers import RecordingMX

BODY = b"From: <app@example.test>\r\nTo: <x@example.org>\r\nSubject: t\r\n\r\nhello\r\n"


def _config(mx: RecordingMX, **extra: Any) -> dict[str, Any]:
    return {
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "retry": {"initial": "1s"},
        **extra,
    }


def _data(c: RawSMTP, body: bytes = BODY) -> str:
    assert c.cmd("DATA").startswith("354")
    c.send(body + b".\r\n")
    return c.reply()


# -- item 2: EHLO with an IPv6 zone id ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"[IPv6:::1%\rRCPT TO:<victim@example.org>\r]",  # a CR-delimited SMTP payload
        b"[IPv6:::1%\x00]",
        b"[IPv6:::1%\tx]",
        b"[IPv6:::1%eth0]",  # a zone id of plain letters: not in RFC 5321 either
        b"[IPv6:fe80::1%25en0]",
        b"[IPv6:1.2.3.4]",  # an IPv4 address under the IPv6 tag
        b"[IPv6:1:2:3:4:5:6:7::]",  # "::" standing for one group (RFC 5321 wants two or more)
        b"[010.0.0.1]",  # a leading zero: octal to some parsers
        b"[x-tag:anything]",  # a General-address-literal: nothing could route it
    ],
)
def test_ehlo_address_literal_outside_rfc5321_is_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, name: bytes
) -> None:
    eng = mta_engine(_config(mx))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        reply = c.cmd(b"EHLO " + name)
        assert reply.startswith("501 5.5.4 Syntax: EHLO hostname"), reply
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("503")
        # An RFC 5321 IPv6 literal is fine, and it is what the Received line says.
        assert c.cmd("EHLO [IPv6:::1]").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c).startswith("250")
    got = mx.wait_for(1)[0]
    head = got.content.partition(b"\r\n\r\n")[0]
    assert b"Received: from [IPv6:::1] ([127.0.0.1])" in head
    assert b"victim" not in got.content
    assert b"\r" not in head.replace(b"\r\n", b"")


# -- item 3: the literal in MAIL/RCPT, and the ESMTP parameters --------------------------------


def test_parameters_smuggled_in_an_address_literal_never_reach_the_next_hop(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx, submission={"addressLiterals": "accept"}))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        reply = c.cmd("MAIL FROM:<x@[IPv6:::1%> SIZE=1 RET=FULL ENVID=abc]>")
        assert reply.startswith("501 5.1.7 Bad sender address syntax"), reply
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        reply = c.cmd("RCPT TO:<y@[IPv6:::1%> NOTIFY=NEVER ORCPT=rfc822;z@example.org]>")
        assert reply.startswith("501 5.1.3 Bad recipient address syntax"), reply
        reply = c.cmd("RCPT TO:<y@[IPv6:::1%eth0]>")
        assert reply.startswith("501 5.1.3 "), reply
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c).startswith("250")
    got = mx.wait_for(1)[0]
    assert got.mail_from == "app@example.test"
    assert got.rcpt_tos == ["x@example.org"]
    assert not any(o.startswith(("RET", "ENVID", "NOTIFY", "ORCPT")) for o in got.mail_options)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("RET=FULL", "555 5.5.4 "),  # DSN (RFC 3461) is not offered
        ("ENVID=abc", "555 5.5.4 "),
        ("X-UNKNOWN=1", "555 5.5.4 "),
        ("SIZE=abc", "501 5.5.4 "),
        ("SIZE=\u00b2", "501 5.5.4 "),  # a digit to str.isdigit, not to RFC 1870
        ("SIZE=123456789012345678901", "501 5.5.4 "),  # more than 20 digits
        ("SIZE=1 SIZE=2", "501 5.5.4 "),
        ("BODY=BINARYMIME", "501 5.5.4 "),
        ("SMTPUTF8=yes", "501 5.5.4 "),
        ("AUTH=a+ZZb", "501 5.5.4 "),  # "+ZZ" is no hexchar: not xtext (RFC 3461 §4)
        ("SIZE=100 BODY=8BITMIME SMTPUTF8 AUTH=<>", "250 "),
        ("size=100 body=7bit auth=app+40example.test", "250 "),
    ],
)
def test_every_mail_parameter_is_checked(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, params: str, expected: str
) -> None:
    eng = mta_engine(_config(mx))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        reply = c.cmd(f"MAIL FROM:<app@example.test> {params}".encode())
        assert reply.startswith(expected), reply
        if expected.startswith("5"):
            assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        for rcpt_params in ("NOTIFY=NEVER", "ORCPT=rfc822;x@example.org", "X=1"):
            reply = c.cmd(f"RCPT TO:<x@example.org> {rcpt_params}")
            assert reply.startswith("555 5.5.4 "), reply
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert _data(c).startswith("250")
    got = mx.wait_for(1)[0]
    # What goes to the next hop is built by the engine, never the client's parameters echoed.
    assert all(o.split("=")[0] in ("SIZE", "BODY", "SMTPUTF8") for o in got.mail_options), (
        got.mail_options
    )


# -- bidi and zero-width characters in SMTPUTF8 domains -----------------------------------------


@pytest.mark.parametrize(
    "domain",
    [
        "ex\u200bample.org",  # ZERO WIDTH SPACE: DISALLOWED in IDNA 2008
        "exa\u200dmple.org",  # ZERO WIDTH JOINER outside the CONTEXTJ rule
        "\u202eelpmaxe.org",  # RIGHT-TO-LEFT OVERRIDE
        "example\u200e.org",  # LEFT-TO-RIGHT MARK
        "exam\u00adple.org",  # SOFT HYPHEN
        "xn--zz.org",  # an A-label that does not decode
        "\u05d0\u05d1c.org",  # Hebrew then Latin in one label: fails the bidi rule (RFC 5893)
    ],
)
def test_domains_that_are_not_idna2008_are_refused_at_rcpt(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, domain: str
) -> None:
    eng = mta_engine(_config(mx))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test> SMTPUTF8").startswith("250")
        reply = c.cmd(f"RCPT TO:<x@{domain}>".encode())
        assert reply.startswith("501 5.1.3 "), reply
        assert "IDNA" in reply
        # A valid internationalised domain is taken.
        assert c.cmd("RCPT TO:<x@b\u00fccher.example>".encode()).startswith("250")
        assert _data(c).startswith("250")
    got = mx.wait_for(1)[0]
    assert got.rcpt_tos == ["x@b\u00fccher.example"]


# -- item 6: the suppression list and spellings of one address ----------------------------------


TOKEN = "hostile-input-2-token"


def _with_admin(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, cfg: dict[str, Any]
) -> EngineProc:
    token = tmp_path / "admin-token"
    token.write_text(TOKEN)
    eng = mta_engine({**cfg, "admin": {"tokenFile": str(token)}}, start=False)
    eng.admin_token = TOKEN
    return eng.start()


def _admin(eng: EngineProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        eng.url(urllib.parse.quote(path, safe="/?=&")), method=method, data=data
    )
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_every_spelling_of_a_suppressed_address_is_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    eng = _with_admin(mta_engine, tmp_path, _config(mx))
    assert _admin(eng, "POST", "/v1/suppressions", {"recipient": "victim@example.org"})[0] == 201
    spellings = [
        "<victim@example.org>",
        '<"victim"@example.org>',
        '<"vic\\tim"@example.org>',  # a quoted-pair: \t is the letter t
        '<"\\v\\i\\c\\t\\i\\m"@example.org>',
        "<victim@EXAMPLE.org>",
        '<"VICTIM"@Example.ORG>',
        "<@relay.example:victim@example.org>",  # a source route, ignored
    ]
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        for rcpt in spellings:
            reply = c.cmd(f"RCPT TO:{rcpt}")
            assert reply.startswith("550 5.7.1 "), (rcpt, reply)
            assert "suppression list" in reply
        # A TAB is no qtext (RFC 5321 §4.1.2): refused as syntax, never looked up.
        assert c.cmd(b'RCPT TO:<"vic\tim"@example.org>').startswith("501 5.1.3 ")
        # A quoted local part that needs its quotes is another address.
        assert c.cmd('RCPT TO:<"vic tim"@example.org>').startswith("250")
        assert _data(c).startswith("250")
    assert mx.wait_for(1)[0].rcpt_tos == ['"vic tim"@example.org']
    # The admin API finds and removes the entry under any spelling too.
    assert _admin(eng, "GET", '/v1/suppressions/"victim"@EXAMPLE.org')[0] == 200
    assert _admin(eng, "GET", "/v1/suppressions")[1]["count"] == 1
    status, body = _admin(eng, "POST", "/v1/suppressions", {"recipient": "a@[IPv6:::1%\r]"})
    assert status == 400 and "recipient" in body["error"], body
    assert _admin(eng, "DELETE", '/v1/suppressions/"vic\\tim"@example.org') == (
        200,
        {"removed": True},
    )


def test_suppression_of_an_idn_domain_holds_for_its_a_label(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    eng = _with_admin(mta_engine, tmp_path, _config(mx))
    assert _admin(eng, "POST", "/v1/suppressions", {"recipient": "x@b\u00fccher.example"})[0] == 201
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@xn--bcher-kva.example>").startswith("550 5.7.1 ")
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test> SMTPUTF8").startswith("250")
        assert c.cmd("RCPT TO:<x@B\u00dcCHER.example>".encode()).startswith("550 5.7.1 ")


ARF_REPORT = b"""From: <fbl@provider.example>
To: <fbl@mta.test>
Subject: complaint
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b"

--b
Content-Type: text/plain

A complaint.

--b
Content-Type: message/feedback-report

Feedback-Type: abuse
Version: 1
Original-Rcpt-To: <"victim"@Example.org>
Source-IP: 192.0.2.1

--b
Content-Type: text/rfc822-headers

From: <app@example.test>
To: <"victim"@example.org>
Subject: hi

--b--
""".replace(b"\n", b"\r\n")


def test_an_arf_report_for_a_quoted_address_suppresses_the_address(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    feedback = {"feedbackAddresses": ["fbl@mta.test"], "feedbackSources": ["127.0.0.1/32"]}
    eng = _with_admin(mta_engine, tmp_path, _config(mx, suppression=feedback))
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO provider.example").startswith("250")
        assert c.cmd("MAIL FROM:<fbl@provider.example>").startswith("250")
        assert c.cmd("RCPT TO:<fbl@mta.test>").startswith("250")
        assert _data(c, ARF_REPORT).startswith("250")
    status, entry = _admin(eng, "GET", "/v1/suppressions/victim@example.org")
    assert status == 200 and entry["recipient"] == "victim@example.org", entry
    assert entry["reason"] == "complaint"
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<victim@example.org>").startswith("550 5.7.1 ")
