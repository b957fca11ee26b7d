"""Suppression, complaints and list headers through the running engine: hard bounces and ARF
reports suppress, suppressed recipients are refused (or dropped), the admin API manages the list,
a Redis list is shared between engines, and List-Unsubscribe/Feedback-ID are DKIM-covered."""

from __future__ import annotations

import json
import re
import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc, message
from fixtures.smtppeers import RecordingMX, swaks

ARF = Path(__file__).parent.parent / "data" / "arf"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


ROOT = Path(__file__).parent.parent.parent
RSA_KEY = ROOT / "examples/mta/dkim/example.test.s2026a.rsa.pem"


def _config(mx: RecordingMX, **extra: Any) -> dict[str, Any]:
    return {
        "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
        "retry": {"initial": "1h"},
        "delivery": {"sourceIPs": [{"address": "127.0.0.2"}]},
        # The feedback loop's network (127.0.0.9 plays the provider; samples come from .1).
        "suppression": {
            "feedbackAddresses": ["fbl@mta.test"],
            "feedbackSources": ["127.0.0.9/32", "127.0.0.1/32"],
        },
        **extra,
    }


def _refused(eng: EngineProc, rcpt: str) -> tuple[int, bytes]:
    with eng.smtp() as s:
        s.ehlo()
        s.mail("app@example.test")
        code, text = s.rcpt(rcpt)
        s.rset()
        return code, text


def test_hard_bounce_suppresses_and_the_next_message_is_refused(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    mx.script_rcpt("550 5.1.1 The email account that you tried to reach does not exist.")
    eng = mta_engine(_config(mx))
    eng.send("<>", ["gone@example.org"], message("to a dead address"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_suppressions_added_total", reason="invalid-recipient") == 1,
        what="suppression after the bounce",
    )
    code, text = _refused(eng, "Gone@Example.org")
    assert code == 550
    assert text.startswith(b"5.7.1 <Gone@Example.org>: recipient is on the suppression list")
    assert b"invalid-recipient" in text
    entry = eng.get("/v1/suppressions/gone@example.org")
    assert entry["reason"] == "invalid-recipient"
    assert "does not exist" in entry["source"]
    # A 4xx is no reason to suppress anybody.
    mx.script_rcpt("452 4.2.2 Mailbox full")
    eng.send("<>", ["full@example.org"], message("to a full mailbox"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") == 1,
        what="the deferral",
    )
    assert _refused(eng, "full@example.org")[0] == 250


def test_arf_report_from_the_feedback_network_suppresses_and_counts_a_complaint(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx))
    report = _crlf((ARF / "rfc5965-b2.eml").read_bytes())
    # The provider's feedback loop connects from outside: relaying is refused, the report taken.
    done = swaks(
        f"127.0.0.1:{eng.smtp_port}",
        local_interface="127.0.0.9",
        from_="abusedesk@example.com",
        to="fbl@mta.test",
        data=report,
    )
    assert done.returncode == 0, done.stdout
    assert "250 2.0.0 Ok: complaint recorded" in done.stdout
    assert eng.metric("mailfleet_complaints_total", source_ip="192.0.2.1") == 1
    assert eng.get("/v1/suppressions/user@example.com")["reason"] == "complaint"
    assert _refused(eng, "user@example.com")[0] == 550
    assert mx.messages() == []  # a report is consumed, never relayed
    junk = swaks(
        f"127.0.0.1:{eng.smtp_port}",
        local_interface="127.0.0.9",
        to="fbl@mta.test",
        body="not a report",
    )
    assert "554 5.6.0 The feedback address takes ARF reports (RFC 5965) only" in junk.stdout
    stranger = swaks(f"127.0.0.1:{eng.smtp_port}", local_interface="127.0.0.9", to="x@example.org")
    assert "554 5.7.1 Relay access denied" in stranger.stdout


@pytest.mark.parametrize("sample", sorted(p.name for p in ARF.glob("*.eml")))
def test_every_arf_sample_is_understood(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sample: str
) -> None:
    eng = mta_engine(_config(mx))
    with eng.smtp() as s:
        s.ehlo()
        s.mail("feedback@provider.example")
        s.rcpt("fbl@mta.test")
        code, text = s.data(_crlf((ARF / sample).read_bytes()))
    assert code == 250, text
    assert eng.metric("mailfleet_complaints_total") == 1
    assert eng.get("/v1/suppressions")["count"] == 1


def test_admin_api_lists_adds_and_removes(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx))

    def call(method: str, path: str, body: dict[str, str] | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            eng.url(path),
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {eng.token()}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    for i in range(3):
        assert call("POST", "/v1/suppressions", {"recipient": f"u{i}@example.org"})[0] == 201
    status, page = call("GET", "/v1/suppressions?limit=2")
    assert status == 200 and page["count"] == 3
    assert [e["recipient"] for e in page["items"]] == ["u0@example.org", "u1@example.org"]
    _, rest = call("GET", f"/v1/suppressions?limit=2&after={page['next']}")
    assert [e["recipient"] for e in rest["items"]] == ["u2@example.org"]
    assert _refused(eng, "u1@example.org")[0] == 550
    assert call("DELETE", "/v1/suppressions/u1@example.org") == (200, {"removed": True})
    assert call("DELETE", "/v1/suppressions/u1@example.org")[0] == 404
    assert _refused(eng, "u1@example.org")[0] == 250
    assert call("POST", "/v1/suppressions", {"who": "x"})[0] == 400
    assert call("GET", "/v1/suppressions?limit=0")[0] == 400


def test_drop_mode_accepts_and_never_delivers(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx, suppression={"onSuppressed": "drop"}))
    eng.post("/v1/suppressions")  # wrong body: refused, nothing added
    assert eng.post("/v1/suppressions", {"recipient": "quiet@example.org"})["recipient"]
    eng.send("app@example.test", ["quiet@example.org", "loud@example.org"], message("drop"))
    got = mx.wait_for(1)
    eng.wait_queue_empty()
    assert [m.rcpt_tos for m in got] == [["loud@example.org"]]
    assert eng.metric("mailfleet_suppressed_recipients_total", action="dropped") == 1


def test_redis_list_is_shared_between_engines(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, redis_server: Any
) -> None:
    shared = {"backend": "redis", "redisURL": redis_server.url, "namespace": "pool-a"}
    one = mta_engine(_config(mx, suppression=shared))
    two = mta_engine(_config(mx, suppression=shared))
    other = mta_engine(_config(mx, suppression={**shared, "namespace": "pool-b"}))
    mx.script_rcpt("550 5.1.1 no such user")
    one.send("<>", ["gone@example.org"], message("bounce on one"))
    one.wait_until(
        lambda: one.metric("mailfleet_suppressions_added_total") == 1, what="suppressed on one"
    )
    assert _refused(two, "gone@example.org")[0] == 550
    assert _refused(other, "gone@example.org")[0] == 250


def test_list_unsubscribe_and_feedback_id_are_signed(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, tmp_path: Path
) -> None:
    key = tmp_path / "token.key"
    key.write_bytes(b"0123456789abcdef0123456789abcdef")
    eng = mta_engine(
        _config(
            mx,
            headers={
                "listUnsubscribe": "<https://unsub.example.test/u/{token}>, "
                "<mailto:unsub@example.test?subject={recipient}>",
                "feedbackId": "{campaign}:{customer}:transactional:mailfleet",
                "tokenKeyFile": str(key),
            },
            dkim={
                "keys": [{"domain": "example.test", "selector": "s2026a", "keyFile": str(RSA_KEY)}]
            },
        )
    )
    body = (
        b"From: <news@example.test>\r\nTo: <reader@example.org>\r\nSubject: spring\r\n"
        b"X-Mailfleet-Campaign: spring26\r\nX-Mailfleet-Customer: acme\r\n\r\nHello\r\n"
    )
    eng.send("news@example.test", ["reader@example.org"], body)
    got = mx.wait_for(1)[0].content
    head = got.split(b"\r\n\r\n")[0].decode()
    assert re.search(r"List-Unsubscribe:\s+<https://unsub\.example\.test/u/[\w-]+>", head)
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
    assert "Feedback-ID: spring26:acme:transactional:mailfleet" in head
    assert "X-Mailfleet-" not in head
    h = re.search(r"DKIM-Signature:.*?\bh=([^;]+);", head, re.S)
    assert h is not None
    signed = {x.strip().lower() for x in h.group(1).replace("\r\n", "").split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post", "feedback-id"} <= signed


def test_suppression_refusal_reaches_a_real_client(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx))
    assert eng.post("/v1/suppressions", {"recipient": "blocked@example.org", "reason": "manual"})
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        eng.send("app@example.test", ["blocked@example.org"], message("x"))


def test_internal_headers_in_any_case_are_removed_without_header_templates(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    """X-Mailfleet-* fields never leave the engine, whatever their case, even when no
    List-Unsubscribe or Feedback-ID template would use them."""
    eng = mta_engine(_config(mx))
    body = (
        b"From: <news@example.test>\r\nTo: <reader@example.org>\r\nSubject: spring\r\n"
        b"x-mailfleet-campaign: spring26\r\nX-MAILFLEET-CUSTOMER: acme\r\n\r\nHello\r\n"
    )
    eng.send("news@example.test", ["reader@example.org"], body)
    head = mx.wait_for(1)[0].content.split(b"\r\n\r\n")[0].decode()
    assert "x-mailfleet-" not in head.lower()
    assert "Subject: spring" in head
