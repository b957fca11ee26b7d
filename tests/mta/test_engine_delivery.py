"""End to end through the engine: delivery, retries, DSNs, expiry, metrics, logs, admin API."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable, Iterator

import pytest
from fixtures.engine import EngineProc, message
from fixtures.smtppeers import RecordingMX


@pytest.fixture
def sender_mx() -> Iterator[RecordingMX]:
    """The MX of the senders' domain (example.test), where DSNs arrive."""
    with RecordingMX("127.0.0.1", hostname="mx.example.test") as m:
        yield m


def _config(mx: RecordingMX, sender_mx: RecordingMX, **retry: str) -> dict[str, object]:
    return {
        "routing": {
            "routes": {
                "example.test": f"{sender_mx.host}:{sender_mx.port}",
                "*": f"{mx.host}:{mx.port}",
            }
        },
        "retry": {"initial": "500ms", "max": "1s", "maxAge": "1h", "jitter": 0, **retry},
        "delivery": {"sourceIPs": [{"address": "127.0.0.2", "hostname": "out1.mta.test"}]},
    }


def _dsns(mx: RecordingMX) -> list[email.message.EmailMessage]:
    out = []
    for m in mx.messages():
        msg = email.message_from_bytes(m.content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        out.append(msg)
    return out


def test_deferral_then_success_delivers_once(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.script_rcpt("451 4.3.0 try again later", "451 4.3.0 still busy")
    eng = mta_engine(_config(mx, sender_mx))
    eng.send("app@example.test", ["user@example.org"], message("retried"))
    got = mx.wait_for(1, timeout=30)
    eng.wait_queue_empty()
    assert len(mx.messages()) == 1
    assert got[0].peer_ip == "127.0.0.2"  # sent from the configured source address
    assert got[0].helo == "out1.mta.test"
    rcpt_replies = [r.reply[:3] for r in mx.replies() if r.stage == "RCPT"]
    assert rcpt_replies == ["451", "451", "250"]
    assert sender_mx.messages() == []  # no DSN for a message that made it
    assert eng.metric("mailfleet_delivery_attempts_total", result="deferred") == 2
    assert eng.metric("mailfleet_delivery_attempts_total", result="delivered") == 1
    attempts = [ln for ln in eng.log_lines() if ln.get("msg") == "delivery attempt"]
    assert [a["result"] for a in attempts] == ["deferred", "deferred", "delivered"]
    last = attempts[-1]
    assert last["recipient_domain"] == "example.org"
    assert last["source_ip"] == "127.0.0.2"
    assert last["reply"].startswith("250")
    assert last["mx"] and last["latency_ms"] >= 0 and last["message_id"]


def test_permanent_failure_sends_one_dsn_to_the_sender(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.script_rcpt(
        "550 5.1.1 <gone@example.org>: Recipient address rejected", rcpt="gone@example.org"
    )
    eng = mta_engine(_config(mx, sender_mx))
    eng.send("app@example.test", ["gone@example.org", "here@example.org"], message("mixed"))
    delivered = mx.wait_for(1)
    assert delivered[0].rcpt_tos == ["here@example.org"]
    dsn_raw = sender_mx.wait_for(1)[0]
    eng.wait_queue_empty()
    assert dsn_raw.mail_from in ("", "<>")  # null sender: a DSN never gets a DSN
    assert dsn_raw.rcpt_tos == ["app@example.test"]
    (dsn,) = _dsns(sender_mx)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = list(dsn.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    report = parts[1].as_string()
    assert "Final-Recipient: rfc822; gone@example.org" in report
    assert "Action: failed" in report
    assert "Status: 5.1.1" in report
    assert "Recipient address rejected" in report
    assert "here@example.org" not in report
    assert eng.metric("mailfleet_dsn_generated_total") == 1
    assert eng.metric("mailfleet_delivery_attempts_total", reply_class="invalid-recipient") == 1


def test_expired_message_bounces_with_dsn(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.on_rcpt = lambda call: "451 4.7.1 greylisted, come back later"
    eng = mta_engine(_config(mx, sender_mx, maxAge="3s"))
    eng.send("app@example.test", ["slow@example.org"], message("expires"))
    dsn_raw = sender_mx.wait_for(1, timeout=30)[0]
    eng.wait_queue_empty()
    assert mx.messages() == []
    report = _dsns(sender_mx)[0].as_string()
    assert "Final-Recipient: rfc822; slow@example.org" in report
    assert "Status: 4.4.7" in report or "Status: 4.7.1" in report
    assert "greylisted" in report
    assert dsn_raw.mail_from in ("", "<>")
    assert eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 2


def test_bounce_from_null_sender_makes_no_dsn(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.script_rcpt("550 5.1.1 no such user")
    eng = mta_engine(_config(mx, sender_mx))
    eng.send("<>", ["gone@example.org"], message("bounce of a bounce"))
    eng.wait_queue_empty()
    assert eng.metric("mailfleet_delivery_attempts_total", result="bounced") == 1
    assert sender_mx.messages() == []
    assert eng.metric("mailfleet_dsn_generated_total") == 0


def test_unreachable_mx_is_retried_not_lost(
    mta_engine: Callable[..., EngineProc], sender_mx: RecordingMX
) -> None:
    from fixtures.procs import free_port

    port = free_port()
    eng = mta_engine(
        {
            "routing": {"routes": {"*": f"127.0.0.1:{port}"}},
            "retry": {"initial": "300ms", "max": "300ms", "jitter": 0},
        }
    )
    eng.send("app@example.test", ["x@example.org"], message("waits for the MX"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 2,
        what="two deferred attempts",
    )
    assert eng.status()["queue"]["messages"] == 1
    with RecordingMX("127.0.0.1", port) as late:
        late.wait_for(1, timeout=30)
        eng.wait_queue_empty()


def test_admin_api(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    eng = mta_engine(_config(mx, sender_mx))
    assert eng.get("/healthz") == {"status": "ok"}
    assert eng.get("/readyz")["ready"] is True
    for i in range(5):
        eng.send("app@example.test", [f"u{i}@example.org"], message(f"m{i}"))
    mx.wait_for(5)
    eng.wait_queue_empty()
    st = eng.status()
    assert st["configGeneration"] == 1
    assert st["queue"]["messages"] == 0
    assert st["submission"]["accepting"] is True
    text = eng.metrics_text()
    for name in (
        "mailfleet_messages_received_total 5.0",
        "mailfleet_delivery_latency_seconds_bucket",
        "mailfleet_spool_commit_seconds_bucket",
        "mailfleet_accept_seconds_count 5.0",
        "mailfleet_queue_recipients",
        # example.org is routed by "*" only: no config names it, so its label is "other".
        'mailfleet_delivery_attempts_total{domain="other",provider="default",reply_class="ok",'
        'result="delivered",source_ip="127.0.0.2"} 5.0',
    ):
        assert name in text, name


def test_drain_stops_intake_and_delivers_the_queue(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.script_rcpt("451 4.3.0 later")
    eng = mta_engine(_config(mx, sender_mx))
    eng.send("app@example.test", ["u@example.org"], message("before drain"))
    out = eng.post("/v1/drain")
    assert out["draining"] is True
    assert eng.get("/readyz") == {"ready": False, "reason": "draining"}
    import socket

    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", eng.smtp_port), timeout=2).close()
    mx.wait_for(1, timeout=30)
    eng.wait_until(lambda: eng.post("/v1/drain")["empty"], what="drained queue")


def test_reply_classes_extend_from_config(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    mx.script_rcpt("550 5.7.1 policy-xyz: your campaign looks like a phish")
    cfg = _config(mx, sender_mx)
    cfg["shaping"] = {"replyClasses": [{"match": "policy-xyz", "class": "content"}]}
    eng = mta_engine(cfg)
    eng.send("<>", ["u@example.org"], message("classified"))
    eng.wait_until(
        lambda: eng.metric("mailfleet_delivery_attempts_total", reply_class="content") == 1,
        what="the configured class on the attempt",
    )


def test_provider_retry_block_overrides_the_global_retry(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    """A DeliveryPolicy provider's `retry` (here a 3 s maxAge) is what its recipients get; the
    other recipients keep the engine-wide retry (1 h maxAge)."""
    mx.on_rcpt = lambda call: "451 4.7.1 greylisted, come back later"
    cfg = _config(mx, sender_mx)
    cfg["shaping"] = {
        "providers": [
            {
                "name": "impatient",
                "match": {"recipientDomains": ["short.example"]},
                "retry": {"initial": "300ms", "max": "500ms", "maxAge": "3s", "jitter": 0},
            }
        ]
    }
    eng = mta_engine(cfg)
    eng.send("app@example.test", ["quick@short.example", "patient@example.org"], message("two"))
    dsn_raw = sender_mx.wait_for(1, timeout=30)[0]
    assert dsn_raw.rcpt_tos == ["app@example.test"]
    report = _dsns(sender_mx)[0].as_string()
    assert "Final-Recipient: rfc822; quick@short.example" in report
    assert "patient@example.org" not in report
    # The global maxAge is an hour: the other recipient is still queued, not bounced (the
    # DSN itself leaves the queue once delivered to the sender's MX).
    eng.wait_until(lambda: eng.status()["queue"]["messages"] == 1, what="only the message left")
    assert (
        eng.metric("mailfleet_delivery_attempts_total", provider="impatient", result="bounced") == 1
    )
    assert (
        eng.metric("mailfleet_delivery_attempts_total", provider="default", result="bounced") == 0
    )
    assert eng.metric("mailfleet_dsn_generated_total") == 1


def test_mail_flowing_through_is_not_read_back_from_the_spool(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    """Accepted, delivered at once, gone: the queue neither pages through the spool for more
    each time a message is done nor reads a body back (it kept the one it accepted)."""
    eng = mta_engine(_config(mx, sender_mx))
    at_start = eng.metric("mailfleet_spool_reads_total", kind="page")
    for i in range(100):
        eng.send("app@example.test", [f"user{i}@example.org"], message(f"flow {i}"))
    mx.wait_for(100, timeout=60)
    eng.wait_queue_empty()
    # A pass over the spool at least every 30 s still runs, whatever the counts say.
    assert eng.metric("mailfleet_spool_reads_total", kind="page") - at_start <= 4
    assert eng.metric("mailfleet_spool_reads_total", kind="body") == 0
    assert eng.metric("mailfleet_delivery_attempts_total", result="delivered") == 100


def test_mail_left_in_the_spool_is_still_loaded(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX, sender_mx: RecordingMX
) -> None:
    """A deferred message goes back to the spool and leaves the active set: the loader reads
    it again when it is due, and its body comes from the spool."""
    mx.script_rcpt("451 4.3.0 try again later")
    eng = mta_engine(_config(mx, sender_mx))
    eng.send("app@example.test", ["late@example.org"], message("deferred once"))
    for i in range(20):
        eng.send("app@example.test", [f"user{i}@example.org"], message(f"flow {i}"))
    mx.wait_for(21, timeout=60)
    eng.wait_queue_empty()
    assert eng.metric("mailfleet_spool_reads_total", kind="body") >= 1
    assert eng.metric("mailfleet_delivery_attempts_total", result="delivered") == 21
