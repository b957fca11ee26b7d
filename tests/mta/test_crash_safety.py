"""kill -9 during a load: every message that got 250 arrives; only those in flight may repeat."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable

from fixtures.engine import EngineProc
from fixtures.smtppeers import RecordingMX

TOTAL = 3000
SENDERS = 8


def _load(eng: EngineProc, start: int, acked: list[str], stop: threading.Event) -> None:
    """Send messages start, start+SENDERS, ... until the engine dies; record the 250s."""
    n = start
    while n < TOTAL and not stop.is_set():
        try:
            with eng.smtp() as s:
                s.ehlo()
                while n < TOTAL and not stop.is_set():
                    tag = f"crash-{n:05d}"
                    s.mail("load@example.test")
                    s.rcpt(f"r{n}@example.org")
                    code, _ = s.data(
                        f"From: <load@example.test>\r\nSubject: {tag}\r\n\r\n{tag}\r\n".encode()
                    )
                    if code == 250:
                        acked.append(tag)
                    n += SENDERS
        except (OSError, smtplib.SMTPException):
            return


def _start_load(eng: EngineProc) -> tuple[list[str], threading.Event, list[threading.Thread]]:
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(eng, i, acked, stop)) for i in range(SENDERS)]
    for t in threads:
        t.start()
    return acked, stop, threads


def test_kill9_loses_no_accepted_message(
    mta_engine: Callable[..., EngineProc],
) -> None:
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine({"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}})
        acked, stop, threads = _start_load(eng)
        deadline = time.monotonic() + 60
        while len(acked) < TOTAL // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        eng.kill9()
        stop.set()
        for t in threads:
            t.join(30)
        accepted = set(acked)
        assert len(accepted) >= TOTAL // 3

        eng.start()  # same spool: recovers what was queued
        eng.wait_queue_empty(timeout=120)

        def tag_of(content: bytes) -> str:
            m = re.search(rb"Subject: (crash-\d+)", content)
            assert m, content[:200]
            return m.group(1).decode()

        seen = Counter(tag_of(m.content) for m in mx.messages())
        missing = accepted - set(seen)
        duplicates = sum(c - 1 for c in seen.values() if c > 1)
        print(
            f"\ncrash safety: {len(accepted)} accepted before kill -9, {len(seen)} distinct "
            f"delivered, {len(missing)} missing, {duplicates} duplicates"
        )
        assert not missing, f"accepted but never delivered: {sorted(missing)[:10]}"


def test_sigterm_under_load_stops_cleanly_and_loses_nothing(
    mta_engine: Callable[..., EngineProc],
) -> None:
    """A graceful stop in the middle of deliveries: the engine exits by itself (status 0, not
    killed), and after a restart every accepted message arrives."""
    import os
    import signal
    import subprocess

    with RecordingMX("127.0.0.1") as mx:
        mx.on_data = lambda call: (time.sleep(0.02), None)[1]  # slow MX: deliveries in flight
        eng = mta_engine({"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}})
        acked, stop, threads = _start_load(eng)
        while len(acked) < 300:
            time.sleep(0.01)
        assert eng.proc is not None
        os.kill(eng.proc.pid, signal.SIGTERM)
        try:
            code = eng.proc.popen.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        stop.set()
        for t in threads:
            t.join(30)
        assert code == 0, f"the engine did not stop by itself:\n{eng.log()[-2000:]}"
        mx.on_data = None
        eng.start()
        eng.wait_queue_empty(timeout=120)
        seen = {
            m.group(1).decode()
            for msg in mx.messages()
            if (m := re.search(rb"Subject: (crash-\d+)", msg.content))
        }
        assert set(acked) <= seen
