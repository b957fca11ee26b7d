"""The rate controller (mta/aimd.py) over its input space and against adversarial providers.

A provider here is a function from interval number to its hidden limit (msgs/s): an interval in
which the controller's rate exceeds it brings one throttling signal, any other is clean. What is
asserted is what a sender sees: the share of the provider's limit it uses, that it never sends
above its policy maximum nor below its floor, that it finds a limit that moves.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from mailfleet.mta.aimd import Control, on_clean_interval, on_signal
from mailfleet.mta.config import AdaptiveConfig

Limit = Callable[[int], float]


def adaptive(
    decrease: float = 0.5, increase: float = 1 / 6, floor: float = 1 / 6
) -> AdaptiveConfig:
    return AdaptiveConfig(decrease=decrease, increase=increase, floor=floor)


def run(limit: Limit, start: float, intervals: int, a: AdaptiveConfig) -> tuple[list[float], int]:
    """The rate of every interval and how many signals the provider gave."""
    c = Control(start)
    rates, signals = [], 0
    for k in range(intervals):
        rates.append(c.rate)
        if c.rate > limit(k):
            c = on_signal(c, a)
            signals += 1
        else:
            c = on_clean_interval(c, a, start)
    return rates, signals


def used(rates: list[float], limit: Limit, first: int = 0) -> float:
    """The share of the provider's limit delivered (a rate above the limit delivers the limit)."""
    got = sum(min(r, limit(k)) for k, r in enumerate(rates) if k >= first)
    return got / sum(limit(k) for k in range(first, len(rates)))


@pytest.mark.parametrize("rate", [0.2, 1, 7, 60, 1000])
@pytest.mark.parametrize("decrease", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("ceiling", [None, 0.5, 7, 60, 5000])
def test_a_signal_lowers_the_rate_never_below_the_floor(
    rate: float, decrease: float, ceiling: float | None
) -> None:
    a = adaptive(decrease=decrease)
    after = on_signal(Control(rate, ceiling, probes=3), a)
    assert after.rate >= a.floor
    assert after.rate <= max(rate, a.floor)
    assert after.rate < rate or rate <= a.floor / min(decrease, 0.85)
    assert after.ceiling == rate  # where throttling began
    assert after.probes == 0


@pytest.mark.parametrize("rate", [0.2, 1, 7, 60, 1000])
@pytest.mark.parametrize("ceiling", [None, 0.5, 7, 60, 5000])
@pytest.mark.parametrize("limit", [None, 1, 60, 2000])
@pytest.mark.parametrize("probes", [0, 3, 40])
def test_a_clean_interval_never_lowers_the_rate_nor_passes_the_policy_maximum(
    rate: float, ceiling: float | None, limit: float | None, probes: int
) -> None:
    if limit is not None and rate > limit:
        return  # the shaper never holds a rate above the policy maximum
    after = on_clean_interval(Control(rate, ceiling, probes), adaptive(), limit)
    assert after.rate >= rate
    assert limit is None or after.rate <= limit
    assert after.ceiling == ceiling


def test_a_signal_at_the_remembered_ceiling_is_a_gentle_step_one_far_below_is_not() -> None:
    a = adaptive(decrease=0.5)
    at_ceiling = on_signal(Control(20.0, ceiling=21.0), a)
    below = on_signal(Control(10.0, ceiling=21.0), a)
    unknown = on_signal(Control(20.0), a)
    assert 0.5 * 20 < at_ceiling.rate < 20
    assert below.rate == 5.0 and unknown.rate == 10.0


def test_far_below_the_ceiling_growth_is_fast_near_it_slow() -> None:
    a = adaptive(increase=0.01)
    far = on_clean_interval(Control(10.0, ceiling=100.0), a, None)
    near = on_clean_interval(Control(96.0, ceiling=100.0), a, None)
    assert far.rate - 10.0 >= 40  # half the gap in one interval
    assert 0 < near.rate - 96.0 <= 3  # a few percent of the ceiling at most


@pytest.mark.parametrize("limit", [0.5, 3, 20, 150])
@pytest.mark.parametrize("optimism", [1.5, 5, 50])
@pytest.mark.parametrize("decrease", [0.3, 0.5, 0.7])
def test_it_settles_just_under_a_hidden_limit(
    limit: float, optimism: float, decrease: float
) -> None:
    a = adaptive(decrease=decrease, floor=min(0.1, limit / 2))
    rates, signals = run(lambda k: limit, limit * optimism, 600, a)
    share = used(rates, lambda k: limit, first=100)
    excess = sum(max(0.0, r - limit) for r in rates[100:]) / (500 * limit)
    print(f"limit {limit}, start x{optimism}: {share:.3f} of the limit, {signals} signals")
    assert share >= 0.9
    assert excess <= 0.05  # what it sends above the limit: probing, not pushing


def test_a_burst_of_signals_walks_down_to_the_floor_and_no_further() -> None:
    a = adaptive(floor=2.0)
    rates, signals = run(lambda k: 0.0, 500.0, 100, a)  # a provider that refuses everything
    assert signals == 100
    assert rates[-1] == 2.0 and min(rates) == 2.0


@pytest.mark.parametrize("drop", [2, 4, 20])
def test_a_limit_that_drops_is_found_again(drop: int) -> None:
    def limit(k: int) -> float:
        return 40.0 if k < 200 else 40.0 / drop

    rates, _ = run(limit, 100.0, 700, adaptive())
    assert used(rates, limit, first=300) >= 0.9
    assert max(rates[300:]) <= 1.2 * 40.0 / drop


@pytest.mark.parametrize("rise", [1.5, 4, 20])
def test_a_limit_that_rises_is_found_by_probing(rise: float) -> None:
    def limit(k: int) -> float:
        return 10.0 if k < 200 else 10.0 * rise

    rates, _ = run(limit, 500.0, 700, adaptive())
    assert used(rates, limit, first=350) >= 0.9


def test_a_provider_that_lifts_its_limit_gets_the_policy_maximum_back() -> None:
    def limit(k: int) -> float:
        return 5.0 if k < 100 else 1e9

    rates, _ = run(limit, 100.0, 200, adaptive())
    after = rates[100:]
    assert after == sorted(after)  # no signal, no step down
    assert after[-1] == 100.0  # the policy maximum, never above
    assert max(rates) <= 100.0


@pytest.mark.parametrize("pattern", ["on-off", "2on-3off", "random"])
def test_adversarial_signal_sequences_stay_within_floor_and_maximum(pattern: str) -> None:
    """Signals unrelated to the rate (a provider throttling on a schedule, or at random): the
    rate stays within [floor, maximum] and every signal lowers it."""
    seq = {
        "on-off": itertools.cycle([True, False]),
        "2on-3off": itertools.cycle([True, True, False, False, False]),
        "random": iter([(k * 7919) % 13 < 5 for k in range(1000)]),
    }[pattern]
    a = adaptive(floor=1.0)
    c = Control(50.0)
    for signal in itertools.islice(seq, 1000):
        before = c.rate
        c = on_signal(c, a) if signal else on_clean_interval(c, a, 50.0)
        assert 1.0 <= c.rate <= 50.0
        assert not signal or c.rate < before or before == 1.0
