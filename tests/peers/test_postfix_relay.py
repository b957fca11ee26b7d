"""A private real Postfix relays to the test's peers and leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fixtures.peers import PostfixRelay, RecordingMX, SmtpSink, swaks
from fixtures.procs import pid_alive, wait_until

MESSAGE = b"From: app@example.test\r\nTo: user@example.org\r\nSubject: via postfix\r\n\r\nhi\r\n"


def test_swaks_through_postfix_reaches_the_sink(
    smtp_sink: Callable[..., SmtpSink], postfix_relay: Callable[..., PostfixRelay]
) -> None:
    sink = smtp_sink("127.0.0.1")
    relay = postfix_relay(sink, "127.0.0.8")
    done = swaks(relay.address, from_="app@example.test", to="user@example.org", data=MESSAGE)
    assert done.returncode == 0, done.stdout
    assert "queued as" in done.stdout
    sink.wait_for(1, timeout=60)
    (msg,) = sink.messages()
    assert (msg.mail_from, msg.rcpt_tos) == ("app@example.test", ["user@example.org"])
    assert b"Subject: via postfix\n" in msg.content
    # Postfix adds its own trace header, so this really went through it
    assert b"by relay.test (Postfix) with ESMTP" in msg.content


def test_postfix_retries_a_deferral(
    recording_mx: Callable[..., RecordingMX], postfix_relay: Callable[..., PostfixRelay]
) -> None:
    mx = recording_mx()
    mx.script_rcpt("451 4.3.0 try later")
    relay = postfix_relay(mx)
    assert swaks(relay.address, to="user@example.org").returncode == 0
    # after the 451 the message waits in the deferred queue until a flush
    wait_until(lambda: mx.replies(), 30, what="postfix's first delivery attempt")
    relay.flush()
    (msg,) = mx.wait_for(1, timeout=60)
    assert msg.rcpt_tos == ["user@example.org"]
    assert [r.reply[:3] for r in mx.replies() if r.stage == "RCPT"] == ["451", "250"]
    assert relay.queue_size() == 0


def test_stop_ends_the_master_and_frees_the_port(smtp_sink: Callable[..., SmtpSink]) -> None:
    sink = smtp_sink(dump=False)
    relay = PostfixRelay(sink.address)
    relay.start()
    pid = relay.master_pid
    assert pid is not None and pid_alive(pid)
    relay.close()
    assert not pid_alive(pid)
    assert swaks(relay.address, timeout=5).returncode != 0


def test_bench_postfix_prints_a_figure() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "bench.postfix", "--count", "200", "--sessions", "5"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"postfix relay: 200 msgs x 5 KB over 5 sessions: \d+ msg/s end to end .*\n", done.stdout
    )
