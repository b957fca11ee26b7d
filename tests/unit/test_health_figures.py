"""IP health figures from engine counters: parsing /metrics, differences between scrapes with
pod restarts, the sliding window, and the per-IP summary the pool status shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from mailfleet.mta.metrics import EngineMetrics
from mailfleet.operator.decide import health
from mailfleet.operator.decide.health import Counts

T0 = datetime(2026, 3, 4, 5, 0, 0, tzinfo=UTC)


def engine_text(
    outcomes: dict[tuple[str, str, str], int], complaints: dict[tuple[str, str], int]
) -> str:
    """/metrics as a real engine's registry writes it."""
    m = EngineMetrics()
    for (ip, provider, result), n in outcomes.items():
        m.attempts.labels(ip, provider, "example.org", result, "ok").inc(n)
    for (ip, provider), n in complaints.items():
        m.complaints.labels(ip, provider).inc(n)
    m.received.inc(5)  # other families are ignored
    return generate_latest(m.registry).decode()


def test_parse_sums_results_per_ip_and_provider() -> None:
    text = engine_text(
        {
            ("192.0.2.1", "gmail", "delivered"): 90,
            ("192.0.2.1", "gmail", "deferred"): 7,
            ("192.0.2.1", "gmail", "bounced"): 3,
            ("192.0.2.2", "yahoo", "delivered"): 4,
        },
        {("192.0.2.1", "gmail"): 2},
    )
    got = health.parse_engine_metrics(text)
    assert got == {
        ("192.0.2.1", "gmail"): Counts(100, 90, 7, 3, 2),
        ("192.0.2.2", "yahoo"): Counts(4, 4, 0, 0, 0),
    }


def test_parse_of_an_engine_that_sent_nothing_is_empty() -> None:
    assert health.parse_engine_metrics(engine_text({}, {})) == {}


def test_first_scrape_is_a_baseline_then_differences() -> None:
    first = {("a", "gmail"): Counts(10, 10)}
    assert health.scrape_delta(None, first) == {}
    second = {("a", "gmail"): Counts(15, 12, 3), ("a", "yahoo"): Counts(2, 2)}
    assert health.scrape_delta(first, second) == {
        ("a", "gmail"): Counts(5, 2, 3),
        ("a", "yahoo"): Counts(2, 2),  # a series that appeared started from zero
    }
    assert health.scrape_delta(second, second) == {}


@pytest.mark.parametrize(
    ("prev", "cur", "want"),
    [
        (Counts(100, 90, 10), Counts(5, 5), Counts(5, 5)),  # restarted: all it counted is new
        (Counts(100, 90, 10), Counts(100, 89, 11), Counts(100, 89, 11)),  # one counter went down
        (Counts(100, 90, 10), Counts(110, 95, 15), Counts(10, 5, 5)),
        (None, Counts(7, 7), Counts()),
    ],
)
def test_counter_reset_on_pod_restart(prev: Counts | None, cur: Counts, want: Counts) -> None:
    assert health.counter_delta(prev, cur) == want


def test_window_keeps_what_is_recent_and_sums_it() -> None:
    key = ("a", "gmail")
    win = health.Window()
    for minute in range(10):
        at = T0 + timedelta(minutes=minute)
        win = health.slide(win, at, {key: Counts(10, 9, 0, 1)}, window=300)
    # Minutes 5..9 are within five minutes of minute 9; older ones were dropped.
    assert len(win.entries) == 5
    assert win.totals == {key: Counts(50, 45, 0, 5)}
    # Three quiet minutes later only minutes 8 and 9 are left; a pair that drops to zero goes.
    later = health.slide(win, T0 + timedelta(minutes=12), {}, window=300)
    assert later.totals == {key: Counts(20, 18, 0, 2)}
    gone = health.slide(later, T0 + timedelta(minutes=20), {("b", "x"): Counts(1, 1)}, 300)
    assert gone.totals == {("b", "x"): Counts(1, 1)} and len(gone.entries) == 1


def test_rates_and_per_ip_summary() -> None:
    totals = {("a", "gmail"): Counts(100, 80, 15, 5, 2), ("a", "yahoo"): Counts(100, 100)}
    ip = health.by_ip(totals)["a"]
    assert ip == Counts(200, 180, 15, 5, 2)
    assert ip.bounce_rate() == 0.025 and ip.deferral_rate() == 0.075
    assert ip.complaint_rate() == pytest.approx(2 / 180)
    assert Counts().bounce_rate() is None and Counts().complaint_rate() is None
    summary = health.ip_summary("a", ip, ["zen.example (127.0.0.2)"])
    assert summary["attempts"] == 200 and summary["bounceRate"] == 0.025
    assert summary["listedOn"] == ["zen.example (127.0.0.2)"]
    assert "bounceRate" not in health.ip_summary("b", Counts(), [])


def test_for_addresses_and_accumulate() -> None:
    delta = {("a", "gmail"): Counts(3, 3), ("b", "gmail"): Counts(4, 4), ("c", "x"): Counts(9)}
    got = health.for_addresses(delta, ["a", "b"])
    assert got == {"gmail": Counts(7, 7), "*": Counts(7, 7)}
    assert health.accumulate(got, {"gmail": Counts(1, 0, 1)})["gmail"] == Counts(8, 7, 1)


def test_parse_agrees_with_prometheus_clients_parser_on_odd_label_values() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    m = EngineMetrics()
    m.attempts.labels("2001:db8::1", "gmail", 'we"ird\\dom}ain', "bounced", "other").inc(3)
    m.attempts.labels("2001:db8::1", "gmail", "x", "delivered", "ok").inc(2)
    m.attempts.labels("", "default", "y", "deferred", "connection").inc(1)
    text = generate_latest(m.registry).decode()
    theirs: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mailfleet_delivery_attempts_total":
                key = (s.labels["source_ip"], s.labels["provider"])
                theirs[key] = theirs.get(key, 0.0) + s.value
    ours = health.parse_engine_metrics(text)
    assert {k: float(c.attempts) for k, c in ours.items()} == theirs
    assert ours[("2001:db8::1", "gmail")] == Counts(5, 2, 0, 3)
    assert ours[("", "default")] == Counts(1, 0, 1)
