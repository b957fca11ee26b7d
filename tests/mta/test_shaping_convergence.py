"""Shaping that converges: a real engine against a simulated provider that never says its limit.

The gmail-like provider accepts 10 messages/s per source IP (a token bucket the engine is not
told), answers 421-4.7.28 past it, and blocks an IP refused 60 times within 20 s. The engine is
configured with an optimistic 40/s. Everything asserted is counted by the simulator or read from
the engine's status: no block, every message delivered, few refusals once settled, a remembered
ceiling near the hidden limit, and a rate that climbs back when the provider stops throttling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc, message
from fixtures.isp import IspSimulator, max_in_window

IP = "127.0.0.2"
SENDER = "app@example.test"
LIMIT = 10.0  # what the provider accepts per second, hidden from the engine
OPTIMISTIC = "40/s"

Engine = Callable[..., EngineProc]


@pytest.fixture
def isp() -> Iterator[IspSimulator]:
    with IspSimulator(["gmail"]) as sim:
        yield sim


def send_many(eng: EngineProc, rcpts: list[str]) -> None:
    with eng.smtp() as s:
        s.ehlo()
        for i, r in enumerate(rcpts):
            s.sendmail(SENDER, [r], message(f"m {i}", frm=SENDER, to=r))


def pair(eng: EngineProc) -> dict[str, Any]:
    for row in eng.status()["shaping"]:
        if row["ip"] == IP and row["provider"] == "gmail":
            return dict(row)
    return {}


def test_rate_converges_under_a_hidden_limit_without_a_block_and_recovers(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    gmail.hide_limit(LIMIT, block_after=60, block_window=20.0, block_for=600.0)
    cfg = isp.engine_config(
        dns,
        [IP],
        {
            "gmail": {
                "perIP": {"maxMessageRate": OPTIMISTIC, "maxConnections": 3},
                "adaptive": {
                    "decrease": 0.5,
                    "increase": "1/s",
                    "recoveryInterval": "1s",
                    "floor": "1/s",
                },
            }
        },
    )
    eng = mta_engine(cfg)
    first = [isp.rcpt("gmail", f"a{i}") for i in range(300)]
    send_many(eng, first)
    gmail.wait_for(300, timeout=240)

    attempts = gmail.events(IP, "RCPT")
    refused = [e for e in attempts if e.reply[:1] != "2"]
    # Once settled (after the first 100 accepted), refusals are the odd probe, not a stream.
    settled_from = sorted(a.at for a in gmail.accepted(IP))[100]
    late = [e for e in attempts if e.at >= settled_from]
    late_refused = [e for e in late if e.reply[:1] != "2"]
    row = pair(eng)
    print(
        f"\nhidden limit {LIMIT}/s, configured {OPTIMISTIC}: {len(attempts)} attempts, "
        f"{len(refused)} refused ({len(late_refused)} of {len(late)} once settled); "
        f"rate now {row['rate']:.2f}/s, ceiling {row['ceiling']:.2f}/s"
    )
    assert gmail.blocks() == [], "the provider blocked the IP"
    assert not gmail.refusals(IP, "5.7.1")
    assert {a.recipient for a in gmail.accepted(IP)} == set(first)  # nothing lost
    assert len(late_refused) <= 0.15 * len(late)
    assert 0.5 * LIMIT <= row["rate"] <= 1.5 * LIMIT
    assert 0.8 * LIMIT <= row["ceiling"] <= 2.0 * LIMIT
    found = eng.metric("mailfleet_shaping_ceiling", source_ip=IP, provider="gmail")
    assert 0.8 * LIMIT <= found <= 2.0 * LIMIT  # what an operator graphs

    # The provider stops throttling: the rate climbs back past the old limit.
    gmail.throttle(False)
    lifted = len(gmail.events(IP))
    second = [isp.rcpt("gmail", f"b{i}") for i in range(300)]
    send_many(eng, second)
    eng.wait_until(lambda: pair(eng)["rate"] >= 2 * LIMIT, 120, "the rate to climb back")
    gmail.wait_for(600, timeout=240)
    after = [a.at for a in gmail.accepted(IP) if a.recipient in set(second)]
    best = max_in_window(after, 1.0)
    print(f"after the lift: rate {pair(eng)['rate']:.1f}/s, at most {best} accepted in a second")
    assert all(e.reply[:1] == "2" for e in gmail.events(IP)[lifted:])
    assert {a.recipient for a in gmail.accepted(IP)} == set(first) | set(second)
    assert best > LIMIT  # faster than the old limit allowed


def test_a_static_sender_that_keeps_pushing_is_blocked_and_the_engine_quarantines_the_ip(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    """The counter-example: adaptive shaping off, the same optimistic limit. The provider
    throttles past its hidden limit, then blocks the IP that kept pushing (550-5.7.1); the
    shipped rule takes the IP out for that provider."""
    provider = isp["gmail"]
    provider.hide_limit(LIMIT, block_after=20, block_window=30.0, block_for=600.0)
    cfg = isp.engine_config(
        dns,
        [IP],
        {
            "gmail": {
                "perIP": {"maxMessageRate": OPTIMISTIC, "maxConnections": 3},
                "adaptive": {"enabled": False},
            }
        },
    )
    eng = mta_engine(cfg)
    send_many(eng, [isp.rcpt("gmail", f"s{i}") for i in range(150)])
    provider.wait(lambda: bool(provider.blocks(IP)), timeout=60, what="a block")
    eng.wait_until(lambda: bool(pair(eng).get("quarantinedUntil")), 30, "the quarantine")
    block = provider.blocks(IP)[0]
    row = pair(eng)
    refused = provider.refusals(IP, "4.7.28")
    after = [e for e in provider.events(IP, "MAIL") if e.at > block.at]
    print(
        f"\nstatic {OPTIMISTIC} against {LIMIT}/s: {len(refused)} throttled, blocked after "
        f"{provider.count(IP)} accepted; {len(after)} MAIL after the block; {row['reason'][:60]}"
    )
    assert len(refused) >= 20  # it kept pushing
    assert "5.7.1" in row["reason"] and row["quarantinedUntil"] > block.at
    assert len(after) <= 3  # what was in flight on the 3 connections, then nothing
