"""The reconcile of a pool's children: what the render is given, which children are applied
(and which only read, or left alone), the events that tells, and the status merged from the
render, the autoscaler, the health check and the pods' report.

Returns what it did (`ChildrenSync`) and leaves the posting and the status write to the
Operator."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mailfleet.operator.api import naming
from mailfleet.operator.api.crd_models import DeliveryPolicy, IPWarmup, SendingDomain, SendingPool
from mailfleet.operator.api.outcomes import Event
from mailfleet.operator.api.reasons import EventReason
from mailfleet.operator.clients import kube
from mailfleet.operator.decide import domainplan, drift, pods, render, statuses
from mailfleet.operator.decide.egressplan import EGRESS_PORT, NodeAddresses
from mailfleet.operator.decide.watched import LiveStatefulSet
from mailfleet.operator.loops.poolmemory import PoolMemory


class ChildApi(Protocol):
    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def create(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Sources:
    """What a pool's render reads besides the pool and the operator's memory of it."""

    policies: list[DeliveryPolicy]
    warmups: list[IPWarmup]
    domains: list[SendingDomain]
    secrets: frozenset[str]
    statefulset: LiveStatefulSet | None
    image: str
    now: datetime
    dmarc_url: str | None
    # egress: managed: node -> its sending addresses, and the proxies' port.
    egress_nodes: Mapping[str, NodeAddresses] = field(default_factory=dict)
    egress_port: int = EGRESS_PORT
    # Pod -> its node (egress hostNetwork sends each address from its node's pod).
    pod_nodes: Mapping[str, str] = field(default_factory=dict)


def render_inputs(pool: SendingPool, mem: PoolMemory, src: Sources) -> render.PoolInputs:
    name = naming.pool_name(pool)
    sts = src.statefulset
    verdicts = mem.health.verdicts if mem.health is not None else None
    return render.PoolInputs(
        pool=pool,
        policies=src.policies,
        warmups=src.warmups,
        secrets=src.secrets,
        statefulset_status=sts.status() if sts is not None else None,
        image=src.image,
        now=src.now,
        autoscaled=mem.autoscaled,
        live_replicas=sts.spec_replicas if sts is not None else None,
        drained_to=mem.drained_to,
        domain_keys=domainplan.domain_dkim_keys(name, src.domains),
        verdicts=verdicts,
        sender_restrictions=domainplan.sender_restrictions(name, src.domains),
        dmarc_addresses=domainplan.dmarc_report_addresses(name, src.domains, src.dmarc_url),
        senders=mem.moves.senders,
        pending_moves=frozenset(mem.moves.pending),
        fleet_modes=mem.moves.modes,
        egress_nodes=src.egress_nodes,
        stranded=(mem.pod_status or {}).get("strandedPods"),
        pod_nodes=src.pod_nodes,
        egress_port=src.egress_port,
    )


def remember_render(
    mem: PoolMemory, rendered: render.RenderedPool, sts: LiveStatefulSet | None
) -> bool:
    """What the operator keeps of a render; True when the policies the pool selects changed
    (their status counts pools)."""
    mem.moves.rendered(rendered.status.get("ips", []))
    mem.sts_seen = (sts.replicas, sts.ready) if sts is not None else (0, 0)
    if rendered.config_hash is not None:
        mem.config = (rendered.config_hash, rendered.config_text)
    before, mem.selected = mem.selected, frozenset(rendered.policies)
    return before != mem.selected


@dataclass
class ChildrenSync:
    done: list[tuple[str, bool]] = field(default_factory=list)  # (what, whether it existed)
    events: list[Event] = field(default_factory=list)
    # The first failure: what was applied before it is still told (events), then it is raised.
    error: BaseException | None = None

    @property
    def changed(self) -> bool:
        return bool(self.done)

    def summary(self) -> list[Event]:
        """One event per verb and reconcile, not one per child: each is a write."""
        created = [what for what, existed in self.done if not existed]
        updated = [what for what, existed in self.done if existed]
        out = list(self.events)
        if self.error is not None:
            return out
        if created:
            out.append(Event("Normal", EventReason.Created, "Created " + ", ".join(created)))
        if updated:
            out.append(Event("Normal", EventReason.Updated, "Updated " + ", ".join(updated)))
        return out


async def _create_secret(
    api: ChildApi, pool: SendingPool, secret: str, label: str, data: dict[str, str]
) -> bool:
    """A Secret of the pool, owned by it, labelled with `label`: created once, never rewritten
    (its pods read it at start). Returns whether it was created."""
    name = naming.pool_name(pool)
    obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret,
            "namespace": naming.pool_namespace(pool),
            "labels": {**naming.child_labels(name), label: name},
            "ownerReferences": [naming.owner_reference(pool)],
        },
        "type": "Opaque",
        "stringData": data,
    }
    return await api.create(kube.SECRETS, obj) is not None


async def ensure_admin_secret(api: ChildApi, pool: SendingPool, existing: frozenset[str]) -> bool:
    """The pool's admin token Secret, with a random token. Returns whether it was created."""
    secret = naming.admin_secret_name(naming.pool_name(pool))
    if secret in existing:
        return False
    token = {naming.ADMIN_TOKEN_KEY: secrets.token_hex(32)}
    return await _create_secret(api, pool, secret, naming.ADMIN_TOKEN_LABEL, token)


async def ensure_egress_secret(
    api: ChildApi, pool: SendingPool, existing: frozenset[str]
) -> str | None:
    """egress: managed: the pool's proxy credentials (`namespace/pool:random`). Returns the
    Secret's name when it was created."""
    namespace, name = naming.pool_namespace(pool), naming.pool_name(pool)
    secret = naming.egress_secret_name(name)
    if pool.spec.egress.mode != "managed" or secret in existing:
        return None
    line = {naming.EGRESS_TOKEN_KEY: f"{namespace}/{name}:{secrets.token_urlsafe(32)}\n"}
    created = await _create_secret(api, pool, secret, naming.EGRESS_TOKEN_LABEL, line)
    return secret if created else None


@dataclass(frozen=True)
class _Plan:
    rendered: render.RenderedPool
    sts: LiveStatefulSet | None
    new_pool: bool  # never reconciled: children are applied without reading them first
    generation: Any
    resync_seconds: float


def _action(mem: PoolMemory, plan: _Plan, kind: str, name: str, want: str) -> str:
    known = mem.known_child(kind, name, plan.resync_seconds)
    if kind == "StatefulSet":
        return drift.child_action(want, plan.sts.child if plan.sts is not None else None, known)
    if known is not None and known[0] == want:
        return "skip"
    return "apply" if plan.new_pool else "check"


async def _sync_child(
    api: ChildApi, mem: PoolMemory, plan: _Plan, child: dict[str, Any], out: ChildrenSync
) -> None:
    """Apply one child if it needs it."""
    kind, namespace = child["kind"], mem.key[0]
    res = kube.BY_KIND[kind]
    child_name = child["metadata"]["name"]
    want = child["metadata"]["annotations"][naming.HASH_ANNOTATION]
    action = _action(mem, plan, kind, child_name, want)
    if action == "skip":
        return
    live: dict[str, Any] | None = None
    sts_exists = kind == "StatefulSet" and plan.sts is not None
    if action == "check" or (action == "apply" and sts_exists):
        live = await api.get(res, namespace, child_name)
        if action == "check" and live is not None and not drift.needs_apply(child, live):
            mem.remember_child(kind, want, live)
            return
    existed = live is not None or sts_exists
    to_apply, ignored = drift.keep_immutable(child, live)
    mem.remember_child(kind, want, await api.apply(res, to_apply))
    rendered = plan.rendered
    if kind == "ConfigMap":
        out.events.append(
            Event(
                "Normal",
                EventReason.ConfigRendered,
                f"{'Updated' if existed else 'Created'} ConfigMap {child_name}: engine.yaml "
                f"{rendered.config_hash} rendered for generation {plan.generation} "
                f"(policies: {', '.join(rendered.policies) or 'none'})",
            )
        )
    if ignored:
        out.events.append(
            Event(
                "Warning",
                EventReason.ImmutableFieldChanged,
                f"StatefulSet {child_name}: {', '.join(ignored)} cannot change in place; "
                "delete the StatefulSet with --cascade=orphan to apply it",
            )
        )
    out.done.append((f"{kind} {child_name}", existed))


async def sync_children(
    api: ChildApi,
    mem: PoolMemory,
    rendered: render.RenderedPool,
    sts: LiveStatefulSet | None,
    *,
    new_pool: bool,
    generation: Any,
    resync_seconds: float,
) -> ChildrenSync:
    """Applies the children that drifted or are not known; stops at the first failing group."""
    plan = _Plan(rendered, sts, new_pool, generation, resync_seconds)
    out = ChildrenSync()
    # What the pods use (ServiceAccount, ConfigMap, Services, PDB) at once, then the
    # StatefulSet that makes them: one round trip of latency instead of five.
    first = [c for c in rendered.children if c["kind"] != "StatefulSet"]
    last = [c for c in rendered.children if c["kind"] == "StatefulSet"]
    for group in (first, last):
        results = await asyncio.gather(
            *(_sync_child(api, mem, plan, c, out) for c in group), return_exceptions=True
        )
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            out.error = errors[0]
            break
    return out


def merged_status(
    mem: PoolMemory,
    rendered: render.RenderedPool,
    health_fields: Mapping[str, Any] | None,
    *,
    pool: SendingPool,
    old_status: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The pool's status: the render's, with the last scale decision (the autoscaler's, or
    someone else's when the target moved without it), the health check's figures and the pods'
    own report (recounted against the config rendered now)."""
    status = rendered.status
    status = {
        **status,
        **statuses.scale_status(pool, mem.scale_note, status["desiredReplicas"], old_status, now),
    }
    if health_fields is not None:
        status = {**status, **health_fields}
    if rendered.config_hash is not None and mem.pod_status is not None:
        status = {**status, **mem.pod_status}
        status["updatedPods"] = pods.updated_pods(mem.pod_status["pods"], rendered.config_hash)
    # The QUARANTINED column: the health check's quarantines as well as the engines'.
    status["quarantinedIPs"] = statuses.quarantined_ip_count(status)
    return status
