"""Pods on a node that is not Ready: what the pool's status, condition, events and metric say."""

from __future__ import annotations

from fixtures.objects import inputs, pool, pool_doc

from mailfleet.operator.api.crd_models import parse_object
from mailfleet.operator.decide import pods, render, statuses
from mailfleet.operator.decide.pods import PodRef, PodReport
from mailfleet.operator.metrics import OperatorMetrics, PoolSeries

REFS = [
    PodRef("p-0", "10.244.0.5", True, node="node-a"),
    PodRef("p-1", "10.245.0.5", True, node="node-b"),
    PodRef("p-2", None, False),  # not scheduled yet
]


def test_only_pods_on_a_known_node_that_is_not_ready_are_stranded() -> None:
    assert pods.stranded(REFS, {"node-a": True, "node-b": True}, {}) == []
    assert pods.stranded(REFS, {}, {"p-1": 3}) == []  # nodes unknown: nothing claimed
    got = pods.stranded(REFS, {"node-a": True, "node-b": False}, {"p-1": 7, "p-0": 2})
    assert got == [{"pod": "p-1", "node": "node-b", "queued": 7}]
    assert pods.stranded(REFS, {"node-b": False}, {}) == [{"pod": "p-1", "node": "node-b"}]


def test_the_status_counts_what_the_stranded_pods_held() -> None:
    reports = [PodReport(REFS[0], None), PodReport(REFS[1], None)]
    stranded = [{"pod": "p-1", "node": "node-b", "queued": 7}]
    fields = pods.pods_status(reports, None, stranded)
    assert fields["strandedPods"] == stranded and fields["strandedMessages"] == 7
    assert [p.get("node") for p in fields["pods"]] == ["node-a", "node-b"]
    assert pods.pods_status(reports, None)["strandedMessages"] == 0


def test_condition_events_and_metric_follow_a_node_going_and_coming_back() -> None:
    stranded = [{"pod": "transactional-1", "node": "node-b", "queued": 12}]
    before = render.render_pool(inputs(pool(), stranded=[])).status
    during = render.render_pool(inputs(pool(), stranded=stranded)).status
    after = render.render_pool(inputs(pool(), stranded=[])).status
    cond = next(c for c in during["conditions"] if c["type"] == "PodsReachable")
    assert (cond["status"], cond["reason"]) == ("False", "NodeNotReady")
    assert "transactional-1 on node node-b (12 messages queued there)" in cond["message"]
    ok = next(c for c in before["conditions"] if c["type"] == "PodsReachable")
    assert (ok["status"], ok["reason"]) == ("True", "NodesReady")
    assert [e.reason for e in statuses.pool_events(before, during)] == ["PodsStranded"]
    assert [e.reason for e in statuses.pool_events(during, during)] == []
    assert [e.reason for e in statuses.pool_events(during, after)] == ["PodsReturned"]
    # No report yet (operator just started): no condition claimed either way.
    fresh = render.render_pool(inputs(pool())).status
    assert not any(c["type"] == "PodsReachable" for c in fresh["conditions"])

    m, series = OperatorMetrics(), PoolSeries()
    m.set_pool("ns", "transactional", {**during, "strandedPods": stranded}, series)
    text = m.registry.get_sample_value(
        "mailfleet_pool_stranded_messages",
        {"pool_namespace": "ns", "pool": "transactional", "node": "node-b"},
    )
    assert text == 12
    m.set_pool("ns", "transactional", {**after, "strandedPods": []}, series)
    assert (
        m.registry.get_sample_value(
            "mailfleet_pool_stranded_messages",
            {"pool_namespace": "ns", "pool": "transactional", "node": "node-b"},
        )
        is None
    )


def test_a_restarted_operator_keeps_the_last_finding_until_its_first_poll() -> None:
    stranded = [{"pod": "transactional-1", "node": "node-b", "queued": 3}]
    during = render.render_pool(inputs(pool(), stranded=stranded)).status
    doc = pool_doc()
    doc["status"] = during
    restarted = render.render_pool(inputs(parse_object(doc))).status
    kept = next(c for c in restarted["conditions"] if c["type"] == "PodsReachable")
    before = next(c for c in during["conditions"] if c["type"] == "PodsReachable")
    assert kept == before
