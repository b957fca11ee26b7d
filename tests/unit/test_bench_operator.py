"""bench.operator's counting: when a pool counts as reconciled, which audit events are writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

# The repository root is not on sys.path under pytest (operator/ would shadow the stdlib).
_spec = importlib.util.spec_from_file_location(
    "mailfleet_bench_operator", Path(__file__).resolve().parents[2] / "bench" / "operator.py"
)
assert _spec is not None and _spec.loader is not None
bench_operator = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench_operator
_spec.loader.exec_module(bench_operator)
count_writes, pool_manifest, pools_done = (
    bench_operator.count_writes,
    bench_operator.pool_manifest,
    bench_operator.pools_done,
)


def pool(uid: str, generation: int, observed: int | None) -> dict[str, Any]:
    status = {} if observed is None else {"observedGeneration": observed}
    return {"metadata": {"uid": uid, "generation": generation}, "status": status}


def child(owner_uid: str | None) -> dict[str, Any]:
    refs = [] if owner_uid is None else [{"kind": "SendingPool", "uid": owner_uid}]
    return {"metadata": {"ownerReferences": refs}}


def children_of(*uids: str, services: int = 2) -> dict[str, list[dict[str, Any]]]:
    return {
        "StatefulSet": [child(u) for u in uids],
        "ConfigMap": [child(u) for u in uids] + [child(None)],  # kube-root-ca.crt
        "Service": [child(u) for u in uids for _ in range(services)],
        "PodDisruptionBudget": [child(u) for u in uids],
        "ServiceAccount": [child(u) for u in uids] + [child(None)],  # default
    }


def test_a_pool_is_done_with_all_children_and_a_current_status() -> None:
    pools = [pool("a", 2, 2), pool("b", 3, 2), pool("c", 1, None), pool("d", 1, 1)]
    assert pools_done(pools, children_of("a", "b", "c")) == 1  # b stale, c no status, d no kids
    assert pools_done(pools, children_of("a", "d", services=1)) == 0  # one Service is missing


def event(
    verb: str, user: str, resource: str, sub: str = "", stage: str = "ResponseComplete"
) -> str:
    ref = {"resource": resource} | ({"subresource": sub} if sub else {})
    return json.dumps({"stage": stage, "verb": verb, "user": {"username": user}, "objectRef": ref})


def test_writes_are_counted_per_user_and_verb_without_peering() -> None:
    op = "system:serviceaccount:bench:mailfleet-operator"
    lines = [
        event("patch", op, "sendingpools", "status"),
        event("patch", op, "sendingpools", "status"),
        event("create", op, "events"),
        event("patch", op, "clusterkopfpeerings"),  # keep-alive
        event("get", op, "statefulsets"),
        event("patch", op, "statefulsets", stage="Panic"),
        event("update", "system:kube-controller-manager", "statefulsets", "status"),
        "",
    ]
    assert count_writes(lines, op) == {"patch sendingpools/status": 2, "create events": 1}


def test_pool_manifests_have_distinct_addresses() -> None:
    addresses = [ip["address"] for i in range(1000) for ip in pool_manifest(i, "ns")["spec"]["ips"]]
    assert len(set(addresses)) == 2000


def test_the_cluster_is_settled_when_pool_status_shows_the_statefulsets_pods() -> None:
    def sts(name: str, replicas: int, made: int, observed: int = 1) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "generation": 1},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": made},
        }

    def pool_with(name: str, replicas: int) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"replicas": replicas, "readyReplicas": 0}}

    settled = bench_operator.cluster_settled
    assert settled([pool_with("a", 1)], [sts("a", 1, 1)]) == 1
    # Pods still to be made, a status for an older generation, a pool status behind.
    assert settled([pool_with("a", 0)], [sts("a", 1, 0)]) == 0
    assert settled([pool_with("a", 1)], [sts("a", 1, 1, observed=0)]) == 0
    assert settled([pool_with("a", 0)], [sts("a", 1, 1)]) == 0
    assert settled([pool_with("a", 1)], []) == 0
