"""Draining with handoff between two real engines: the queue moves to the peer with its
envelope, arrival time and retry state, is signed once, and is delivered once; a drain can be
undone; a peer that refuses leaves the mail to be delivered where it is."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc, message
from fixtures.keys import RSA_KEY
from fixtures.smtppeers import RecordedMessage, RecordingMX, SmtpCall

from mailfleet.mta.handoff import HandoffError, batches, decode, encode
from mailfleet.mta.spool import QueuedMessage, QueuedRecipient

TOKEN = "pool-admin-token-0123456789abcdef"


class Gate:
    """An MX that defers every recipient until opened."""

    def __init__(self) -> None:
        self.open = False

    def __call__(self, call: SmtpCall) -> str | None:
        return None if self.open else "451 4.3.0 not now, try later"


def _engine(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, mx: RecordingMX, name: str
) -> EngineProc:
    token = tmp_path / f"{name}-token"
    token.write_text(TOKEN)
    eng = mta_engine(
        {
            "admin": {"tokenFile": str(token)},
            "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
            "retry": {"initial": "1s", "max": "2s"},
            "dkim": {"keys": [RSA_KEY.model_dump(mode="json", by_alias=True)]},
        },
        start=False,
    )
    eng.admin_token = TOKEN
    return eng.start()


def _ids(got: list[RecordedMessage]) -> list[str]:
    out = []
    for m in got:
        for line in m.content.split(b"\r\n"):
            if line.lower().startswith(b"subject:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return out


def test_a_draining_engine_hands_its_queue_to_a_peer(
    mta_engine: Callable[..., EngineProc], recording_mx: Callable[..., RecordingMX], tmp_path: Path
) -> None:
    mx = recording_mx("127.0.0.1")
    gate = Gate()
    mx.on_rcpt = gate
    a = _engine(mta_engine, tmp_path, mx, "a")
    b = _engine(mta_engine, tmp_path, mx, "b")
    sent = [f"handoff {i}" for i in range(60)]
    for subject in sent:
        a.send("app@example.test", ["user@example.org"], message(subject))
    a.wait_until(lambda: a.metric("mailfleet_delivery_attempts_total") >= 60, 30, "attempts")
    state = a.post("/v1/drain", {"handoff": [f"http://{b.host}:{b.admin_port}"]})
    assert state["draining"] is True
    a.wait_until(lambda: a.status()["queue"]["messages"] == 0, 30, "A's queue handed off")
    assert b.status()["queue"]["messages"] == 60
    assert a.metric("mailfleet_handoff_messages_total", direction="out") == 60
    assert b.metric("mailfleet_handoff_messages_total", direction="in") == 60
    assert a.get("/readyz")["ready"] is False  # draining: out of the Service
    gate.open = True
    got = mx.wait_for(60, timeout=60)
    assert sorted(_ids(got)) == sorted(sent)  # each once, nothing lost
    for m in got:
        # Signed by A at acceptance, never again by B.
        assert m.content.count(b"DKIM-Signature:") == 1
        assert m.peer_ip == "127.0.0.1"
    # The MX has the 60th message before B has read its 250 and recorded it.
    b.wait_queue_empty(timeout=30)
    # The retry state came along: B's attempts carry on from A's count, same queue ids.
    assert b.metric("mailfleet_delivery_attempts_total", result="delivered") == 60
    a_ids = {e["message_id"] for e in a.log_lines() if e.get("msg") == "delivery attempt"}
    delivered = [
        e
        for e in b.log_lines()
        if e.get("msg") == "delivery attempt" and e["result"] == "delivered"
    ]
    assert {e["message_id"] for e in delivered} == a_ids
    assert all(e["attempt"] >= 2 for e in delivered)


def test_drain_can_be_undone(
    mta_engine: Callable[..., EngineProc], recording_mx: Callable[..., RecordingMX], tmp_path: Path
) -> None:
    mx = recording_mx("127.0.0.1")
    a = _engine(mta_engine, tmp_path, mx, "a")
    assert a.post("/v1/drain")["draining"] is True
    assert a.get("/readyz")["ready"] is False
    with pytest.raises(OSError):
        a.send("app@example.test", ["user@example.org"], message("while draining"))
    state = a.post("/v1/undrain")
    assert state["draining"] is False
    assert a.get("/readyz")["ready"] is True
    a.send("app@example.test", ["user@example.org"], message("after undrain"))
    assert _ids(mx.wait_for(1)) == ["after undrain"]


def test_a_peer_that_refuses_leaves_the_mail_here(
    mta_engine: Callable[..., EngineProc], recording_mx: Callable[..., RecordingMX], tmp_path: Path
) -> None:
    mx = recording_mx("127.0.0.1")
    gate = Gate()
    mx.on_rcpt = gate
    a = _engine(mta_engine, tmp_path, mx, "a")
    b = _engine(mta_engine, tmp_path, mx, "b")
    b.post("/v1/drain")  # draining itself: takes nothing
    for i in range(5):
        a.send("app@example.test", ["user@example.org"], message(f"stays {i}"))
    state = a.post("/v1/drain", {"handoff": [f"http://{b.host}:{b.admin_port}"]})
    a.wait_until(
        lambda: (a.post("/v1/drain").get("handoff") or {}).get("done") is True, 30, "the pass"
    )
    handoff: dict[str, Any] = a.post("/v1/drain")["handoff"]
    # Refused (or being attempted here at that moment): nothing left A.
    assert handoff["handedOff"] == 0 and handoff["refused"] >= 1
    assert "503" in (handoff["lastError"] or "")
    assert state["draining"] is True and b.status()["queue"]["messages"] == 0
    gate.open = True
    assert sorted(_ids(mx.wait_for(5, timeout=30))) == [f"stays {i}" for i in range(5)]


def test_handoff_requests_need_the_token_and_name_what_is_wrong(
    mta_engine: Callable[..., EngineProc], recording_mx: Callable[..., RecordingMX], tmp_path: Path
) -> None:
    mx = recording_mx("127.0.0.1")
    b = _engine(mta_engine, tmp_path, mx, "b")
    one = QueuedMessage("abc123", "a@example.test", 1.0, b"x", [QueuedRecipient("u@example.org")])
    assert "error" in b.post("/v1/handoff", {"messages": [encode(one)]}, token="wrong")
    bad = b.post("/v1/handoff", {"messages": [{**encode(one), "recipients": []}]})
    assert bad["error"] == "messages[0].recipients: empty"
    assert b.post("/v1/handoff", {"messages": [encode(one)]}) == {"accepted": 1, "new": 1}
    # The same handoff again (a crash between the peer's fsync and the sender's delete).
    assert b.post("/v1/handoff", {"messages": [encode(one)]}) == {"accepted": 1, "new": 0}


def test_wire_format_round_trip_and_batches() -> None:
    msg = QueuedMessage(
        "0123abcd",
        "app@example.test",
        1700000000.5,
        b"Subject: x\r\n\r\nbody\r\n",
        [QueuedRecipient("a@example.org", 3, 1700000100.0, "451 4.7.0 later")],
        "127.0.0.1",
    )
    assert decode({"messages": [encode(msg)]}) == [msg]
    wire = encode(msg)
    rcpt = wire["recipients"][0]
    assert base64.b64decode(wire["data"]) == msg.data
    for body, where in [
        ({}, 'expected JSON {"messages": [...]}'),
        ({"messages": [{**wire, "id": "../x"}]}, "messages[0].id: expected a queue id"),
        ({"messages": [{**wire, "data": "@@"}]}, "messages[0].data: not base64"),
        (
            {"messages": [{**wire, "recipients": [{"recipient": "a@b.c"}]}]},
            "messages[0].recipients[0].attempts: missing or of the wrong type",
        ),
        (
            {"messages": [{**wire, "recipients": [{**rcpt, "recipient": "a@b.org@evil.org"}]}]},
            "messages[0].recipients[0].recipient: malformed domain (empty label, a second '@',"
            " or a character not allowed)",
        ),
        (
            {"messages": [{**wire, "mailFrom": "x\x00@example.test"}]},
            "messages[0].mailFrom: control characters are not allowed",
        ),
    ]:
        with pytest.raises(HandoffError, match=f"^{__import__('re').escape(where)}$"):
            decode(body)
    many = [QueuedMessage(f"m{i}", "a@b.c", 0.0, b"x" * 10, []) for i in range(250)]
    assert [len(b) for b in batches(many)] == [100, 100, 50]
    big = [QueuedMessage(f"m{i}", "a@b.c", 0.0, b"x" * (5 * 1024 * 1024), []) for i in range(3)]
    assert [len(b) for b in batches(big)] == [1, 1, 1]
