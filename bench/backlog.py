"""A backlog: N queued messages of 5 KB in one engine's spool (a provider outage's worth).

    python -m bench.backlog [--messages 100000 ...] [--quick] [--size 5120] [--domains 10]
                            [--drain-seconds 60]

1. An idle engine on an empty spool: its RSS is the baseline.
2. The spool is filled with N messages as an outage leaves it: each tried once and deferred an
   hour (written straight into the spool's tables, in big transactions: filling is not what is
   measured). The engine starts on it: restart to ready, then RSS once the queue is counted.
3. `kill -9`; the hour is over (every message due); the engine starts again with the sink up:
   restart to ready, first delivery after restart, then the drain rate over `--drain-seconds`
   (or until the queue is empty), no shaping limit set.

Prints `backlog: N queued, rss R MB (B bytes/message over idle), restart to ready S s, first
delivery after restart T s, drain D msg/s`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import smtplib
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from mailfleet.mta.spool import SCHEMA, Spool
from tests.fixtures.procs import Proc, free_port
from tests.fixtures.smtppeers import SmtpSink

MAILFLEET = str(Path(sys.executable).parent / "mailfleet")


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def _ready(port: int) -> bool:
    try:
        return bool(_get(port, "/readyz")["ready"])
    except (OSError, ValueError):
        return False


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fill(spool: Path, n: int, size: int, domains: int, next_attempt: float) -> None:
    """N messages, each with one recipient, tried once and due at `next_attempt`."""
    spool.mkdir(parents=True, exist_ok=True)
    Spool(spool)._connect().close()  # the schema, indexes and pragmas the engine uses
    db = sqlite3.connect(spool / "spool.db", isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.executescript(SCHEMA)
    line = b"x" * 74 + b"\r\n"
    start = time.time() - 3600
    batch = 10_000
    for first in range(0, n, batch):
        msgs, rcpts = [], []
        for i in range(first, min(first + batch, n)):
            received = start + i * 1e-6
            mid = f"{int(received * 1e9):016x}{i:010x}"
            d = f"d{i % domains}.example"
            head = (
                f"From: <app@example.test>\r\nTo: <u{i}@{d}>\r\nSubject: backlog {i}\r\n"
                f"Message-ID: <b{i}@example.test>\r\n\r\n"
            ).encode()
            msgs.append((mid, "app@example.test", received, "bench", head + line * (size // 76)))
            rcpts.append((mid, f"u{i}@{d}", 1, next_attempt, "421 4.4.2 outage", d))
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO messages (id, mail_from, received_at, client, data) VALUES (?,?,?,?,?)",
            msgs,
        )
        db.executemany(
            "INSERT INTO recipients (message_id, recipient, attempts, next_attempt, last_reply,"
            " domain) VALUES (?,?,?,?,?,?)",
            rcpts,
        )
        db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def make_due(spool: Path) -> None:
    db = sqlite3.connect(spool / "spool.db", isolation_level=None)
    db.execute("UPDATE recipients SET next_attempt = ?", (time.time() - 1,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


class Engine:
    def __init__(self, workdir: Path, sink: str) -> None:
        self.workdir = workdir
        self.admin = free_port()
        self.smtp = free_port()
        cfg = {
            "hostname": "bench.mailfleet.test",
            "submission": {"listen": f"127.0.0.1:{self.smtp}"},
            "admin": {"listen": f"127.0.0.1:{self.admin}"},
            "spool": {"path": str(workdir / "spool")},
            "routing": {"routes": {"*": sink}},
            "retry": {"initial": "1h", "max": "1h"},
            "delivery": {"maxMessagesPerConnection": 1000, "maxConnectionsPerHost": 20},
            "logging": {"level": "warning", "format": "json"},
        }
        (workdir / "engine.yaml").write_text(yaml.safe_dump(cfg))
        self.proc: Proc | None = None
        self.runs = 0

    def start(self) -> float:
        """Starts the engine; seconds from spawn to ready."""
        self.runs += 1
        t0 = time.perf_counter()
        self.proc = Proc(
            [MAILFLEET, "mta", "--config", str(self.workdir / "engine.yaml"), "--processes", "1"],
            name=f"engine-{self.runs}",
            log_dir=self.workdir,
        )
        deadline = time.monotonic() + 300
        while not _ready(self.admin):
            if time.monotonic() > deadline or not self.proc.running():
                raise RuntimeError(f"engine not ready:\n{self.proc.output()[-3000:]}")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def submit(self) -> float:
        """Seconds to hand one message in (to its 250) while the engine works on the backlog."""
        t0 = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", self.smtp, local_hostname="bench.test", timeout=60) as s:
            s.sendmail("app@example.test", ["new@fresh.example"], b"Subject: new\r\n\r\nhi\r\n")
        return time.perf_counter() - t0

    def queue(self) -> dict[str, Any]:
        q: dict[str, Any] = _get(self.admin, "/v1/status")["queue"]
        return q

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.popen.wait(30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=30)


def measure(
    n: int, size: int = 5120, domains: int = 10, drain_seconds: float = 60.0
) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-backlog-"))
    sink = SmtpSink("127.0.0.1", workdir=workdir / "sink")
    eng = Engine(workdir, sink.address)
    try:
        eng.start()
        time.sleep(2)
        assert eng.proc is not None
        idle = rss_mb(eng.proc.pid)
        eng.stop()
        shutil.rmtree(workdir / "spool")

        fill(workdir / "spool", n, size, domains, time.time() + 3600)
        ready_deferred = eng.start()
        time.sleep(3)
        queued = rss_mb(eng.proc.pid)
        q = eng.queue()
        assert q["messages"] == n, q
        eng.kill9()

        make_due(workdir / "spool")
        sink.start()
        t0 = time.perf_counter()
        ready = eng.start()
        while sink.count == 0:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError("no delivery after restart")
            time.sleep(0.005)
        first = time.perf_counter() - t0
        d0, c0 = time.perf_counter(), sink.count
        peak_active, slowest, submit = 0, 0.0, 0.0
        while time.perf_counter() - d0 < drain_seconds and sink.count < n:
            time.sleep(0.5)
            s0 = time.perf_counter()
            peak_active = max(peak_active, eng.queue()["activeMessages"])
            slowest = max(slowest, time.perf_counter() - s0)
            submit = max(submit, eng.submit())
        drained = (sink.count - c0) / (time.perf_counter() - d0)
        during = rss_mb(eng.proc.pid)
        return {
            "n": n,
            "idle_mb": idle,
            "rss_mb": queued,
            "bytes_per_msg": (queued - idle) * 1024 * 1024 / n,
            "ready_deferred_s": ready_deferred,
            "ready_s": ready,
            "first_s": first,
            "drain": drained,
            "rss_drain_mb": during,
            "peak_active": peak_active,
            "status_ms": slowest * 1000,
            "submit_ms": submit * 1000,
            "spool_mb": sum(p.stat().st_size for p in (workdir / "spool").glob("spool.db*"))
            / 1024**2,
        }
    finally:
        eng.stop()
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def report(r: dict[str, float]) -> str:
    return (
        f"backlog: {r['n']:.0f} queued, rss {r['rss_mb']:.0f} MB "
        f"({r['bytes_per_msg']:.0f} bytes/message over idle),"
        f" restart to ready {r['ready_s']:.2f} s,"
        f" first delivery after restart {r['first_s']:.2f} s, drain {r['drain']:.0f} msg/s"
        f"  (idle {r['idle_mb']:.0f} MB, ready {r['ready_deferred_s']:.2f} s with all deferred,"
        f" rss {r['rss_drain_mb']:.0f} MB while draining, active set peak"
        f" {r['peak_active']:.0f}; while draining the slowest /v1/status {r['status_ms']:.0f} ms,"
        f" the slowest submission {r['submit_ms']:.0f} ms;"
        f" spool {r['spool_mb']:.0f} MB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, nargs="+", default=[100_000])
    ap.add_argument("--quick", action="store_true", help="20,000 messages, a 20 s drain")
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--drain-seconds", type=float, default=60.0)
    a = ap.parse_args()
    runs, drain = ([20_000], 20.0) if a.quick else (a.messages, a.drain_seconds)
    for n in runs:
        print(report(measure(n, a.size, a.domains, drain)), flush=True)


if __name__ == "__main__":
    main()
