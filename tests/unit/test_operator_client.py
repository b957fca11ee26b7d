"""The operator's pure decisions around its API client and watch events."""

from __future__ import annotations

import pytest

from mailfleet.operator.clients import kube
from mailfleet.operator.decide import drift
from mailfleet.operator.loops import reconciler as h


@pytest.mark.parametrize(
    ("attempt", "retry_after", "delay"),
    [
        (0, None, 0.2),
        (1, None, 0.5),
        (9, None, 5.0),
        (0, "1", 1.0),
        (3, "1", 2.0),
        (0, "600", 30.0),
    ],
)
def test_retry_delay_backs_off_and_honours_retry_after(
    attempt: int, retry_after: str | None, delay: float
) -> None:
    assert kube.retry_delay(attempt, retry_after) == delay


def sts(replicas: int, ready: int, generation: int = 2, foreign: bool = False) -> h.LiveStatefulSet:
    return h.LiveStatefulSet(
        drift.LiveChild("StatefulSet", "p", "h1", generation, foreign), replicas, ready
    )


def test_statefulset_events_that_are_news() -> None:
    known = ("h1", 2)
    # Its own apply coming back, with the status the pool shows: no news.
    assert not h.statefulset_is_news("MODIFIED", sts(1, 0), (1, 0), known)
    # Pods made or ready: the pool's status changes.
    assert h.statefulset_is_news("MODIFIED", sts(2, 1), (1, 0), known)
    # kubectl scale: a new generation by another manager.
    assert h.statefulset_is_news("MODIFIED", sts(1, 0, generation=3, foreign=True), (1, 0), known)
    assert h.statefulset_is_news("DELETED", sts(1, 0), (1, 0), known)
    # Never applied or read by this process.
    assert h.statefulset_is_news("MODIFIED", sts(1, 0), (1, 0), None)


def test_index_bodies_leave_out_managed_fields_and_last_applied() -> None:
    body = {
        "kind": "SendingPool",
        "metadata": {
            "name": "p",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
                "team": "mail",
            },
        },
        "spec": {"replicas": {"min": 1}},
    }
    slim = h.slim(body)
    assert slim == {
        "kind": "SendingPool",
        "metadata": {"name": "p", "annotations": {"team": "mail"}},
        "spec": {"replicas": {"min": 1}},
    }
    assert "managedFields" in body["metadata"]
