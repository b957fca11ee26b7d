"""Scaling a pool down, or deleting its pods, loses no mail: on the local node with real engines,
a real operator and an MX that defers until the test lets mail through.

- 3 pods -> 1 with 10,000 messages queued across them: the leaving pods hand their queue to the
  pod that stays before the StatefulSet shrinks; every message is delivered.
- a pod deleted under load: its preStop drains it, what is left waits in its volume and is
  delivered when the pod returns.
- the operator killed in the middle of a drain: the next one carries on from what the pods say.
- a scale-down called off: the draining pod takes mail again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fixtures.fleet import (
    Gate,
    apply,
    fast_retry_policy,
    message_ids,
    pool_manifest,
    pool_status,
    running_pods,
    submit,
    wait_pods,
)
from fixtures.operator import OperatorProcess, kget, wait_for
from fixtures.smtppeers import RecordingMX

pytestmark = [pytest.mark.kube, pytest.mark.slow]


def queued(kube: Any, ns: str, pool: str) -> int:
    return int(pool_status(kube, ns, pool).get("queueDepth") or 0)


def events(kube: Any, ns: str, reason: str) -> list[dict[str, Any]]:
    items = kget(kube, ns, "events")["items"]
    return [e for e in items if e.get("reason") == reason]


def deferring_pool(
    kube: Any, ns: str, name: str, mx: RecordingMX, pods: int
) -> list[dict[str, Any]]:
    apply(
        kube,
        pool_manifest(
            ns,
            name,
            mx,
            [f"127.0.5.{i}" for i in range(1, pods + 1)],
            replicas={"min": 0, "max": 3, "desired": pods},
            autoscaling={"enabled": False},
        ),
    )
    # Retries every few seconds: once the gate opens the queue drains in a test's time.
    apply(
        kube,
        fast_retry_policy(ns),
    )
    return wait_pods(kube, ns, name, pods)


def scale(kube: Any, ns: str, name: str, n: int) -> None:
    kube.kubectl("scale", "sendingpool", name, "-n", ns, f"--replicas={n}")


def test_scale_down_from_three_pods_to_one_loses_nothing(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    gate = Gate()
    mx.on_rcpt = gate
    pods = deferring_pool(kube, ns, "sd", mx, 3)
    total = 10_000
    ids: set[str] = set()
    t0 = time.monotonic()
    for i, p in enumerate(sorted(pods, key=lambda p: p["metadata"]["name"])):
        n = total // 3 + (1 if i < total % 3 else 0)
        ids |= set(submit(p["status"]["podIP"], n, f"sd{i}"))
    assert len(ids) == total
    wait_for("the pods to report the queue", lambda: queued(kube, ns, "sd") == total, 60)
    scale(kube, ns, "sd", 1)
    wait_for("pods 1 and 2 draining", lambda: len(events(kube, ns, "Draining")) >= 2, 60)
    wait_for(
        "the StatefulSet shrunk after the handoff",
        lambda: kget(kube, ns, "statefulset", "sd")["spec"]["replicas"] == 1,
        180,
    )
    wait_pods(kube, ns, "sd", 1)
    # Everything is on pod 0 now; nothing was lost with the pods that left.
    wait_for("the whole queue on pod 0", lambda: queued(kube, ns, "sd") == total, 60)
    gate.open = True
    wait_for("every message delivered", lambda: message_ids(mx) >= ids, 600, every=2)
    delivered = [m for m in mx.messages()]
    dup = len(delivered) - len({i for i in message_ids(mx)})
    lost = len(ids - message_ids(mx))
    print(
        f"scale-down: queued {total} delivered {len(ids & message_ids(mx))} lost {lost} "
        f"duplicates {dup} in {time.monotonic() - t0:.0f} s"
    )
    assert lost == 0


def test_a_pod_deleted_under_load_delivers_when_it_returns(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    gate = Gate()
    mx.on_rcpt = gate
    (pod,) = deferring_pool(kube, ns, "del", mx, 1)
    ids = set(submit(pod["status"]["podIP"], 300, "del"))
    # A short grace period: the preStop drain cannot deliver while the MX defers.
    kube.kubectl("delete", "pod", "del-0", "-n", ns, "--grace-period=3", "--wait=true")
    wait_pods(kube, ns, "del", 1)  # the same ordinal, the same volume
    wait_for("the queue back in the new pod", lambda: queued(kube, ns, "del") == len(ids), 60)
    gate.open = True
    wait_for("every message delivered", lambda: message_ids(mx) >= ids, 120, every=1)


def test_an_operator_killed_mid_drain_is_carried_on_by_the_next(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
    run_operator: Callable[..., OperatorProcess],
) -> None:
    kube, ns, mx, op = fleet
    gate = Gate()
    mx.on_rcpt = gate
    pods = deferring_pool(kube, ns, "kill", mx, 2)
    ids: set[str] = set()
    for p in pods:
        ids |= set(submit(p["status"]["podIP"], 200, p["metadata"]["name"]))
    wait_for("the pods to report the queue", lambda: queued(kube, ns, "kill") == len(ids), 60)
    # Going to zero pods: nobody to hand off to, the leaving pods must deliver themselves and
    # cannot while the MX defers, so the drain is in progress when the operator dies.
    scale(kube, ns, "kill", 0)
    wait_for("the drain started", lambda: len(events(kube, ns, "Draining")) >= 2, 60)
    op.kill()
    assert kget(kube, ns, "statefulset", "kill")["spec"]["replicas"] == 2
    run_operator(ns)
    time.sleep(8)  # a poll or two of the new operator: still draining, not shrunk
    assert kget(kube, ns, "statefulset", "kill")["spec"]["replicas"] == 2
    assert pool_status(kube, ns, "kill")["drainingPods"] == ["kill-0", "kill-1"]
    gate.open = True
    wait_for("every message delivered", lambda: message_ids(mx) >= ids, 120, every=1)
    wait_for(
        "the StatefulSet at zero once the pods are empty",
        lambda: kget(kube, ns, "statefulset", "kill")["spec"]["replicas"] == 0,
        60,
    )


def test_a_called_off_scale_down_takes_mail_again(
    fleet: tuple[Any, str, RecordingMX, OperatorProcess],
) -> None:
    kube, ns, mx, _ = fleet
    gate = Gate()
    mx.on_rcpt = gate
    (pod,) = deferring_pool(kube, ns, "undo", mx, 1)
    ids = set(submit(pod["status"]["podIP"], 50, "undo"))
    wait_for("the pod to report the queue", lambda: queued(kube, ns, "undo") == len(ids), 60)
    scale(kube, ns, "undo", 0)
    wait_for("the drain started", lambda: events(kube, ns, "Draining"), 60)
    wait_for("the pod out of the Service", lambda: not running_pods(kube, ns, "undo"), 30)
    scale(kube, ns, "undo", 1)
    wait_for("DrainCancelled", lambda: events(kube, ns, "DrainCancelled"), 60)
    (again,) = wait_pods(kube, ns, "undo", 1)
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]  # the same pod, never removed
    ids |= set(submit(again["status"]["podIP"], 5, "after"))
    gate.open = True
    wait_for("every message delivered", lambda: message_ids(mx) >= ids, 120, every=1)
