"""mailfleet as a relay: smtp-source -> engine (DKIM RSA-2048 on, spool fsynced) -> smtp-sink.

    python -m bench.relay [--messages 20000] [--size 5120] [--sessions 20] [--workers 2]

Several engine processes may share the submission port (SO_REUSEPORT), each with its own spool,
which is how one pod uses every core it is given.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.fixtures.procs import Proc, free_port
from tests.fixtures.smtppeers import SmtpSink, smtp_source

ROOT = Path(__file__).resolve().parent.parent
MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
RSA_KEY = ROOT / "examples/mta/dkim/example.test.s2026a.rsa.pem"


def engine_config(
    workdir: Path, smtp_port: int, admin_port: int, sink: str, reuse_port: bool
) -> dict[str, object]:
    return {
        "hostname": "bench.mailfleet.test",
        "submission": {
            "listen": f"127.0.0.1:{smtp_port}",
            "trustedNetworks": ["127.0.0.0/8"],
            "reusePort": reuse_port,
        },
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "spool": {"path": str(workdir / "spool")},
        "routing": {"routes": {"*": sink}},
        "delivery": {"maxMessagesPerConnection": 1000, "maxConnectionsPerHost": 20},
        "dkim": {
            "keys": [
                {
                    "domain": "example.test",
                    "selector": "s2026a",
                    "keyFile": str(RSA_KEY),
                    "algorithm": "rsa-sha256",
                }
            ]
        },
        "logging": {"level": "warning", "format": "json"},
    }


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _metric(admin_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# (engine workdir, submission port, admin port) -> the engine's config
ConfigFor = Callable[[Path, int, int], dict[str, object]]


def start_engines(
    workdir: Path, workers: int, config_for: ConfigFor, procs: list[Proc]
) -> tuple[int, list[int]]:
    """`workers` engine processes sharing one submission port, each with its own spool and
    admin port; returns (submission port, admin ports) once all are ready. Started processes are
    appended to `procs` at once, so the caller stops them whatever happens."""
    smtp_port = free_port()
    admin_ports = []
    for w in range(workers):
        wdir = workdir / f"engine{w}"
        wdir.mkdir()
        admin_ports.append(free_port())
        (wdir / "engine.yaml").write_text(
            yaml.safe_dump(config_for(wdir, smtp_port, admin_ports[-1]))
        )
        procs.append(
            Proc(
                [MAILFLEET, "mta", "--config", str(wdir / "engine.yaml")],
                name=f"engine{w}",
                log_dir=wdir,
            )
        )
    deadline = time.monotonic() + 60
    while not all(_ready(p) for p in admin_ports):
        if time.monotonic() > deadline:
            raise RuntimeError("engines not ready:\n" + "\n".join(p.output() for p in procs))
        time.sleep(0.05)
    return smtp_port, admin_ports


def measure(messages: int, size: int, sessions: int, workers: int) -> dict[str, float]:
    """End-to-end messages/second: from the first connection to the last message at the sink."""
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-bench-"))
    procs: list[Proc] = []
    sink = SmtpSink("127.0.0.1", workdir=workdir / "sink").start()
    try:
        smtp_port, admin_ports = start_engines(
            workdir,
            workers,
            lambda wdir, smtp, admin: engine_config(wdir, smtp, admin, sink.address, workers > 1),
            procs,
        )
        start = time.perf_counter()
        smtp_source(
            f"127.0.0.1:{smtp_port}",
            count=messages,
            sessions=sessions,
            size=size,
            from_="bench@example.test",
            to="rcpt@example.org",
            # As in the Postfix run: smtp-source opens a session per message.
            reuse_connections=False,
        )
        submitted = time.perf_counter() - start
        sink.wait_for(messages, timeout=600)
        elapsed = time.perf_counter() - start
        signed = sum(_metric(p, "mailfleet_dkim_signatures_total") for p in admin_ports)
        commits = sum(_metric(p, "mailfleet_spool_commit_seconds_count") for p in admin_ports)
        commit_s = sum(_metric(p, "mailfleet_spool_commit_seconds_sum") for p in admin_ports)
        ops = sum(_metric(p, "mailfleet_spool_commit_batch_size_sum") for p in admin_ports)
        return {
            "commits": commits,
            "commit_ms": 1000 * commit_s / max(commits, 1),
            "batch": ops / max(commits, 1),
            "msg_per_s": messages / elapsed,
            "accept_per_s": messages / submitted,
            "seconds": elapsed,
            "signed": signed,
        }
    finally:
        for p in procs:
            p.stop(timeout=20)
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    r = measure(a.messages, a.size, a.sessions, a.workers)
    print(
        f"relay: mailfleet {r['msg_per_s']:.0f} msg/s end to end "
        f"({r['accept_per_s']:.0f} msg/s accepted, {a.workers} engine processes, "
        f"{r['signed']:.0f} DKIM signatures)"
    )
    print(
        f"spool: {r['commits']:.0f} commits, {r['batch']:.1f} operations per commit, "
        f"{r['commit_ms']:.2f} ms per commit"
    )


if __name__ == "__main__":
    main()
