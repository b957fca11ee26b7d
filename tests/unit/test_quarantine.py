"""Quarantine, standby promotion, recovery and NoHealthyIP: the pure verdicts, and what the
rendered engine config and pool status make of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fixtures.objects import inputs, pool

from mailfleet.operator.api import conditions
from mailfleet.operator.api.crd_models import SendingPool, SendingPoolStatus
from mailfleet.operator.clients import blocklist
from mailfleet.operator.decide import ipplan, quarantine, render
from mailfleet.operator.decide.health import Counts
from mailfleet.operator.decide.quarantine import IPVerdict, decide, verdict_events

T0 = datetime(2026, 3, 4, 5, 0, 0, tzinfo=UTC)
A, B, S1, S2 = "192.0.2.1", "192.0.2.2", "192.0.2.10", "192.0.2.11"


def a_pool(**health: Any) -> SendingPool:
    return pool(
        ips=[
            {"address": A, "hostname": "a.example.com"},
            {"address": B, "hostname": "b.example.com"},
            {"address": S1, "hostname": "s1.example.com", "standby": True},
            {"address": S2, "hostname": "s2.example.com", "standby": True},
        ],
        health={"quarantine": {"minAttempts": 100}, "cooldown": "10m", **health},
    )


def test_healthy_figures_change_nothing() -> None:
    v = decide(a_pool(), {}, {A: Counts(1000, 990, 5, 5)}, {}, T0)
    assert v.ips == {} and v.no_healthy_ip is None


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (Counts(200, 180, 5, 15), "BounceRate"),
        (Counts(200, 130, 70, 0), "DeferralRate"),
        (Counts(200, 200, 0, 0, 1), "ComplaintRate"),
    ],
)
def test_a_crossed_threshold_quarantines_and_promotes_a_standby(
    counts: Counts, reason: str
) -> None:
    v = decide(a_pool(), {}, {A: counts}, {}, T0)
    assert v.ips[A].state == "quarantined" and v.ips[A].reason.startswith(reason)
    assert v.ips[S1] == IPVerdict("promoted", f"Replaces:{A}", T0)
    assert S2 not in v.ips
    events = {(e.type, e.reason) for e in verdict_events({}, v, False)}
    assert events == {("Warning", "IPQuarantined"), ("Normal", "StandbyPromoted")}


def test_no_verdict_under_min_attempts() -> None:
    assert decide(a_pool(), {}, {A: Counts(99, 0, 0, 99)}, {}, T0).ips == {}


def test_listing_quarantines_whatever_the_figures_and_a_listed_standby_is_skipped() -> None:
    listed = {A: ["zen.example (127.0.0.2)"], S1: ["zen.example (127.0.0.3)"]}
    v = decide(a_pool(), {}, {}, listed, T0)
    assert v.ips[A].reason == "Listed:zen.example (127.0.0.2)"
    assert v.ips[S1].state == "quarantined"
    assert v.ips[S2].state == "promoted"


def test_recovery_needs_cooldown_delisting_and_health() -> None:
    p = a_pool()
    first = decide(p, {}, {}, {A: ["zen.example (127.0.0.2)"]}, T0)
    # Still listed after the cooldown: stays out (its first reason stays).
    later = T0 + timedelta(minutes=11)
    still = decide(p, first.ips, {}, {A: ["zen.example (127.0.0.2)"]}, later)
    assert still.ips[A].state == "quarantined" and still.ips[A].since == T0
    # Delisted but within the cooldown: stays out.
    soon = decide(p, first.ips, {}, {}, T0 + timedelta(minutes=5))
    assert soon.ips[A].state == "quarantined"
    # Delisted, cooled down: back, and the standby returns to standby.
    back = decide(p, first.ips, {}, {}, later)
    assert back.ips == {}
    events = {(e.type, e.reason) for e in verdict_events(first.ips, back, False)}
    assert events == {("Normal", "IPRecovered"), ("Normal", "StandbyReleased")}


def test_recovery_waits_for_the_bad_figures_to_leave_the_window() -> None:
    p = a_pool()
    first = decide(p, {}, {A: Counts(200, 100, 0, 100)}, {}, T0)
    later = T0 + timedelta(minutes=11)
    assert decide(p, first.ips, {A: Counts(200, 100, 0, 100)}, {}, later).ips[A].state == (
        "quarantined"
    )
    assert A not in decide(p, first.ips, {}, {}, later).ips


def test_last_ip_keeps_sending_by_default_and_says_so() -> None:
    p = pool(
        ips=[{"address": A, "hostname": "a.example.com"}],
        health={"quarantine": {"minAttempts": 10}},
    )
    v = decide(p, {}, {A: Counts(100, 50, 0, 50)}, {}, T0)
    assert v.ips[A].state == "kept" and v.ips[A].reason.startswith("NoHealthyIP")
    assert v.no_healthy_ip is not None
    events = verdict_events({}, v, False)
    assert [(e.type, e.reason) for e in events] == [("Warning", "NoHealthyIP")]
    assert verdict_events(v.ips, v, True) == []  # said once
    plans = ipplan.plan_ips(p, [], 1, T0, v.ips)
    assert plans[0].state == "active"
    cond = render.ips_healthy(v)
    assert (cond.status, cond.reason) == ("False", "NoHealthyIP")


def test_last_ip_stops_when_the_pool_says_stop() -> None:
    p = pool(
        ips=[{"address": A, "hostname": "a.example.com"}],
        health={"quarantine": {"minAttempts": 10}, "whenNoHealthyIP": "stop"},
    )
    v = decide(p, {}, {A: Counts(100, 50, 0, 50)}, {}, T0)
    assert v.ips[A].state == "quarantined" and v.no_healthy_ip is not None
    assert ipplan.plan_ips(p, [], 1, T0, v.ips)[0].state == "quarantined"


def test_unlisted_ip_is_the_one_kept_sending() -> None:
    p = pool(
        ips=[{"address": A, "hostname": "a.example.com"}, {"address": B, "hostname": "b.x.com"}],
        health={"quarantine": {"minAttempts": 10}},
    )
    v = decide(p, {}, {B: Counts(100, 50, 0, 50)}, {A: ["zen (127.0.0.2)"]}, T0)
    assert v.ips[A].state == "quarantined" and v.ips[B].state == "kept"


def test_engine_config_and_status_show_the_verdicts() -> None:
    p = a_pool()
    v = decide(p, {}, {}, {A: ["zen.example (127.0.0.2)"]}, T0)
    out = render.render_pool(inputs(p, warmups=[], verdicts=v, now=T0))
    assert out.config is not None
    states = {str(s.address): (s.state, s.owner) for s in out.config.delivery.source_ips}
    assert states[A][0] == "quarantined"
    assert states[S1][0] == "active" and states[S1][1] is not None
    assert states[S2] == ("standby", None)
    ips = {i["address"]: i for i in out.status["ips"]}
    assert ips[A]["reason"] == "Listed:zen.example (127.0.0.2)" and ips[A]["since"]
    cond = conditions.condition(out.status, "IPsHealthy")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Quarantined")
    # An operator restarted reads its verdicts back from the status it wrote.
    with_status = p.model_copy(update={"status": SendingPoolStatus.model_validate(out.status)})
    prior = quarantine.prior_verdicts(with_status)
    assert prior[A].state == "quarantined" and prior[S1].state == "promoted"
    again = render.render_pool(inputs(with_status, warmups=[], now=T0 + timedelta(minutes=1)))
    assert again.config_text == out.config_text


def test_no_check_yet_is_unknown() -> None:
    cond = conditions.condition(render.render_pool(inputs(warmups=[])).status, "IPsHealthy")
    assert cond is not None and (cond["status"], cond["reason"]) == ("Unknown", "NotChecked")


# --- DNSBL answers -------------------------------------------------------------------------


def test_query_names_reverse_octets_and_nibbles() -> None:
    assert blocklist.query_name("192.0.2.99", "zen.spamhaus.org") == "99.2.0.192.zen.spamhaus.org"
    six = blocklist.query_name("2001:db8::1", "zen.example.")
    assert six.endswith(".8.b.d.0.1.0.0.2.zen.example")
    assert six.startswith("1.0.0.0.0.0.0.0.")
    assert len(six.split(".")) == 32 + 2


@pytest.mark.parametrize("code", [f"127.0.0.{n}" for n in range(2, 12)])
def test_spamhaus_listing_codes_list(code: str) -> None:
    got = blocklist.interpret("zen.spamhaus.org", [code], "see https://check.example")
    assert got.listed and got.codes == (code,)
    assert got.describe() == f"zen.spamhaus.org ({code}): see https://check.example"


@pytest.mark.parametrize(
    "codes", [["127.255.255.254"], ["127.255.255.252"], ["127.0.0.1"], ["192.0.2.1"], ["::1"]]
)
def test_error_codes_never_count_as_listed(codes: list[str]) -> None:
    got = blocklist.interpret("zen.spamhaus.org", codes)
    assert not got.listed and got.error is not None


def test_no_answer_is_not_listed() -> None:
    got = blocklist.interpret("zen.spamhaus.org", [])
    assert not got.listed and got.error is None


# --- quarantines the engines decide ----------------------------------------------------------


def test_engine_quarantines_in_status_and_what_is_new() -> None:
    from mailfleet.operator.decide import pods

    def report(name: str, rows: list[dict[str, Any]]) -> pods.PodReport:
        return pods.PodReport(pods.PodRef(name, "127.10.0.2", True), {"shaping": rows})

    rows = [
        {"ip": A, "provider": "outlook", "quarantinedUntil": 2000.5, "reason": "550 5.7.1 S3150"},
        {"ip": A, "provider": "gmail", "quarantinedUntil": None, "reason": ""},
    ]
    later = [{"ip": A, "provider": "outlook", "quarantinedUntil": 2100.0}]
    got = pods.engine_quarantines([report("p-0", rows), report("p-1", later)])
    assert got == [{"address": A, "provider": "outlook", "pod": "p-1", "until": 2100}]
    status = pods.pods_status([report("p-0", rows)], None)
    assert status["engineQuarantines"][0]["reason"] == "550 5.7.1 S3150"
    assert status["quarantinedIPs"] == 1
    assert pods.new_engine_quarantines(None, got) == got
    assert pods.new_engine_quarantines(status["engineQuarantines"], got) == []


def test_no_healthy_ip_verdict_is_stable_while_it_lasts() -> None:
    p = pool(
        ips=[{"address": A, "hostname": "a.example.com"}],
        health={"quarantine": {"minAttempts": 10}},
    )
    first = decide(p, {}, {A: Counts(100, 50, 0, 50)}, {}, T0)
    again = decide(p, first.ips, {A: Counts(120, 50, 0, 70)}, {}, T0 + timedelta(minutes=1))
    assert again == quarantine.Verdicts(first.ips, first.no_healthy_ip, again.checked_at)
