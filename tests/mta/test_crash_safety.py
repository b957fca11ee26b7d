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


def test_kill9_loses_no_accepted_message(
    mta_engine: Callable[..., EngineProc],
) -> None:
    with RecordingMX("127.0.0.1") as mx:
        eng = mta_engine({"routing": {"routes": {"*": f"{mx.host}:{mx.port}"}}})
        acked: list[str] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=_load, args=(eng, i, acked, stop)) for i in range(SENDERS)
        ]
        for t in threads:
            t.start()
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
