"""A real HorizontalPodAutoscaler (kube-controller-manager's) drives a SendingPool through its
scale subresource when the built-in autoscaler is off: it reads /scale, writes
spec.replicas.desired, and the operator follows with the StatefulSet."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fixtures.operator import kget, wait_for

pytestmark = pytest.mark.kube


def test_an_hpa_scales_the_pool_through_the_scale_subresource(
    mailfleet_crds: Any, kube_namespace: str, run_operator: Any
) -> None:
    kube, ns = mailfleet_crds, kube_namespace
    pool = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "hpa", "namespace": ns},
        "spec": {
            "replicas": {"min": 0, "max": 4, "desired": 1},
            "ips": [{"address": "192.0.2.10", "hostname": "mta1.example.com"}],
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(pool))
    run_operator(ns)
    wait_for("the pool's selector", lambda: kget(kube, ns, "sendingpool", "hpa").get("status", {}))
    # The HPA's own floor needs no metrics: below minReplicas it scales up at once.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "hpa", "namespace": ns},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "mailfleet.io/v1alpha1",
                "kind": "SendingPool",
                "name": "hpa",
            },
            "minReplicas": 3,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(hpa))
    wait_for(
        "the HPA to set replicas.desired",
        lambda: kget(kube, ns, "sendingpool", "hpa")["spec"]["replicas"].get("desired") == 3,
        120,
    )
    wait_for(
        "the StatefulSet to follow",
        lambda: kget(kube, ns, "statefulset", "hpa")["spec"]["replicas"] == 3,
        60,
    )
    status = kget(kube, ns, "horizontalpodautoscaler", "hpa")["status"]
    assert status["desiredReplicas"] == 3
