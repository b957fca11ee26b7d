"""`make reliability`: engine faults with traffic flowing; nothing accepted may be lost.

    python -m bench.reliability [--cluster] [--only NAME ...] [--window 4] [--kills 20]

One row per fault, `accepted N delivered N lost N` (lost must be 0), plus what the clients were
refused and how many messages arrived twice (at-least-once, as with every MTA):

- dns-down, dns-slow, dns-servfail: a DNS proxy in front of dnsmasq drops queries, delays them,
  or answers SERVFAIL;
- mx-refusing: the MX stops listening (connections refused);
- tls-handshake: the MX offers STARTTLS and then breaks the handshake;
- close-mid-data: the MX closes the connection in the middle of DATA;
- stall: the MX never answers the end of DATA (delivery.commandTimeout must cut it);
- disk-full: the spool's filesystem (a 4 MiB tmpfs) fills up: 452 4.3.1 to clients, then room
  returns;
- kill-9: the engine is killed with SIGKILL `--kills` times under load and restarted on its spool.

With `--cluster` (or named with --only), the cluster faults of bench/reliability_cluster.py on
the local node: api-restart, operator-kill (SIGKILL in the middle of a drain), pod-delete.

Each fault: a fresh engine; traffic before, during (`--window` seconds) and after the fault; the
fault is cleared; then the engine must drain. `accepted` counts the 250 replies clients got,
`delivered` the distinct accepted messages the MX recorded. Exits 1 when anything was lost.
Bounded in time: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import re
import shutil
import smtplib
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode

from tests.fixtures.dnsserver import DnsServer
from tests.fixtures.engine import EngineProc
from tests.fixtures.procs import free_port

SEQ = re.compile(rb"X-Seq: (\d+)")
DRAIN_DEADLINE = 120.0


# -- a DNS proxy that can fail -------------------------------------------------------------------


class DnsProxy:
    """UDP on 127.0.0.1:port, forwarding to dnsmasq; `mode` is forward | drop | delay |
    servfail."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "forward"
        self.delay = 1.5
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                mode = proxy.mode
                if mode == "drop":
                    return
                if mode == "servfail":
                    try:
                        q = dns.message.from_wire(data)
                    except Exception:
                        return
                    r = dns.message.make_response(q)
                    r.set_rcode(dns.rcode.SERVFAIL)
                    sock.sendto(r.to_wire(), self.client_address)
                    return
                if mode == "delay":
                    time.sleep(proxy.delay)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                    up.settimeout(3)
                    up.sendto(data, proxy.upstream)
                    with contextlib.suppress(OSError):
                        sock.sendto(up.recv(65535), self.client_address)

        self.server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- an MX that can misbehave --------------------------------------------------------------------


class FaultyMX:
    """A minimal SMTP server in a thread. Modes: ok (records X-Seq of each message), refuse
    (not listening), tls-handshake (offers STARTTLS, then breaks the handshake), close-mid-data,
    stall (never answers the end of DATA), defer (451 to every recipient)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "ok"
        self.seen: dict[int, int] = {}
        self.ids: dict[int, str] = {}  # the engine's queue id of each message (its Received)
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listen(True)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def listen(self, on: bool) -> None:
        async def change() -> None:
            if on and self.server is None:
                self.server = await asyncio.start_server(
                    self._session, "127.0.0.1", self.port, reuse_address=True
                )
            elif not on and self.server is not None:
                self.server.close()
                await self.server.wait_closed()
                self.server = None

        self._run(change())

    def set_mode(self, mode: str) -> None:
        self.listen(mode != "refuse")
        self.mode = mode

    def delivered(self) -> set[int]:
        with self.lock:
            return set(self.seen)

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.seen.values())

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except (asyncio.CancelledError, TimeoutError):
            pass  # shut down (a stalled session) or an idle client
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 mx.reliability.test ESMTP")
        while True:
            line = await asyncio.wait_for(reader.readline(), 60)
            if not line:
                return
            verb = line[:4].upper()
            mode = self.mode
            if verb == b"EHLO":
                if mode == "tls-handshake":
                    say("250-mx.reliability.test")
                    say("250-STARTTLS")
                say("250 8BITMIME" if mode == "tls-handshake" else "250-mx.reliability.test")
                if mode != "tls-handshake":
                    say("250 8BITMIME")
            elif verb == b"HELO":
                say("250 mx.reliability.test")
            elif verb == b"STAR":
                say("220 2.0.0 go ahead")
                await writer.drain()
                writer.write(b"\x15\x03\x03\x00\x02\x02\x28")  # a TLS alert: handshake failure
                await writer.drain()
                return
            elif verb == b"RCPT" and mode == "defer":
                say("451 4.3.0 busy, try again later")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                say("250 2.0.0 ok")
            elif verb == b"DATA":
                say("354 go ahead")
                await writer.drain()
                data = bytearray()
                while True:
                    chunk = await asyncio.wait_for(reader.readline(), 60)
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    data += chunk
                    if mode == "close-mid-data" and len(data) > 100:
                        return
                if mode == "stall":
                    await asyncio.sleep(3600)
                    return
                m = SEQ.search(bytes(data))
                if m is not None:
                    with self.lock:
                        n = int(m.group(1))
                        self.seen[n] = self.seen.get(n, 0) + 1
                        qid = re.search(rb" id (\w+);", bytes(data))
                        self.ids[n] = qid.group(1).decode() if qid else "?"
                say("250 2.0.0 queued")
            elif verb == b"QUIT":
                say("221 bye")
                await writer.drain()
                return
            else:
                say("502 5.5.2 no")
            await writer.drain()

    def close(self) -> None:
        self.listen(False)

        async def cancel_sessions() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(cancel_sessions())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# -- traffic ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Submits numbered messages; counts the 250s (accepted) and refusals."""

    eng: EngineProc
    seq: int  # the last number used; unique across faults, as the MX is shared
    accepted: set[int] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: int = 0

    def _message(self, n: int) -> bytes:
        return (
            f"From: <app@example.test>\r\nTo: <user@example.org>\r\nSubject: reliability {n}\r\n"
            f"X-Seq: {n}\r\n\r\nmessage {n}\r\n"
        ).encode() + (b"x" * 76 + b"\r\n") * 26

    def send(self, count: int, stop: Callable[[], bool] = lambda: False) -> None:
        client: smtplib.SMTP | None = None
        for _ in range(count):
            if stop():
                break
            with self.lock:
                self.seq += 1
                n = self.seq
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.eng.smtp_port, timeout=15)
                    client.ehlo("load.reliability.test")
                client.sendmail("app@example.test", ["user@example.org"], self._message(n))
                with self.lock:
                    self.accepted.add(n)
            except smtplib.SMTPResponseException as e:
                key = f"{e.smtp_code}"
                with self.lock:
                    self.refused[key] = self.refused.get(key, 0) + 1
                with contextlib.suppress(Exception):
                    assert client is not None
                    client.rset()
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.refused["conn"] = self.refused.get("conn", 0) + 1
                client = None
                time.sleep(0.05)
        if client is not None:
            with contextlib.suppress(Exception):
                client.quit()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.send(100_000, stop=lambda: time.monotonic() > end)


@dataclass
class Row:
    name: str
    accepted: int
    delivered: int
    lost: int
    refused: dict[str, int]
    duplicates: int
    drain_s: float
    note: str = ""  # what the fault did (cluster faults: downtime, convergence)

    def __str__(self) -> str:
        refused = ", ".join(f"{k}: {v}" for k, v in sorted(self.refused.items())) or "none"
        note = f"; {self.note}" if self.note else ""
        return (
            f"{self.name:<15} accepted {self.accepted:>4} delivered {self.delivered:>4} "
            f"lost {self.lost}   (clients refused: {refused}; duplicates {self.duplicates};"
            f" drained in {self.drain_s:.1f}s{note})"
        )


class World:
    """dnsmasq + the failing DNS proxy + the faulty MX, shared by every fault."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mx = FaultyMX(free_port("127.0.0.1"))
        self.dnsmasq = DnsServer(workdir=workdir / "dns")
        self.dnsmasq.add_mx("example.org", "mx.example.org", 10)
        self.dnsmasq.add_a("mx.example.org", "127.0.0.1")
        self.dnsmasq.start()
        self.dns = DnsProxy((self.dnsmasq.host, self.dnsmasq.port))
        self.n = 0
        self.seq_base = 0

    def engine(self, **extra: Any) -> EngineProc:
        self.n += 1
        wd = self.workdir / f"engine{self.n}"
        wd.mkdir()
        cfg: dict[str, Any] = {
            "routing": {
                "mxPort": self.mx.port,
                "allowPrivateMX": True,  # the MX record points at loopback
                "dns": {
                    "nameservers": ["127.0.0.1"],
                    "port": self.dns.port,
                    "timeout": "2s",
                    "maxCacheTTL": "0s",  # every delivery asks DNS: the faults must be seen
                },
            },
            "retry": {"initial": "1s", "max": "2s", "jitter": 0},
            "delivery": {"connectTimeout": "2s", "commandTimeout": "3s"},
            "logging": {"level": "info" if os.environ.get("RELIABILITY_DEBUG") else "warning"},
        }
        for k, v in extra.items():
            cfg[k] = {**cfg.get(k, {}), **v}
        return EngineProc(wd, cfg).start()

    def traffic(self, eng: EngineProc) -> Traffic:
        self.seq_base += 10_000_000
        traffic = Traffic(eng, self.seq_base)
        traffic.base = self.seq_base
        return traffic

    def close(self) -> None:
        self.dns.close()
        self.dnsmasq.stop()
        self.mx.close()


def _drain(world: World, traffic: Traffic) -> float:
    start = time.monotonic()
    deadline = start + DRAIN_DEADLINE
    while time.monotonic() < deadline:
        if traffic.accepted <= world.mx.delivered():
            break
        time.sleep(0.2)
    return time.monotonic() - start


def _row(name: str, world: World, traffic: Traffic, drain: float, dup_before: int) -> Row:
    got = world.mx.delivered()
    delivered = len(traffic.accepted & got)
    if os.environ.get("RELIABILITY_DEBUG") and world.mx.duplicates() > dup_before:
        proc = traffic.eng.proc
        path = proc.stderr_path if proc is not None else None
        log = path.read_text(errors="replace") if path is not None else ""
        with world.mx.lock:
            twice = sorted(
                world.mx.ids[n] for n, c in world.mx.seen.items() if c > 1 and n > traffic.base
            )
        print(f"{name}: delivered twice by message id: {twice[:10]}", file=sys.stderr)
        print(f"log lines: {len(log.splitlines())}", file=sys.stderr)
        for i in twice[:2]:
            print("\n".join(ln for ln in log.splitlines() if i in ln), file=sys.stderr)
    if delivered < len(traffic.accepted):
        # What an investigation needs: which messages, and what the engine says.
        missing = sorted(n - traffic.base for n in traffic.accepted - got)
        print(f"{name}: not delivered: {missing[:20]}", file=sys.stderr)
        with contextlib.suppress(Exception):
            print(f"{name}: queue {traffic.eng.status()['queue']}", file=sys.stderr)
        print(traffic.eng.log()[-4000:], file=sys.stderr)
    return Row(
        name,
        len(traffic.accepted),
        delivered,
        len(traffic.accepted) - delivered,
        dict(traffic.refused),
        world.mx.duplicates() - dup_before,
        drain,
    )


def simple_fault(
    world: World, name: str, apply: Callable[[], None], clear: Callable[[], None], window: float
) -> Row:
    eng = world.engine()
    dup = world.mx.duplicates()
    try:
        traffic = world.traffic(eng)
        traffic.send(20)
        apply()
        traffic.run_for(window)
        time.sleep(2)  # deliveries try (and fail) while the fault holds
        clear()
        traffic.send(20)
        return _row(name, world, traffic, _drain(world, traffic), dup)
    finally:
        clear()
        eng.stop()


def disk_full(world: World, window: float) -> Row:
    mnt = world.workdir / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise RuntimeError(f"disk-full needs a tmpfs mount: {mounted.stderr.decode().strip()}")
    # A 1 MiB reserve (the default is 256 MiB, more than this filesystem): mail is refused at
    # MAIL before the spool's own writes meet a full disk.
    eng = world.engine(spool={"path": str(mnt / "spool"), "diskReserve": "1Mi"})
    dup = world.mx.duplicates()
    filler = mnt / "filler"
    try:
        traffic = world.traffic(eng)
        traffic.send(20)
        world.mx.set_mode("refuse")  # keep what was accepted queued while the disk is full
        traffic.send(10)
        with open(filler, "wb", buffering=0) as f:
            for _ in range(10_000):
                try:
                    f.write(b"\0" * 65536)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
        traffic.run_for(window)
        filler.unlink()
        world.mx.set_mode("ok")
        before = len(traffic.accepted)
        traffic.run_for(window)  # the engine notices the room again and takes mail
        if len(traffic.accepted) == before:
            raise RuntimeError("disk-full: no mail accepted after the disk had room again")
        return _row("disk-full", world, traffic, _drain(world, traffic), dup)
    finally:
        world.mx.set_mode("ok")
        eng.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def kill9(world: World, kills: int) -> Row:
    eng = world.engine()
    dup = world.mx.duplicates()
    traffic = world.traffic(eng)
    done = threading.Event()
    senders = [
        threading.Thread(target=lambda: traffic.send(100_000, stop=done.is_set)) for _ in range(4)
    ]
    try:
        for t in senders:
            t.start()
        for _ in range(kills):
            time.sleep(0.7)
            eng.kill9()
            eng.start()
        time.sleep(1)
        done.set()
        for t in senders:
            t.join(30)
        return _row(f"kill-9 x{kills}", world, traffic, _drain(world, traffic), dup)
    finally:
        done.set()
        eng.stop()


FAULTS = [
    "dns-down",
    "dns-slow",
    "dns-servfail",
    "mx-refusing",
    "tls-handshake",
    "close-mid-data",
    "stall",
    "disk-full",
    "kill-9",
]


def main(argv: list[str] | None = None) -> int:
    from bench.reliability_cluster import CLUSTER_FAULTS, run_cluster_faults

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--only", nargs="*", choices=FAULTS + CLUSTER_FAULTS, help="run only these faults"
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="also the cluster faults (local control plane and node; about 3 more minutes)",
    )
    ap.add_argument("--window", type=float, default=4.0, help="seconds each fault holds")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs for the kill-9 fault")
    a = ap.parse_args(argv)
    names = a.only or FAULTS + (CLUSTER_FAULTS if a.cluster else [])
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-reliability-"))
    world = World(workdir)
    rows: list[Row] = []
    dns_proxy, mx = world.dns, world.mx

    def dns_mode(mode: str) -> Callable[[], None]:
        return lambda: setattr(dns_proxy, "mode", mode)

    def mx_mode(mode: str) -> Callable[[], None]:
        return lambda: mx.set_mode(mode)

    runs: dict[str, Callable[[], Row]] = {
        "dns-down": lambda: simple_fault(
            world, "dns-down", dns_mode("drop"), dns_mode("forward"), a.window
        ),
        "dns-slow": lambda: simple_fault(
            world, "dns-slow", dns_mode("delay"), dns_mode("forward"), a.window
        ),
        "dns-servfail": lambda: simple_fault(
            world, "dns-servfail", dns_mode("servfail"), dns_mode("forward"), a.window
        ),
        "mx-refusing": lambda: simple_fault(
            world, "mx-refusing", mx_mode("refuse"), mx_mode("ok"), a.window
        ),
        "tls-handshake": lambda: simple_fault(
            world, "tls-handshake", mx_mode("tls-handshake"), mx_mode("ok"), a.window
        ),
        "close-mid-data": lambda: simple_fault(
            world, "close-mid-data", mx_mode("close-mid-data"), mx_mode("ok"), a.window
        ),
        "stall": lambda: simple_fault(world, "stall", mx_mode("stall"), mx_mode("ok"), a.window),
        "disk-full": lambda: disk_full(world, a.window),
        "kill-9": lambda: kill9(world, a.kills),
    }

    def report(row: Row) -> None:
        rows.append(row)
        print(row, flush=True)

    try:
        for name in names:
            if name in runs:
                report(runs[name]())
        cluster = [n for n in names if n in CLUSTER_FAULTS]
        if cluster:
            run_cluster_faults(cluster, mx, workdir / "cluster", a.window, report)
    finally:
        world.close()
        shutil.rmtree(workdir, ignore_errors=True)
    lost = sum(r.lost for r in rows)
    print(f"total: accepted {sum(r.accepted for r in rows)} lost {lost}", flush=True)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
