"""The relay benchmark under shaping: 4 source IPs, 3 providers with per-IP limits.

    python -m bench.shaped [--messages 20000] [--workers 2]

smtp-source sends a third of the messages to each of gmail/outlook/yahoo-like domains; each
provider is an smtp-sink on its own 127.0.1.x address. The engine sends from 127.0.0.2-5 with a
per-(IP, provider) connection and rate limit, DKIM RSA-2048 on, spool fsynced. Prints throughput
and how the messages spread over the source IPs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from bench.relay import engine_config as relay_config
from bench.relay import start_engines
from tests.fixtures.procs import Proc
from tests.fixtures.smtppeers import SmtpSink, smtp_source

MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
PROVIDERS = {"gmail": "127.0.1.1", "outlook": "127.0.1.2", "yahoo": "127.0.1.3"}
SOURCE_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
PER_IP_RATE = "150/s"


def engine_config(
    wdir: Path, smtp_port: int, admin_port: int, sinks: dict[str, str], reuse: bool
) -> dict[str, object]:
    """The plain relay's config, with a route per provider, four source IPs and limits."""
    cfg = relay_config(wdir, smtp_port, admin_port, "", reuse)
    cfg["routing"] = {"routes": {f"{p}.bench.test": addr for p, addr in sinks.items()}}
    cfg["delivery"] = {
        "sourceIPs": [
            {"address": ip, "hostname": f"out{i}.bench.test"} for i, ip in enumerate(SOURCE_IPS, 1)
        ],
        "maxMessagesPerConnection": 1000,
    }
    cfg["shaping"] = {
        "providers": [
            {
                "name": p,
                "match": {"recipientDomains": [f"{p}.bench.test"]},
                "perIP": {"maxConnections": 5, "maxMessageRate": PER_IP_RATE},
            }
            for p in sinks
        ]
    }
    return cfg


def _attempts(admin_port: int) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = defaultdict(float)
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if (
                line.startswith("mailfleet_delivery_attempts_total{")
                and 'result="delivered"' in line
            ):
                labels = dict(
                    kv.split("=", 1)
                    for kv in line[line.index("{") + 1 : line.index("}")].split(",")
                )
                key = (labels["source_ip"].strip('"'), labels["provider"].strip('"'))
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


def measure(messages: int, size: int, sessions: int, workers: int) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-shaped-"))
    sinks = {
        p: SmtpSink(addr, workdir=workdir / f"sink-{p}").start() for p, addr in PROVIDERS.items()
    }
    procs: list[Proc] = []
    try:
        addresses = {p: s.address for p, s in sinks.items()}
        smtp_port, admin_ports = start_engines(
            workdir,
            workers,
            lambda wdir, smtp, admin: engine_config(wdir, smtp, admin, addresses, workers > 1),
            procs,
        )
        share = messages // len(sinks)
        start = time.perf_counter()
        senders = [
            threading.Thread(
                target=smtp_source,
                args=(f"127.0.0.1:{smtp_port}",),
                kwargs={
                    "count": share,
                    "sessions": max(1, sessions // len(sinks)),
                    "size": size,
                    "from_": "bench@example.test",
                    "to": f"rcpt@{p}.bench.test",
                },
            )
            for p in sinks
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        for s in sinks.values():
            s.wait_for(share, timeout=600)
        elapsed = time.perf_counter() - start
        per_pair: dict[tuple[str, str], float] = defaultdict(float)
        for port in admin_ports:
            for k, v in _attempts(port).items():
                per_pair[k] += v
        return {"msg_per_s": share * len(sinks) / elapsed, "per_pair": dict(per_pair)}
    finally:
        for p in procs:
            p.stop(timeout=20)
        for s in sinks.values():
            s.close()
        shutil.rmtree(workdir, ignore_errors=True)


def report(r: dict[str, object], workers: int) -> str:
    per_pair = r["per_pair"]
    assert isinstance(per_pair, dict)
    by_ip: dict[str, float] = defaultdict(float)
    for (ip, _), n in per_pair.items():
        by_ip[ip] += n
    lines = [
        f"shaped relay: mailfleet {r['msg_per_s']:.0f} msg/s with 4 source IPs x 3 providers "
        f"({PER_IP_RATE} and 5 connections per IP and provider, {workers} engine processes)"
    ]
    lines.append("  per source IP: " + ", ".join(f"{ip} {by_ip[ip]:.0f}" for ip in sorted(by_ip)))
    for ip in sorted(by_ip):
        pairs = {p: n for (i, p), n in per_pair.items() if i == ip}
        lines.append(f"    {ip}: " + ", ".join(f"{p} {n:.0f}" for p, n in sorted(pairs.items())))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", type=int, default=21)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    print(report(measure(a.messages, a.size, a.sessions, a.workers), a.workers))


if __name__ == "__main__":
    main()
