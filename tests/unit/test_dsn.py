"""DSNs as a mail client would read them: parsed back with Python's email package."""

from __future__ import annotations

import email
import email.utils
from email.message import Message
from email.policy import default as default_policy

import pytest

from mailfleet.mta.dsn import DSNRecipient, build_dsn, should_send_dsn

ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test, carol@remote.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <orig-1@example.test>\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"The body, which must not be quoted in a headers-only DSN.\r\n"
    b"SECRET-BODY-LINE\r\n"
)

FAILURES = [
    DSNRecipient(
        recipient="bob@remote.test",
        status="5.1.1",
        diagnostic="550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown",
        remote_mta="mx1.remote.test",
        last_attempt_date=1772445600.0,
    ),
    DSNRecipient(
        recipient="carol@remote.test",
        status="4.4.7",
        diagnostic=None,
        remote_mta=None,
    ),
]


def _build(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "reporting_mta": "mta1.example.test",
        "dsn_from": "MAILER-DAEMON@mta1.example.test",
        "original_sender": "alice@example.test",
        "original_message": ORIGINAL,
        "failures": FAILURES,
        "arrival_date": 1772445000.0,
    }
    args.update(overrides)
    raw: bytes = build_dsn(**args)  # type: ignore[arg-type]
    return raw


def _parts(raw: bytes) -> tuple[Message, list[Message]]:
    msg = email.message_from_bytes(raw)
    assert msg.is_multipart()
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return msg, [p for p in payload if isinstance(p, Message)]


def _status_blocks(part: Message) -> list[Message]:
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


def test_a_failed_dsn_is_a_multipart_report_with_three_parts() -> None:
    raw = _build()
    msg, parts = _parts(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["From"] == "MAILER-DAEMON@mta1.example.test"
    assert msg["To"] == "alice@example.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@mta1.example.test>")
    # CRLF throughout, no bare LF: it goes straight into SMTP DATA.
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_the_delivery_status_part_has_the_rfc3464_fields() -> None:
    _, parts = _parts(_build())
    per_message, bob, carol = _status_blocks(parts[1])
    assert per_message["Reporting-MTA"] == "dns; mta1.example.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == 1772445000

    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.remote.test"
    assert bob["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown"
    )
    assert email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp() == 1772445600

    assert carol["Final-Recipient"] == "rfc822; carol@remote.test"
    assert carol["Status"] == "4.4.7"
    assert carol["Remote-MTA"] is None  # no MX ever answered
    assert carol["Diagnostic-Code"] is None
    assert carol["Last-Attempt-Date"] is not None


def test_the_human_part_names_each_recipient_and_reply() -> None:
    _, parts = _parts(_build())
    text = parts[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"<bob@remote.test>: (host mx1.remote.test said) 550 5.1.1" in text
    assert b"<carol@remote.test>:" in text


def test_headers_only_by_default_and_the_body_is_not_returned() -> None:
    raw = _build()
    _, parts = _parts(raw)
    quoted = parts[2].get_payload(decode=True)
    assert isinstance(quoted, bytes)
    assert b"Subject: quarterly report" in quoted
    assert b"Message-ID: <orig-1@example.test>" in quoted
    assert b"SECRET-BODY-LINE" not in raw


def test_return_full_attaches_the_whole_original_as_message_rfc822() -> None:
    raw = _build(return_full=True)
    _, parts = _parts(raw)
    assert parts[2].get_content_type() == "message/rfc822"
    inner = parts[2].get_payload()
    assert isinstance(inner, list) and isinstance(inner[0], Message)
    assert inner[0]["Subject"] == "quarterly report"
    assert b"SECRET-BODY-LINE" in raw


def test_a_delayed_dsn_says_so() -> None:
    failures = [
        DSNRecipient(
            "bob@remote.test",
            "4.2.2",
            "452 4.2.2 mailbox full",
            "mx1.remote.test",
            will_retry_until=1772704800.0,
        )
    ]
    msg, parts = _parts(_build(action="delayed", failures=failures))
    assert msg["Subject"].startswith("Delayed Mail")
    _, bob = _status_blocks(parts[1])
    assert bob["Action"] == "delayed"
    assert email.utils.parsedate_to_datetime(bob["Will-Retry-Until"]).timestamp() == 1772704800


def test_8bit_and_malformed_original_headers_are_quoted_and_still_parse() -> None:
    original = (
        "From: Jürgen Müller <jurgen@example.test>\n"
        "Subject: Grüße aus Köln 🎉\n"
        "X-Broken: \xff\xfe raw latin-1 bytes\n"
        "\n"
        "body\n"
    ).encode("utf-8", "surrogateescape")
    original = original.replace(b"\xc3\xbf\xc3\xbe", b"\xff\xfe")  # really invalid UTF-8
    raw = _build(original_message=original)
    _, parts = _parts(raw)
    assert parts[2]["Content-Transfer-Encoding"] == "8bit"
    assert "Grüße aus Köln 🎉".encode() in raw
    assert b"\xff\xfe raw latin-1 bytes" in raw  # quoted byte for byte
    # A modern parser reads it too.
    modern = email.message_from_bytes(raw, policy=default_policy)
    assert modern.get_content_type() == "multipart/report"
    assert len(list(modern.iter_parts())) == 3


def test_internationalized_recipients_use_the_utf8_address_type() -> None:
    failures = [DSNRecipient("δοκιμή@παράδειγμα.test", "5.1.1", "550 5.1.1 unknown", "mx.test")]
    raw = _build(failures=failures, original_sender="jürgen@example.test")
    # A parser that understands 8-bit headers (RFC 6532) reads the address back as written.
    msg = email.message_from_bytes(raw, policy=default_policy)
    assert msg["To"] == "jürgen@example.test"
    parts = list(msg.iter_parts())
    assert parts[1]["Content-Transfer-Encoding"] == "8bit"
    (_, rcpt) = _status_blocks(parts[1])
    assert rcpt["Final-Recipient"] == "utf-8; δοκιμή@παράδειγμα.test"


def test_crlf_in_sender_or_diagnostic_cannot_inject_headers() -> None:
    failures = [
        DSNRecipient("bob@remote.test", "5.0.0", "550 bad\r\nBcc: victim@evil.test", "mx.test")
    ]
    raw = _build(failures=failures, original_sender="alice@example.test\r\nBcc: x@evil.test")
    msg, parts = _parts(raw)
    assert msg["Bcc"] is None
    (_, rcpt) = _status_blocks(parts[1])
    assert rcpt["Bcc"] is None
    assert rcpt["Diagnostic-Code"] == "smtp; 550 bad Bcc: victim@evil.test"


def test_lf_only_original_and_no_body_separator() -> None:
    raw = _build(original_message=b"Subject: only headers\nX-A: 1\n")
    _, parts = _parts(raw)
    quoted = parts[2].get_payload(decode=True)
    assert isinstance(quoted, bytes)
    assert b"Subject: only headers" in quoted and b"X-A: 1" in quoted


def test_status_codes_are_validated_and_failures_required() -> None:
    with pytest.raises(ValueError, match="RFC 3463"):
        DSNRecipient("bob@remote.test", "550", None, None)
    with pytest.raises(ValueError, match="at least one"):
        _build(failures=[])


@pytest.mark.parametrize(
    ("sender", "message", "expected"),
    [
        ("alice@example.test", ORIGINAL, True),
        ("<alice@example.test>", ORIGINAL, True),
        ("", ORIGINAL, False),
        ("<>", ORIGINAL, False),
        ("  <> ", ORIGINAL, False),
        ("MAILER-DAEMON@other.test", ORIGINAL, False),
        # Application mail marked auto-generated still has a sender who needs the bounce.
        ("noreply@example.test", b"Auto-Submitted: auto-generated\r\n\r\nhi\r\n", True),
        ("alice@example.test", b"auto-submitted: Auto-Replied\r\n\r\nhi\r\n", False),
        ("alice@example.test", b"Auto-Submitted: no\r\n\r\nhi\r\n", True),
        (
            "alice@example.test",
            b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
            b' boundary="x"\r\n\r\n--x--\r\n',
            False,
        ),
        ("alice@example.test", b"Subject: \xff\xfe 8bit\r\n\r\n\xff", True),
        ("alice@example.test", b"", True),
    ],
)
def test_should_send_dsn(sender: str, message: bytes, expected: bool) -> None:
    assert should_send_dsn(sender, message) is expected


def test_our_own_dsn_never_gets_a_dsn() -> None:
    raw = _build()
    # Sent with a null sender, and even with a real one (a broken relay) it is recognized.
    assert not should_send_dsn("<>", raw)
    assert not should_send_dsn("someone@example.test", raw)
