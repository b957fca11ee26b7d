"""Hostile input II (issue 21), message data: each test is what the second attacker's probe
sent, and asserts the reply a client gets and what the receiving MX got (bytes in, reply out).

- a header block too large or with too many fields: 552 5.3.4 at the end of DATA, before any
  250, nothing queued, other sessions served meanwhile; one just under the limits is delivered
  intact and DKIM-signed;
- a line of 999 octets (RFC 5321 §4.5.3.1.6 allows 998 plus CRLF): 500;
- a NUL byte anywhere in the data: 550 5.6.0;
- a client's Feedback-ID / List-Unsubscribe / List-Unsubscribe-Post when the pool has templates
  for them: replaced by the pool's (headers.clientHeaders: replace), or kept (keep).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

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

HEAD = b"From: <app@example.test>\r\nTo: <x@example.org>\r\nSubject: t\r\n"
BODY = HEAD + b"\r\nhello\r\n"


def _transaction(c: RawSMTP) -> None:
    assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
    assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
    assert c.cmd("DATA").startswith("354")


def _send(c: RawSMTP, body: bytes) -> str:
    _transaction(c)
    c.send(body + b".\r\n")
    return c.reply()


def _clean_one_after(eng: EngineProc, c: RawSMTP, mx: RecordingMX) -> None:
    """Nothing of the refused message was queued, the session is still usable, and the only
    message the MX gets is the clean one sent next."""
    assert eng.status()["queue"]["messages"] == 0
    assert _send(c, BODY.replace(b"Subject: t", b"Subject: clean")).startswith("250 2.0.0 ")
    eng.wait_queue_empty()
    got = mx.wait_for(1)
    assert [b"Subject: clean\r\n" in m.content for m in got] == [True]


# -- 1: header blocks: linear parsing and a bound ----------------------------------------------


def test_huge_folded_header_is_refused_and_other_sessions_are_served(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    """The probe: a trusted client's 1.2 MB header of 300,000 continuation lines in an
    X-Mailfleet-* field (which the engine unfolds). It took 8.4 s to a 250 while other sessions
    waited; now it is refused at the end of DATA, and a concurrent NOOP is answered."""
    eng = mta_engine(_route(mx, headers={"feedbackId": "{campaign}:mailfleet"}))
    folded = b"X-Mailfleet-Campaign: a\r\n" + b" a\r\n" * 300_000
    with _session(eng) as c, _session(eng, "other.test") as other:
        _transaction(c)
        c.send(HEAD + folded + b"\r\nhello\r\n.\r\n")
        assert other.cmd("NOOP").startswith("250")
        reply = c.reply()
        assert reply.startswith("552 5.3.4 "), reply
        assert "header" in reply and "submission.maxHeaderBytes" in reply
        assert "1048576" in reply
        assert other.cmd("NOOP").startswith("250")
        _clean_one_after(eng, c, mx)


def test_too_many_header_fields_are_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx, submission={"maxHeaderFields": 20}))
    with _session(eng) as c:
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(18))  # 3 + 18 = 21 fields
        reply = _send(c, HEAD + fields + b"\r\nhello\r\n")
        assert reply.startswith("552 5.3.4 "), reply
        assert "21 header fields" in reply and "submission.maxHeaderFields" in reply
        _clean_one_after(eng, c, mx)
        # Continuation lines belong to their field: 20 fields, folded many times, pass.
        folded = b"".join(b"X-F%d: v\r\n w\r\n\tx\r\n" % i for i in range(17))
        assert _send(c, HEAD + folded + b"\r\nhello\r\n").startswith("250 2.0.0 ")


def test_default_field_limit(mta_engine: Callable[..., EngineProc], mx: RecordingMX) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        fields = b"".join(b"Comments: %d\r\n" % i for i in range(998))  # 1,001 fields
        reply = _send(c, HEAD + fields + b"\r\nhello\r\n")
        assert reply.startswith("552 5.3.4 "), reply
        assert "1001 header fields" in reply and "1000" in reply
        _clean_one_after(eng, c, mx)


def test_header_just_under_the_limits_is_delivered_intact_and_signed(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, dns_server: DnsServer
) -> None:
    dns_server.add_txt(f"{RSA_KEY.selector}._domainkey.{RSA_KEY.domain}", dns_txt_record(RSA_KEY))
    dns_server.start()
    eng = mta_engine(
        _route(
            mx,
            dkim={"keys": [RSA_KEY.model_dump(mode="json", by_alias=True)]},
            headers={"feedbackId": "{campaign}:mailfleet"},
        )
    )
    sender = f"app@{RSA_KEY.domain}"
    head = f"From: <{sender}>\r\nTo: <x@example.org>\r\n".encode()
    # 1,000 fields in all (the default limit), one of them a Subject folded over 10,000 lines.
    subject = b"Subject: big\r\n" + b"".join(b"\t%096d\r\n" % i for i in range(10_000))
    others = b"".join(b"Comments: %d\r\n" % i for i in range(996))
    internal = b"X-Mailfleet-Campaign: spring\r\n folded\r\n"
    block = head + subject + others
    body = b"\r\nhello\r\n"
    assert 1_000_000 < len(block + internal) < 1024 * 1024
    with _session(eng) as c:
        assert c.cmd(f"MAIL FROM:<{sender}>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        c.send(block + internal + body + b".\r\n")
        assert c.reply().startswith("250 2.0.0 ")
    got = mx.wait_for(1)[0].content
    # Our Received, DKIM-Signature, Date, Message-ID and Feedback-ID around the client's own
    # fields, every byte of which arrives as sent; the internal field is gone.
    assert block in got and got.endswith(body)
    assert b"X-Mailfleet" not in got
    assert b"\r\nFeedback-ID: spring-folded:mailfleet\r\n" in got
    results = dkim_verify(got, dns_server, timeout=120)
    assert [r["result"] for r in results] == ["pass"], results


# -- 2: line length: 998 octets plus CRLF -------------------------------------------------------


def test_998_octet_line_is_accepted_and_999_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        reply = _send(c, HEAD + b"\r\n" + b"y" * 999 + b"\r\n")
        assert reply == "500 Line too long (see RFC5321 4.5.3.1.6)", reply
        # A header line counts the same.
        reply = _send(c, HEAD + b"X-Long: " + b"y" * 991 + b"\r\n\r\nhello\r\n")
        assert reply.startswith("500 Line too long"), reply
        # A dot-stuffed line is measured as sent: 999 octets on the wire is too long.
        reply = _send(c, HEAD + b"\r\n.." + b"y" * 997 + b"\r\n")
        assert reply.startswith("500 Line too long"), reply
        assert eng.status()["queue"]["messages"] == 0
        assert _send(c, HEAD + b"\r\n" + b"z" * 998 + b"\r\n").startswith("250 2.0.0 ")
    got = mx.wait_for(1)
    assert len(got) == 1 and got[0].content.endswith(b"\r\n\r\n" + b"z" * 998 + b"\r\n")


# -- 3: NUL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b"hello", b"hel\x00lo"),
        BODY.replace(b"Subject: t", b"Subject: t\x00Bcc: victim@example.org"),
        BODY + b"\x00",
    ],
    ids=["body", "header", "last-line"],
)
def test_nul_in_data_is_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, body: bytes
) -> None:
    eng = mta_engine(_route(mx))
    with _session(eng) as c:
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        reply = _send(c, body)
        assert reply.startswith("550 5.6.0 "), reply
        assert "NUL" in reply
        _clean_one_after(eng, c, mx)


# -- 4: client-set Feedback-ID / List-Unsubscribe ----------------------------------------------

POOL_HEADERS = {
    "listUnsubscribe": "<https://unsub.example.test/u/{token}>",
    "feedbackId": "{customer}:mailfleet",
    "tokenKeyFile": "",  # filled in per test
}
CLIENT_SET = (
    b"Feedback-ID: other-tenant:mailfleet\r\n"
    b"List-Unsubscribe: <https://attacker.example/u>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Mailfleet-Customer: acme\r\n"
)


def _with_client_headers(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Any, **headers: Any
) -> str:
    key = tmp_path / "token.key"
    key.write_bytes(b"k" * 32)
    eng = mta_engine(_route(mx, headers={**POOL_HEADERS, "tokenKeyFile": str(key), **headers}))
    with _session(eng) as c:
        assert _send(c, HEAD + CLIENT_SET + b"\r\nhello\r\n").startswith("250 2.0.0 ")
    return mx.wait_for(1)[0].content.split(b"\r\n\r\n")[0].decode()


def _values(head: str, name: str) -> list[str]:
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [
        line.split(":", 1)[1].strip()
        for line in unfolded.split("\r\n")
        if line.lower().startswith(name.lower() + ":")
    ]


def test_client_feedback_id_and_list_unsubscribe_are_replaced_by_the_pools(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Any
) -> None:
    head = _with_client_headers(mta_engine, mx, tmp_path)
    assert _values(head, "Feedback-ID") == ["acme:mailfleet"]
    (unsub,) = _values(head, "List-Unsubscribe")
    assert unsub.startswith("<https://unsub.example.test/u/"), unsub
    assert _values(head, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    assert "attacker" not in head and "other-tenant" not in head


def test_client_headers_keep_keeps_the_clients(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Any
) -> None:
    head = _with_client_headers(mta_engine, mx, tmp_path, clientHeaders="keep")
    assert _values(head, "Feedback-ID") == ["other-tenant:mailfleet"]
    assert _values(head, "List-Unsubscribe") == ["<https://attacker.example/u>"]
    assert _values(head, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
