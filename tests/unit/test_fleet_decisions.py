"""The decisions behind a running fleet: the warmup day by the clock, what the pods' reports say
in the pool's status, which pods get the current config pushed, and the engine config's routing,
egress and admin token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fixtures.objects import NOW, inputs, pool, warmup

from mailfleet.mta.config import config_digest, parse_config_text
from mailfleet.operator.api.naming import ADMIN_TOKEN_DIR, ADMIN_TOKEN_KEY
from mailfleet.operator.decide import ipplan, pods, render, statuses
from mailfleet.operator.decide import warmup as wu

DAY = 86400.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(days: float) -> datetime:
    return T0 + timedelta(seconds=days * DAY)


# --- the warmup clock ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "last", "now", "want_day", "want_last", "complete"),
    [
        (1, None, at(0.5), 1, None, False),  # day 1 is not over
        (1, None, at(1.0), 2, at(1.0), False),  # a whole day warmed: next day
        (2, at(1.0), at(1.9), 2, at(1.0), False),
        (2, at(1.0), at(2.0), 3, at(2.0), False),  # the cadence keeps to the start time
        (2, at(1.0), at(2.5), 3, at(2.0), False),  # a late look does not shift the cadence
        (2, at(1.0), at(9.0), 3, at(9.0), False),  # days behind: one day only, starting now
        (5, at(4.0), at(5.0), 5, at(5.0), True),  # a whole day at the final cap: complete
        (9, at(4.0), at(4.5), 5, at(4.0), False),  # a day past the schedule reads as the last
    ],
)
def test_warmup_day_advances_by_the_clock(
    day: int,
    last: datetime | None,
    now: datetime,
    want_day: int,
    want_last: datetime | None,
    complete: bool,
) -> None:
    c = wu.warmup_clock(day, T0, last, now, DAY, final=5, advancing=True)
    assert (min(c.day, 5), c.last_advance, c.complete) == (want_day, want_last, complete)
    if not complete:
        assert c.next_advance == (want_last or T0) + timedelta(seconds=DAY)


@pytest.mark.parametrize("started", [None, T0])
def test_a_warmup_that_does_not_advance_stays_put(started: datetime | None) -> None:
    c = wu.warmup_clock(3, started, None, at(30), DAY, final=5, advancing=False)
    assert (c.day, c.complete, c.next_advance) == (3, False, None)
    never_started = wu.warmup_clock(1, None, None, at(30), DAY, final=5, advancing=True)
    assert never_started.day == 1 and never_started.next_advance is None


def test_the_pool_renders_todays_cap_and_the_status_says_when_the_day_moved() -> None:
    started = {"phase": "Warming", "day": 1, "startTime": "2026-03-01T05:06:07Z"}
    # minUsage 0: the clock alone moves it (an idle day otherwise repeats).
    w = warmup(
        status=started,
        schedule={"days": [50, 100, 250], "dayLength": "1h"},
        gates={"minUsage": 0},
    )
    later = NOW  # 2026-03-04: days of warming since the start, one hour per day
    caps = {(c.provider, c.day, c.daily_cap) for c in ipplan.warmup_caps(pool(), [w], later)}
    assert ("*", 2, 100) in caps
    s = statuses.warmup_status(w, pool(), later)
    assert (s["day"], s["todayCap"], s["phase"]) == (2, 100, "Warming")
    assert s["lastAdvanceTime"] == "2026-03-04T05:06:07Z"
    out = render.render_pool(inputs(warmups=[w], now=later))
    assert out.next_warmup_advance == datetime(2026, 3, 4, 6, 6, 7, tzinfo=UTC)
    assert out.config is not None and out.config.shaping.day_length == 3600.0
    # At the final day for a whole day: complete, no cap, the IP sends as an active one.
    done = warmup(
        status={**started, "day": 3, "lastAdvanceTime": "2026-03-04T03:00:00Z"},
        schedule={"days": [50, 100, 250], "dayLength": "1h"},
        gates={"minUsage": 0},
    )
    assert ipplan.warmup_phase(done, pool(), later) == "Complete"
    assert ipplan.warmup_caps(pool(), [done], later) == []


def test_sent_today_sums_the_engines_reports_for_the_warmups_addresses() -> None:
    w = warmup()  # 203.0.113.12
    rows = [
        {"ip": "203.0.113.12", "provider": "*", "sent": 7, "cap": 50},
        {"ip": "203.0.113.12", "provider": "gmail", "sent": 4, "cap": 25},
        {"ip": "203.0.113.12", "provider": "*", "sent": 3, "cap": 50},  # another pod, same IP
        {"ip": "203.0.113.10", "provider": "*", "sent": 99, "cap": 50},  # not this warmup's
    ]
    assert statuses.warmup_sent_today(w, rows) == {"*": 10, "gmail": 4}
    assert statuses.warmup_sent_today(w, []) == {}


# --- the pods' reports -----------------------------------------------------------------------


def ref(name: str, ip: str | None = "127.10.0.2", ready: bool = True, **kw: Any) -> pods.PodRef:
    return pods.PodRef(name, ip, ready, **kw)


def report(name: str, config: str | None = "h1", queued: int = 0, **extra: Any) -> pods.PodReport:
    status = {"configHash": config, "queue": {"messages": queued}, "draining": False, **extra}
    return pods.PodReport(ref(name), status)


def test_pod_ref_reads_readiness_address_and_deletion() -> None:
    body = {
        "metadata": {"name": "p-0"},
        "status": {"podIP": "127.10.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert pods.pod_ref(body) == pods.PodRef("p-0", "127.10.0.7", True, False)
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    body["status"]["conditions"][0]["status"] = "False"
    assert pods.pod_ref(body) == pods.PodRef("p-0", "127.10.0.7", False, True)
    assert pods.pod_ref({"metadata": {"name": "p-1"}}).ip is None
    refs = [ref("b"), ref("a"), ref("c", ip=None), ref("d", deleting=True)]
    assert [p.name for p in pods.pollable(refs)] == ["a", "b"]


def test_pods_status_counts_queue_current_config_and_quarantines() -> None:
    reports = [
        report("p-1", "h1", 5, shaping=[{"ip": "192.0.2.1", "quarantinedUntil": 99.0}]),
        report("p-0", "h0", 7, shaping=[{"ip": "192.0.2.2", "quarantinedUntil": None}]),
        pods.PodReport(ref("p-2", ready=False), None),  # did not answer
    ]
    out = pods.pods_status(reports, "h1")
    assert [p["name"] for p in out["pods"]] == ["p-0", "p-1", "p-2"]
    assert out["pods"][0] == {
        "name": "p-0",
        "ready": True,
        "ip": "127.10.0.2",
        "configHash": "h0",
        "queued": 7,
        "draining": False,
    }
    assert out["pods"][2] == {"name": "p-2", "ready": False, "ip": "127.10.0.2"}
    assert (out["queueDepth"], out["updatedPods"], out["quarantinedIPs"]) == (12, 1, 1)
    # Nobody answered: the depth is unknown, not zero.
    silent = pods.pods_status([pods.PodReport(ref("p-0"), None)], "h1")
    assert "queueDepth" not in silent and silent["updatedPods"] == 0


@pytest.mark.parametrize(
    ("status", "desired", "push"),
    [
        ({"configHash": "old"}, "new", True),
        ({"configHash": "new"}, "new", False),
        ({"configHash": "old", "draining": True}, "new", False),  # leaving: leave it be
        (None, "new", False),  # not answering: nothing to push to
        ({"configHash": "old"}, None, False),  # nothing rendered
    ],
)
def test_which_pods_get_the_current_config(
    status: dict[str, Any] | None, desired: str | None, push: bool
) -> None:
    assert pods.needs_push(pods.PodReport(ref("p-0"), status), desired) is push


# --- the engine config a pool renders ---------------------------------------------------------


def test_routing_egress_and_admin_token_reach_the_engine_config() -> None:
    p = pool(
        routing={
            "routes": {"*": "smarthost.example.net:587", "example.org": "[2001:db8::1]:25"},
            "mxPort": 2525,
            "dns": {"nameservers": ["192.0.2.53"], "port": 5353},
        },
        egress={"mode": "socks5", "proxy": "socks5://egress.example.net:1080"},
    )
    out = render.render_pool(inputs(p))
    assert out.config is not None
    cfg = out.config
    assert cfg.routing.routes == {
        "*": "smarthost.example.net:587",
        "example.org": "[2001:db8::1]:25",
    }
    assert (cfg.routing.mx_port, cfg.routing.dns.nameservers, cfg.routing.dns.port) == (
        2525,
        ["192.0.2.53"],
        5353,
    )
    assert (cfg.delivery.egress.mode, cfg.delivery.egress.proxy) == (
        "socks5",
        "socks5://egress.example.net:1080",
    )
    assert str(cfg.admin.token_file) == f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"
    # What the ConfigMap carries parses as the engine would read it, with the pod's address.
    again = parse_config_text(out.config_text, "engine.yaml", listen_host="127.10.0.9")
    assert again.admin.listen == "127.10.0.9:8025"
    assert out.status["configHash"] == config_digest(out.config_text) == out.config_hash
    default = render.render_pool(inputs()).config
    assert default is not None and default.delivery.egress.mode == "bind"
    assert default.routing.routes == {} and default.routing.mx_port == 25


# --- scale-down: who drains, who takes the queue, when the StatefulSet may shrink ------------


def pod_report(
    name: str, ip: str, queued: int | None = 0, draining: bool = False, ready: bool = True
) -> pods.PodReport:
    status = None if queued is None else {"queue": {"messages": queued}, "draining": draining}
    return pods.PodReport(pods.PodRef(name, ip, ready), status)


def test_no_scale_down_no_drain() -> None:
    reports = [pod_report("p-0", "127.10.0.2"), pod_report("p-1", "127.10.0.3")]
    for live in (None, 1, 2):
        plan = pods.drain_plan(reports, 2, live, 8025)
        assert (plan.leaving, plan.drain, plan.drained) == ([], [], False)
        assert plan.handoff == ["http://127.10.0.2:8025", "http://127.10.0.3:8025"]


def test_the_highest_ordinals_drain_into_the_ready_pods_that_stay() -> None:
    reports = [
        pod_report("p-0", "127.10.0.2"),
        pod_report("p-1", "127.10.0.3", ready=False),  # stays, but cannot take mail now
        pod_report("p-2", "127.10.0.4", queued=40),
        pod_report("p-10", "127.10.0.5", queued=2, draining=True),
    ]
    plan = pods.drain_plan(reports, 2, 11, 8025)
    assert plan.leaving == ["p-10", "p-2"]
    assert [r.pod.name for r in plan.drain] == ["p-2"]  # p-10 drains already
    assert plan.handoff == ["http://127.10.0.2:8025"]
    assert (plan.drained, plan.left) == (False, 42)


@pytest.mark.parametrize(
    ("leaving", "drained"),
    [
        ([pod_report("p-1", "127.10.0.3", queued=0, draining=True)], True),
        ([pod_report("p-1", "127.10.0.3", queued=1, draining=True)], False),  # still holds mail
        ([pod_report("p-1", "127.10.0.3", queued=0, draining=False)], False),  # still takes mail
        ([pod_report("p-1", "127.10.0.3", queued=None)], False),  # silent: its spool may hold mail
        ([], True),  # the leaving pod never ran (no address, no report)
    ],
)
def test_the_statefulset_shrinks_only_when_every_leaving_pod_is_empty(
    leaving: list[pods.PodReport], drained: bool
) -> None:
    plan = pods.drain_plan([pod_report("p-0", "127.10.0.2"), *leaving], 1, 2, 8025)
    assert plan.drained is drained


def test_a_called_off_scale_down_undrains_the_pods_that_stay() -> None:
    reports = [
        pod_report("p-0", "127.10.0.2"),
        pod_report("p-1", "127.10.0.3", queued=5, draining=True),
    ]
    plan = pods.drain_plan(reports, 2, 2, 8025)
    assert [r.pod.name for r in plan.undrain] == ["p-1"] and plan.leaving == []
    assert pods.ordinal("pool-12") == 12 and pods.ordinal("pool") is None
