"""Shaping against providers that never say their limits: the same load three ways in one run.

    python -m bench.shaping [--seconds 60] [--quick]

The ISP simulator (tests/fixtures/isp.py) plays a Gmail-, a Microsoft- and a Yahoo-like provider,
each accepting a hidden number of messages per second from a source IP, answering its own
throttling text past it (421-4.7.28, 451 4.7.650 S775, 421 [TSS04] at MAIL) and blocking an IP
refused 5 seconds' worth of its limit within 30 s (550-5.7.1, S3150, [TSS09]) for an hour.
One engine process sends from one source IP, through real DNS (dnsmasq), three times:

- static: the optimistic limits (5x the hidden ones), adaptive shaping off;
- adaptive: the same optimistic limits, mailfleet's controller on (mta/aimd.py);
- oracle: static limits equal to the hidden ones, as if the provider had said them.

Each run offers every provider more than it can take in `--seconds`; counted is what the provider
accepted in that time. Prints per provider style
`shaping: adaptive N, static S, oracle O, adaptive/oracle R, blocks B` (B: blocks the adaptive
run received). Never fails on figures.
"""

from __future__ import annotations

import argparse
import math
import shutil
import smtplib
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fixtures.dnsserver import DnsServer
from tests.fixtures.engine import EngineProc, message
from tests.fixtures.isp import IspSimulator

SOURCE_IP = "127.0.0.2"
SENDER = "bench@example.test"
# provider name in the simulator -> (style shown, hidden limit in messages/s per source IP)
STYLES: dict[str, tuple[str, float]] = {
    "gmail": ("Gmail", 20.0),
    "outlook": ("Microsoft", 15.0),
    "yahoo": ("Yahoo", 10.0),
}
OPTIMISM = 5.0
MODES = ("static", "adaptive", "oracle")
# The controller's clock for the benchmark: seconds instead of the production minutes.
ADAPTIVE = {
    "enabled": True,
    "decrease": 0.5,
    "increase": "1/s",
    "recoveryInterval": "2s",
    "floor": "1/s",
}


@dataclass(frozen=True)
class Outcome:
    accepted: int
    refused: int
    blocks: int


def _providers(mode: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (_, limit) in STYLES.items():
        rate = limit if mode == "oracle" else limit * OPTIMISM
        out[name] = {
            "perIP": {"maxMessageRate": f"{rate:g}/s", "maxConnections": 5},
            "adaptive": ADAPTIVE if mode == "adaptive" else {"enabled": False},
        }
    return out


def _submit(eng: EngineProc, rcpts: list[str], stop: threading.Event) -> None:
    with eng.smtp() as s:
        s.ehlo()
        for i, r in enumerate(rcpts):
            if stop.is_set():
                return
            try:
                s.sendmail(SENDER, [r], message(f"shaping {i}", frm=SENDER, to=r))
            except smtplib.SMTPException:
                return


def run_mode(mode: str, seconds: float, workdir: Path) -> dict[str, Outcome]:
    """One engine run in `mode`; what each provider accepted within `seconds`."""
    workdir.mkdir(parents=True)
    with IspSimulator(list(STYLES)) as isp:
        for name, (_, limit) in STYLES.items():
            p = isp[name]
            p.hide_limit(limit, block_after=int(5 * limit), block_window=30.0, block_for=3600.0)
            if name == "yahoo":
                p.throttle_stage = "MAIL"  # Yahoo defers at MAIL FROM and closes
        dns = DnsServer(workdir=workdir / "dns")
        isp.add_to_dns(dns)
        dns.start()
        cfg = isp.engine_config(dns, [SOURCE_IP], _providers(mode))
        eng = EngineProc(workdir, cfg)
        stop = threading.Event()
        try:
            eng.start()
            # More than any provider can take in the run, interleaved so none runs dry.
            load = {n: math.ceil(1.3 * lim * seconds) + 50 for n, (_, lim) in STYLES.items()}
            rcpts = [
                isp.rcpt(n, f"u{i}")
                for i in range(max(load.values()))
                for n in STYLES
                if i < load[n]
            ]
            start = time.time()
            sender = threading.Thread(target=_submit, args=(eng, rcpts, stop), daemon=True)
            sender.start()
            time.sleep(max(0.0, start + seconds - time.time()))
            end = start + seconds
            out = {}
            for name in STYLES:
                p = isp[name]
                out[name] = Outcome(
                    accepted=sum(1 for a in p.accepted(SOURCE_IP) if a.at <= end),
                    refused=sum(1 for e in p.refusals(SOURCE_IP) if e.at <= end),
                    blocks=len(p.blocks(SOURCE_IP)),
                )
            return out
        finally:
            stop.set()
            eng.stop()
            dns.close()


def measure(seconds: float) -> dict[str, dict[str, Outcome]]:
    """{mode: {provider: Outcome}} for the three modes, one after the other."""
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-shaping-"))
    try:
        return {mode: run_mode(mode, seconds, workdir / mode) for mode in MODES}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def lines(r: dict[str, dict[str, Outcome]], seconds: float) -> list[str]:
    out = []
    for name, (style, limit) in STYLES.items():
        a, s, o = r["adaptive"][name], r["static"][name], r["oracle"][name]
        ratio = a.accepted / o.accepted if o.accepted else 0.0
        out.append(
            f"shaping: adaptive {a.accepted}, static {s.accepted}, oracle {o.accepted}, "
            f"adaptive/oracle {ratio:.2f}, blocks {a.blocks} "
            f"({style}-style, hidden {limit:g}/s per IP, configured {limit * OPTIMISM:g}/s, "
            f"{seconds:g} s; refusals adaptive {a.refused}, static {s.refused}, "
            f"oracle {o.refused}; static blocked {s.blocks}x)"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each of the 3 runs")
    ap.add_argument("--quick", action="store_true", help="30 s runs")
    a = ap.parse_args()
    seconds = 30.0 if a.quick else a.seconds
    for line in lines(measure(seconds), seconds):
        print(line, flush=True)


if __name__ == "__main__":
    main()
