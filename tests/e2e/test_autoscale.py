"""The built-in autoscaler with real pods: a backlog scales the pool up at once; once the queue is
low for the stabilization window it scales down, draining the leaving pods first; no mail lost."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fixtures.fleet import (
    Gate,
    apply,
    fast_retry_policy,
    message_ids,
    pool_manifest,
    pool_status,
    submit,
    wait_pods,
)
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def reasons(kube: Any, ns: str) -> list[str]:
    return [e["reason"] for e in kget(kube, ns, "events")["items"]]


def test_a_backlog_scales_up_and_a_quiet_queue_scales_down_after_the_window(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    gate = Gate()
    mx.on_rcpt = gate
    apply(
        kube,
        fast_retry_policy(ns),
    )
    apply(
        kube,
        pool_manifest(
            ns,
            "auto",
            mx,
            ["127.0.6.1", "127.0.6.2", "127.0.6.3"],
            replicas={"min": 1, "max": 3},
            autoscaling={"enabled": True, "targetQueuePerPod": 20, "scaleDownStabilization": "30s"},
        ),
    )
    (pod,) = wait_pods(kube, ns, "auto", 1)
    ids = set(submit(pod["status"]["podIP"], 50, "auto"))
    # 50 queued at 20 per pod: three pods, at once.
    wait_for("ScaledUp", lambda: "ScaledUp" in reasons(kube, ns), 60)
    status = pool_status(kube, ns, "auto")
    assert status["desiredReplicas"] == 3
    assert "scaling up to 3" in status["scaleReason"]
    wait_pods(kube, ns, "auto", 3)
    assert "ScaledDown" not in reasons(kube, ns)
    gate.open = True
    wait_for("every message delivered", lambda: message_ids(mx) >= ids, 120, every=1)
    quiet_since = time.monotonic()
    wait_for("ScaledDown", lambda: "ScaledDown" in reasons(kube, ns), 120)
    # Not before a whole window of a low queue.
    assert time.monotonic() - quiet_since >= 20
    wait_for(
        "the StatefulSet back at one pod",
        lambda: kget(kube, ns, "statefulset", "auto")["spec"]["replicas"] == 1,
        120,
    )
    assert "Drained" in reasons(kube, ns)
    assert pool_status(kube, ns, "auto")["desiredReplicas"] == 1
