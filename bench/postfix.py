"""Reference figure: real Postfix relaying smtp-source -> Postfix -> smtp-sink on loopback.

    python -m bench.postfix [--count 2000] [--size-kb 5] [--sessions 20]

Run from the repository root, as root (Postfix is started with ``postfix -c DIR start``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from tests.fixtures.postfixrelay import PostfixRelay
from tests.fixtures.smtppeers import SmtpSink, smtp_source

WARMUP = 100


@dataclass(frozen=True)
class RelayResult:
    count: int
    size_kb: int
    sessions: int
    inject_seconds: float  # until smtp-source had every message accepted (queued) by Postfix
    total_seconds: float  # until smtp-sink had received every message
    msgs_per_s: float  # end to end: count / total_seconds

    def line(self) -> str:
        return (
            f"postfix relay: {self.count} msgs x {self.size_kb} KB over {self.sessions} sessions: "
            f"{self.msgs_per_s:.0f} msg/s end to end ({self.total_seconds:.2f} s; "
            f"injected in {self.inject_seconds:.2f} s)"
        )


def measure_postfix_relay(
    count: int = 2000,
    size_kb: int = 5,
    sessions: int = 20,
    *,
    host: str = "127.0.0.1",
    sink_host: str = "127.0.0.1",
    concurrency: int = 20,
    timeout: float = 600.0,
) -> RelayResult:
    """Relay ``count`` messages of ``size_kb`` KB from ``sessions`` smtp-source sessions through a
    fresh private Postfix into smtp-sink, after a short warm-up; time until the sink has them all.
    """
    with (
        SmtpSink(sink_host) as sink,
        PostfixRelay(sink.address, host, concurrency=concurrency) as relay,
    ):
        # spawn smtpd/cleanup/smtp processes and open the cached connections first
        smtp_source(relay.address, count=WARMUP, sessions=sessions, size=size_kb * 1024)
        sink.wait_for(WARMUP, timeout)
        base = sink.count
        start = time.perf_counter()
        inject = smtp_source(relay.address, count=count, sessions=sessions, size=size_kb * 1024)
        sink.wait_for(base + count, timeout)
        total = time.perf_counter() - start
    return RelayResult(count, size_kb, sessions, inject, total, count / total)


def postfix_relay_rate(count: int = 2000, size_kb: int = 5, sessions: int = 20) -> float:
    """Messages per second, end to end (see :func:`measure_postfix_relay`)."""
    return measure_postfix_relay(count, size_kb, sessions).msgs_per_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size-kb", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args(argv)
    result = measure_postfix_relay(
        args.count, args.size_kb, args.sessions, concurrency=args.concurrency
    )
    print(result.line())


if __name__ == "__main__":
    main()
