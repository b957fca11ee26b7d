"""Shaping decisions over their input space: AIMD, token buckets, rules, suspension, quarantine,
IP choice, warmup caps and spill/defer. Time is passed in; nothing sleeps."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest

from mailfleet.mta.config import EngineConfig, parse_config
from mailfleet.mta.providers import ProviderTable
from mailfleet.mta.shaping import (
    Grant,
    Shaper,
    Wait,
    next_slot_in,
    warmup_allowance,
)

T0 = 1_800_000_000.0  # a fixed clock, at the start of a UTC day
T0 -= T0 % 86400


def config(**shaping: Any) -> EngineConfig:
    return parse_config(
        {
            "hostname": "mta.test",
            "delivery": {
                "sourceIPs": [
                    {"address": "127.0.0.2", "hostname": "a.test"},
                    {"address": "127.0.0.3", "hostname": "b.test"},
                ]
            },
            "shaping": {
                "providers": [
                    {
                        "name": "gmail",
                        "perIP": {"maxMessageRate": "60/s", "maxConnections": 2},
                        "adaptive": {
                            "decrease": 0.5,
                            "increase": "6/s",
                            "recoveryInterval": "10s",
                            "floor": "1/s",
                        },
                        "rules": [{"match": "custom-slowdown", "action": "throttle"}],
                    }
                ],
                **shaping,
            },
        }
    )


def grants(s: Shaper, provider: str, now: float, n: int) -> list[Grant | Wait]:
    out = []
    for i in range(n):
        g = s.acquire(provider, now, (i * 0.37) % 1)
        out.append(g)
        if isinstance(g, Grant):
            s.release(g)
    return out


def test_throttle_reply_halves_the_pair_at_once_and_only_that_pair() -> None:
    s = Shaper(config())
    s.acquire("gmail", T0, 0.0)
    hit = s.observe("127.0.0.2", "gmail", "421-4.7.28 [127.0.0.2] unusual rate", T0 + 0.1)
    assert hit is not None and hit.action == "throttle"
    assert s.pairs[("127.0.0.2", "gmail")].rate == 30.0
    assert s.pairs[("127.0.0.3", "gmail")].rate == 60.0
    assert ("127.0.0.2", "outlook") not in s.pairs or s.pairs[("127.0.0.2", "outlook")].rate is None


def test_recovery_climbs_back_to_the_maximum_never_above() -> None:
    s = Shaper(config())
    p = s.pair("127.0.0.2", "gmail", T0)
    for i in range(5):
        s.observe("127.0.0.2", "gmail", "421 4.7.28 rate limited", T0 + i)
    assert p.rate == pytest.approx(60 / 32)
    ceiling = p.ceiling
    assert ceiling == pytest.approx(60 / 16)  # where the last throttling began
    a = s.settings("gmail").adaptive
    rates = []
    for k in range(1, 30):
        p.recover(a, T0 + 4 + 10 * k)
        rates.append(p.rate)
    assert rates == sorted(rates)
    assert rates[-1] == 60.0
    assert max(rates) <= 60.0
    # The first step closes the gap to just under the ceiling; the next ones probe it slowly.
    assert 0.9 * ceiling <= rates[0] < ceiling
    assert rates[1] - rates[0] < 0.05 * ceiling


def test_a_burst_of_throttling_replies_from_one_backlog_is_one_decrease() -> None:
    s = Shaper(config())
    sent = grants(s, "gmail", T0, 40)  # a backlog sent at once, replies read a second later
    grants_ = [g for g in sent if isinstance(g, Grant) and g.ip == "127.0.0.2"]
    assert len(grants_) >= 10
    for i, g in enumerate(grants_):
        s.observe(g.ip, "gmail", "421-4.7.28 unusual rate", T0 + 1 + i * 0.01, g.at)
    p = s.pairs[("127.0.0.2", "gmail")]
    assert p.rate == 30.0  # halved once, not once per reply
    # A message sent after the decrease that is throttled again is new evidence.
    g = s.acquire("gmail", T0 + 2, 0.0)
    assert isinstance(g, Grant)
    s.release(g)
    s.observe(g.ip, "gmail", "421-4.7.28 unusual rate", T0 + 2.1, g.at)
    assert s.pairs[(g.ip, "gmail")].rate < (30.0 if g.ip == "127.0.0.2" else 60.0)


def test_a_yahoo_volume_deferral_slows_the_pair_and_never_idles_it() -> None:
    s = Shaper(config())
    reply = "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred: unexpected volume"
    hit = s.observe("127.0.0.2", "gmail", reply, T0)
    assert hit is not None and hit.action == "throttle"
    p = s.pairs[("127.0.0.2", "gmail")]
    assert p.rate == 30.0 and p.blocked_until(T0) <= T0
    assert any(isinstance(g, Grant) and g.ip == "127.0.0.2" for g in grants(s, "gmail", T0 + 1, 20))


def test_rate_floor_holds_under_a_storm() -> None:
    s = Shaper(config())
    for i in range(50):
        s.observe("127.0.0.2", "gmail", "451 4.7.650 rate limited due to IP reputation", T0 + i)
    assert s.pairs[("127.0.0.2", "gmail")].rate == 1.0


def test_token_bucket_limits_sends_per_second() -> None:
    cfg = parse_config(
        {
            "delivery": {"sourceIPs": [{"address": "127.0.0.2"}]},
            "shaping": {"providers": [{"name": "gmail", "perIP": {"maxMessageRate": "5/s"}}]},
        }
    )
    s = Shaper(cfg)
    sent = 0
    for tick in range(100):  # 10 seconds in steps of 0.1 s
        now = T0 + tick / 10
        while isinstance(g := s.acquire("gmail", now, 0.5), Grant):
            s.release(g)
            sent += 1
    assert 45 <= sent <= 56  # 5/s for 10 s, plus one second of burst


def test_suspend_stops_the_pair_until_it_ends() -> None:
    s = Shaper(config())
    reply = "421 4.7.0 [TSS05] Messages from 127.0.0.2 temporarily deferred due to user complaints"
    hit = s.observe("127.0.0.2", "yahoo", reply, T0)
    assert hit is not None and hit.action == "suspend"
    picks = {g.ip for g in grants(s, "yahoo", T0 + 60, 50) if isinstance(g, Grant)}
    assert picks == {"127.0.0.3"}
    later = {g.ip for g in grants(s, "yahoo", T0 + 3600 + 1, 50) if isinstance(g, Grant)}
    assert later == {"127.0.0.2", "127.0.0.3"}


def test_everything_suspended_means_wait_until_the_first_ends() -> None:
    s = Shaper(config())
    s.observe("127.0.0.2", "yahoo", "421 [TSS05] deferred", T0)
    s.observe("127.0.0.3", "yahoo", "421 [TSS05] deferred", T0 + 100)
    w = s.acquire("yahoo", T0 + 200, 0.1)
    assert isinstance(w, Wait) and w.seconds == pytest.approx(3600 - 200)


def test_quarantine_from_outlook_block_list() -> None:
    s = Shaper(config())
    reply = "550 5.7.1 Unfortunately, messages from [127.0.0.3] weren't sent (S3150)."
    hit = s.observe("127.0.0.3", "outlook", reply, T0)
    assert hit is not None and hit.action == "quarantine"
    snap = {(r["ip"], r["provider"]): r for r in s.snapshot(T0 + 1)}
    assert snap[("127.0.0.3", "outlook")]["quarantinedUntil"] == T0 + 86400
    assert {g.ip for g in grants(s, "outlook", T0 + 5, 30) if isinstance(g, Grant)} == {"127.0.0.2"}


def test_threshold_rules_fire_on_the_nth_hit_in_the_window() -> None:
    cfg = config()
    cfg = parse_config(
        {
            **cfg.model_dump(mode="json", by_alias=True),
            "shaping": {
                "providers": [
                    {
                        "name": "gmail",
                        "rules": [
                            {
                                "match": "slow down",
                                "action": "throttle",
                                "threshold": 3,
                                "window": "10s",
                            }
                        ],
                    }
                ]
            },
        }
    )
    s = Shaper(cfg)
    s.pair("127.0.0.2", "gmail", T0).rate = 10.0
    assert s.observe("127.0.0.2", "gmail", "451 slow down", T0) is None
    assert s.observe("127.0.0.2", "gmail", "451 slow down", T0 + 20) is None  # first expired
    assert s.observe("127.0.0.2", "gmail", "451 slow down", T0 + 21) is None
    assert s.observe("127.0.0.2", "gmail", "451 slow down", T0 + 22) is not None


def test_configured_rules_come_before_defaults() -> None:
    s = Shaper(config())
    hit = s.observe("127.0.0.2", "gmail", "451 custom-slowdown now", T0)
    assert hit is not None and hit.rule == "custom-slowdown"
    assert s.observe("127.0.0.2", "gmail", "250 ok", T0) is None
    assert s.observe("127.0.0.2", "gmail", "550 5.1.1 no such user", T0) is None


def test_connection_limit_per_pair() -> None:
    s = Shaper(config())
    held = [s.acquire("gmail", T0, 0.0) for _ in range(4)]
    assert all(isinstance(g, Grant) for g in held)
    assert Counter(g.ip for g in held if isinstance(g, Grant)) == {"127.0.0.2": 2, "127.0.0.3": 2}
    w = s.acquire("gmail", T0, 0.0)
    assert isinstance(w, Wait) and w.reason == "connection limit"


def test_weighted_choice_follows_the_rates() -> None:
    s = Shaper(config())
    for ip, rate in (("127.0.0.2", 45.0), ("127.0.0.3", 15.0)):
        p = s.pair(ip, "gmail", T0)
        p.rate = p.max_rate = rate
    picks: Counter[str] = Counter()
    for i in range(400):  # a second apart: the buckets are always full
        g = s.acquire("gmail", T0 + i, (i + 0.5) / 400)
        assert isinstance(g, Grant)
        s.release(g)
        picks[g.ip] += 1
    assert picks["127.0.0.2"] == pytest.approx(300, abs=2)


@pytest.mark.parametrize(
    ("cap", "slots"), list(itertools.product([0, 1, 5, 24, 100, 9999], [1, 4, 24]))
)
def test_warmup_allowance_is_monotone_and_capped(cap: int, slots: int) -> None:
    prev = -1
    for sec in range(0, 86400, 900):
        a = warmup_allowance(cap, sec, 86400, slots)
        assert prev <= a <= cap
        prev = a
    assert warmup_allowance(cap, 86399, 86400, slots) == cap
    if cap >= slots > 1:
        assert warmup_allowance(cap, 0, 86400, slots) < cap  # not all in the first minutes
    assert 0 < next_slot_in(100.0, 86400, slots) <= 86400 / slots


def _warm_config(overflow: str) -> EngineConfig:
    return parse_config(
        {
            "delivery": {
                "sourceIPs": [
                    {"address": "127.0.0.2", "state": "warming"},
                    {"address": "127.0.0.3"},
                ]
            },
            "shaping": {
                "warmup": [{"address": "127.0.0.2", "provider": "gmail", "day": 1, "dailyCap": 10}],
                "overflow": overflow,
                "warmupSlots": 1,
            },
        }
    )


def test_warmup_cap_is_never_exceeded_and_spill_moves_the_rest() -> None:
    s = Shaper(_warm_config("spill"))
    got = grants(s, "gmail", T0 + 10, 200)
    by_ip = Counter(g.ip for g in got if isinstance(g, Grant))
    assert by_ip["127.0.0.2"] == 10
    assert by_ip["127.0.0.3"] == 190
    # The next day the cap starts again.
    nxt = Counter(g.ip for g in grants(s, "gmail", T0 + 86400 + 10, 200) if isinstance(g, Grant))
    assert nxt["127.0.0.2"] == 10


def test_warmup_defer_holds_the_capped_share() -> None:
    s = Shaper(_warm_config("defer"))
    got = grants(s, "gmail", T0 + 10, 200)
    by_ip = Counter(g.ip for g in got if isinstance(g, Grant))
    waits = [g for g in got if isinstance(g, Wait)]
    assert by_ip["127.0.0.2"] == 10
    assert waits and all(w.reason.startswith("warmup cap") for w in waits)
    assert waits[0].seconds == pytest.approx(86400 - 10)
    assert by_ip["127.0.0.3"] + len(waits) + 10 == 200


def test_standby_and_quarantined_states_never_send() -> None:
    cfg = parse_config(
        {
            "delivery": {
                "sourceIPs": [
                    {"address": "127.0.0.2", "state": "standby"},
                    {"address": "127.0.0.3", "state": "quarantined"},
                ]
            }
        }
    )
    w = Shaper(cfg).acquire("gmail", T0, 0.5)
    assert isinstance(w, Wait) and w.reason == "no active source IP"


def test_state_survives_a_snapshot_and_restore() -> None:
    s = Shaper(config())
    s.observe("127.0.0.2", "gmail", "421 4.7.28 rate", T0)
    s.observe("127.0.0.3", "yahoo", "421 [TSS05] deferred", T0)
    rows = s.snapshot(T0 + 1)
    t = Shaper(config())
    t.restore(rows, T0 + 2)
    assert t.pairs[("127.0.0.2", "gmail")].rate == 30.0
    assert t.pairs[("127.0.0.2", "gmail")].ceiling == 60.0
    assert t.pairs[("127.0.0.3", "yahoo")].suspended_until == T0 + 3600


def test_pool_rate_limit_across_ips() -> None:
    cfg = parse_config(
        {
            "delivery": {"sourceIPs": [{"address": "127.0.0.2"}, {"address": "127.0.0.3"}]},
            "shaping": {"providers": [{"name": "gmail", "pool": {"maxMessageRate": "2/s"}}]},
        }
    )
    s = Shaper(cfg)
    sent = sum(
        isinstance(g, Grant) and (s.release(g) or True)
        for tick in range(50)
        for g in [s.acquire("gmail", T0 + tick / 10, 0.5)]
    )
    assert 10 <= sent <= 13  # 2/s for 5 s, plus the burst


def test_provider_table_defaults_and_overrides() -> None:
    t = ProviderTable(config().shaping)
    assert t.lookup("gmail.com") == "gmail"
    assert t.lookup("corp.example", ["aspmx.l.google.com"]) == "gmail"
    assert t.lookup("corp.example", ["corp-example.mail.protection.outlook.com"]) == "outlook"
    assert t.lookup("yahoo.com") == "yahoo"
    assert t.lookup("example.org", ["mx.example.org"]) == "default"
    assert t.settings("gmail").per_ip.max_message_rate == 60.0
    assert t.settings("outlook") == t.settings("default")
    custom = ProviderTable(
        parse_config(
            {"shaping": {"providers": [{"name": "sim", "match": {"mxSuffixes": ["sim.test"]}}]}}
        ).shaping
    )
    assert custom.lookup("x.test", ["mx1.sim.test"]) == "sim"
    assert custom.lookup("x.test", ["notsim.test"]) == "default"


def test_ip_wide_cap_counts_every_provider_and_shares_cap_their_own() -> None:
    cfg = parse_config(
        {
            "delivery": {"sourceIPs": [{"address": "127.0.0.2", "state": "warming"}]},
            "shaping": {
                "warmup": [
                    {"address": "127.0.0.2", "provider": "*", "day": 1, "dailyCap": 20},
                    {"address": "127.0.0.2", "provider": "gmail", "day": 1, "dailyCap": 5},
                ],
                "overflow": "defer",
                "warmupSlots": 1,
            },
        }
    )
    s = Shaper(cfg)
    gmail = sum(isinstance(g, Grant) for g in grants(s, "gmail", T0 + 1, 50))
    yahoo = sum(isinstance(g, Grant) for g in grants(s, "yahoo", T0 + 1, 50))
    other = sum(isinstance(g, Grant) for g in grants(s, "default", T0 + 1, 50))
    assert gmail == 5  # its own share
    assert gmail + yahoo + other == 20  # the IP's whole day
