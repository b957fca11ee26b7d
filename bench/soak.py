"""`make soak`: one engine under mixed load against throttling providers, for a long time.

    python -m bench.soak [--minutes 30] [--interval 5] [--rate 3] [--out .local/soak]

The engine sends from three loopback addresses to the ISP simulator (tests/fixtures/isp.py:
gmail-, outlook- and yahoo-like servers found through dnsmasq MX records) that throttle each
source IP (gmail above 55 transactions a minute, outlook above 40, yahoo above 30 with its
[TSS04] deferral). The load is mixed: `--rate` messages a second on average from four clients,
a burst at five times the rate for 5 s every minute, 1 to 3 recipients across the providers,
bodies of 1 to 60 KB, one message in fifty to an unknown user (a 550 5.1.1, a bounce).

Every `--interval` seconds it samples the engine's RSS (the process and its children), its open
file descriptors, the queue (/v1/status) and the submission latency (MAIL FROM to the 250 after
DATA, p50/p99/max of the messages of that interval), and at the end writes under `--out`:
samples.csv, summary.md (the table and the verdict) and soak.png (the plot). After the load
stops the queue must drain (bounded) and every accepted recipient must reach its provider.

Verdict (exit 1 when one fails):
- RSS growth after warm-up (the first fifth of the run, at least 1 minute) under 10 %: the median
  RSS of the last fifth against the median of the fifth after warm-up;
- no descriptor leak: once the load is gone and the queue is empty, at most 5 descriptors more
  than when the engine was idle before the load;
- queue bounded: its peak over the last third of the load is within 1.5 times (plus one burst)
  the peak before, and it drains to 0 once the load stops;
- lost 0: every accepted recipient (known users) received by its provider;
- the queue gauge (/v1/status queue.messages) never below 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import os
import random
import shutil
import smtplib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.dnsserver import DnsServer
from tests.fixtures.engine import EngineProc
from tests.fixtures.isp import IspSimulator

ROOT = Path(__file__).resolve().parent.parent
SOURCE_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
PROVIDERS = [("gmail", 0.5), ("outlook", 0.3), ("yahoo", 0.2)]
SENDER = "app@example.test"
DRAIN_DEADLINE = 300.0

SHAPING: dict[str, dict[str, Any]] = {
    "gmail": {
        "perIP": {"maxConnections": 3, "maxMessagesPerConnection": 50, "maxMessageRate": "120/min"},
        "adaptive": {
            "decrease": 0.5,
            "increase": "20/min",
            "recoveryInterval": "20s",
            "floor": "10/min",
        },
        "rules": [{"match": r"4\.7\.28|rate limited", "action": "throttle"}],
        "retry": {"initial": "5s", "max": "30s", "maxAge": "1h", "jitter": 0},
    },
    "outlook": {
        "perIP": {"maxConnections": 2, "maxMessagesPerConnection": 20, "maxMessageRate": "90/min"},
        "adaptive": {
            "decrease": 0.5,
            "increase": "20/min",
            "recoveryInterval": "20s",
            "floor": "10/min",
        },
        "rules": [{"match": r"4\.7\.65[01]", "action": "throttle"}],
        "retry": {"initial": "5s", "max": "30s", "maxAge": "1h", "jitter": 0},
    },
    "yahoo": {
        "perIP": {"maxConnections": 2, "maxMessagesPerConnection": 20, "maxMessageRate": "60/min"},
        "rules": [{"match": r"\[TSS0[45]\]", "action": "suspend", "duration": "30s"}],
        "retry": {"initial": "5s", "max": "30s", "maxAge": "1h", "jitter": 0},
    },
}
LIMITS = {"gmail": 55, "outlook": 40, "yahoo": 30}  # transactions per minute per source IP


@dataclass
class Sample:
    t: float  # seconds since the load began (negative: before)
    phase: str  # idle | load | drain
    rss_mb: float
    fds: int
    queue: int
    accepted: int
    delivered: int
    throttled: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Load:
    """The clients: mixed messages at `rate` a second on average, with a burst every minute."""

    eng: EngineProc
    isp: IspSimulator
    rate: float
    clients: int = 4
    seq: int = 0
    accepted_rcpts: set[str] = field(default_factory=set)  # known users, to be delivered
    bounced_rcpts: set[str] = field(default_factory=set)  # unknown users, to be refused
    refused: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, since the last take()
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        return out

    def _rate_now(self) -> float:
        in_minute = (time.monotonic() - self.started) % 60
        return self.rate * (5 if 30 <= in_minute < 35 else 1)

    def _message(self, rng: random.Random) -> tuple[list[str], list[str], bytes]:
        with self.lock:
            self.seq += 1
            n = self.seq
        rcpts, unknown = [], []
        for j in range(rng.choice((1, 1, 1, 2, 3))):
            name = rng.choices([p for p, _ in PROVIDERS], [w for _, w in PROVIDERS])[0]
            rcpt = self.isp.rcpt(name, f"u{n}r{j}")
            if rng.random() < 0.02:
                rcpt = self.isp.rcpt(name, f"gone{n}r{j}")
                self.isp[name].unknown_users.add(rcpt.lower())
                unknown.append(rcpt)
            rcpts.append(rcpt)
        size = rng.choice((1, 2, 4, 8, 16, 60))
        body = (
            f"From: App <{SENDER}>\r\nTo: {', '.join(rcpts)}\r\nSubject: soak {n}\r\n"
            f"Message-ID: <soak.{n}@example.test>\r\n\r\n"
        ).encode() + (b"y" * 998 + b"\r\n") * size
        return rcpts, unknown, body

    def _client(self, index: int) -> None:
        rng = random.Random(index)
        client: smtplib.SMTP | None = None
        sent_on_client = 0
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += rng.expovariate(self._rate_now() / self.clients)
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            rcpts, unknown, body = self._message(rng)
            try:
                if client is None or sent_on_client >= 20:
                    if client is not None:
                        client.quit()
                    client = smtplib.SMTP("127.0.0.1", self.eng.smtp_port, timeout=30)
                    client.ehlo("app.soak.test")
                    sent_on_client = 0
                t0 = time.monotonic()
                client.sendmail(SENDER, rcpts, body)
                took = time.monotonic() - t0
                sent_on_client += 1
                with self.lock:
                    self.latencies.append(took)
                    self.accepted_rcpts.update(r for r in rcpts if r not in unknown)
                    self.bounced_rcpts.update(unknown)
            except smtplib.SMTPResponseException as e:
                with self.lock:
                    self.refused[str(e.smtp_code)] = self.refused.get(str(e.smtp_code), 0) + 1
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.refused["conn"] = self.refused.get("conn", 0) + 1
                client = None
        if client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()

    def start(self) -> list[threading.Thread]:
        self.started = time.monotonic()
        threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]
        for t in threads:
            t.start()
        return threads


def _pids(root: int) -> list[int]:
    """The process and its descendants (the engine may run helpers)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def rss_mb(pid: int) -> float:
    total = 0
    for p in _pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def open_fds(pid: int) -> int:
    total = 0
    for p in _pids(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total


def delivered(isp: IspSimulator) -> set[str]:
    return {a.recipient for name, _ in PROVIDERS for a in isp[name].accepted()}


def throttled(isp: IspSimulator) -> int:
    return sum(
        1 for name, _ in PROVIDERS for e in isp[name].events() if e.reply[:3] in ("421", "451")
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sample(eng: EngineProc, isp: IspSimulator, load: Load, t: float, phase: str) -> Sample:
    assert eng.proc is not None
    lat = load.take_latencies()
    with load.lock:
        accepted = len(load.accepted_rcpts)
    return Sample(
        t=round(t, 1),
        phase=phase,
        rss_mb=round(rss_mb(eng.proc.pid), 1),
        fds=open_fds(eng.proc.pid),
        queue=int(eng.status()["queue"]["messages"]),
        accepted=accepted,
        delivered=len(delivered(isp)),
        throttled=throttled(isp),
        p50_ms=round(percentile(lat, 0.5) * 1000, 1),
        p99_ms=round(percentile(lat, 0.99) * 1000, 1),
        max_ms=round(max(lat, default=0.0) * 1000, 1),
    )


@dataclass
class Verdict:
    checks: list[tuple[str, bool, str]]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def lines(self) -> list[str]:
        return [f"{'PASS' if ok else 'FAIL'}  {name}: {why}" for name, ok, why in self.checks]


def judge(
    samples: list[Sample], idle_fds: int, final_fds: int, drained: bool, lost: int, burst: float
) -> Verdict:
    load = [s for s in samples if s.phase == "load"]
    span = load[-1].t if load else 0.0
    warm = max(60.0, span / 5)
    after = [s for s in load if warm <= s.t < warm + max(span / 5, 30.0)]
    last = [s for s in load if s.t >= span - max(span / 5, 30.0)]
    base = statistics.median(s.rss_mb for s in after) if after else 0.0
    end = statistics.median(s.rss_mb for s in last) if last else 0.0
    growth = (end - base) / base * 100 if base else 0.0
    third = [s for s in load if s.t >= span * 2 / 3]
    before = [s for s in load if s.t < span * 2 / 3]
    peak_late = max((s.queue for s in third), default=0)
    peak_early = max((s.queue for s in before), default=0)
    bound = 1.5 * peak_early + burst
    checks = [
        (
            "RSS growth after warm-up",
            bool(after and last) and growth < 10.0,
            f"{base:.1f} MB at {warm:.0f}s -> {end:.1f} MB at the end: {growth:+.1f} % (< 10 %)",
        ),
        (
            "no descriptor leak",
            final_fds - idle_fds <= 5,
            f"{idle_fds} open idle before the load, {final_fds} idle after it (<= +5)",
        ),
        (
            "queue bounded",
            drained and peak_late <= bound,
            f"peak {peak_early} before the last third, {peak_late} in it (<= {bound:.0f});"
            f" {'drained to 0' if drained else 'NOT drained'} after the load",
        ),
        ("nothing lost", lost == 0, f"lost {lost}"),
        (
            "queue gauge consistent",
            min((s.queue for s in samples), default=0) >= 0,
            f"lowest /v1/status queue.messages {min((s.queue for s in samples), default=0)}"
            " (never below 0)",
        ),
    ]
    return Verdict(checks)


def write_outputs(
    out: Path, samples: list[Sample], verdict: Verdict, header: list[str], load: Load
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = list(Sample.__dataclass_fields__)
    with (out / "samples.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for s in samples:
            w.writerow([getattr(s, k) for k in fields])
    table = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    table += ["| " + " | ".join(str(getattr(s, k)) for k in fields) + " |" for s in samples]
    (out / "summary.md").write_text(
        "# mailfleet soak\n\n"
        + "\n".join(f"- {h}" for h in header)
        + "\n\n## Verdict\n\n"
        + "\n".join(f"- {ln}" for ln in verdict.lines())
        + "\n\n## Samples\n\n"
        + "\n".join(table)
        + "\n"
    )
    plot(out / "soak.png", samples)


def plot(path: Path, samples: list[Sample]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    series: list[tuple[Any, list[float], str, str]] = [
        (axes[0], [s.rss_mb for s in samples], "RSS (MB)", "tab:blue"),
        (axes[1], [float(s.fds) for s in samples], "open descriptors", "tab:orange"),
        (axes[2], [float(s.queue) for s in samples], "queued messages", "tab:green"),
    ]
    for ax, ys, label, colour in series:
        ax.plot(t, ys, color=colour)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    nan = float("nan")  # no submissions, so no latency, outside the load
    axes[3].plot(t, [s.p50_ms if s.phase == "load" else nan for s in samples], label="p50")
    axes[3].plot(t, [s.p99_ms if s.phase == "load" else nan for s in samples], label="p99")
    axes[3].set_ylabel("accept latency (ms)")
    axes[3].legend(loc="upper left")
    axes[3].grid(alpha=0.3)
    axes[3].set_xlabel("minutes since the load began")
    for ax in axes:
        for s0, s1 in itertools.pairwise(samples):
            if s1.phase != s0.phase:
                ax.axvline(s1.t / 60, color="grey", linestyle="--", linewidth=0.8)
    fig.suptitle("mailfleet soak: one engine, mixed load, throttling providers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--rate", type=float, default=3.0, help="messages a second on average")
    ap.add_argument("--out", type=Path, default=ROOT / ".local" / "soak", help="results")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mailfleet-soak-"))
    isp = IspSimulator().start()
    dns = DnsServer(workdir=work / "dns")
    eng: EngineProc | None = None
    samples: list[Sample] = []
    try:
        isp.add_to_dns(dns)
        dns.start()
        for name, limit in LIMITS.items():
            isp[name].set_limit(limit, window=60)
        cfg = isp.engine_config(dns, SOURCE_IPS, SHAPING)
        cfg["logging"] = {"level": "warning", "format": "json"}
        (work / "engine").mkdir()
        eng = EngineProc(work / "engine", cfg).start()
        assert eng.proc is not None
        load = Load(eng, isp, a.rate)
        t_start = time.monotonic()

        def now() -> float:
            return time.monotonic() - t_start

        time.sleep(2)
        idle_fds = open_fds(eng.proc.pid)
        samples.append(sample(eng, isp, load, -2.0, "idle"))
        print(
            f"soak: {a.minutes:g} min of load at {a.rate:g} msg/s (bursts x5), engine pid"
            f" {eng.proc.pid}, idle {samples[0].rss_mb} MB, {idle_fds} fds; samples every"
            f" {a.interval:g} s",
            flush=True,
        )
        t_start = time.monotonic()
        threads = load.start()
        end = t_start + a.minutes * 60
        next_print = 0.0
        while time.monotonic() < end:
            time.sleep(min(a.interval, max(0.0, end - time.monotonic())))
            s = sample(eng, isp, load, now(), "load")
            samples.append(s)
            if s.t >= next_print:
                next_print = s.t + 30
                print(
                    f"  {s.t:6.0f}s rss {s.rss_mb:6.1f} MB fds {s.fds:4d} queue {s.queue:5d}"
                    f" accepted {s.accepted:6d} delivered {s.delivered:6d} throttled"
                    f" {s.throttled:5d} latency p50 {s.p50_ms:6.1f} p99 {s.p99_ms:7.1f} ms",
                    flush=True,
                )
        load.stop.set()
        for t in threads:
            t.join(60)
        drain_end = time.monotonic() + DRAIN_DEADLINE
        drained = False
        while time.monotonic() < drain_end:
            time.sleep(a.interval)
            s = sample(eng, isp, load, now(), "drain")
            samples.append(s)
            print(
                f"  {s.t:6.0f}s drain: queue {s.queue:5d} delivered {s.delivered:6d}"
                f" of {len(load.accepted_rcpts)}",
                flush=True,
            )
            # <= 0: the queue gauge must not go below zero, judged apart (queue gauge)
            if s.queue <= 0 and load.accepted_rcpts <= delivered(isp):
                drained = True
                break
        time.sleep(2)  # connections to the providers closed, sessions gone
        final_fds = open_fds(eng.proc.pid)
        got = delivered(isp)
        lost = len(load.accepted_rcpts - got)
        bounced = len(load.bounced_rcpts)
        burst = a.rate * 5 * 5
        verdict = judge(samples, idle_fds, final_fds, drained, lost, burst)
        loaded = [s for s in samples if s.phase == "load"]
        received = sum(isp[n].count() for n, _ in PROVIDERS)
        header = [
            f"`python -m bench.soak --minutes {a.minutes:g} --rate {a.rate:g}"
            f" --interval {a.interval:g}`",
            f"load: {a.minutes:g} min, {load.seq} messages, {len(load.accepted_rcpts)} known"
            f" recipients accepted and {bounced} unknown (bounced), clients refused:"
            f" {load.refused or 'none'}",
            f"providers: {', '.join(f'{n} {len(isp[n].accepted())}' for n, _ in PROVIDERS)}"
            f" received; throttling replies {throttled(isp)}",
            f"accept latency: worst interval p99 {max((s.p99_ms for s in loaded), default=0):.0f}"
            f" ms, median interval p50"
            f" {statistics.median(s.p50_ms for s in loaded) if loaded else 0:.0f} ms",
            f"delivered {len(got & load.accepted_rcpts)} of {len(load.accepted_rcpts)},"
            f" lost {lost}, received twice {received - len(got)}",
        ]
        write_outputs(a.out, samples, verdict, header, load)
        print("\n".join(header), flush=True)
        print("\n".join(verdict.lines()), flush=True)
        print(f"written: {a.out}/samples.csv, summary.md, soak.png", flush=True)
        print(f"verdict: {'PASS' if verdict.ok else 'FAIL'}", flush=True)
        return 0 if verdict.ok else 1
    finally:
        if eng is not None:
            eng.stop()
        dns.stop()
        isp.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
