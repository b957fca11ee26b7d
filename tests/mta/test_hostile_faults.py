"""Faults at the engine's edge (issue 10): the spool's disk full on a small filesystem. The
client gets 452 4.3.1 (try later), what was accepted is kept and delivered, and the engine takes
mail again once space returns."""

from __future__ import annotations

import contextlib
import errno
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fixtures.engine import EngineProc, message
from fixtures.rawsmtp import RawSMTP
from fixtures.smtppeers import RecordingMX

from mailfleet.mta.queue import SHAPING_SAVE_INTERVAL


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to make room)."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for _ in range(100_000):  # bounded: far more than any test filesystem holds
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    return filler


def _subjects(mx: RecordingMX) -> set[bytes]:
    return {m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in mx.messages()}


def _send(eng: EngineProc, subject: str) -> str:
    with RawSMTP("127.0.0.1", eng.smtp_port) as c:
        assert c.cmd("EHLO client.test").startswith("250")
        mail = c.cmd("MAIL FROM:<app@example.test>")
        if not mail.startswith("250"):
            return mail
        rcpt = c.cmd("RCPT TO:<x@example.org>")
        if not rcpt.startswith("250"):
            return rcpt
        assert c.cmd("DATA").startswith("354")
        c.send(message(subject) + b".\r\n")
        return c.reply()


def test_disk_full_says_452_keeps_what_it_accepted_and_recovers(
    mta_engine: Callable[..., EngineProc], small_fs: Path
) -> None:
    with RecordingMX("127.0.0.1") as mx:
        mx.script_rcpt(*["451 4.3.0 not now"] * 3)  # keep the first messages queued a while
        eng = mta_engine(
            {
                # No reserve: the spool's own writes meet the full disk (ENOSPC, SQLITE_FULL).
                "spool": {"path": str(small_fs / "spool"), "diskReserve": 0},
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "retry": {"initial": "1s", "max": "1s", "jitter": 0},
            }
        )
        before = [_send(eng, f"before {i}") for i in range(3)]
        assert all(r.startswith("250 ") for r in before), before
        filler = fill(small_fs)
        refused = [_send(eng, f"full {i}") for i in range(3)]
        assert all(r.startswith("452 4.3.1 ") for r in refused), refused
        filler.unlink()
        after = _send(eng, "after")
        assert after.startswith("250 "), after
        # By subject, not by count: a delivery the full disk kept from being recorded is sent
        # again (at least once), so four arrivals need not be four different messages.
        want = {b"after", b"before 0", b"before 1", b"before 2"}
        deadline = time.monotonic() + 60
        while _subjects(mx) != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _subjects(mx) == want
        assert eng.proc is not None and eng.proc.running()


def test_deferred_mail_survives_a_full_disk_while_shaping_changes(
    mta_engine: Callable[..., EngineProc], small_fs: Path
) -> None:
    # A throttling reply changes the shaping state, which the engine saves to the spool every
    # SHAPING_SAVE_INTERVAL; that save failing on a full disk once stopped every retry for good.
    with RecordingMX("127.0.0.1") as mx:
        mx.script_rcpt(*["421 4.7.0 try again later"] * 3)
        eng = mta_engine(
            {
                # No reserve: the spool's own writes meet the full disk (ENOSPC, SQLITE_FULL).
                "spool": {"path": str(small_fs / "spool"), "diskReserve": 0},
                "routing": {"routes": {"*": f"{mx.host}:{mx.port}"}},
                "retry": {"initial": "1s", "max": "1s", "jitter": 0},
            }
        )
        assert all(_send(eng, f"queued {i}").startswith("250 ") for i in range(3))
        eng.wait_until(
            lambda: eng.metric("mailfleet_delivery_attempts_total", result="deferred") >= 1,
            what="a throttled attempt",
        )
        filler = fill(small_fs)
        # Long enough for at least one save of the shaping state while the disk is full.
        time.sleep(SHAPING_SAVE_INTERVAL * 2)
        filler.unlink()
        # Delivered at least once each (a delivery the full disk kept from being recorded is
        # repeated: at-least-once).
        eng.wait_until(lambda: len(_subjects(mx)) == 3, timeout=60, what="all three delivered")
        assert _subjects(mx) == {b"queued 0", b"queued 1", b"queued 2"}


def test_every_accepted_message_is_delivered_once(
    mta_engine: Callable[..., EngineProc],
) -> None:
    # Found by `make reliability`: the spool loader could read a message between its commit and
    # the submission handing it to the queue, and both scheduled it: two deliveries.
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine({"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}})
        sent: list[str] = []

        def client(n: int) -> None:
            with eng.smtp() as s:
                for i in range(75):
                    subject = f"once {n}-{i}"
                    s.sendmail("app@example.test", ["x@example.org"], message(subject))
                    sent.append(subject)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(sent) == 300
        eng.wait_queue_empty(timeout=120)
        subjects = [m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in mx.messages()]
        twice = sorted({s for s in subjects if subjects.count(s) > 1})
        assert twice == [] and len(subjects) == 300
