"""`make demo`'s live summary: what a user reads for given snapshots of the fleet, and the
verdict of a bounded demo (bench/demo_summary.py is pure: snapshots in, text out)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# The repository root is not on sys.path under pytest (operator/ would shadow the stdlib).
_spec = importlib.util.spec_from_file_location(
    "mailfleet_bench_demo_summary",
    Path(__file__).resolve().parents[2] / "bench" / "demo_summary.py",
)
assert _spec is not None and _spec.loader is not None
summary = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = summary
_spec.loader.exec_module(summary)

Snapshot, SimCounts, Traffic, DkimCheck = (
    summary.Snapshot,
    summary.SimCounts,
    summary.Traffic,
    summary.DkimCheck,
)
NOW = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    name: str,
    *,
    phase: str = "Running",
    ip: str | None = "127.10.0.2",
    ready: bool = True,
    restarts: int = 0,
    node: str | None = "local-node",
    waiting: str | None = None,
    deleting: bool = False,
    scheduled: bool | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "mta",
                "restartCount": restarts,
                "state": {"waiting": {"reason": waiting}} if waiting else {"running": {}},
            }
        ],
        "startTime": ts(95),
    }
    if ip:
        status["podIP"] = ip
    if scheduled is False:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
        )
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = ts(1)
    spec = {"nodeName": node} if node else {}
    return {"metadata": meta, "spec": spec, "status": status}


POOL: dict[str, Any] = {
    "metadata": {"name": "local"},
    "spec": {"replicas": {"min": 2, "max": 4}},
    "status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "PodsReady"}],
        "readyReplicas": 2,
        "desiredReplicas": 2,
        "queueDepth": 17,
        "configHash": "3fa9c2d1e0b4aa55",
        "updatedPods": 2,
        "pods": [
            {"name": "local-0", "ip": "127.10.0.2", "ready": True, "configHash": "3fa9c2d1e0b4"},
            {"name": "local-1", "ip": "127.10.0.3", "ready": True, "configHash": "3fa9c2d1e0b4"},
        ],
        "ips": [
            {"address": "127.0.2.1", "state": "active", "pod": "local-0"},
            {"address": "127.0.2.2", "state": "active", "pod": "local-1"},
            {
                "address": "127.0.2.3",
                "state": "warming",
                "pod": "local-0",
                "reason": "IPWarmup/local-mta3",
            },
            {"address": "127.0.2.4", "state": "standby"},
        ],
    },
}
WARMUP: dict[str, Any] = {
    "metadata": {"name": "local-mta3"},
    "spec": {"addresses": ["127.0.2.3"]},
    "status": {"phase": "Warming", "day": 1, "todayCap": 60, "sentToday": {"gmail": 30}},
}


def event(seconds_ago: float, reason: str, message: str, kind: str = "SendingPool") -> Any:
    return {
        "type": "Normal",
        "reason": reason,
        "message": message,
        "involvedObject": {"kind": kind, "name": "local"},
        "lastTimestamp": ts(seconds_ago),
    }


def engine(generation: int, queued: int, shaping: list[dict[str, Any]]) -> dict[str, Any]:
    return {"configGeneration": generation, "queue": {"messages": queued}, "shaping": shaping}


def fleet_snapshot(**over: Any) -> Any:
    now = NOW.timestamp()
    fields: dict[str, Any] = {
        "now": NOW,
        "elapsed": 125.0,
        "pools": [POOL],
        "pods": [
            pod("local-1", ip="127.10.0.3", restarts=1),
            pod("local-0", ip="127.10.0.2"),
        ],
        "warmups": [WARMUP],
        "events": [event(100 - i, f"Reason{i}", f"message {i}") for i in range(10)],
        "engines": {
            "local-0": engine(
                3,
                9,
                [
                    {"ip": "127.0.2.1", "provider": "gmail", "rate": 1.0, "maxRate": 2.0},
                    {
                        "ip": "127.0.2.3",
                        "provider": "gmail",
                        "rate": 2.0,
                        "maxRate": 2.0,
                        "warmupLeft": 0,
                    },
                    {
                        "ip": "127.0.2.1",
                        "provider": "yahoo",
                        "rate": 1.5,
                        "maxRate": 1.5,
                        "suspendedUntil": now + 50,
                    },
                ],
            ),
            "local-1": engine(
                3,
                8,
                [{"ip": "127.0.2.2", "provider": "outlook", "rate": 1.5, "maxRate": 1.5}],
            ),
        },
        "sim": [
            SimCounts("gmail", "127.0.2.1", 40, 12, 3, "421 4.7.28 users from spam, ..."),
            SimCounts("gmail", "127.0.2.3", 30, 5),
            SimCounts("outlook", "127.0.2.2", 55, 20),
            SimCounts("yahoo", "127.0.2.1", 25, 0),
        ],
        "traffic": Traffic(5.0, 160, 2, "", {"local-0": 80, "local-1": 80}),
        "dkim": DkimCheck(6, 6),
        "deadline": 180.0,
    }
    fields.update(over)
    return Snapshot(**fields)


def section(text: str, title: str) -> list[str]:
    """The lines of one section (from its title to the next blank line)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    out = []
    for ln in lines[start + 1 :]:
        if not ln.strip():
            break
        out.append(ln)
    return out


def test_a_running_fleet_reads_at_a_glance() -> None:
    text = summary.render_summary(fleet_snapshot())
    assert text.splitlines()[:2] == [
        "mailfleet demo · 00:02:05 · ends in 55s",
        "  pods 2/2 ready · submitted 160 (2 failed) · delivered 150 · DKIM pass 6/6",
    ]

    pools = section(text, "SENDING POOLS")
    assert pools[0].split() == [
        "NAME", "READY", "REASON", "PODS", "MIN-MAX", "QUEUE", "CONFIG", "UPDATED"
    ]  # fmt: skip
    assert pools[1].split() == ["local", "True", "PodsReady", "2/2", "2-4", "17", "3fa9c2d1", "2"]

    pods = section(text, "PODS")
    assert pods[0].split()[:4] == ["NAME", "STATUS", "IP", "READY"]
    # Sorted by name; restarts, config hash, engine generation, queue, submissions, age.
    assert pods[1].split() == [
        "local-0", "Running", "127.10.0.2", "yes", "0", "3fa9c2d1", "3", "9", "80", "95s"
    ]  # fmt: skip
    assert pods[2].split() == [
        "local-1", "Running", "127.10.0.3", "yes", "1", "3fa9c2d1", "3", "8", "80", "95s"
    ]  # fmt: skip

    ips = section(text, "IP STATES")
    assert ips[0].split() == ["ADDRESS", "STATE", "POD", "ENGINES", "REASON"]
    # ENGINES: what the engines' shaping holds against the address, per provider.
    assert [ln.split() for ln in ips[1:]] == [
        ["127.0.2.1", "active", "local-0", "suspended", "for", "yahoo"],
        ["127.0.2.2", "active", "local-1", "-"],
        ["127.0.2.3", "warming", "local-0", "-", "IPWarmup/local-mta3"],
        ["127.0.2.4", "standby", "-", "-"],
    ]

    rates = {tuple(ln.split()[:2]): ln.split()[2:] for ln in section(text, "RATES")[1:]}
    assert rates[("127.0.2.1", "gmail")] == ["60/min", "12/min", "40", "3", "-", "throttled"]
    assert rates[("127.0.2.3", "gmail")] == ["120/min", "5/min", "30", "0", "0", "ok"]
    assert rates[("127.0.2.2", "outlook")] == ["90/min", "20/min", "55", "0", "-", "ok"]
    assert rates[("127.0.2.1", "yahoo")] == ["90/min", "0/min", "25", "0", "-", "suspended", "50s"]

    warmups = section(text, "WARMUPS")
    assert warmups[1].split() == ["local-mta3", "127.0.2.3", "Warming", "1", "60", "gmail=30"]

    delivered = section(text, "DELIVERED")
    assert delivered[0].split() == [
        "PROVIDER", "127.0.2.1", "127.0.2.2", "127.0.2.3", "TOTAL", "REFUSED"
    ]  # fmt: skip
    assert delivered[1].split() == ["gmail", "40", "0", "30", "70", "3"]
    assert delivered[2].split() == ["outlook", "0", "55", "0", "55", "0"]
    assert delivered[3].split() == ["yahoo", "25", "0", "0", "25", "0"]
    assert delivered[4].startswith("  last refusal (gmail to 127.0.2.1): 421 4.7.28")


def test_scaling_and_draining_are_explained_under_the_pool() -> None:
    status = {
        **POOL["status"],
        "scaleReason": "3 pods: 130 queued, 40 per pod",
        "lastScaleTime": ts(12),
        "drainingPods": ["local-2"],
        "handoffLeft": 17,
    }
    text = summary.render_summary(fleet_snapshot(pools=[{**POOL, "status": status}]))
    assert section(text, "SENDING POOLS")[2:] == [
        "  local scaled: 3 pods: 130 queued, 40 per pod (12s ago)",
        "  local draining: local-2, 17 message(s) to hand off",
    ]
    assert len(section(summary.render_summary(fleet_snapshot()), "SENDING POOLS")) == 2


def test_an_ip_held_for_several_providers_says_which() -> None:
    now = NOW.timestamp()
    rows = [
        {"ip": "127.0.2.1", "provider": "outlook", "quarantinedUntil": now + 3600},
        {"ip": "127.0.2.1", "provider": "gmail", "quarantinedUntil": now + 60},
        {"ip": "127.0.2.1", "provider": "yahoo", "suspendedUntil": now + 60},
    ]
    text = summary.render_summary(fleet_snapshot(engines={"local-0": engine(1, 0, rows)}))
    first = section(text, "IP STATES")[1]
    assert first.split()[:3] == ["127.0.2.1", "active", "local-0"]
    assert "quarantined for gmail, outlook; suspended for yahoo" in first


def test_events_show_the_newest_eight_oldest_first() -> None:
    text = summary.render_summary(fleet_snapshot())
    events = section(text, "EVENTS")
    assert events[0].split() == ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert [ln.split()[2] for ln in events[1:]] == [f"Reason{i}" for i in range(2, 10)]
    assert events[-1].split() == ["91s", "Normal", "Reason9", "SendingPool/local", "message", "9"]


def test_endpoint_warnings_about_loopback_pod_ips_are_counted_not_shown() -> None:
    noise = [
        {**event(2, reason, "Error updating Endpoint Slices for Service default/local"),
         "involvedObject": {"kind": "Service", "name": "local"}}
        for reason in ("FailedToUpdateEndpointSlices", "FailedToUpdateEndpoint") * 3
    ]  # fmt: skip
    snap = fleet_snapshot(events=[event(30, "Started", "Started container mta"), *noise])
    events = section(summary.render_summary(snap), "EVENTS")
    assert [ln.split()[2] for ln in events[1:-1]] == ["Started"]
    assert events[-1] == (
        "  (6 endpoint warnings not shown: Services cannot list loopback pod IPs)"
    )
    only_noise = section(summary.render_summary(fleet_snapshot(events=noise)), "EVENTS")
    assert only_noise[0] == "  (none yet)"


def test_event_time_falls_back_through_the_fields_kubernetes_fills() -> None:
    series = {"series": {"lastObservedTime": ts(5)}, "lastTimestamp": ts(50)}
    new_style = {"eventTime": ts(7)}
    created = {"metadata": {"creationTimestamp": ts(9)}}
    untimed: dict[str, Any] = {"reason": "X"}
    assert summary.event_time(series) == NOW - timedelta(seconds=5)
    assert summary.event_time(new_style) == NOW - timedelta(seconds=7)
    assert summary.event_time(created) == NOW - timedelta(seconds=9)
    assert summary.event_time(untimed) is None
    ordered = summary.recent_events([series, untimed, created, new_style], n=3)
    assert ordered == [created, new_style, series]


def test_a_fleet_that_is_starting_says_so_without_failing() -> None:
    snap = Snapshot(now=NOW, elapsed=3.0, notes=["waiting for pods to become ready"])
    text = summary.render_summary(snap)
    assert text.splitlines()[:3] == [
        "mailfleet demo · 00:00:03 · Ctrl-C stops everything",
        "  pods 0/0 ready · submitted 0 · delivered 0",
        "  waiting for pods to become ready",
    ]
    assert section(text, "SENDING POOLS") == ["  (none yet)"]
    assert section(text, "PODS") == ["  (none yet)"]
    assert section(text, "DELIVERED") == ["  (nothing delivered yet)"]
    assert section(text, "EVENTS") == ["  (none yet)"]


def test_errors_are_shown_under_the_title() -> None:
    snap = fleet_snapshot(
        traffic=Traffic(5.0, 0, 3, "local-0 (127.10.0.2:2525): Connection refused"),
        dkim=DkimCheck(2, 1, "gmail message from 127.0.2.1: signatures [False]"),
    )
    lines = summary.render_summary(snap).splitlines()
    assert lines[2] == "  last submission error: local-0 (127.10.0.2:2525): Connection refused"
    assert lines[3] == "  last DKIM failure: gmail message from 127.0.2.1: signatures [False]"


def test_no_line_is_wider_than_the_terminal() -> None:
    long_reason = "Quarantined: " + "550 5.7.1 blocked " * 20
    pool = {**POOL, "status": {**POOL["status"], "ips": [
        {"address": "127.0.2.1", "state": "quarantined", "reason": long_reason}
    ]}}  # fmt: skip
    snap = fleet_snapshot(pools=[pool], events=[event(3, "Quarantined", long_reason)])
    for width in (80, 110):
        text = summary.render_summary(snap, width=width)
        assert max(len(ln) for ln in text.splitlines()) <= width
        assert "…" in text


@pytest.mark.parametrize(
    ("p", "shown"),
    [
        (pod("a"), "Running"),
        (pod("a", phase="Pending", ip=None, ready=False, node=None), "Pending"),
        (pod("a", phase="Pending", ready=False, scheduled=False), "Unschedulable"),
        (pod("a", ready=False, waiting="CrashLoopBackOff"), "CrashLoopBackOff"),
        (pod("a", deleting=True), "Terminating"),
        (pod("a", phase="Succeeded", ready=False), "Succeeded"),
    ],
)
def test_pod_status_is_what_kubectl_would_show(p: Any, shown: str) -> None:
    assert summary.pod_phase(p) == shown


def test_traffic_goes_only_to_ready_pods_with_an_ip() -> None:
    pods = [
        pod("local-2", ip="127.10.0.4"),
        pod("local-0", ip="127.10.0.2"),
        pod("local-1", ip="127.10.0.3", ready=False),
        pod("local-3", ip=None),
        pod("local-4", ip="127.10.0.6", deleting=True),
    ]
    assert summary.ready_pod_ips(pods) == {"local-0": "127.10.0.2", "local-2": "127.10.0.4"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (119, "119s"), (120, "2m"), (130, "2m10s"), (600, "10m"),
     (3 * 3600, "3h"), (3 * 86400, "3d"), (-5, "0s")],
)  # fmt: skip
def test_ages_read_like_kubectl(seconds: float, text: str) -> None:
    assert summary.age(seconds) == text


def test_rates_are_shown_per_minute() -> None:
    assert summary.per_minute(None) == "unlimited"
    assert summary.per_minute(2.0) == "120/min"
    assert summary.per_minute(10 / 60) == "10/min"
    assert summary.per_minute(0.1) == "6.0/min"


def test_verdict_of_a_fleet_that_delivered() -> None:
    ok, message = summary.verdict(fleet_snapshot())
    assert ok
    assert message == (
        "delivered 150 message(s) from 127.0.2.1, 127.0.2.2, 127.0.2.3 (160 submitted); "
        "DKIM verified on 6 of 6 checked"
    )


@pytest.mark.parametrize(
    ("over", "expect"),
    [
        ({"pools": [], "pods": []}, "no SendingPool was created: did examples/local/ apply?"),
        ({"pods": []}, "the operator created no pods: see the operator log"),
        (
            {"pods": [pod("local-0", phase="Pending", ip=None, ready=False, node=None)]},
            "no pod ever ran: pods are Pending (no pod was scheduled to a node: is the node "
            "agent running?)",
        ),
        (
            {"pods": [pod("local-0", ready=False, waiting="CrashLoopBackOff")]},
            "no pod ever ran: pods are CrashLoopBackOff",
        ),
        (
            {"pods": [pod("local-0", ready=False)]},
            "pods run but none became ready: see the pod logs",
        ),
        (
            {"traffic": Traffic(5.0, 0, 4, "local-0 (127.10.0.2:2525): timed out")},
            "pods are ready but no message could be submitted "
            "(local-0 (127.10.0.2:2525): timed out)",
        ),
        (
            {"sim": [SimCounts("gmail", "127.0.2.1", 0, 0, 7)]},
            "160 message(s) submitted but none delivered (7 refusals by the simulator): see "
            "the pods' engine logs",
        ),
    ],
)
def test_verdict_says_what_went_wrong(over: dict[str, Any], expect: str) -> None:
    over.setdefault("sim", [])
    ok, message = summary.verdict(fleet_snapshot(**over))
    assert not ok
    assert message == expect
