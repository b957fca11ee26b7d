"""The built-in autoscaler's decisions over their whole input space."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from mailfleet.operator.decide.autoscale import (
    Recommendation,
    autoscaling_floor,
    decide,
    wanted_replicas,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TARGET = 100
WINDOW = 300.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("queued", "low", "high", "want"),
    [(0, 1, 5, 1), (1, 1, 5, 1), (100, 1, 5, 1), (101, 1, 5, 2), (450, 1, 5, 5),
     (10_000, 1, 5, 5), (0, 0, 5, 0), (0, 2, 2, 2), (-3, 0, 3, 0)],
)  # fmt: skip
def test_wanted_replicas(queued: int, low: int, high: int, want: int) -> None:
    assert wanted_replicas(queued, TARGET, low, high) == want


@pytest.mark.parametrize(
    ("current", "queued", "low", "high"),
    list(itertools.product(range(6), [None, 0, 1, 99, 100, 101, 250, 10**6], [0, 1, 2], [2, 5])),
)
def test_invariants_over_the_input_space(
    current: int, queued: int | None, low: int, high: int
) -> None:
    for history in ((), (Recommendation(at(-WINDOW - 1), current),)):
        d = decide(current, queued, TARGET, low, high, history, at(0), WINDOW)
        low = autoscaling_floor(low, high)
        assert low <= d.replicas <= high
        assert d.changed == (d.replicas != current)
        if d.changed:
            assert str(d.replicas) in d.reason
        if queued is None:
            # Nothing known: only the bounds move it.
            assert d.replicas == max(low, min(high, current))
            continue
        want = wanted_replicas(queued, TARGET, low, high)
        if want > current:
            assert d.replicas == want  # up at once
        elif not history:
            # No whole window seen: never down (but into the bounds).
            assert d.replicas == max(low, min(high, current))
        elif want < current:
            # A whole window seen, nothing higher in it: down to what the queue needs.
            assert d.replicas == want
        else:
            assert d.replicas == current


def test_down_only_after_a_whole_window_of_low_queue() -> None:
    history: tuple[Recommendation, ...] = ()
    current = 4
    replicas = []
    for t in range(0, 601, 30):
        d = decide(current, 50, TARGET, 1, 5, history, at(t), WINDOW)
        history, current = d.history, d.replicas
        replicas.append((t, current))
    assert dict(replicas)[300] == 4  # within the first window: held
    assert dict(replicas)[330] == 1  # the first look after a whole window: down


def test_a_burst_scales_up_at_once_and_flapping_load_does_not_flap() -> None:
    history: tuple[Recommendation, ...] = ()
    current = 1
    seen = []
    last_burst = 0
    for t in range(0, 1200, 30):
        burst = (t // 60) % 2 == 0  # a burst every other minute
        last_burst = t if burst else last_burst
        d = decide(current, 450 if burst else 20, TARGET, 1, 5, history, at(t), WINDOW)
        history, current = d.history, d.replicas
        seen.append(current)
    assert seen[0] == 5  # the first burst: up at once
    assert set(seen) == {5}  # never drained between bursts
    # The bursts stop: down after one whole quiet window since the last one, not before.
    for t in range(1200, 1800, 30):
        d = decide(current, 20, TARGET, 1, 5, history, at(t), WINDOW)
        history, current = d.history, d.replicas
        assert current == (5 if t - last_burst <= WINDOW else 1), t


def test_history_is_bounded_by_the_window() -> None:
    history: tuple[Recommendation, ...] = ()
    for t in range(0, 10_000, 10):
        history = decide(2, 150, TARGET, 1, 5, history, at(t), WINDOW).history
    assert len(history) <= WINDOW / 10 + 2
