"""Abusive sessions at the submission listener, second round (issue 21): a client that leaves
after its final dot, AUTH lockout per (client, user), the memory unauthenticated sessions may
hold, which From domains an AUTH user may send for, and replies that leak no internals. Each
asserts what a client (or the operator) sees."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fixtures.engine import EngineProc
from fixtures.rawsmtp import RawSMTP
from fixtures.rawsmtp import auth_plain as _plain
from fixtures.rawsmtp import tls_session as _tls_session
from fixtures.smtppeers import RecordingMX, make_self_signed_cert

from mailfleet.mta.auth import hash_password


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path, hostnames=["mta.test", "localhost"], ips=["127.0.0.1"])


def _route(mx: RecordingMX) -> dict[str, Any]:
    return {"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}}


def _auth_engine(
    mta_engine: Callable[..., EngineProc],
    tmp_path: Path,
    tls_files: tuple[Path, Path],
    lines: list[str],
    **config: Any,
) -> EngineProc:
    users = tmp_path / "users"
    users.write_text("".join(line + "\n" for line in lines))
    cert, key = tls_files
    extra = config.pop("submission", {})
    return mta_engine(
        {
            **config,
            "submission": {
                "trustedNetworks": ["192.0.2.0/24"],  # loopback is not trusted here
                "authUsersFile": str(users),
                "tls": {"certFile": str(cert), "keyFile": str(key)},
                **extra,
            },
        }
    )


def _hashed(user: str, password: str, domains: str | None = None) -> str:
    line = f"{user}:{hash_password(password, rounds=4)}"
    return line + (f":{domains}" if domains is not None else "")


# -- 4: a client that leaves after its final dot ------------------------------------------------


def _spool_rows(eng: EngineProc) -> int:
    db = sqlite3.connect(f"file:{eng.workdir / 'spool' / 'spool.db'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def test_a_client_leaving_after_the_final_dot_never_leaves_an_orphan_or_a_negative_queue(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    # Each commit waits 50 ms for company: the client is gone while it is under way.
    eng = mta_engine({**_route(mx), "spool": {"groupCommitWindow": "50ms"}})
    sent = 50
    for i in range(sent):
        s = socket.create_connection(("127.0.0.1", eng.smtp_port), timeout=10)
        s.sendall(
            b"EHLO client.test\r\nMAIL FROM:<app@example.test>\r\nRCPT TO:<x@example.org>\r\n"
            b"DATA\r\n"
        )
        s.recv(4096)  # at least the greeting: the session is under way
        s.sendall(f"Subject: leaver {i}\r\n\r\nbody\r\n.\r\n".encode())
        time.sleep(0.005)  # long enough for the server to read the dot, not for its commit
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    seen: list[int] = []

    def settled() -> bool:
        seen.append(eng.status()["queue"]["messages"])
        return _spool_rows(eng) == 0 and seen[-1] == 0

    # Long enough for the loader's sweep (30 s) to find what was stored but not queued.
    eng.wait_until(settled, timeout=45, what="spool and queue empty")
    assert min(seen) >= 0, seen
    subjects = [m.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in mx.messages()]
    # Each stored message delivered exactly once; what was not stored is the client's to resend.
    assert len(subjects) == len(set(subjects)), sorted(subjects)
    assert eng.status()["queue"]["messages"] == 0
    assert eng.status()["queue"]["recipients"] == 0


def test_the_data_deadline_is_over_once_the_data_is_in(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    # The commit takes 2.5 s (the group commit waits for company); the data-rate deadline
    # (1 s of grace, 100 KB/s) would say 421 meanwhile, with the message committed all the same.
    eng = mta_engine(
        {
            **_route(mx),
            "spool": {"groupCommitWindow": "2500ms"},
            "submission": {"commandTimeout": "1s", "minDataRate": 100000},
        }
    )
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        assert c.cmd("MAIL FROM:<app@example.test>").startswith("250")
        assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd(b"Subject: slow commit\r\n\r\nbody\r\n.")
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    assert len(mx.wait_for(1)) == 1


# -- 9: AUTH lockout per (client address, user) -------------------------------------------------


def test_failures_from_elsewhere_do_not_lock_the_user_out(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    eng = _auth_engine(
        mta_engine,
        tmp_path,
        tls_files,
        [_hashed("app", "s3cret-pass"), _hashed("other", "other-pass")],
        submission={"authLimits": {"maxFailures": 3}},
    )
    # An attacker at 127.0.0.2 guesses app's password until locked out ...
    with _tls_session(eng, source="127.0.0.2") as c:
        for guess in ("a", "b", "c"):
            assert c.cmd(_plain("app", guess)).startswith("535 5.7.8"), guess
        assert c.cmd(_plain("app", "s3cret-pass")).startswith("421 4.7.0")
        assert c.closed()
    # ... which locks app out from there only: the real user elsewhere still logs in,
    with _tls_session(eng, source="127.0.0.1") as c:
        assert c.cmd(_plain("app", "s3cret-pass")).startswith("235 2.7.0")
    # and another user behind the attacker's address (a NAT) too.
    with _tls_session(eng, source="127.0.0.2") as c:
        assert c.cmd(_plain("other", "other-pass")).startswith("235 2.7.0")
    assert eng.metric("mailfleet_submission_rejections_total", reason="auth-locked") == 1


def test_a_client_guessing_many_users_is_locked_out_for_all(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    eng = _auth_engine(
        mta_engine,
        tmp_path,
        tls_files,
        [_hashed("other", "other-pass")],
        submission={"authLimits": {"maxFailures": 3, "maxFailuresPerClient": 5}},
    )
    with _tls_session(eng, source="127.0.0.3") as c:
        for n in range(5):  # never 3 for one user: locked by the client's own bound
            assert c.cmd(_plain(f"user{n}", "guess")).startswith("535 5.7.8"), n
        assert c.cmd(_plain("other", "other-pass")).startswith("421 4.7.0")
    with _tls_session(eng, source="127.0.0.4") as c:
        assert c.cmd(_plain("other", "other-pass")).startswith("235 2.7.0")


# -- 10: the message data unauthenticated sessions may hold -------------------------------------


def _report_engine(mta_engine: Callable[..., EngineProc], mx: RecordingMX) -> EngineProc:
    # Anyone may mail the feedback address (reports signed by example.test count).
    return mta_engine(
        {
            **_route(mx),
            "submission": {"maxReportSize": 200_000, "untrustedDataBudget": 300_000},
            "suppression": {
                "feedbackAddresses": ["fbl@mta.test"],
                "feedbackDomains": ["example.test"],
            },
        }
    )


def _to_report_address(eng: EngineProc, source: str, size: str = "") -> RawSMTP:
    c = RawSMTP("127.0.0.1", eng.smtp_port, source=source)
    assert c.cmd("EHLO reporter.test").startswith("250")
    mail = c.cmd(f"MAIL FROM:<fbl@reporter.test>{size}")
    assert mail.startswith("250"), mail
    assert c.cmd("RCPT TO:<fbl@mta.test>").startswith("250")
    return c


def _body(size: int) -> bytes:
    line = b"x" * 98 + b"\r\n"
    return b"Subject: report\r\n\r\n" + line * (size // len(line))


def test_report_size_and_the_untrusted_budget(
    mta_engine: Callable[..., EngineProc], mx: RecordingMX
) -> None:
    eng = _report_engine(mta_engine, mx)
    # Told at MAIL when the client says the size ...
    with RawSMTP("127.0.0.1", eng.smtp_port, source="127.0.0.2") as c:
        assert c.cmd("EHLO reporter.test").startswith("250")
        reply = c.cmd("MAIL FROM:<fbl@reporter.test> SIZE=250000")
        assert reply.startswith("552 5.3.4 ") and "maxReportSize" in reply, reply
    # ... else after the data.
    with _to_report_address(eng, "127.0.0.2") as c:
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd(_body(250_000) + b".")
        assert reply.startswith("552 5.3.4 "), reply
    # One session holds 190 KB of a report (not finished yet): another's 190 KB is over the
    # 300 KB budget, 452 4.3.1; trusted mail is not counted and goes through meanwhile.
    holder = _to_report_address(eng, "127.0.0.3")
    assert holder.cmd("DATA").startswith("354")
    holder.send(_body(190_000))
    with _to_report_address(eng, "127.0.0.4") as c:
        assert c.cmd("NOOP").startswith("250")  # the holder's data is read by now
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd(_body(190_000) + b".")
        assert reply.startswith("452 4.3.1 "), reply
        assert c.cmd("NOOP").startswith("250")  # the session goes on
    assert eng.send("app@example.test", ["x@example.org"], _body(190_000)) != ""
    # The holder's report is answered (unsigned: refused), and its bytes are released.
    assert holder.cmd(b".").startswith("550 5.7.1 ")
    holder.close()
    with _to_report_address(eng, "127.0.0.4") as c:
        assert c.cmd("DATA").startswith("354")
        assert c.cmd(_body(190_000) + b".").startswith("550 5.7.1 ")
    assert len(mx.wait_for(1)) == 1
    assert eng.metric("mailfleet_submission_rejections_total", reason="untrusted-budget") == 1


# -- From domains an AUTH user may send for -----------------------------------------------------


def _mail_as(c: RawSMTP, envelope: str, header_from: str) -> tuple[str, str]:
    mail = c.cmd(f"MAIL FROM:<{envelope}>")
    if not mail.startswith("250"):
        return mail, ""
    assert c.cmd("RCPT TO:<x@example.org>").startswith("250")
    assert c.cmd("DATA").startswith("354")
    reply = c.cmd(f"From: <{header_from}>\r\nSubject: as {header_from}\r\n\r\nhi\r\n.".encode())
    return mail, reply


def test_auth_users_send_only_for_their_domains(
    mta_engine: Callable[..., EngineProc],
    mx: RecordingMX,
    tmp_path: Path,
    tls_files: tuple[Path, Path],
) -> None:
    eng = _auth_engine(
        mta_engine,
        tmp_path,
        tls_files,
        [
            _hashed("app", "pw-app", "example.test, brand.test"),
            _hashed("news@letters.test", "pw-news"),  # no list: its login's domain
            _hashed("relay", "pw-relay", "*"),
            _hashed("plain", "pw-plain"),  # no list, no domain: nothing
        ],
        **_route(mx),
    )
    with _tls_session(eng) as c:
        assert c.cmd(_plain("app", "pw-app")).startswith("235")
        assert _mail_as(c, "a@example.test", "a@news.brand.test")[1].startswith("250 ")
        mail, _ = _mail_as(c, "a@victim.test", "a@example.test")
        assert mail.startswith("550 5.7.1 ") and "victim.test" in mail and "app" in mail, mail
        assert c.cmd("RSET").startswith("250")
        _, data = _mail_as(c, "a@example.test", "ceo@victim.test")
        assert data.startswith("550 5.7.1 From header: user app may not send for domain"), data
        assert "victim.test" in data
    with _tls_session(eng) as c:
        assert c.cmd(_plain("news@letters.test", "pw-news")).startswith("235")
        assert _mail_as(c, "n@letters.test", "n@letters.test")[1].startswith("250 ")
        assert _mail_as(c, "n@letters.test", "n@example.test")[1].startswith("550 5.7.1 ")
    with _tls_session(eng) as c:
        assert c.cmd(_plain("relay", "pw-relay")).startswith("235")
        assert _mail_as(c, "r@anything.test", "r@victim.test")[1].startswith("250 ")
    with _tls_session(eng) as c:
        assert c.cmd(_plain("plain", "pw-plain")).startswith("235")
        assert _mail_as(c, "p@example.test", "p@example.test")[0].startswith("550 5.7.1 ")
        # A bounce (null sender) has no domain to check at MAIL; its From header still counts.
        assert _mail_as(c, "", "p@example.test")[1].startswith("550 5.7.1 ")
    senders = sorted(m.content.split(b"From: <", 1)[1].split(b">", 1)[0] for m in mx.wait_for(3))
    assert senders == [b"a@news.brand.test", b"n@letters.test", b"r@victim.test"]
    assert eng.metric("mailfleet_submission_rejections_total", reason="sender-domain") == 5


# -- replies that leak no internals -------------------------------------------------------------


def test_an_unexpected_error_is_a_generic_421_and_goes_to_the_log(
    mta_engine: Callable[..., EngineProc], tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    eng = _auth_engine(mta_engine, tmp_path, tls_files, [_hashed("app", "pw-app")])
    with _tls_session(eng) as c:
        assert c.cmd("AUTH LOGIN").startswith("334 ")
        # An answer longer than aiosmtpd's line limit: its readline raises ValueError.
        reply = c.cmd(b"A" * 5000)
        assert reply.startswith("421 4.3.0 "), reply
        assert "Error" not in reply and "ValueError" not in reply and "limit" not in reply
        assert c.closed()
    assert "ValueError" in eng.log()
    with _tls_session(eng) as c:  # the engine serves on
        assert c.cmd(_plain("app", "pw-app")).startswith("235")
