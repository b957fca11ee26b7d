"""`make bench`: every benchmark, each printing its figures and its ratio against a peer measured
in the same run. Never fails on speed.

    python -m bench.run [--quick]
"""

from __future__ import annotations

import argparse
import os

from bench import backlog as backlog_bench
from bench import dkim as dkim_bench
from bench import egress as egress_bench
from bench import headers as headers_bench
from bench import health as health_bench
from bench import operator as operator_bench
from bench import operator_poll as operator_poll_bench
from bench import relay as relay_bench
from bench import shaped as shaped_bench
from bench import shaping as shaping_bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2,000 messages instead of 20,000")
    ap.add_argument("--workers", type=int, default=2, help="engine processes (SO_REUSEPORT)")
    ap.add_argument("--pools", type=int, default=1000, help="SendingPools for the operator run")
    ap.add_argument("--steady", type=float, default=300.0, help="steady-state window, seconds")
    ap.add_argument("--skip-operator", action="store_true", help="engine benchmarks only")
    ap.add_argument(
        "--skip-egress", action="store_true", help="not the egress run (bind, proxy, Dante)"
    )
    ap.add_argument(
        "--backlog",
        type=int,
        nargs="*",
        help="queued messages for the backlog run (default 100000 1000000; --quick 20000)",
    )
    a = ap.parse_args()
    messages = 2000 if a.quick else 20000
    pools, steady = (100, 60.0) if a.quick else (a.pools, a.steady)
    size, sessions = 5 * 1024, 20

    for alg, label in (("rsa-sha256", "rsa-2048"), ("ed25519-sha256", "ed25519")):
        print(f"dkim {label}: {dkim_bench.measure(alg):.0f} sig/s", flush=True)
    for line in health_bench.lines():
        print(line, flush=True)
    # Header parsing on long folded fields: time per byte at 10 KB, 100 KB and 1 MB.
    for line in headers_bench.lines(a.quick):
        print(line, flush=True)

    # The relay against Postfix, each in the same run: 5 KB, then 100 KB messages.
    theirs = 0.0
    for relay_size in (size, 100 * 1024):
        ours, pf = relay_bench.compare(messages, relay_size, sessions, a.workers)
        for line in relay_bench.lines(ours, pf, messages, relay_size, sessions, a.workers):
            print(line, flush=True)
        theirs = theirs or pf["msg_per_s"]
    # Per core: one engine process on a CPU of its own and the load on the other, then Postfix
    # the same way (how a pod of N cores scales: N processes that share nothing but the port).
    if len(os.sched_getaffinity(0)) >= 2:
        for relay_size in (size, 100 * 1024):
            ours, pf = relay_bench.compare(messages // 2, relay_size, sessions, 1, pin_cpu=True)
            for line in relay_bench.lines(ours, pf, messages // 2, relay_size, sessions, 1, True):
                print(line, flush=True)
    # Egress from one source address: bound, through our egress proxy, through Dante.
    if not a.skip_egress:
        egress = egress_bench.compare(messages, size, sessions)
        for line in egress_bench.lines(egress, messages, size, sessions):
            print(line, flush=True)
    shaped = shaped_bench.measure(messages, size, sessions, a.workers)
    print(shaped_bench.report(shaped, a.workers), flush=True)
    print(
        f"shaped relay vs postfix: ratio {float(shaped['msg_per_s']) / theirs:.2f}"  # type: ignore[arg-type]
        " (Postfix unshaped, same run)",
        flush=True,
    )
    # Adaptive shaping against providers with hidden limits, vs static and oracle configs.
    shaping_seconds = 30.0 if a.quick else 60.0
    for line in shaping_bench.lines(shaping_bench.measure(shaping_seconds), shaping_seconds):
        print(line, flush=True)
    # 5 KB x 1,000,000 is 5 GB of spool: the run needs that much free disk for a while.
    for n in a.backlog if a.backlog is not None else ([20000] if a.quick else [100000, 1000000]):
        drain = 20.0 if a.quick else 60.0
        print(backlog_bench.report(backlog_bench.measure(n, size, drain_seconds=drain)), flush=True)
    if not a.skip_operator:
        print(operator_bench.summary(operator_bench.measure(pools, steady)), flush=True)
        # The 5 s pod status poll, in CPU per pod (real engines and a stand-in replaying one).
        for line in operator_poll_bench.lines(operator_poll_bench.measure(pools)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
