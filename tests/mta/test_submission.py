"""The submission listener against real clients (swaks, smtplib): relay control, AUTH over TLS
only, size and recipient limits, PIPELINING and the other advertised extensions."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.engine import EngineProc, message
from fixtures.smtppeers import RecordingMX, make_self_signed_cert, swaks

from mailfleet.mta.auth import hash_password


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path, hostnames=["mta.test", "localhost"], ips=["127.0.0.1"])


def _route(mx: RecordingMX) -> dict[str, object]:
    return {"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}, "retry": {"initial": "1s"}}


def test_trusted_client_relays_and_message_arrives(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine(_route(mx))
    done = swaks(
        f"127.0.0.1:{eng.smtp_port}",
        from_="app@example.test",
        to="someone@example.org",
        headers=["Subject: trusted relay"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "250 2.0.0 Ok: queued as" in done.stdout
    got = mx.wait_for(1)[0]
    assert got.rcpt_tos == ["someone@example.org"]
    assert b"Subject: trusted relay" in got.content
    # The trace header an MTA must add (RFC 5321 4.4), naming the client and the queue id.
    assert got.content.startswith(b"Received: from ") or b"\r\nReceived: from " in got.content
    assert b"by mta.test (mailfleet)" in got.content


def test_untrusted_client_cannot_relay(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    # Only 127.0.0.1 is trusted; a client connecting from 127.0.0.2 is a stranger.
    eng = mta_engine({**_route(mx), "submission": {"trustedNetworks": ["127.0.0.1/32"]}})
    done = swaks(
        f"127.0.0.1:{eng.smtp_port}",
        local_interface="127.0.0.2",
        from_="spammer@example.net",
        to="victim@example.org",
    )
    assert done.returncode != 0
    assert "554 5.7.1 Relay access denied" in done.stdout
    assert mx.messages() == []
    assert eng.metric("mailfleet_submission_rejections_total", reason="relay-denied") == 1


def test_auth_only_after_starttls_and_wrong_password_refused(
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
    tmp_path: Path,
    tls_files: tuple[Path, Path],
) -> None:
    users = tmp_path / "users"
    users.write_text(f"app:{hash_password('s3cret-pass', rounds=4)}:example.test\n")
    cert, key = tls_files
    eng = mta_engine(
        {
            **_route(mx),
            "submission": {
                "trustedNetworks": ["192.0.2.0/24"],  # loopback is not trusted here
                "authUsersFile": str(users),
                "tls": {"certFile": str(cert), "keyFile": str(key)},
            },
        }
    )
    server = f"127.0.0.1:{eng.smtp_port}"

    # Without TLS the server does not even offer AUTH, and refuses it if asked anyway.
    plain = swaks(server, auth=("app", "s3cret-pass"))
    assert plain.returncode != 0
    with eng.smtp() as s:
        s.ehlo()
        assert not s.has_extn("auth")
        assert s.has_extn("starttls")
        code, text = s.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQtcGFzcw==")
        assert code == 538, text
        # Unauthenticated and untrusted: no relaying, and the reply says why.
        s.mail("app@example.test")
        code, text = s.rcpt("someone@example.org")
        assert (code, text[:5]) == (530, b"5.7.0")

    wrong = swaks(server, tls=True, auth=("app", "not-the-password"))
    assert wrong.returncode != 0
    assert "535" in wrong.stdout

    good = swaks(
        server,
        tls=True,
        auth=("app", "s3cret-pass"),
        from_="app@example.test",
        to="someone@example.org",
    )
    assert good.returncode == 0, good.stdout
    got = mx.wait_for(1)[0]
    assert b"with ESMTPSA" in got.content
    # The password never reaches the logs.
    assert "s3cret-pass" not in eng.log()
    assert "not-the-password" not in eng.log()


def test_size_limit_and_recipient_limit(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = mta_engine({**_route(mx), "submission": {"maxMessageSize": 10000, "maxRecipients": 3}})
    with eng.smtp() as s:
        s.ehlo()
        assert s.has_extn("size") and s.esmtp_features["size"] == "10000"
        for ext in ("pipelining", "8bitmime", "smtputf8"):
            assert s.has_extn(ext), ext
        code, _ = s.mail("a@example.test", ["SIZE=20000"])
        assert code == 552
        s.rset()
        s.mail("a@example.test")
        for i in range(3):
            assert s.rcpt(f"r{i}@example.org")[0] == 250
        code, text = s.rcpt("r3@example.org")
        assert (code, text) == (452, b"4.5.3 Too many recipients")
        code, _ = s.data(b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 200)
        assert code == 552  # over 10000 bytes of DATA
    assert mx.messages() == []


def test_pipelined_transaction(mta_engine: Callable[..., EngineProc], mx: RecordingMX) -> None:
    """A client that sends MAIL, RCPT, RCPT and DATA in one write gets every reply, in order."""
    eng = mta_engine(_route(mx))
    import socket

    with socket.create_connection(("127.0.0.1", eng.smtp_port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(
            b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.org>\r\n"
            b"RCPT TO:<c@example.org>\r\nDATA\r\n"
        )
        replies = [f.readline()[:3] for _ in range(4)]
        assert replies == [b"250", b"250", b"250", b"354"]
        sock.sendall(message("pipelined") + b".\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0 Ok: queued as")
    got = mx.wait_for(1)[0]
    assert sorted(got.rcpt_tos) == ["b@example.org", "c@example.org"]


def test_smtputf8_and_8bit(mta_engine: Callable[..., EngineProc], mx: RecordingMX) -> None:
    eng = mta_engine(_route(mx))
    body = "Subject: grüße\r\nFrom: <jörg@example.test>\r\n\r\nÜmlauts ✓\r\n".encode()
    with eng.smtp() as s:
        s.ehlo()
        s.mail("jörg@example.test", ["SMTPUTF8", "BODY=8BITMIME"])
        assert s.rcpt("empfänger@example.org")[0] == 250
        assert s.data(body)[0] == 250
    got = mx.wait_for(1)[0]
    assert "Ümlauts ✓".encode() in got.content
    assert got.rcpt_tos == ["empfänger@example.org"]


def test_smtplib_errors_are_clear(mta_engine: Callable[..., EngineProc], mx: RecordingMX) -> None:
    eng = mta_engine(_route(mx))
    with eng.smtp() as s:
        s.ehlo()
        s.mail("a@example.test")
        code, text = s.rcpt("no-domain")
        assert code == 501 and b"user@domain" in text
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        eng.send("a@example.test", ["bad"], message())
