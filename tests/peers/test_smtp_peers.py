"""smtp-sink, the RecordingMX and the clients, exercised with real SMTP traffic."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable

import aiosmtplib
import pytest
from fixtures.peers import RecordingMX, SmtpCall, SmtpSink, free_port, smtp_source, swaks

SinkFactory = Callable[..., SmtpSink]
MXFactory = Callable[..., RecordingMX]

MESSAGE = (
    b"From: app@example.test\r\nTo: rcpt@example.org\r\nSubject: hello\r\n\r\n"
    b"line one\r\n.leading dot\r\n"
)


def test_sink_counts_what_smtp_source_sends(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("127.0.0.3", dump=False)
    elapsed = smtp_source(sink.address, count=50, sessions=5, size=2048)
    assert elapsed > 0
    assert sink.wait_for(50, timeout=30) == 50
    assert sink.sessions >= 50  # smtp-source opens one session per message without -d


def test_sink_dumps_each_message_with_the_client_address(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink("127.0.0.3")
    done = swaks(
        sink.address,
        from_="app@example.test",
        to=["a@example.org", "b@example.org"],
        local_interface="127.0.0.7",
        data=MESSAGE,
    )
    assert done.returncode == 0, done.stdout
    sink.wait_for(1)
    (msg,) = sink.messages()
    assert msg.client_addr == "127.0.0.7"
    assert msg.mail_from == "app@example.test"
    assert msg.rcpt_tos == ["a@example.org", "b@example.org"]
    assert msg.content == MESSAGE.replace(b"\r\n", b"\n")


def test_sink_rejecting_rcpt_makes_the_client_fail(smtp_sink: SinkFactory) -> None:
    sink = smtp_sink(extra_args=["-r", "RCPT"])
    done = swaks(sink.address)
    assert done.returncode != 0
    assert "450 4.3.0" in done.stdout
    assert sink.count == 0


def test_smtp_source_raises_when_nobody_listens() -> None:
    with pytest.raises(subprocess.CalledProcessError):
        smtp_source(f"127.0.0.1:{free_port()}", count=1)


def test_mx_records_source_ip_envelope_and_content(recording_mx: MXFactory) -> None:
    mx = recording_mx("127.0.0.4")
    done = swaks(
        f"{mx.host}:{mx.port}",
        from_="app@example.test",
        to="rcpt@example.org",
        local_interface="127.0.0.9",
        helo="mta9.example.test",
        data=MESSAGE,
    )
    assert done.returncode == 0, done.stdout
    (msg,) = mx.wait_for(1)
    assert (msg.peer_ip, msg.helo, msg.tls) == ("127.0.0.9", "mta9.example.test", False)
    assert (msg.mail_from, msg.rcpt_tos) == ("app@example.test", ["rcpt@example.org"])
    assert msg.content == MESSAGE


def test_mx_scripted_replies_per_recipient_then_250(recording_mx: MXFactory) -> None:
    mx = recording_mx()
    mx.script_rcpt("451 4.3.0 try later", rcpt="Busy@example.org")
    server = f"{mx.host}:{mx.port}"

    first = swaks(server, to=["busy@example.org", "free@example.org"])
    assert "451 4.3.0 try later" in first.stdout
    assert [m.rcpt_tos for m in mx.messages()] == [["free@example.org"]]

    second = swaks(server, to="busy@example.org")
    assert second.returncode == 0, second.stdout
    rcpt = [(r.address, r.reply[:3]) for r in mx.replies() if r.stage == "RCPT"]
    assert rcpt == [
        ("busy@example.org", "451"),
        ("free@example.org", "250"),
        ("busy@example.org", "250"),
    ]


def test_mx_scripted_data_replies_per_transaction(recording_mx: MXFactory) -> None:
    mx = recording_mx()
    mx.script_data("452 4.3.1 mailbox full", "554 5.7.1 content rejected")
    server = f"{mx.host}:{mx.port}"
    results = [swaks(server).returncode == 0 for _ in range(3)]
    assert results == [False, False, True]
    assert [r.reply[:3] for r in mx.replies() if r.stage == "DATA"] == ["452", "554", "250"]
    assert len(mx.messages()) == 1


def test_mx_hooks_decide_from_the_call(recording_mx: MXFactory) -> None:
    mx = recording_mx()
    seen: list[SmtpCall] = []

    def on_rcpt(call: SmtpCall) -> str | None:
        seen.append(call)
        return "550 5.1.1 no such user" if call.address == "gone@example.org" else None

    mx.on_rcpt = on_rcpt
    mx.on_data = lambda call: "554 5.7.1 spam" if b"viagra" in (call.content or b"") else None
    server = f"{mx.host}:{mx.port}"
    assert "550 5.1.1" in swaks(server, to="gone@example.org").stdout
    assert "554 5.7.1" in swaks(server, body="cheap viagra").stdout
    assert swaks(server, body="hello").returncode == 0
    assert seen[0].peer_ip == "127.0.0.1" and seen[0].mail_from == "sender@example.com"
    assert len(mx.messages()) == 1


def test_mx_421_closes_the_connection(recording_mx: MXFactory) -> None:
    mx = recording_mx()
    mx.script_mail("421 4.7.0 too many connections")
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.ehlo()
        code, _ = client.mail("a@example.test")
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_mx_starttls_with_self_signed_cert(recording_mx: MXFactory) -> None:
    mx = recording_mx(tls=True, hostname="mx.example.org")
    done = swaks(f"{mx.host}:{mx.port}", tls=True, local_interface="127.0.0.2")
    assert done.returncode == 0, done.stdout
    (msg,) = mx.wait_for(1)
    assert msg.tls and msg.peer_ip == "127.0.0.2"
    # a real certificate: a client trusting it verifies the server's address and name
    ctx = ssl.create_default_context(cafile=str(mx.cert_path))
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as client:
        client.starttls(context=ctx)
        assert client.noop()[0] == 250
    with ctx.wrap_socket(socket.socket(), server_hostname="mx.example.org") as raw:
        raw.settimeout(10)
        with pytest.raises(ssl.SSLError):
            raw.connect((mx.host, mx.port))  # plain SMTP port: the handshake must fail


def test_mx_require_tls_refuses_plaintext_mail(recording_mx: MXFactory) -> None:
    mx = recording_mx(require_tls=True)
    plain = swaks(f"{mx.host}:{mx.port}")
    assert plain.returncode != 0
    assert "530" in plain.stdout
    assert swaks(f"{mx.host}:{mx.port}", tls=True).returncode == 0
    assert len(mx.messages()) == 1


async def test_mx_serves_async_clients(recording_mx: MXFactory) -> None:
    mx = recording_mx("127.0.0.5")
    await aiosmtplib.send(
        MESSAGE,
        sender="app@example.test",
        recipients=["rcpt@example.org"],
        hostname=mx.host,
        port=mx.port,
        source_address=("127.0.0.11", 0),
        start_tls=False,
    )
    (msg,) = await mx.wait_for_async(1)
    assert msg.peer_ip == "127.0.0.11"
    assert msg.content == MESSAGE


def test_swaks_auth_and_headers_reach_the_server(recording_mx: MXFactory) -> None:
    mx = recording_mx()
    done = swaks(
        f"{mx.host}:{mx.port}",
        headers=["Subject: greetings", "X-Tag: t1"],
        body="the body",
    )
    assert done.returncode == 0
    (msg,) = mx.wait_for(1)
    assert b"Subject: greetings\r\n" in msg.content
    assert b"X-Tag: t1\r\n" in msg.content
    assert b"the body" in msg.content


def test_context_managers_stop_their_peers() -> None:
    with SmtpSink() as sink:
        address = sink.address
        assert swaks(address).returncode == 0
    assert swaks(address, timeout=5).returncode != 0
    with RecordingMX() as mx:
        port = mx.port
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=2)
