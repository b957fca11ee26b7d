"""What the watches hold, as the reconciler reads it: the indexes (Kopf indexes in the operator,
plain dicts in tests), the slim bodies kept in them, and what a StatefulSet's watch event says."""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailfleet.operator.api.crd_models import GROUP
from mailfleet.operator.api.outcomes import PoolKey
from mailfleet.operator.decide import drift, pods
from mailfleet.operator.decide.egressplan import NodeAddresses


@dataclass(frozen=True)
class LiveStatefulSet:
    child: drift.LiveChild
    replicas: int
    ready: int
    spec_replicas: int | None = None  # what it was last asked to run

    def status(self) -> dict[str, int]:
        return {"replicas": self.replicas, "readyReplicas": self.ready}


def live_statefulset(
    meta: Mapping[str, Any], status: Mapping[str, Any], spec: Mapping[str, Any] | None = None
) -> LiveStatefulSet:
    wanted = (spec or {}).get("replicas")
    return LiveStatefulSet(
        child=drift.live_child("StatefulSet", meta),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        spec_replicas=int(wanted) if wanted is not None else None,
    )


def statefulset_is_news(
    event_type: str | None,
    live: LiveStatefulSet,
    seen: tuple[int, int] | None,
    known: drift.Known | None,
) -> bool:
    """Whether a StatefulSet watch event can change anything: it is gone, its status is not
    the one the pool's status was rendered from, or it is not the version the operator applied
    or checked (someone else wrote it)."""
    if event_type == "DELETED" or known is None:
        return True
    if seen != (live.replicas, live.ready):
        return True
    return bool(drift.child_action(known[0], live.child, known) != "skip")


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body to keep in an index: without managedFields and kubectl's last-applied copy, which
    are most of a status-patched object and nothing the operator reads."""
    out = {k: copy.deepcopy(v) for k, v in body.items() if k != "metadata"}
    meta = {k: copy.deepcopy(v) for k, v in body.get("metadata", {}).items()}
    meta.pop("managedFields", None)
    annotations = dict(meta.get("annotations") or {})
    if annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None) is not None:
        meta["annotations"] = annotations
    out["metadata"] = meta
    return out


def owner_pool(owners: Iterable[Mapping[str, Any]]) -> str | None:
    for ref in owners:
        if ref.get("kind") == "SendingPool" and str(ref.get("apiVersion", "")).startswith(GROUP):
            return str(ref["name"])
    return None


def bodies(index: Mapping[Any, Collection[Any]], key: Any) -> list[Any]:
    return list(index.get(key, []))


@dataclass(frozen=True)
class Indexes:
    """What the watches hold (Kopf indexes in the operator, plain dicts in tests)."""

    pools: Mapping[PoolKey, Collection[dict[str, Any]]]
    policies: Mapping[str, Collection[dict[str, Any]]]
    warmups: Mapping[PoolKey, Collection[dict[str, Any]]]
    secrets: Mapping[str, Collection[str]]
    statefulsets: Mapping[PoolKey, Collection[LiveStatefulSet]]
    admin_tokens: Mapping[PoolKey, Collection[str]]
    pods: Mapping[PoolKey, Collection[pods.PodRef]]
    # SendingDomains by namespace: their active DKIM keys are added to the pools they list.
    domains: Mapping[str, Collection[dict[str, Any]]] = field(default_factory=dict)
    # Node name -> its sending addresses and readiness (one NodeAddresses each), and the
    # SHA-256 of each pool's proxy password (never the password).
    nodes: Mapping[str, Collection[NodeAddresses]] = field(default_factory=dict)
    egress_tokens: Mapping[PoolKey, Collection[str]] = field(default_factory=dict)
    # (namespace, Secret name) -> the pools whose spec or admin token names it. None: not
    # kept (tests' plain dicts): every pool of the namespace is looked at.
    secret_refs: Mapping[tuple[str, str], Collection[str]] | None = None

    def node_addresses(self) -> dict[str, NodeAddresses]:
        return {n: found[0] for n, v in self.nodes.items() if (found := list(v))}

    def egress_token(self, key: PoolKey) -> str | None:
        found = list(self.egress_tokens.get(key, []))
        return found[0] if found else None

    def statefulset(self, key: PoolKey) -> LiveStatefulSet | None:
        found = list(self.statefulsets.get(key, []))
        return found[0] if found else None

    def token(self, key: PoolKey) -> str | None:
        found = list(self.admin_tokens.get(key, []))
        return found[0] if found else None
