"""Several engine processes in one pod: the limits split between them (never multiplied), the
spools a smaller N adopts, and the workers' metrics and status merged: pure, over their input
space."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailfleet.mta.config import parse_config
from mailfleet.mta.metrics import SupervisorMetrics
from mailfleet.mta.suppression import SQLiteSuppressions
from mailfleet.mta.workers import (
    adoption_share,
    merge_metrics,
    merge_status,
    orphan_spools,
    split,
    usable_processes,
    worker_config,
)


@pytest.mark.parametrize("total", [0, 1, 2, 3, 7, 20, 101])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_split_sums_to_the_total_and_rounds_down(total: int, n: int) -> None:
    shares = [split(total, n, i) for i in range(n)]
    assert sum(shares) == total
    assert all(total // n <= s <= total // n + 1 for s in shares)
    assert shares == sorted(shares, reverse=True)


def test_split_refuses_a_worker_outside_n() -> None:
    with pytest.raises(ValueError):
        split(5, 2, 2)
    with pytest.raises(ValueError):
        split(5, 0, 0)


CONFIG = {
    "admin": {"listen": "127.0.0.1:8025"},
    "spool": {"path": "/var/spool/mailfleet"},
    "shaping": {
        "default": {
            "perIP": {"maxConnections": 5, "maxMessageRate": "60/min"},
            "pool": {"maxConnections": 9, "maxMessageRate": "100/s"},
        },
        "providers": [
            {
                "name": "gmail",
                "match": {"mxSuffixes": ["google.com"]},
                "perIP": {"maxConnections": 4, "maxMessageRate": "10/s"},
            }
        ],
        "warmup": [{"address": "192.0.2.1", "provider": "*", "day": 1, "dailyCap": 7}],
    },
    "fleet": {
        "shares": [{"pod": "p-0", "rateShare": 0.5, "connections": {"default": 5}}],
    },
}


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("redis", [False, True])
def test_workers_together_never_exceed_a_limit(n: int, redis: bool) -> None:
    data = {
        **CONFIG,
        "fleet": {**CONFIG["fleet"], **({"redisURL": "redis://r:6379/0"} if redis else {})},
    }  # type: ignore[dict-item]
    cfg = parse_config(data)
    workers = [worker_config(cfg, i, n, f"127.0.0.1:{9000 + i}") for i in range(n)]
    d, g = cfg.shaping.default, cfg.shaping.providers[0]
    per_ip = sum(w.shaping.default.per_ip.max_connections for w in workers)
    assert per_ip == d.per_ip.max_connections
    assert sum(w.shaping.providers[0].per_ip.max_connections for w in workers) == 4
    assert sum(w.shaping.default.pool.max_connections or 0 for w in workers) == 9
    rate = sum(w.shaping.default.per_ip.max_message_rate or 0 for w in workers)
    assert rate <= (d.per_ip.max_message_rate or 0) + 1e-9
    assert sum(w.shaping.providers[0].per_ip.max_message_rate or 0 for w in workers) <= (
        (g.per_ip.max_message_rate or 0) + 1e-9
    )
    assert sum(w.shaping.warmup[0].daily_cap for w in workers) == 7
    assert sum(w.fleet.shares[0].connections["default"] for w in workers) == 5
    pool_rate = [w.shaping.default.pool.max_message_rate or 0 for w in workers]
    shares = [w.fleet.shares[0].rate_share for w in workers]
    if redis:
        # One bucket in Redis for every process; the split-mode fallback is cut instead.
        assert pool_rate == [100.0] * n
        assert sum(shares) <= 0.5
    else:
        assert sum(pool_rate) <= 100.0 + 1e-9
        assert shares == [0.5] * n
    for i, w in enumerate(workers):
        assert w.spool.path == Path(f"/var/spool/mailfleet/{i}")
        assert w.submission.reuse_port
        assert w.admin.listen == f"127.0.0.1:{9000 + i}"


def test_one_worker_runs_the_config_as_it_is() -> None:
    cfg = parse_config(CONFIG)
    assert worker_config(cfg, 0, 1, "127.0.0.1:1") is cfg


@pytest.mark.parametrize(("wanted", "expected"), [(1, 1), (2, 2), (4, 4), (8, 4), (0, 1)])
def test_no_more_processes_than_the_smallest_connection_limit(wanted: int, expected: int) -> None:
    # The smallest connection limit in CONFIG is gmail's 4 connections per IP.
    assert usable_processes(parse_config(CONFIG), wanted) == expected


def test_a_smaller_n_adopts_every_spool_beyond_it_exactly_once() -> None:
    root = Path("/s")
    for old in range(1, 9):
        for n in range(1, 9):
            adopted = [
                p
                for i in range(n)
                for p in orphan_spools(root, i, n, range(old), root_has_spool=False)
            ]
            own = {root} if n == 1 else {root / str(i) for i in range(n)}
            expected = {root / str(j) for j in range(old)} - own
            assert sorted(adopted) == sorted(expected)
    # One process before: its spool (the root) goes to worker 0.
    assert orphan_spools(root, 0, 2, [], root_has_spool=True) == [root]
    assert orphan_spools(root, 1, 2, [], root_has_spool=True) == []
    assert orphan_spools(root, 0, 1, [0, 1, 5], root_has_spool=True) == [
        root / "0",
        root / "1",
        root / "5",
    ]


WORKER_METRICS = [
    """# HELP mailfleet_messages_received_total Messages accepted
# TYPE mailfleet_messages_received_total counter
mailfleet_messages_received_total 3.0
# HELP mailfleet_queue_recipients Recipients queued
# TYPE mailfleet_queue_recipients gauge
mailfleet_queue_recipients{state="deferred"} 1.0
mailfleet_queue_recipients{state="active"} 0.0
""",
    """# HELP mailfleet_messages_received_total Messages accepted
# TYPE mailfleet_messages_received_total counter
mailfleet_messages_received_total 4.0
# HELP mailfleet_queue_recipients Recipients queued
# TYPE mailfleet_queue_recipients gauge
mailfleet_queue_recipients{state="deferred"} 2.0
""",
]


def test_merged_metrics_have_one_family_each_and_every_sample_by_process() -> None:
    text = merge_metrics(WORKER_METRICS)
    assert text.count("# TYPE mailfleet_messages_received_total") == 1
    assert text.count("# HELP mailfleet_queue_recipients") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    received = {
        s.labels["process"]: s.value for s in families["mailfleet_messages_received"].samples
    }
    assert received == {"0": 3.0, "1": 4.0}
    deferred = [
        (s.labels["process"], s.value)
        for s in families["mailfleet_queue_recipients"].samples
        if s.labels["state"] == "deferred"
    ]
    assert deferred == [("0", 1.0), ("1", 2.0)]


def test_a_worker_without_an_answer_leaves_the_others_metrics() -> None:
    text = merge_metrics([WORKER_METRICS[0], ""])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["mailfleet_messages_received"].samples] == [3.0]


def test_the_supervisors_restarts_follow_the_merged_families_with_a_series_per_process() -> None:
    # What the supervisor serves: its processes' families merged, then its own registry.
    restarts = SupervisorMetrics(2)
    restarts.restarts.labels("1").inc()
    text = merge_metrics(WORKER_METRICS) + generate_latest(restarts.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        s.labels["process"]: s.value
        for s in families["mailfleet_process_restarts"].samples
        if s.name.endswith("_total")
    } == {"0": 0.0, "1": 1.0}
    assert families["mailfleet_messages_received"].type == "counter"


def test_merged_status_sums_counts_and_is_ready_only_when_all_are() -> None:
    a = {
        "ready": True,
        "draining": False,
        "configHash": "h1",
        "configGeneration": 3,
        "uptimeSeconds": 10.0,
        "queue": {"messages": 2, "recipients": {"deferred": 1}},
        "warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": 3, "cap": 4}],
        "sourceIPs": ["192.0.2.1"],
    }
    b = {
        **a,
        "ready": False,
        "draining": True,
        "configGeneration": 2,
        "uptimeSeconds": 4.0,
        "queue": {"messages": 5, "recipients": {"deferred": 2}},
        "warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": 1, "cap": 3}],
    }
    m = merge_status([a, b])
    assert m["ready"] is False
    assert m["draining"] is True
    assert m["configHash"] == "h1"
    assert m["configGeneration"] == 2
    assert m["uptimeSeconds"] == 10.0
    assert m["queue"] == {"messages": 7, "recipients": {"deferred": 3}}
    assert m["warmup"] == [{"ip": "192.0.2.1", "provider": "*", "sent": 4, "cap": 7}]
    assert m["sourceIPs"] == ["192.0.2.1"]
    assert m["processes"] == 2
    # Workers on different configs: the hash matches neither, so the operator pushes again.
    assert merge_status([a, {**a, "configHash": "h2"}])["configHash"] not in ("h1", "h2")
    assert merge_status([a, {**a, "empty": False}, {**a, "empty": True}])["empty"] is False


def test_a_process_sees_what_another_added_to_the_shared_suppression_list(tmp_path: Path) -> None:
    async def run() -> tuple[bool, bool, int]:
        a = SQLiteSuppressions(tmp_path / "suppressions.db")
        b = SQLiteSuppressions(tmp_path / "suppressions.db")
        try:
            await a.add("complained@example.org", "complaint", "arf:test")
            before = b.contains("complained@example.org")
            new = await b.refresh()
            return before, b.contains("Complained@example.org"), new + await b.refresh()
        finally:
            await a.close()
            await b.close()

    before, after, new = asyncio.run(run())
    assert (before, after, new) == (False, True, 1)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("sent", [0, 1, 5, 100])
def test_an_adopted_warmup_count_is_split_as_the_cap_is(n: int, sent: int) -> None:
    body = {
        "shaping": [{"ip": "192.0.2.1", "provider": "gmail", "rate": 2.0}],
        "warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": sent}],
    }
    parts = [adoption_share(body, i, n) for i in range(n)]
    assert sum(p["warmup"][0]["sent"] for p in parts) == sent
    assert all(p["shaping"] == body["shaping"] for p in parts)


def test_merged_shaping_rows_keep_the_latest_times_and_sum_the_rates() -> None:
    row = {"ip": "192.0.2.1", "provider": "gmail", "rate": 1.5, "suspendedUntil": 100.0}
    merged = merge_status(
        [{"shaping": [row]}, {"shaping": [{**row, "rate": 2.0, "suspendedUntil": 200.0}]}]
    )
    assert merged["shaping"] == [
        {"ip": "192.0.2.1", "provider": "gmail", "rate": 3.5, "suspendedUntil": 200.0}
    ]
