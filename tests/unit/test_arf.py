"""ARF (RFC 5965) parsing, on reports written the way feedback loops send them (tests/data/arf)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailfleet.mta.arf import ARFError, ARFReport, is_arf, parse_arf, received_ip

ARF_DIR = Path(__file__).resolve().parents[1] / "data" / "arf"


def sample(name: str, crlf: bool = False) -> bytes:
    data = (ARF_DIR / name).read_bytes()
    return data.replace(b"\n", b"\r\n") if crlf else data


@pytest.fixture(params=[False, True], ids=["lf", "crlf"])
def crlf(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_rfc5965_example(crlf: bool) -> None:
    r = parse_arf(sample("rfc5965-b2.eml", crlf))
    assert r == ARFReport(
        feedback_type="abuse",
        user_agent="SomeGenerator/1.0",
        version="1",
        original_recipient="user@example.com",
        original_recipients=("user@example.com",),
        original_mail_from="somespammer@example.net",
        source_ip="192.0.2.1",
        source_ip_from="source-ip",
        reported_domain="example.net",
        arrival_date="Thu, 8 Mar 2005 14:00:00 EDT",
        message_id="8787KJKJ3K4J3K4J3K4J3.mail@example.net",
        reporting_mta="mail.example.com",
        reporter="example.com",
        headers_only=False,
    )
    assert r.source == "arf:example.com"


def test_yahoo_source_ip_from_yahoo_received_form(crlf: bool) -> None:
    """No Source-IP: Yahoo's own Received writes the client as "(EHLO name) (ip)", and the
    bracketed Received below it is our MTA receiving from the app, which must not win."""
    r = parse_arf(sample("yahoo-cfl.eml", crlf))
    assert r.feedback_type == "abuse"
    assert r.user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert r.original_recipient == "fbl.complainer42@yahoo.com"
    assert r.original_mail_from == "bounces+a81f3c@mail.shop.example"
    assert (r.source_ip, r.source_ip_from) == ("127.0.0.2", "received")
    assert r.arrival_date == "Tue, 03 Mar 2026 08:59:01 +0000"
    assert r.message_id == "<campaign-771.rcpt-90210@shop.example>"
    assert r.reported_domain == "shop.example"
    assert r.source == "arf:arf.mail.yahoo.com"
    assert not r.headers_only


def test_outlook_jmrp_recipient_and_received_spf(crlf: bool) -> None:
    """JMRP: no Original-Rcpt-To (X-HmXmrOriginalRecipient instead), no Source-IP, and the
    top Received fields are Microsoft-internal hops; Received-SPF names the connecting IP."""
    r = parse_arf(sample("outlook-jmrp.eml", crlf))
    assert r.user_agent == "Hotmail FBL"
    assert r.original_recipient == "jmrp.complainer@outlook.com"
    assert (r.source_ip, r.source_ip_from) == ("127.0.0.3", "received-spf")
    assert r.message_id == "<order-5521.shipped@shop.example>"
    assert r.original_mail_from is None
    assert r.reporter == "hotmail.com"


def test_headers_only_report(crlf: bool) -> None:
    r = parse_arf(sample("isp-headers-only.eml", crlf))
    assert r.headers_only
    assert r.original_recipient == "subscriber.7@isp.test"  # "rfc822;" stripped
    assert r.original_mail_from == "bounces+b92@mail.shop.example"
    assert (r.source_ip, r.source_ip_from) == ("127.0.0.2", "received")
    assert r.message_id == "<weekly-118.rcpt-7@shop.example>"
    assert r.reporting_mta == "mx.isp.test"
    assert r.user_agent == "ReturnPathFBL/2.0"


def test_missing_original_rcpt_to_falls_back_to_embedded_to_and_ipv6_received(
    crlf: bool,
) -> None:
    r = parse_arf(sample("aol-scomp.eml", crlf))
    assert r.user_agent == "AOL SComp"
    assert r.original_recipient == "jane.doe.fbl@aol.com"
    assert (r.source_ip, r.source_ip_from) == ("2001:db8::25", "received")
    assert r.arrival_date == "Fri, 06 Mar 2026 07:01:12 -0500 (EST)"


def test_fraud_report_with_ipv6_source_ip_field(crlf: bool) -> None:
    r = parse_arf(sample("fraud-ipv6-source.eml", crlf))
    assert r.feedback_type == "fraud"
    assert (r.source_ip, r.source_ip_from) == ("2001:db8::26", "source-ip")
    assert r.original_recipient == "victim@mailbox.test"


@pytest.mark.parametrize("name", sorted(p.name for p in ARF_DIR.glob("*.eml")))
def test_every_sample_is_arf_with_recipient_and_ip(name: str) -> None:
    data = sample(name)
    assert is_arf(data)
    r = parse_arf(data)
    assert r.original_recipient and "@" in r.original_recipient
    assert r.source_ip is not None


# --- not ARF ------------------------------------------------------------------------------------

DSN = b"""From: MAILER-DAEMON@mx.example
To: sender@shop.example
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

The mail system could not deliver your message.

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example

Final-Recipient: rfc822; gone@example.org
Action: failed
Status: 5.1.1

--b--
"""

PLAIN = b"From: a@b.example\r\nTo: fbl@shop.example\r\nSubject: spam!!\r\n\r\nthis is spam\r\n"


def test_dsn_is_not_arf() -> None:
    assert not is_arf(DSN)
    with pytest.raises(ARFError, match="report-type='delivery-status'"):
        parse_arf(DSN)


def test_plain_message_is_not_arf() -> None:
    assert not is_arf(PLAIN)
    with pytest.raises(ARFError, match="Content-Type is text/plain"):
        parse_arf(PLAIN)


def test_feedback_report_without_report_part() -> None:
    data = sample("rfc5965-b2.eml").replace(b"message/feedback-report", b"text/plain")
    assert is_arf(data)  # the label says so, the content does not
    with pytest.raises(ARFError, match="no message/feedback-report part"):
        parse_arf(data)


def test_report_without_feedback_type() -> None:
    data = sample("rfc5965-b2.eml").replace(b"Feedback-Type: abuse\n", b"")
    with pytest.raises(ARFError, match="no Feedback-Type"):
        parse_arf(data)


def test_arf_error_is_a_value_error() -> None:
    assert issubclass(ARFError, ValueError)


def test_base64_encoded_feedback_part_is_read() -> None:
    """RFC 2046 forbids encoding message/* parts; some reporters do it anyway."""
    import base64

    fields = b"Feedback-Type: abuse\r\nUser-Agent: Odd/1\r\nVersion: 1\r\nSource-IP: 192.0.2.9\r\n"
    data = (
        b"From: fbl@odd.test\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="x"\r\n\r\n'
        b"--x\r\nContent-Type: text/plain\r\n\r\nreport\r\n"
        b"--x\r\nContent-Type: message/feedback-report\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(fields)
        + b"--x\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"To: someone@odd.test\r\nMessage-ID: <m@shop.example>\r\n\r\n--x--\r\n"
    )
    r = parse_arf(data)
    assert (r.feedback_type, r.source_ip, r.original_recipient) == (
        "abuse",
        "192.0.2.9",
        "someone@odd.test",
    )


# --- Received parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "ip"),
    [
        ("from out1.mta.test ([127.0.0.2]) by mx.provider.test with ESMTP", "127.0.0.2"),
        ("from out1.mta.test (out1.mta.test. [127.0.0.2]) by mx.google.com", "127.0.0.2"),
        ("from out1 (out1 [IPv6:2001:DB8::1]) by mx.test", "2001:db8::1"),
        ("from 127.0.0.2 (EHLO out1.mta.test) (127.0.0.2) by mta1.yahoo.test", "127.0.0.2"),
        ("from out2.mta.test (127.0.0.3) by X.outlook.test (10.1.2.3) with SMTP", "127.0.0.3"),
        ("from [192.0.2.7] by mx.test", "192.0.2.7"),
        ("from out1\r\n (out1 [198.51.100.4])\r\n by mx.test; Mon, 1 Jan 2026", "198.51.100.4"),
        # the address after "by" is the receiver's, not the client's
        ("from out1.mta.test (helo) by mx.test ([192.0.2.99])", None),
        ("by mx.test with local id 1", None),
        ("from unknown (HELO [999.1.1.1]) by mx.test", None),
    ],
)
def test_received_ip(received: str, ip: str | None) -> None:
    assert received_ip(received) == ip


def test_received_ip_takes_the_top_most_field_naming_an_ip() -> None:
    assert (
        received_ip(
            [
                "by localhost with LMTP",
                "from a (a [192.0.2.1]) by b",
                "from c (c [192.0.2.2]) by a",
            ]
        )
        == "192.0.2.1"
    )


@pytest.mark.parametrize(
    ("field", "recipient"),
    [
        ('<"victim"@Example.org>', "victim@example.org"),
        ('rfc822;"vic\\tim"@example.org', "victim@example.org"),
        ('"victim"@EXAMPLE.ORG', "victim@example.org"),
        ("<Victim@b\u00fccher.example>", "victim@xn--bcher-kva.example"),
        ('<"vic tim"@example.org>', '"vic tim"@example.org'),
    ],
)
def test_original_rcpt_to_is_canonical(field: str, recipient: str) -> None:
    # Issue 21: a complaint for a quoted spelling was stored quoted, and the address stayed
    # deliverable: the recipient is now the key the suppression list uses.
    data = sample("rfc5965-b2.eml").replace(
        b"Original-Rcpt-To: <user@example.com>", f"Original-Rcpt-To: {field}".encode()
    )
    r = parse_arf(data)
    assert r.original_recipient == recipient
    assert r.original_recipients == (recipient,)


def test_embedded_to_fallback_is_canonical() -> None:
    data = sample("rfc5965-b2.eml").replace(b"Original-Rcpt-To: <user@example.com>\n", b"")
    data = data.replace(b"To: <Undisclosed Recipients>", b'To: <"victim"@Example.org>')
    assert parse_arf(data).original_recipient == "victim@example.org"
