"""Shaping end to end: a real engine process against the ISP simulator (tests/fixtures/isp.py).

Providers are found through real DNS (dnsmasq MX records, matched by MX suffix); the simulator
answers per source IP like gmail, outlook and yahoo do under load and counts what each source IP
sent. Figures are printed (`pytest -s`), never timed against a clock budget except where the
behaviour itself is stated in recovery intervals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.dnsserver import DnsServer
from fixtures.engine import EngineProc, message
from fixtures.isp import Accepted, IspSimulator, max_in_window

IP2, IP3, IP4 = "127.0.0.2", "127.0.0.3", "127.0.0.4"
SENDER = "app@example.test"

Engine = Callable[..., EngineProc]


@pytest.fixture
def isp(tmp_path: Path) -> Iterator[IspSimulator]:
    with IspSimulator() as sim:
        yield sim


def send_many(eng: EngineProc, rcpts: list[str], tag: str = "m") -> None:
    """One message per recipient, over one SMTP session."""
    with eng.smtp() as s:
        s.ehlo()
        for i, r in enumerate(rcpts):
            s.sendmail(SENDER, [r], message(f"{tag} {i}", frm=SENDER, to=r))


def rcpts(isp: IspSimulator, provider: str, n: int, tag: str = "u") -> list[str]:
    return [isp.rcpt(provider, f"{tag}{i}") for i in range(n)]


def pair(eng: EngineProc, ip: str, provider: str) -> dict[str, Any]:
    for row in eng.status()["shaping"]:
        if row["ip"] == ip and row["provider"] == provider:
            return dict(row)
    return {}


def adaptive(interval: str = "1s", **kw: str | float) -> dict[str, Any]:
    return {"decrease": 0.5, "increase": "1/s", "recoveryInterval": interval, "floor": "1/s", **kw}


def per_second(times: list[float], start: float, seconds: int) -> list[int]:
    return [sum(1 for t in times if start + k <= t < start + k + 1) for k in range(seconds)]


def distinct(accepted: list[Accepted]) -> set[str]:
    return {a.recipient for a in accepted}


# -- adaptive rate -------------------------------------------------------------------------------


def test_throttling_reply_lowers_the_pair_rate_at_once(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    gmail.set_limit(10, window=60)  # then 421-4.7.28 for the rest of the minute
    cfg = isp.engine_config(
        dns,
        [IP2],
        {
            "gmail": {
                "perIP": {"maxMessageRate": "20/s", "maxConnections": 2},
                # Attempts at the floor come every second, within the interval: no recovery.
                "adaptive": adaptive("2s"),
            }
        },
    )
    eng = mta_engine(cfg)
    send_many(eng, rcpts(isp, "gmail", 40))
    gmail.wait(lambda: bool(gmail.refusals(IP2, "4.7.28")), what="the first 421")
    first = gmail.refusals(IP2, "4.7.28")[0].at
    eng.wait_until(lambda: (pair(eng, IP2, "gmail").get("rate") or 20) < 20, 10, "rate drop")
    seen = time.time()
    row = pair(eng, IP2, "gmail")
    print(f"\nrate {row['maxRate']}/s -> {row['rate']}/s, seen {seen - first:.3f}s after the 421")
    assert row["maxRate"] == 20
    assert row["rate"] <= 10  # halved at least once
    assert eng.metric("mailfleet_reply_rule_hits_total", source_ip=IP2, action="throttle") >= 1
    assert eng.metric("mailfleet_shaping_rate", source_ip=IP2, provider="gmail") <= 20

    # Once throttled to the floor (1/s), attempts come at about that pace, not the policy's 20/s.
    time.sleep(6.5)
    attempts = [e.at for e in gmail.events(IP2, "RCPT")]
    before = [t for t in attempts if t < first]
    timeline = per_second(attempts, first, 6)
    settled = [t for t in attempts if first + 2 <= t < first + 6]
    print(f"attempts before the 421: {len(before)}; per second after it: {timeline}")
    print(f"accepted {gmail.count(IP2)}, refused {len(gmail.refusals(IP2))}")
    assert gmail.count(IP2) == 10
    # 4 s at the 1/s floor, one token of burst, 2 connections already in flight
    assert len(settled) <= 4 * 1 + 1 + 2


def test_suspended_pair_makes_no_attempt_until_the_suspension_ends(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    yahoo = isp["yahoo"]
    cfg = isp.engine_config(
        dns,
        [IP2, IP3],
        {
            "yahoo": {
                # One connection per pair: nothing from IP2 is in flight once its reply is read.
                "perIP": {"maxMessageRate": "5/s", "maxConnections": 1},
                "rules": [{"match": r"\[TSS04\]", "action": "suspend", "duration": "3s"}],
            }
        },
    )
    eng = mta_engine(cfg)
    yahoo.defer(IP2, seconds=1.0)
    send_many(eng, rcpts(isp, "yahoo", 50))
    yahoo.wait(lambda: bool(yahoo.refusals(IP2, "TSS04")), what="[TSS04]")
    eng.wait_until(lambda: bool(pair(eng, IP2, "yahoo").get("suspendedUntil")), 10, "suspension")
    row = pair(eng, IP2, "yahoo")
    eng.wait_queue_empty(timeout=60)

    deferrals = yahoo.refusals(IP2, "TSS04")
    last = deferrals[-1].at  # a reconnect within the same attempt may see it twice
    resumed = [e.at for e in yahoo.events(IP2) if e.at > last]
    other = [a.at for a in yahoo.accepted(IP3) if last < a.at < last + 3]
    print(
        f"\n[TSS04] x{len(deferrals)}; suspended until +{row['suspendedUntil'] - last:.2f}s; "
        f"IP2 next seen +{resumed[0] - last:.2f}s; IP3 sent {len(other)} meanwhile; "
        f"per IP {yahoo.per_ip()}"
    )
    assert row["reason"].startswith("suspended:") and "TSS04" in row["reason"]
    assert row["suspendedUntil"] >= last + 3
    assert resumed, "IP2 never sent again"
    assert resumed[0] >= last + 3  # no connection, no transaction during the suspension
    assert other, "the other IP stopped too"
    assert yahoo.count(IP2) > 0  # and IP2 sends again afterwards
    assert distinct(yahoo.accepted()) == set(rcpts(isp, "yahoo", 50))


def test_rate_recovers_to_the_policy_maximum_within_ten_intervals(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    gmail.set_limit(5, window=60)
    interval = 1.0
    cfg = isp.engine_config(
        dns,
        [IP2],
        {
            "gmail": {
                "perIP": {"maxMessageRate": "10/s", "maxConnections": 2},
                "adaptive": adaptive("1s", increase="3/s"),
            }
        },
    )
    eng = mta_engine(cfg)
    send_many(eng, rcpts(isp, "gmail", 150))
    gmail.wait(lambda: len(gmail.refusals(IP2)) >= 3, what="three 421s")
    eng.wait_until(lambda: pair(eng, IP2, "gmail").get("rate") == 1.0, 10, "the floor")
    gmail.throttle(False)
    last = gmail.refusals(IP2)[-1].at
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rate = pair(eng, IP2, "gmail")["rate"]
        samples.append((time.time() - last, rate))
        if rate >= 0.9 * 10:
            break
        time.sleep(0.1)
    took = samples[-1][0]
    accepted = [a.at for a in gmail.accepted(IP2)]
    print(
        "\nrate after the last 421: "
        + ", ".join(f"+{t:.1f}s {r:g}/s" for t, r in samples[:: max(1, len(samples) // 12)])
    )
    print(f"back to {samples[-1][1]:g}/s (max 10/s) after {took / interval:.1f} intervals")
    time.sleep(2)
    now = time.time()
    recent = [t for t in gmail.accepted(IP2) if t.at > now - 2]
    print(f"accepted per second afterwards: {len(recent) / 2:.1f}; total {len(accepted)}")
    assert samples[-1][1] >= 9
    assert took <= 10 * interval
    assert gmail.refusals(IP2)[-1].at == last  # no 421 once the simulator stopped throttling


# -- warmup caps ---------------------------------------------------------------------------------


def warmup_config(isp: IspSimulator, dns: DnsServer, cap: int, overflow: str) -> dict[str, Any]:
    return isp.engine_config(
        dns,
        [IP2, {"address": IP3, "state": "warming"}],
        {"gmail": {"perIP": {"maxMessageRate": "5/s", "maxConnections": 2}}},
        warmup=[{"address": IP3, "provider": "gmail", "day": 1, "dailyCap": cap}],
        warmupSlots=1,  # the whole day's cap at once: the test day is not spread over hours
        overflow=overflow,
    )


def test_warmup_cap_is_never_exceeded_across_a_crash_and_spills(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    eng = mta_engine(warmup_config(isp, dns, 10, "spill"))
    want = rcpts(isp, "gmail", 60)
    send_many(eng, want)
    gmail.wait_for(4, IP3)
    eng.kill9()
    at_crash = gmail.per_ip()
    eng.start()
    eng.wait_queue_empty(timeout=60)
    row = pair(eng, IP3, "gmail")
    print(f"\nper IP at the crash {at_crash}, at the end {gmail.per_ip()}; {row}")
    assert gmail.count(IP3) <= 10
    assert row["warmupLeft"] == 0
    assert distinct(gmail.accepted()) == set(want)  # the rest spilled to the warm IP
    assert gmail.count(IP2) >= 50
    eng.wait_until(
        lambda: eng.metric("mailfleet_warmup_sent", source_ip=IP3, provider="gmail") == 10,
        5,
        "warmup_sent metric",
    )
    assert eng.metric("mailfleet_warmup_cap", source_ip=IP3, provider="gmail") == 10


def test_warmup_cap_with_defer_holds_the_rest(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    eng = mta_engine(warmup_config(isp, dns, 8, "defer"))
    send_many(eng, rcpts(isp, "gmail", 40))

    def settled() -> bool:
        q = eng.status()["queue"]
        nxt = q["nextRetry"]
        return bool(
            q["jobsReady"] == 0
            and q["jobsInFlight"] == 0
            and (nxt is None or nxt > time.time() + 600)
        )

    eng.wait_until(settled, 60, "only warmup-held mail left")
    held = eng.status()["queue"]["messages"]
    print(f"\nper IP {gmail.per_ip()}; held for the warmup cap: {held}")
    assert gmail.count(IP3) == 8
    assert held > 0
    assert gmail.count() + held == 40
    assert (
        eng.metric("mailfleet_shaping_waits_total", provider="gmail", reason="warmup cap (defer)")
        > 0
    )


# -- quarantine ----------------------------------------------------------------------------------


def test_s3150_quarantines_the_ip_for_outlook_only(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    outlook = isp["outlook"]
    outlook.block(IP2)
    cfg = isp.engine_config(
        dns,
        [IP2, IP3, IP4],
        {"outlook": {"perIP": {"maxMessageRate": "10/s", "maxConnections": 1}}},
    )
    eng = mta_engine(cfg)
    want = rcpts(isp, "outlook", 30)
    send_many(eng, want)
    eng.wait_queue_empty(timeout=60)
    blocks = outlook.refusals(IP2, "S3150")
    after = [e for e in outlook.events(IP2) if e.at > blocks[0].at]
    row = pair(eng, IP2, "outlook")
    print(f"\nper IP {outlook.per_ip()}; S3150 x{len(blocks)}; {row['reason'][:60]}...")
    assert len(blocks) == 1
    assert after == []  # the IP stopped sending to outlook at the first S3150
    assert distinct(outlook.accepted()) == set(want)  # the others carried all of it
    assert row["quarantinedUntil"] and row["quarantinedUntil"] > time.time() + 3600
    assert "S3150" in row["reason"]
    assert not pair(eng, IP3, "outlook").get("quarantinedUntil")
    eng.wait_until(
        lambda: eng.metric("mailfleet_shaping_quarantined", source_ip=IP2, provider="outlook") == 1,
        5,
        "quarantine metric",
    )
    assert eng.metric("mailfleet_shaping_quarantined", source_ip=IP3, provider="outlook") == 0


# -- rate limits and independence -------------------------------------------------------------


def test_per_ip_rate_holds_and_a_limited_provider_does_not_block_another(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail, outlook = isp["gmail"], isp["outlook"]
    cfg = isp.engine_config(
        dns,
        [IP2, IP3],
        {
            "gmail": {
                "perIP": {"maxMessageRate": "4/s", "maxConnections": 2},
                "adaptive": {"enabled": False},
            }
        },
    )
    eng = mta_engine(cfg)
    want_g = rcpts(isp, "gmail", 40)
    want_o = rcpts(isp, "outlook", 10)
    send_many(eng, want_g, "g")
    send_many(eng, want_o, "o")
    outlook.wait_for(10, timeout=30)
    tenth = sorted(a.at for a in outlook.accepted())[9]
    gmail_then = sum(1 for a in gmail.accepted() if a.at <= tenth)
    eng.wait_queue_empty(timeout=60)
    window = 2.0
    worst = {ip: max_in_window([a.at for a in gmail.accepted(ip)], window) for ip in (IP2, IP3)}
    times = sorted(a.at for a in gmail.accepted())
    print(
        f"\ngmail per IP {gmail.per_ip()}; most in any {window:g}s per IP {worst} "
        f"(4/s + burst 4 + 2 in flight = {int(4 * window + 4 + 2)}); "
        f"overall {len(times) / (times[-1] - times[0]):.1f}/s; "
        f"gmail sent when outlook's 10 were in: {gmail_then}/40"
    )
    for ip in (IP2, IP3):
        assert worst[ip] <= 4 * window + 4 + 2
    assert gmail_then < 40  # outlook's mail went while gmail's was still held back
    assert distinct(gmail.accepted()) == set(want_g)
    assert distinct(outlook.accepted()) == set(want_o)


# -- persistence ---------------------------------------------------------------------------------


def test_shaping_state_survives_a_restart(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    gmail = isp["gmail"]
    gmail.set_limit(3, window=60)
    cfg = isp.engine_config(
        dns,
        [IP2],
        {
            "gmail": {
                "perIP": {"maxMessageRate": "10/s", "maxConnections": 1},
                "adaptive": adaptive("1h"),  # no recovery during the test
            }
        },
    )
    eng = mta_engine(cfg)
    send_many(eng, rcpts(isp, "gmail", 10))
    gmail.wait(lambda: bool(gmail.refusals(IP2)), what="the first 421")
    gmail.throttle(False)
    eng.wait_queue_empty(timeout=30)
    before = pair(eng, IP2, "gmail")
    eng.stop()
    eng.start()
    after = pair(eng, IP2, "gmail")
    print(f"\nbefore the restart {before}\nafter it           {after}")
    assert before["rate"] < 10
    assert after["rate"] == before["rate"]
    assert after["maxRate"] == 10


def test_throttling_reply_at_mail_from_lowers_the_rate_too(
    mta_engine: Engine, isp: IspSimulator, dns: DnsServer
) -> None:
    """Gmail also refuses a whole session with 421-4.7.28 (at MAIL FROM), not only a recipient."""
    gmail = isp["gmail"]
    gmail.throttle_stage = "MAIL"
    gmail.set_limit(5, window=60)
    cfg = isp.engine_config(
        dns,
        [IP2],
        {
            "gmail": {
                "perIP": {"maxMessageRate": "20/s", "maxConnections": 1},
                "adaptive": adaptive(),
            }
        },
    )
    eng = mta_engine(cfg)
    send_many(eng, rcpts(isp, "gmail", 20))
    gmail.wait(lambda: len(gmail.refusals(IP2, "4.7.28")) >= 3, what="three 421s")
    row = pair(eng, IP2, "gmail")
    replies = [ln["reply"] for ln in eng.log_lines() if ln.get("result") == "deferred"]
    print(f"\n{row}\nthe engine saw: {replies[:1]}")
    assert row["rate"] is not None and row["rate"] < 20
