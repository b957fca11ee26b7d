"""mailfleet as a relay: smtp-source -> engine (DKIM RSA-2048 on, spool fsynced) -> smtp-sink,
then the same load through a private Postfix to the same kind of sink, in the same run.

    python -m bench.relay [--messages 20000] [--size 5120] [--sessions 20] [--workers 2]
                          [--by-hand] [--no-postfix] [--profile DIR]

Several engine processes share the submission port (SO_REUSEPORT), each with its own spool,
which is how one pod uses every core it is given: `mailfleet mta --processes N` (its supervisor
gives each process its share of the limits), or with `--by-hand` N separate engines on one port.

Accept latency is measured by a probe beside smtp-source: one more session that sends a message
of the same size every PROBE_INTERVAL while the load runs, and times each from the end of its
DATA (the final ".") to the server's 250. Its messages count in the throughput like the others.
`--profile DIR` records each engine (every worker process, every thread) with py-spy while the
load runs: DIR/engineN.svg, a flame graph a browser opens (`--profile-format raw`: collapsed
stacks, for `flamegraph.pl` or a script; `speedscope`: JSON for speedscope). `bench/out/` is
ignored by git.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from tests.fixtures.postfixrelay import PostfixRelay
from tests.fixtures.procs import Proc, free_port
from tests.fixtures.smtppeers import SmtpSink, smtp_source

ROOT = Path(__file__).resolve().parent.parent
MAILFLEET = str(Path(sys.executable).parent / "mailfleet")
RSA_KEY = ROOT / "examples/mta/dkim/example.test.s2026a.rsa.pem"
PY_SPY = Path(sys.executable).parent / "py-spy"
WARMUP = 100  # messages through each relay before the clock starts (as bench.postfix does)
PROBE_INTERVAL = 0.02
# --pin: the relay's core and the load's
SERVER_CPU, LOAD_CPU = 0, 1
PROFILE_SUFFIX = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}
# KumoMTA's published pace for 100 KB messages on 2 CPUs (2.7 M/hour), the anchor.
TARGET_RATE = 750


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
    """Every sample of `name` summed (a supervisor's /metrics has one per process)."""
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _worker_pids(admin_port: int) -> list[int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/v1/status", timeout=5) as r:
        status = json.load(r)
    return [int(w["pid"]) for w in status.get("workers", [])]


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
                [MAILFLEET, "mta", "--config", str(wdir / "engine.yaml"), "--processes", "1"],
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


def start_supervised(
    workdir: Path, workers: int, config_for: ConfigFor, procs: list[Proc]
) -> tuple[int, list[int]]:
    """`mailfleet mta --processes N`: one admin port for all of them."""
    smtp_port, admin_port = free_port(), free_port()
    wdir = workdir / "engine"
    wdir.mkdir()
    (wdir / "engine.yaml").write_text(yaml.safe_dump(config_for(wdir, smtp_port, admin_port)))
    procs.append(
        Proc(
            [MAILFLEET, "mta", "--config", str(wdir / "engine.yaml"), "--processes", str(workers)],
            name="engine",
            log_dir=wdir,
        )
    )
    deadline = time.monotonic() + 60
    while not _ready(admin_port):
        if time.monotonic() > deadline or not procs[-1].running():
            raise RuntimeError(f"engine not ready:\n{procs[-1].output()}")
        time.sleep(0.05)
    return smtp_port, [admin_port]


class LatencyProbe:
    """One SMTP session beside the load: a message every PROBE_INTERVAL, each timed from the
    end of its DATA to the 250 (seconds in `samples`)."""

    def __init__(self, address: str, size: int) -> None:
        host, _, port = address.rpartition(":")
        self.addr = (host, int(port))
        body = b"".join(b"X" * 76 + b"\r\n" for _ in range(max(size // 78, 1)))
        self.message = (
            b"From: <probe@example.test>\r\nTo: <rcpt@example.org>\r\nSubject: probe\r\n\r\n" + body
        )
        self.samples: list[float] = []  # end of DATA to 250
        # per session: connect to banner, EHLO, MAIL, RCPT, DATA to 354, end of DATA to 250, QUIT
        self.steps: list[list[float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def sent(self) -> int:
        return len(self.samples)

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL):
            try:
                self._session()
            except OSError:
                self.errors += 1

    def _session(self) -> None:
        """A session per message, as smtp-source opens them; each step timed."""
        steps: list[float] = []
        t = time.perf_counter()

        def lap() -> None:
            nonlocal t
            now = time.perf_counter()
            steps.append(now - t)
            t = now

        with socket.create_connection(self.addr, timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = sock.makefile("rb")

            def reply() -> bytes:
                while True:
                    line = f.readline()
                    if line[3:4] != b"-":
                        lap()
                        return line

            def cmd(text: bytes) -> bytes:
                sock.sendall(text + b"\r\n")
                return reply()

            reply()  # connect to banner
            ok = (
                cmd(b"EHLO probe.test").startswith(b"250")
                and cmd(b"MAIL FROM:<probe@example.test>").startswith(b"250")
                and cmd(b"RCPT TO:<rcpt@example.org>").startswith(b"250")
                and cmd(b"DATA").startswith(b"354")
            )
            if ok:
                sock.sendall(self.message)
                t = time.perf_counter()
                sock.sendall(b".\r\n")
                ok = reply().startswith(b"250")
            cmd(b"QUIT")
        if not ok:
            self.errors += 1
            return
        self.samples.append(steps[5])
        self.steps.append(steps)

    def percentiles(self) -> tuple[float, float]:
        """p50 and p99 in milliseconds."""
        s = sorted(self.samples) or [float("nan")]
        return 1000 * s[len(s) // 2], 1000 * s[min(len(s) - 1, int(len(s) * 0.99))]

    def step_medians(self) -> str:
        """Median milliseconds of each step of a session (where a client's time goes)."""
        names = ("connect", "ehlo", "mail", "rcpt", "data", "dot", "quit")
        if not self.steps:
            return ""
        cols = [sorted(col) for col in zip(*self.steps, strict=True)]
        return " ".join(
            f"{n} {1000 * c[len(c) // 2]:.1f}" for n, c in zip(names, cols, strict=True)
        )


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks used by it and the children it reaped), for every process."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return stats


def _tree(pids: list[int], stats: dict[int, tuple[int, int]]) -> list[int]:
    """These processes and all their live descendants."""
    todo, seen = list(pids), []
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.append(pid)
        todo.extend(c for c, (ppid, _) in stats.items() if ppid == pid)
    return seen


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used by these processes, the children they reaped and
    their live children (Postfix's smtpd, cleanup, qmgr, smtp, ... under its master)."""
    stats = _proc_stats()
    return sum(stats[pid][1] for pid in _tree(pids, stats)) / os.sysconf("SC_CLK_TCK")


def pin(pids: list[int], cpu: int) -> None:
    """Every thread of these processes and their descendants onto one CPU; what they start
    later inherits it."""
    for pid in _tree(pids, _proc_stats()):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(tid), {cpu})


@contextlib.contextmanager
def pinned(server_pids: list[int], sink: SmtpSink, on: bool) -> Iterator[None]:
    """`--pin`: the relay under test on CPU 0, the load (this process's smtp-source and probe,
    and the sink) on CPU 1, so the relay has one core of its own."""
    if not on:
        yield
        return
    everything = os.sched_getaffinity(0)
    pin(server_pids, SERVER_CPU)
    pin([sink.pid] if sink.pid is not None else [], LOAD_CPU)
    os.sched_setaffinity(0, {LOAD_CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)


def _children_cpu() -> float:
    """CPU seconds of the children this process has reaped (smtp-source, run to its end)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _load(
    address: str,
    messages: int,
    size: int,
    sessions: int,
    sink: SmtpSink,
    server_pids: list[int],
) -> dict[str, float]:
    """smtp-source's load (a session per message) with the latency probe beside it; returns
    msg/s end to end (until the sink has every message), accepted msg/s, p50/p99 ms, and the
    server's CPU milliseconds per message."""
    base = sink.count
    cpu = tree_cpu(server_pids)
    sink_pids = [sink.pid] if sink.pid is not None else []
    load_cpu = tree_cpu(sink_pids) + _children_cpu()
    start = time.perf_counter()
    with LatencyProbe(address, size) as probe:
        smtp_source(
            address,
            count=messages,
            sessions=sessions,
            size=size,
            from_="bench@example.test",
            to="rcpt@example.org",
            reuse_connections=False,
        )
    submitted = time.perf_counter() - start
    total = messages + probe.sent
    sink.wait_for(base + total, timeout=600)
    elapsed = time.perf_counter() - start
    cpu = tree_cpu(server_pids) - cpu
    load_cpu = tree_cpu(sink_pids) + _children_cpu() - load_cpu
    p50, p99 = probe.percentiles()
    return {
        "cpu_ms": 1000 * cpu / total,
        "load_cpu_ms": 1000 * load_cpu / total,
        "msg_per_s": total / elapsed,
        "accept_per_s": total / submitted,
        "seconds": elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "probe_errors": probe.errors,
        "steps": probe.step_medians(),  # type: ignore[dict-item]
    }


def _warm_up(address: str, sink: SmtpSink, sessions: int, size: int) -> None:
    base = sink.count
    smtp_source(address, count=WARMUP, sessions=sessions, size=size, from_="bench@example.test")
    sink.wait_for(base + WARMUP, timeout=120)


def measure(
    messages: int,
    size: int,
    sessions: int,
    workers: int,
    profile: Path | None = None,
    by_hand: bool = False,
    profile_format: str = "flamegraph",
    pin_cpu: bool = False,
) -> dict[str, float]:
    """The engine: msg/s end to end (from the first connection to the last message at the
    sink), accepted msg/s, accept latency, spool commits, RSS at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-bench-"))
    procs: list[Proc] = []
    spies: list[subprocess.Popen[bytes]] = []
    sink = SmtpSink("127.0.0.1", workdir=workdir / "sink").start()
    try:
        supervised = workers > 1 and not by_hand
        smtp_port, admin_ports = (start_supervised if supervised else start_engines)(
            workdir,
            workers,
            lambda wdir, smtp, admin: engine_config(wdir, smtp, admin, sink.address, workers > 1),
            procs,
        )
        address = f"127.0.0.1:{smtp_port}"
        _warm_up(address, sink, sessions, size)
        if profile is not None:
            if not PY_SPY.exists():
                raise SystemExit(f"--profile needs py-spy in {PY_SPY.parent} (make deps)")
            profile.mkdir(parents=True, exist_ok=True)
            suffix = PROFILE_SUFFIX[profile_format]
            spies = [
                subprocess.Popen(
                    [
                        *(str(PY_SPY), "record", "--threads", "--nonblocking", "-r", "100"),
                        *("-f", profile_format, "-o", str(profile / f"engine{i}.{suffix}")),
                        *("--pid", str(p.pid)),
                        *(["--subprocesses"] if supervised else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i, p in enumerate(procs)
            ]
            time.sleep(1)
        with pinned([p.pid for p in procs], sink, pin_cpu):
            r = _load(address, messages, size, sessions, sink, [p.pid for p in procs])
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
        signed = sum(_metric(p, "mailfleet_dkim_signatures_total") for p in admin_ports)
        commits = sum(_metric(p, "mailfleet_spool_commit_seconds_count") for p in admin_ports)
        commit_s = sum(_metric(p, "mailfleet_spool_commit_seconds_sum") for p in admin_ports)
        ops = sum(_metric(p, "mailfleet_spool_commit_batch_size_sum") for p in admin_ports)
        pids = _worker_pids(admin_ports[0]) if supervised else [p.pid for p in procs]
        rss = [rss_mb(pid) for pid in pids]
        return {
            **r,
            "commits": commits,
            "commit_ms": 1000 * commit_s / max(commits, 1),
            "batch": ops / max(commits, 1),
            "signed": signed,
            "rss_mb": sum(rss),
            "rss_max_mb": max(rss),
        }
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        for p in procs:
            p.stop(timeout=20)
        sink.close()
        shutil.rmtree(workdir, ignore_errors=True)


def measure_postfix(
    messages: int, size: int, sessions: int, pin_cpu: bool = False
) -> dict[str, float]:
    """The same load (warm-up, smtp-source, probe) through a private Postfix (no DKIM)."""
    with (
        SmtpSink("127.0.0.1") as sink,
        PostfixRelay(sink.address, "127.0.0.1", concurrency=20) as relay,
    ):
        _warm_up(relay.address, sink, sessions, size)
        assert relay.master_pid is not None
        with pinned([relay.master_pid], sink, pin_cpu):
            return _load(relay.address, messages, size, sessions, sink, [relay.master_pid])


def compare(
    messages: int,
    size: int,
    sessions: int,
    workers: int,
    profile: Path | None = None,
    pin_cpu: bool = False,
) -> tuple[dict[str, float], dict[str, float]]:
    ours = measure(messages, size, sessions, workers, profile, pin_cpu=pin_cpu)
    return ours, measure_postfix(messages, size, sessions, pin_cpu)


def lines(
    ours: dict[str, float],
    theirs: dict[str, float],
    messages: int,
    size: int,
    sessions: int,
    workers: int,
    pinned_cpu: bool = False,
) -> list[str]:
    kb = size // 1024
    where = "; each relay on one CPU of its own, the load on the other" if pinned_cpu else ""
    return [
        f"relay: mailfleet {ours['msg_per_s']:.0f} msg/s, postfix {theirs['msg_per_s']:.0f} msg/s,"
        f" ratio {ours['msg_per_s'] / theirs['msg_per_s']:.2f}  ({messages} messages of {kb} KB"
        f" over {sessions} sessions, DKIM RSA-2048 on, spool fsynced, {workers} engine"
        f" processes{where})",
        f"relay {kb} KB accept latency (end of DATA to 250): mailfleet p50"
        f" {ours['p50_ms']:.1f} ms p99 {ours['p99_ms']:.1f} ms, postfix p50"
        f" {theirs['p50_ms']:.1f} ms p99 {theirs['p99_ms']:.1f} ms",
        f"relay {kb} KB engine: rss {ours['rss_mb']:.0f} MB at the end ({workers} processes,"
        f" largest {ours['rss_max_mb']:.0f} MB); spool {ours['commits']:.0f} commits,"
        f" {ours['batch']:.1f} operations per commit, {ours['commit_ms']:.2f} ms per commit;"
        f" {ours['signed']:.0f} DKIM signatures; accepted {ours['accept_per_s']:.0f} msg/s"
        f" (postfix {theirs['accept_per_s']:.0f}); cpu per message: mailfleet"
        f" {ours['cpu_ms']:.2f} ms, postfix {theirs['cpu_ms']:.2f} ms",
        f"relay {kb} KB session steps, median ms: mailfleet {ours.get('steps', '')};"
        f" postfix {theirs.get('steps', '')}",
        f"relay {kb} KB cores: the load (smtp-source and smtp-sink, on the same cores) used"
        f" {ours['load_cpu_ms']:.2f} ms of CPU per message beside mailfleet, postfix"
        f" {theirs['load_cpu_ms']:.2f} ms; at its CPU per message mailfleet alone needs"
        f" {ours['cpu_ms'] * TARGET_RATE / 1000:.2f} cores for {TARGET_RATE} msg/s, postfix"
        f" {theirs['cpu_ms'] * TARGET_RATE / 1000:.2f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--by-hand",
        action="store_true",
        help="N separate engines on one port instead of mailfleet mta --processes N",
    )
    ap.add_argument("--no-postfix", action="store_true", help="the engine only")
    ap.add_argument("--profile", type=Path, help="py-spy each engine into this directory")
    ap.add_argument("--profile-format", choices=sorted(PROFILE_SUFFIX), default="flamegraph")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="each relay on CPU 0 alone, the load (smtp-source, smtp-sink) on CPU 1",
    )
    a = ap.parse_args()
    if a.pin and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("--pin needs two CPUs")
    ours = measure(
        a.messages, a.size, a.sessions, a.workers, a.profile, a.by_hand, a.profile_format, a.pin
    )
    if a.no_postfix:
        theirs = {k: float("nan") for k in ours}
    else:
        theirs = measure_postfix(a.messages, a.size, a.sessions, a.pin)
    for line in lines(ours, theirs, a.messages, a.size, a.sessions, a.workers, a.pin):
        print(line, flush=True)


if __name__ == "__main__":
    main()
