"""watchcache.py: the operator's caches of watched objects, as the reconciler reads them."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from mailfleet.operator.api import naming
from mailfleet.operator.loops.watchcache import WatchCache, served


def body(kind: str, ns: str, name: str, **extra: Any) -> dict[str, Any]:
    meta = {"namespace": ns, "name": name, **extra.pop("meta", {})}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **extra}


def test_a_warmup_moved_to_another_pool_leaves_the_first() -> None:
    c = WatchCache()
    c.update("IPWarmup", None, body("IPWarmup", "ns", "w", spec={"poolRef": "a"}))
    assert [w["metadata"]["name"] for w in c.indexes.warmups[("ns", "a")]] == ["w"]
    c.update("IPWarmup", "MODIFIED", body("IPWarmup", "ns", "w", spec={"poolRef": "b"}))
    assert ("ns", "a") not in c.indexes.warmups
    assert [w["spec"]["poolRef"] for w in c.indexes.warmups[("ns", "b")]] == ["b"]
    c.update("IPWarmup", "DELETED", body("IPWarmup", "ns", "w", spec={"poolRef": "b"}))
    assert dict(c.indexes.warmups) == {}


def test_pools_are_kept_slim_and_deleted() -> None:
    c = WatchCache()
    last = {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}
    pool = body("SendingPool", "ns", "p", meta={"managedFields": [{}], "annotations": last})
    c.update("SendingPool", None, pool)
    kept = next(iter(c.indexes.pools[("ns", "p")]))
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["annotations"] == {}
    assert ("ns", "p") in c.indexes.pools
    c.update("SendingPool", "DELETED", pool)
    assert ("ns", "p") not in c.indexes.pools
    assert c.indexes.pools.get(("ns", "p"), []) == []


def test_secrets_keep_names_and_only_the_tokens_they_are_for() -> None:
    c = WatchCache()
    plain = body("Secret", "ns", "dkim", data={"rsa.pem": base64.b64encode(b"KEY").decode()})
    admin = body(
        "Secret", "ns", "p-admin",
        meta={"labels": {naming.ADMIN_TOKEN_LABEL: "p"}},
        data={naming.ADMIN_TOKEN_KEY: base64.b64encode(b"tok\n").decode()},
    )  # fmt: skip
    egress = body(
        "Secret", "ns", "p-egress",
        meta={"labels": {naming.EGRESS_TOKEN_LABEL: "p"}},
        data={naming.EGRESS_TOKEN_KEY: base64.b64encode(b"ns/p:pw\n").decode()},
    )  # fmt: skip
    for s in (plain, admin, egress):
        c.update("Secret", None, s)
    assert sorted(c.indexes.secrets["ns"]) == ["dkim", "p-admin", "p-egress"]
    assert c.indexes.token(("ns", "p")) == "tok"
    assert c.indexes.egress_token(("ns", "p")) == hashlib.sha256(b"pw").hexdigest()
    # Nothing else of a Secret's data is kept.
    assert "KEY" not in repr(c._groups)
    c.update("Secret", "DELETED", admin)
    assert c.indexes.token(("ns", "p")) is None


def test_pods_and_statefulsets_only_when_the_operator_manages_them() -> None:
    c = WatchCache()
    managed = {"app.kubernetes.io/managed-by": naming.MANAGER, "app.kubernetes.io/instance": "p"}
    c.update("Pod", None, body("Pod", "ns", "p-0", meta={"labels": managed}))
    c.update("Pod", None, body("Pod", "ns", "other", meta={"labels": {"app": "x"}}))
    assert [r.name for r in c.indexes.pods[("ns", "p")]] == ["p-0"]
    sts = body("StatefulSet", "ns", "p", meta={"labels": managed}, status={"replicas": 2})
    c.update("StatefulSet", None, sts)
    live = c.indexes.statefulset(("ns", "p"))
    assert live is not None and live.replicas == 2


def test_every_node_with_its_addresses_and_readiness() -> None:
    c = WatchCache()
    ann = {naming.SENDING_ADDRESSES_ANNOTATION: "203.0.113.1"}
    c.update("Node", None, body("Node", "", "n1", meta={"annotations": ann}))
    c.update("Node", None, body("Node", "", "n2"))
    assert sorted(c.indexes.node_addresses()) == ["n1", "n2"]
    assert c.indexes.node_addresses()["n2"].addresses == frozenset()
    assert c.indexes.node_addresses()["n1"].ready is False  # no Ready condition seen yet
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    c.update("Node", "MODIFIED", body("Node", "", "n1", meta={"annotations": ann}, status=ready))
    assert c.indexes.node_addresses()["n1"].ready is True
    c.update("Node", "MODIFIED", body("Node", "", "n1"))  # the annotation removed
    assert c.indexes.node_addresses()["n1"].addresses == frozenset()
    c.update("Node", "DELETED", body("Node", "", "n1"))
    assert sorted(c.indexes.node_addresses()) == ["n2"]


@pytest.mark.parametrize(
    ("ns", "patterns", "want"),
    [
        ("a", ["a"], True),
        ("b", ["a"], False),
        ("mail-1", ["mail-*"], True),
        ("mail-pr-1", ["mail-*,!*-pr-*"], False),
        ("mail-pr-1", ["mail-*,!*-pr-*,*-pr-1"], True),
        ("x", ["!y"], True),
        ("y", ["!y"], False),
        ("otherapp-pr-123", ["myapp-*,!*-pr-*,*-pr-123"], False),
        ("b", ["a", "b"], True),
    ],
)
def test_served_namespaces_follow_kopfs_patterns(ns: str, patterns: list[str], want: bool) -> None:
    assert served(ns, patterns) is want


def test_a_secret_names_the_pools_that_mount_it() -> None:
    c = WatchCache()
    spec = {
        "dkim": [{"secretRef": "dkim-a"}, {"secretRef": "dkim-b"}],
        "submission": {"authSecretRef": "users", "tlsSecretRef": "tls"},
    }
    c.update("SendingPool", None, body("SendingPool", "ns", "p", spec=spec))
    c.update(
        "SendingPool",
        None,
        body("SendingPool", "ns", "q", spec={"dkim": [{"secretRef": "dkim-a"}]}),
    )
    refs = c.indexes.secret_refs
    assert refs is not None
    assert sorted(refs[("ns", "dkim-a")]) == ["p", "q"]
    assert list(refs[("ns", "users")]) == ["p"] and list(refs[("ns", "p-admin")]) == ["p"]
    assert ("other", "dkim-a") not in refs
    # The spec changes: the old references go.
    c.update("SendingPool", "MODIFIED", body("SendingPool", "ns", "p", spec={}))
    assert list(refs[("ns", "dkim-a")]) == ["q"] and ("ns", "users") not in refs
