"""Egress three ways in one run: smtp-source -> engine -> smtp-sink with the engine's mail leaving
from one source address (127.0.0.31) by binding it, through mailfleet's egress proxy listening
on it, and through Dante (danted, external 127.0.0.31).

    python -m bench.egress [--messages 20000 | --quick] [--size 5120] [--sessions 20]
                           [--per-connection 100]

Prints msg/s end to end for each way (first connection to the last message at the sink), the
ratios proxy/bind and proxy/dante, and the CPU the proxy used per 1,000 messages (utime + stime
of its process from /proc, before and after the load; Dante's whole process tree the same way).
The engine is one process without DKIM, so what differs between the runs is the egress path;
it reuses each outbound connection for up to 100 messages (the default), as mail to a real
provider does; `--per-connection 1` makes every message a new connection (a SOCKS5 handshake
each). Dante authenticates nobody (socksmethod none); the proxy checks RFC 1929
credentials on every connection.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from bench import relay
from tests.fixtures.peers import danted
from tests.fixtures.procs import Proc, free_port
from tests.fixtures.smtppeers import SmtpSink

MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
SOURCE = "127.0.0.31"
POOL = "bench/egress"
PASSWORD = "bench-egress-password-0123456789"
MODES = ("bind", "proxy", "dante")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) one process has used: /proc/PID/stat utime + stime."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def egress_proxy(workdir: Path, sink_port: int) -> Iterator[tuple[str, Proc]]:
    """`mailfleet egress-proxy` on SOURCE:<free port>; yields its socks5:// URL and process."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(SOURCE), free_port()
    config = {
        "port": port,
        "adminListen": f"127.0.0.1:{admin}",
        "clients": [
            {
                "name": POOL,
                "tokenSHA256": hashlib.sha256(PASSWORD.encode()).hexdigest(),
                "addresses": [SOURCE],
                "ports": [sink_port],
            }
        ],
    }
    (workdir / "proxy.yaml").write_text(yaml.safe_dump(config))
    proc = Proc(
        [MAILFLEET, "egress-proxy", "--config", str(workdir / "proxy.yaml")],
        name="egress-proxy",
        log_dir=workdir,
    )
    try:
        deadline = time.monotonic() + 30
        while not _ready(admin):
            if time.monotonic() > deadline or not proc.running():
                raise RuntimeError(f"egress proxy not ready:\n{proc.output()}")
            time.sleep(0.05)
        yield f"socks5://{SOURCE}:{port}", proc
    finally:
        proc.stop(timeout=30)


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def engine_config(
    workdir: Path,
    smtp_port: int,
    admin_port: int,
    sink: str,
    proxy: str | None,
    auth: Path | None,
    per_connection: int = 100,
) -> dict[str, object]:
    source: dict[str, object] = {"address": SOURCE, "hostname": "out31.bench.mailfleet.test"}
    if proxy is not None:
        source["proxy"] = proxy
    delivery: dict[str, object] = {
        "sourceIPs": [source],
        "maxConnectionsPerHost": 20,
        "maxMessagesPerConnection": per_connection,
    }
    if auth is not None:
        delivery["egress"] = {"authFile": str(auth)}
    return {
        "hostname": "bench.mailfleet.test",
        "submission": {"listen": f"127.0.0.1:{smtp_port}", "trustedNetworks": ["127.0.0.0/8"]},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "spool": {"path": str(workdir / "spool")},
        "routing": {"routes": {"*": sink}},
        "delivery": delivery,
        "logging": {"level": "warning", "format": "json"},
    }


def measure(
    mode: str, messages: int, size: int, sessions: int, per_connection: int = 100
) -> dict[str, float]:
    """One way of egress: msg/s end to end, the engine's CPU ms per message, and the proxy's
    (or Dante's) CPU seconds per 1,000 messages."""
    workdir = Path(tempfile.mkdtemp(prefix=f"mailfleet-bench-egress-{mode}-"))
    procs: list[Proc] = []
    sink = SmtpSink("127.0.0.1", workdir=workdir / "sink").start()
    try:
        with contextlib.ExitStack() as stack:
            proxy: str | None = None
            auth: Path | None = None
            cpu_of: list[int] = []  # the egress process(es) whose CPU is counted
            tree = False
            if mode == "proxy":
                proxy, proxy_proc = stack.enter_context(egress_proxy(workdir / "proxy", sink.port))
                auth = workdir / "egress-auth"
                auth.write_text(f"{POOL}:{PASSWORD}\n")
                cpu_of = [proxy_proc.pid]
            elif mode == "dante":
                dante_dir = workdir / "dante"
                dante_dir.mkdir()
                proxy = stack.enter_context(
                    danted(dante_dir, internal="127.0.0.1", external=SOURCE)
                )
                pid_file = dante_dir / "danted.pid"
                cpu_of = [int(pid_file.read_text().split()[0])] if pid_file.exists() else []
                tree = True
            smtp_port, _ = relay.start_engines(
                workdir,
                1,
                lambda wdir, smtp, admin: engine_config(
                    wdir, smtp, admin, sink.address, proxy, auth, per_connection
                ),
                procs,
            )
            address = f"127.0.0.1:{smtp_port}"
            relay._warm_up(address, sink, sessions, size)

            def egress_cpu() -> float:
                if tree:
                    return relay.tree_cpu(cpu_of)
                return sum(proc_cpu(pid) for pid in cpu_of)

            before = egress_cpu() if cpu_of else 0.0
            result = relay._load(address, messages, size, sessions, sink, [procs[0].pid])
            used = egress_cpu() - before if cpu_of else float("nan")
            total = result["msg_per_s"] * result["seconds"]  # the load's and the probe's
            return {**result, "egress_cpu_per_1000": 1000 * used / max(total, 1)}
    finally:
        for p in procs:
            p.stop(timeout=20)
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def compare(
    messages: int, size: int, sessions: int, per_connection: int = 100
) -> dict[str, dict[str, float]]:
    return {mode: measure(mode, messages, size, sessions, per_connection) for mode in MODES}


def lines(
    results: dict[str, dict[str, float]],
    messages: int,
    size: int,
    sessions: int,
    per_connection: int = 100,
) -> list[str]:
    bind, proxy, dante = (results[m] for m in MODES)
    kb = size // 1024
    return [
        f"egress: bind {bind['msg_per_s']:.0f} msg/s, egress proxy {proxy['msg_per_s']:.0f} msg/s,"
        f" dante {dante['msg_per_s']:.0f} msg/s; ratio proxy/bind"
        f" {proxy['msg_per_s'] / bind['msg_per_s']:.2f}, proxy/dante"
        f" {proxy['msg_per_s'] / dante['msg_per_s']:.2f}  ({messages} messages of {kb} KB over"
        f" {sessions} sessions, one engine process, no DKIM, {per_connection} messages per"
        " connection)",
        f"egress CPU per 1,000 messages: egress proxy {proxy['egress_cpu_per_1000']:.3f} s,"
        f" dante {dante['egress_cpu_per_1000']:.3f} s (its process tree); engine cpu per message:"
        f" bind {bind['cpu_ms']:.2f} ms, through the proxy {proxy['cpu_ms']:.2f} ms, through dante"
        f" {dante['cpu_ms']:.2f} ms",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="2,000 messages")
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument(
        "--per-connection", type=int, default=100, help="the engine's maxMessagesPerConnection"
    )
    a = ap.parse_args()
    messages = 2000 if a.quick else a.messages
    results = compare(messages, a.size, a.sessions, a.per_connection)
    for line in lines(results, messages, a.size, a.sessions, a.per_connection):
        print(line, flush=True)


if __name__ == "__main__":
    main()
