"""Retry decisions over their whole input space."""

from __future__ import annotations

import itertools

import pytest

from mailfleet.mta.config import RetryConfig
from mailfleet.mta.retry import (
    base_delay,
    is_expired,
    next_attempt_at,
    outcome_for_reply,
    retry_delay,
)

RNDS = [i / 20 for i in range(20)] + [0.999999]
JITTERS = [0.0, 0.05, 0.2, 0.5, 0.99, 1.0]
CONFIGS = [
    RetryConfig(initial=initial, max=maximum, max_age=3 * 86400, jitter=jitter)
    for (initial, maximum), jitter in itertools.product(
        [(1, 1), (60, 3600), (300, 3600), (0.5, 86400), (3600, 3600)], JITTERS
    )
]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        *[(250, "delivered"), (251, "delivered"), (200, "delivered"), (299, "delivered")],
        *[(421, "deferred"), (450, "deferred"), (451, "deferred"), (452, "deferred")],
        *[(550, "bounced"), (551, "bounced"), (552, "bounced"), (554, "bounced")],
        *[(0, "deferred"), (199, "deferred"), (354, "deferred"), (600, "deferred")],
    ],
)
def test_outcome_for_reply(code: int, outcome: str) -> None:
    assert outcome_for_reply(code) == outcome


def test_every_code_has_exactly_the_outcome_of_its_class() -> None:
    for code in range(1000):
        expected = {2: "delivered", 5: "bounced"}.get(code // 100, "deferred")
        assert outcome_for_reply(code) == expected, code


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.initial}-{c.max}-j{c.jitter}")
def test_delay_bounds_over_all_attempts_and_random_numbers(cfg: RetryConfig) -> None:
    previous_low = previous_high = 0.0
    for attempt in range(1, 101):
        delays = [retry_delay(attempt, cfg, rnd) for rnd in RNDS]
        low, high = min(delays), max(delays)
        # Never negative, never above the cap plus its jitter.
        assert low >= 0
        assert high <= cfg.max * (1 + cfg.jitter) + 1e-9
        # Within ±jitter of the base delay, which itself stays within [initial, max].
        base = base_delay(attempt, cfg)
        assert cfg.initial <= base <= cfg.max
        assert low >= base * (1 - cfg.jitter) - 1e-9
        assert high <= base * (1 + cfg.jitter) + 1e-9
        # The bounds never shrink as attempts grow.
        assert low >= previous_low - 1e-9
        assert high >= previous_high - 1e-9
        previous_low, previous_high = low, high
        # The random number moves the delay monotonically: more rnd, never less delay.
        assert delays == sorted(delays)


def test_first_retry_waits_initial_then_doubles_until_the_cap() -> None:
    cfg = RetryConfig(initial=300, max=3600, jitter=0)
    assert [retry_delay(a, cfg, 0.3) for a in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]


def test_jitter_spreads_around_the_base() -> None:
    cfg = RetryConfig(initial=100, max=1000, jitter=0.2)
    assert retry_delay(1, cfg, 0.0) == pytest.approx(80)
    assert retry_delay(1, cfg, 0.5) == pytest.approx(100)
    assert retry_delay(1, cfg, 0.999999) == pytest.approx(120, abs=1e-3)


def test_full_jitter_can_reach_zero_but_not_below() -> None:
    cfg = RetryConfig(initial=100, max=1000, jitter=1.0)
    assert retry_delay(1, cfg, 0.0) == 0.0
    assert retry_delay(5, cfg, 0.999999) <= 2000


@pytest.mark.parametrize("attempt", [-5, 0, 1])
def test_nonpositive_attempts_are_treated_as_the_first(attempt: int) -> None:
    cfg = RetryConfig(initial=60, max=600, jitter=0)
    assert retry_delay(attempt, cfg, 0.5) == 60


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    cfg = RetryConfig(initial=60, max=600, jitter=0.1)
    assert retry_delay(10**9, cfg, 0.5) == 600
    assert retry_delay(10**9, cfg, 0.999999) <= 660


@pytest.mark.parametrize("rnd", [-1.0, 1.0, 2.0])
def test_random_numbers_outside_the_unit_interval_are_clamped(rnd: float) -> None:
    cfg = RetryConfig(initial=100, max=100, jitter=0.5)
    assert 50 <= retry_delay(1, cfg, rnd) <= 150


def test_is_expired_at_and_after_max_age() -> None:
    cfg = RetryConfig(max_age=3600)
    assert not is_expired(1000.0, 1000.0, cfg)
    assert not is_expired(1000.0, 4599.9, cfg)
    assert is_expired(1000.0, 4600.0, cfg)
    assert is_expired(1000.0, 10**9, cfg)


def test_is_expired_with_max_age_strings_from_yaml() -> None:
    cfg = RetryConfig.model_validate({"initial": "5m", "max": "1h", "maxAge": "3d"})
    assert not is_expired(0, 3 * 86400 - 1, cfg)
    assert is_expired(0, 3 * 86400, cfg)


def test_next_attempt_is_scheduled_by_the_delay_while_young() -> None:
    cfg = RetryConfig(initial=300, max=3600, max_age=86400, jitter=0)
    assert next_attempt_at(1, 0.0, 10.0, cfg, 0.5) == 310.0
    assert next_attempt_at(3, 0.0, 1000.0, cfg, 0.5) == 2200.0


def test_next_attempt_near_the_deadline_is_the_deadline_then_none() -> None:
    cfg = RetryConfig(initial=300, max=3600, max_age=86400, jitter=0)
    assert next_attempt_at(10, 0.0, 86000.0, cfg, 0.5) == 86400.0
    assert next_attempt_at(11, 0.0, 86400.0, cfg, 0.5) is None


def test_next_attempt_never_goes_past_max_age() -> None:
    for cfg in CONFIGS:
        for now, attempt, rnd in itertools.product([0, 100, 5000, 259000], [1, 5, 50], RNDS):
            at = next_attempt_at(attempt, 0.0, float(now), cfg, rnd)
            if at is not None:
                assert now <= at <= cfg.max_age
