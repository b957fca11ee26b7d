"""What a SendingPool should look like in the cluster: pure functions, no I/O.

From a pool, the DeliveryPolicies of its namespace, the IPWarmups that name it and which Secrets
exist, `render_pool` computes the children, each stamped with a hash of itself, and the pool's
status. The handlers only compare and write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from mailfleet.mta.config import (
    EngineConfig,
    config_digest,
)
from mailfleet.operator.api.conditions import Cond, merge_conditions, plural, timestamp
from mailfleet.operator.api.crd_models import (
    DeliveryPolicy,
    DKIMKeyRef,
    IPWarmup,
    SendingPool,
    SendingPoolSpec,
)
from mailfleet.operator.api.naming import dkim_secrets, pool_name, pool_namespace, selector_string
from mailfleet.operator.api.reasons import ConditionReason, ConditionType
from mailfleet.operator.decide.children import (
    render_configmap,
    render_headless_service,
    render_network_policy,
    render_pdb,
    render_service_account,
    render_statefulset,
    render_submission_service,
)
from mailfleet.operator.decide.domainplan import with_domain_keys
from mailfleet.operator.decide.egressplan import (
    EGRESS_PORT,
    NodeAddresses,
    Placement,
    place,
    placement_condition,
    pool_proxies,
)
from mailfleet.operator.decide.engine_config import config_yaml, render_engine_config
from mailfleet.operator.decide.fleetsplit import (
    fleet_condition,
    has_pool_limits,
    held_ips,
    pod_shares,
)
from mailfleet.operator.decide.ipplan import (
    IPPlan,
    active_warmups,
    desired_replicas,
    next_warmup_advance,
    plan_ips,
    warmup_caps,
    warmup_day_length,
)
from mailfleet.operator.decide.policy_merge import merge_policies, select_policies
from mailfleet.operator.decide.quarantine import NO_HEALTHY, Verdicts, prior_verdicts


@dataclass(frozen=True)
class PoolInputs:
    pool: SendingPool
    policies: Sequence[DeliveryPolicy]  # the namespace's; render selects
    warmups: Sequence[IPWarmup]  # those whose poolRef names the pool
    secrets: frozenset[str]  # names of the Secrets that exist in the namespace
    statefulset_status: Mapping[str, Any] | None  # the live StatefulSet's status
    image: str
    now: datetime
    # The built-in autoscaler's count (None: it is off or has not decided).
    autoscaled: int | None = None
    # The StatefulSet's own spec.replicas as it runs now (None: no StatefulSet yet).
    live_replicas: int | None = None
    # Pods from this ordinal up have handed off their queue and may go (None: none have).
    drained_to: int | None = None
    # The active DKIM keys of the SendingDomains that list the pool (domainplan.domain_dkim_keys).
    domain_keys: Sequence[DKIMKeyRef] = ()
    # The health check's last verdicts (None: no check has run since the operator started).
    verdicts: Verdicts | None = None
    # IPs that must not send a domain's mail (domainplan.sender_restrictions).
    sender_restrictions: Sequence[Mapping[str, Any]] = ()
    # DMARC report addresses the pool takes mail for (domainplan.dmarc_report_addresses).
    dmarc_addresses: Sequence[Mapping[str, Any]] = ()
    # IP -> pods whose engine last said it sends from it, and IPs whose state waits to be handed
    # to their new owner (fleetsplit): those are held.
    senders: Mapping[str, frozenset[str]] = field(default_factory=dict)
    pending_moves: frozenset[str] = frozenset()
    # Pod -> (fleet-limits mode, Redis error) as its engine last reported.
    fleet_modes: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    # egress: managed: node -> the sending addresses it holds, and the proxies' port.
    egress_nodes: Mapping[str, NodeAddresses] = field(default_factory=dict)
    egress_port: int = EGRESS_PORT
    # Pods on a node that is not Ready, as the last poll found them (pods.stranded).
    stranded: Sequence[Mapping[str, Any]] | None = None
    # Pod -> the node it runs on (egress hostNetwork: each address is sent by its node's pod).
    pod_nodes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedPool:
    children: list[dict[str, Any]]
    config: EngineConfig | None
    config_text: str
    status: dict[str, Any]
    policies: list[str]
    missing_secrets: list[str]
    conflicts: list[str]
    config_hash: str | None = None  # of config_text, as the engines report theirs
    next_warmup_advance: datetime | None = None  # re-render then: a warmup moves a day


def missing_secrets(spec: SendingPoolSpec, secrets: frozenset[str]) -> dict[str, list[str]]:
    """The referenced Secrets that do not exist, by role (dkim, auth, tls)."""
    out: dict[str, list[str]] = {}
    dkim = [s for s in dkim_secrets(spec) if s not in secrets]
    if dkim:
        out["dkim"] = dkim
    for role, ref in (
        ("auth", spec.submission.auth_secret_ref),
        ("tls", spec.submission.tls_secret_ref),
    ):
        if ref and ref not in secrets:
            out[role] = [ref]
    return out


def target_replicas(pool: SendingPool, autoscaled: int | None) -> int:
    """The pod count the pool moves to: the autoscaler's when it is on and has decided, else
    replicas.desired; within [min, max] either way."""
    spec = pool.spec
    if spec.autoscaling.enabled and autoscaled is not None:
        return max(spec.replicas.min, min(spec.replicas.max, autoscaled))
    return desired_replicas(spec.replicas)


def run_replicas(target: int, live: int | None, drained_to: int | None) -> int:
    """The StatefulSet's replicas: up at once; down only once the pods that leave (the highest
    ordinals) have handed off their queue, i.e. drained_to <= target."""
    if live is None or target >= live:
        return target
    if drained_to is not None and drained_to <= target:
        return target
    return live


def ips_healthy(verdicts: Verdicts | None) -> Cond:
    """The IPsHealthy condition: Unknown until the first health check."""
    if verdicts is None or (verdicts.checked_at is None and not verdicts.ips):
        return Cond(
            ConditionType.IPsHealthy, "Unknown", ConditionReason.NotChecked, "no health check yet"
        )
    if verdicts.no_healthy_ip is not None:
        return Cond(ConditionType.IPsHealthy, "False", NO_HEALTHY, verdicts.no_healthy_ip)
    out = {a: v for a, v in verdicts.ips.items() if v.state == "quarantined"}
    if out:
        promoted = [a for a, v in verdicts.ips.items() if v.state == "promoted"]
        message = "; ".join(f"{a}: {v.reason}" for a, v in sorted(out.items()))
        if promoted:
            message += f"; promoted {', '.join(promoted)}"
        return Cond(ConditionType.IPsHealthy, "False", ConditionReason.Quarantined, message[:32768])
    return Cond(
        ConditionType.IPsHealthy,
        "True",
        ConditionReason.Healthy,
        "every IP under the thresholds, listed nowhere",
    )


def host_owners(
    plans: Sequence[IPPlan], placement: Placement, pod_nodes: Mapping[str, str]
) -> list[IPPlan]:
    """egress hostNetwork: each address is sent by the pool's pod on the node that holds it
    (one per node), not round robin over the ordinals."""
    pod_on = {node: pod for pod, node in sorted(pod_nodes.items())}
    out = []
    for p in plans:
        node = placement.node_of.get(p.address)
        owner = pod_on.get(node) if node is not None and p.state != "standby" else None
        out.append(dataclasses.replace(p, owner=owner))
    return out


def reachable_condition(stranded: Sequence[Mapping[str, Any]]) -> Cond:
    """PodsReachable: False names each pod on a node that is not Ready and what it holds."""
    if not stranded:
        return Cond(
            ConditionType.PodsReachable,
            "True",
            ConditionReason.NodesReady,
            "every pod's node is Ready",
        )
    parts = []
    for s in stranded:
        held = f"{s['queued']} messages queued there" if "queued" in s else "its queue unknown"
        parts.append(f"{s['pod']} on node {s['node']} ({held})")
    total = sum(int(s.get("queued") or 0) for s in stranded)
    return Cond(
        ConditionType.PodsReachable,
        "False",
        ConditionReason.NodeNotReady,
        f"{'; '.join(parts)}: the node is not Ready; {total} messages wait for it "
        "(kept on its storage, delivered when it returns)"[:32768],
    )


def render_pool(inp: PoolInputs) -> RenderedPool:
    pool = with_domain_keys(inp.pool, inp.domain_keys)
    name = pool_name(pool)
    generation = pool.metadata.get("generation")
    old_status = pool.status.model_dump(mode="json", by_alias=True) if pool.status else {}
    target = target_replicas(pool, inp.autoscaled)
    # The pods that exist until a scale-down is drained: owners, readiness and the StatefulSet.
    replicas = run_replicas(target, inp.live_replicas, inp.drained_to)
    host = pool.spec.egress.mode == "hostNetwork"
    placement: Placement | None = None
    if pool.spec.egress.mode in ("managed", "hostNetwork"):
        placement = place((str(ip.address) for ip in pool.spec.ips), inp.egress_nodes)
    host_nodes = sorted(set(placement.node_of.values())) if host and placement else None
    if host_nodes is not None:
        # One pod per node that holds an address: more could never be scheduled.
        replicas = min(replicas, len(host_nodes))
    selected = select_policies(pool, inp.policies)
    merged = merge_policies(selected)
    # Before this operator's first check, the verdicts its status records stand.
    verdicts = inp.verdicts or Verdicts(prior_verdicts(pool))
    plans = plan_ips(pool, inp.warmups, replicas, inp.now, verdicts.ips)
    promoted = [a for a, v in verdicts.ips.items() if v.state == "promoted"]
    caps = warmup_caps(pool, inp.warmups, inp.now, promoted)
    owners = {p.address: p.owner for p in plans if p.state != "standby"}
    held = held_ips(owners, inp.senders, inp.pending_moves)
    proxies: dict[str, str] = {}
    if placement is not None and not host:
        proxies = pool_proxies(placement, inp.egress_port)
    if placement is not None and host:
        plans = host_owners(plans, placement, inp.pod_nodes)
        owners = {p.address: p.owner for p in plans if p.state != "standby"}
        # An address whose node runs no pod of the pool yet is sent by nobody (any other pod
        # would bind an address its node does not hold).
        held = held | {p.address for p in plans if p.owner is None}
    shares = pod_shares(plans, merged)
    actives = active_warmups(pool, inp.warmups, inp.now)
    overflow: Literal["spill", "defer"] = (
        "defer" if any(w.spec.overflow == "defer" for w in actives) else "spill"
    )
    conds: list[Cond] = []
    config: EngineConfig | None
    try:
        config = render_engine_config(
            pool,
            merged,
            plans,
            caps,
            overflow,
            warmup_day_length(pool, inp.warmups, inp.now),
            inp.sender_restrictions,
            inp.dmarc_addresses,
            shares=shares,
            held=held | (placement.unplaced if placement is not None else frozenset()),
            proxies=proxies,
        )
        config_text = config_yaml(config)
        conds.append(
            Cond(
                ConditionType.ConfigRendered,
                "True",
                ConditionReason.Rendered,
                f"engine.yaml for generation {generation}: "
                f"{plural(len(merged.providers), 'provider')}, "
                f"{plural(len(caps), 'warmup cap')}, {plural(len(plans), 'source IP')}",
            )
        )
    except ValidationError as e:
        config, config_text = None, ""
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        conds.append(
            Cond(
                ConditionType.ConfigRendered,
                "False",
                ConditionReason.RenderFailed,
                f"{where}: {first['msg']}",
            )
        )

    if not selected:
        conds.append(
            Cond(
                ConditionType.PoliciesResolved,
                "False",
                ConditionReason.NoPolicySelected,
                "no DeliveryPolicy in the namespace matches spec.policySelector; "
                "the engine's default shaping applies",
            )
        )
    elif merged.conflicts:
        conds.append(
            Cond(
                ConditionType.PoliciesResolved,
                "True",
                ConditionReason.PolicyConflict,
                f"merged {', '.join(merged.sources)} by name: " + "; ".join(merged.conflicts),
            )
        )
    else:
        conds.append(
            Cond(
                ConditionType.PoliciesResolved,
                "True",
                ConditionReason.Resolved,
                f"{', '.join(merged.sources)}: {plural(len(merged.providers), 'provider')}",
            )
        )

    if placement is not None:
        cond = placement_condition(placement, host)
        if host_nodes is not None and target > len(host_nodes):
            cond = dataclasses.replace(
                cond,
                message=f"{cond.message}; {len(host_nodes)} of the {target} pods asked for "
                "run (one per node that holds an address)",
            )
        conds.append(cond)
    if inp.stranded is not None:
        conds.append(reachable_condition(inp.stranded))
    else:
        # No poll since the operator started: what the last one found stands (a restart
        # writes nothing).
        last = next(
            (c for c in old_status.get("conditions", []) if c.get("type") == "PodsReachable"),
            None,
        )
        if last is not None:
            conds.append(
                Cond(ConditionType.PodsReachable, last["status"], last["reason"], last["message"])
            )

    if has_pool_limits(merged) or pool.spec.fleet_limits.redis_url:
        conds.append(
            fleet_condition(bool(pool.spec.fleet_limits.redis_url), inp.fleet_modes, len(shares))
        )

    missing = missing_secrets(pool.spec, inp.secrets)
    sts = inp.statefulset_status or {}
    ready_pods = int(sts.get("readyReplicas") or 0)
    pods = int(sts.get("replicas") or 0)
    if missing:
        parts = [f"{role} Secret {', '.join(names)}" for role, names in missing.items()]
        conds.append(
            Cond(
                ConditionType.SecretsFound,
                "False",
                ConditionReason.SecretMissing,
                "not found: " + "; ".join(parts),
            )
        )
    else:
        conds.append(
            Cond(
                ConditionType.SecretsFound,
                "True",
                ConditionReason.Found,
                "every referenced Secret exists",
            )
        )

    if "dkim" in missing:
        ready = Cond(
            ConditionType.Ready,
            "False",
            ConditionReason.DKIMSecretMissing,
            f"DKIM Secret {', '.join(missing['dkim'])} not found in namespace "
            f"{pool_namespace(pool)}",
        )
    elif missing:
        role, names = next(iter(missing.items()))
        ready = Cond(
            ConditionType.Ready,
            "False",
            ConditionReason.SecretMissing,
            f"{role} Secret {', '.join(names)} not found in namespace {pool_namespace(pool)}",
        )
    elif config is None:
        ready = Cond(ConditionType.Ready, "False", ConditionReason.RenderFailed, conds[0].message)
    elif replicas == 0:
        ready = Cond(
            ConditionType.Ready,
            "True",
            ConditionReason.ScaledToZero,
            "spec.replicas asks for no pods",
        )
    elif ready_pods < replicas:
        ready = Cond(
            ConditionType.Ready,
            "False",
            ConditionReason.PodsNotReady,
            f"{ready_pods}/{replicas} pods ready ({pods} exist)",
        )
    else:
        ready = Cond(
            ConditionType.Ready,
            "True",
            ConditionReason.PodsReady,
            f"{ready_pods}/{replicas} pods ready",
        )
    conds.insert(0, ready)

    before = next(
        (c for c in old_status.get("conditions", []) if c.get("type") == "IPsHealthy"), None
    )
    if inp.verdicts is None and before is not None:
        # No check since the operator started: what the last one said stands.
        conds.append(
            Cond(ConditionType.IPsHealthy, before["status"], before["reason"], before["message"])
        )
    else:
        conds.append(ips_healthy(verdicts))
    old_ips = {ip["address"]: ip for ip in old_status.get("ips", [])}
    ips = []
    for p in plans:
        item: dict[str, Any] = {"address": p.address, "state": p.state}
        if p.reason:
            item["reason"] = p.reason
        before = old_ips.get(p.address)
        verdict = verdicts.ips.get(p.address)
        item["since"] = (
            timestamp(verdict.since)
            if verdict is not None and p.state == "quarantined"
            else before["since"]
            if before and before.get("state") == p.state and before.get("since")
            else timestamp(inp.now)
        )
        if p.owner:
            item["pod"] = p.owner
        if p.address in held:
            item["reason"] = "moving between pods: held until its state is handed over"
        if placement is not None:
            if p.address in placement.node_of:
                item["node"] = placement.node_of[p.address]
            elif p.address in placement.unplaced:
                item["reason"] = (
                    "claimed by two nodes: not sending"
                    if p.address in (placement.contested or {})
                    else f"its node {(placement.down or {})[p.address]} is not Ready: not sending"
                    if p.address in (placement.down or {})
                    else "on no node: not sending"
                )
                if p.address in (placement.down or {}):
                    item["node"] = (placement.down or {})[p.address]
        ips.append(item)

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            old_status.get("conditions", []), conds, generation, inp.now
        ),
        "replicas": pods,
        "readyReplicas": ready_pods,
        "desiredReplicas": target,
        "selector": selector_string(name),
        "activeIPs": sum(1 for p in plans if p.state in ("active", "warming")),
        "ips": ips,
    }
    config_hash = config_digest(config_text) if config is not None else None
    if config_hash is not None:
        status["configHash"] = config_hash
    children: list[dict[str, Any]] = [render_service_account(pool)]
    if config is not None:
        children.append(render_configmap(pool, config_text))
    children += [
        render_headless_service(pool),
        render_submission_service(pool),
        render_pdb(pool),
        render_network_policy(pool),
        render_statefulset(pool, replicas, inp.image, host_nodes),
    ]
    return RenderedPool(
        children=children,
        config=config,
        config_text=config_text,
        status=status,
        policies=merged.sources,
        missing_secrets=[s for names in missing.values() for s in names],
        conflicts=merged.conflicts,
        config_hash=config_hash,
        next_warmup_advance=next_warmup_advance(pool, inp.warmups, inp.now),
    )
