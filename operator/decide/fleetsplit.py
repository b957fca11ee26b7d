"""Pool-wide limits across pods, and IPs moving between pods: pure decisions.

- ``pod_shares``: each pod's share of the pool-wide limits (DeliveryPolicy providers[].pool),
  in proportion to the sending IPs it owns. The engines keep to it when the limits are not
  shared through Redis (none configured, or unreachable): rate shares sum to at most 1 and
  connection shares to exactly the limit, so the pods together never exceed it.
- ``held_ips``: an IP whose planned owner is not the only pod sending from it, or whose state
  has not yet been handed to its new owner, is held: nobody sends from it. Two pods never send
  from one address, and a moved IP starts on its new pod with its rate, suspensions and warmup
  count.
- ``moves``: what the pods' reports say has to move, for the operator to hand over.
- ``fleet_condition``: the pool's FleetLimits condition from the modes its engines report.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from mailfleet.mta.adminapi import EngineStatus
from mailfleet.mta.config import PodShareConfig
from mailfleet.operator.api.conditions import Cond
from mailfleet.operator.api.reasons import ConditionReason, ConditionType
from mailfleet.operator.decide.ipplan import IPPlan
from mailfleet.operator.decide.policy_merge import MergedPolicies

DEFAULT_PROVIDER = "default"  # the engine's name for domains no provider matches


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` in whole units: the floors, then one more to the
    largest remainders (earlier first on ties). Sums to `total` (0 when every weight is 0)."""
    whole = sum(weights)
    if whole <= 0 or total <= 0:
        return [0 for _ in weights]
    exact = [total * w / whole for w in weights]
    out = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def owned_counts(plans: Sequence[IPPlan]) -> dict[str, int]:
    """Pod name -> sending IPs it owns (active or warming), in pod order."""
    counts: dict[str, int] = {}
    for p in plans:
        if p.owner is not None and p.state in ("active", "warming"):
            counts[p.owner] = counts.get(p.owner, 0) + 1
    return dict(sorted(counts.items()))


def pod_shares(plans: Sequence[IPPlan], merged: MergedPolicies) -> list[PodShareConfig]:
    """Each sending pod's share of every pool-wide limit; pods without IPs get none."""
    counts = owned_counts(plans)
    if not counts:
        return []
    pods = list(counts)
    weights = [counts[p] for p in pods]
    whole = sum(weights)
    limits: dict[str, int] = {
        prov.name: prov.pool.max_connections
        for prov in merged.providers
        if prov.pool.max_connections is not None
    }
    if merged.default.pool.max_connections is not None:
        limits[DEFAULT_PROVIDER] = merged.default.pool.max_connections
    connections = {name: largest_remainder(n, weights) for name, n in limits.items()}
    return [
        PodShareConfig(
            pod=pod,
            # Rounded down: float shares that sum above 1 would let the pool exceed its limit.
            rate_share=math.floor(weights[i] / whole * 1e6) / 1e6,
            connections={name: split[i] for name, split in connections.items()},
        )
        for i, pod in enumerate(pods)
    ]


def has_pool_limits(merged: MergedPolicies) -> bool:
    settings = [*merged.providers, merged.default]
    return any(
        s.pool.max_connections is not None or s.pool.max_message_rate is not None for s in settings
    )


def senders(reports: Mapping[str, EngineStatus | None]) -> dict[str, frozenset[str]]:
    """IP -> the pods whose engine says it sends from it (/v1/status sourceIPs)."""
    out: dict[str, set[str]] = {}
    for pod, status in reports.items():
        for ip in status.source_ips if status is not None else []:
            out.setdefault(ip, set()).add(pod)
    return {ip: frozenset(pods) for ip, pods in out.items()}


def held_ips(
    owners: Mapping[str, str | None],
    sending: Mapping[str, Collection[str]],
    pending: Collection[str],
) -> frozenset[str]:
    """IPs nobody may send from now: another pod than the owner still sends from them, or their
    state waits to be handed to the owner (`pending`)."""
    held = {ip for ip in pending if ip in owners}
    held |= {ip for ip, pods in sending.items() if ip in owners and set(pods) - {owners[ip]}}
    return frozenset(held)


def moves(
    owners: Mapping[str, str | None],
    sending: Mapping[str, Collection[str]],
    pending: Mapping[str, str],
    before: Mapping[str, Collection[str]] | None = None,
) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
    """(pending after this look, moves ready to hand over as (ip, from pod, to pod)).

    `pending` maps an IP to the pod it moves away from. An IP becomes pending when a pod that
    is not its owner sends from it now or did at the last look (`before`: a pod that went away
    between two looks was never seen as a non-owner); it is ready once no pod but its owner
    sends from it."""
    now = dict(pending)
    for seen in (before or {}, sending):
        for ip, pods in seen.items():
            for pod in sorted(pods):
                if ip in owners and pod != owners[ip]:
                    now[ip] = pod
    ready = [
        (ip, frm, owners.get(ip))
        for ip, frm in sorted(now.items())
        if not set(sending.get(ip, ())) - {owners.get(ip)}
    ]
    return now, ready


def fleet_condition(redis: bool, modes: Mapping[str, tuple[str, str | None]], pods: int) -> Cond:
    """FleetLimits: True/Shared when every reporting pod shares the limits through Redis,
    True/Split without Redis, False/RedisUnreachable when some pod keeps to its split share
    because Redis does not answer."""
    if not redis:
        return Cond(
            ConditionType.FleetLimits,
            "True",
            ConditionReason.Split,
            f"pool-wide limits are split between the {pods} sending pods "
            "(no spec.fleetLimits.redisURL)",
        )
    split = sorted(p for p, (mode, _) in modes.items() if mode != "shared")
    if not modes:
        return Cond(
            ConditionType.FleetLimits,
            "Unknown",
            ConditionReason.NoReport,
            "no pod has reported its mode yet",
        )
    if split:
        errors = sorted({e for p, (_, e) in modes.items() if p in split and e})
        why = f": {errors[0]}" if errors else ""
        return Cond(
            ConditionType.FleetLimits,
            "False",
            ConditionReason.RedisUnreachable,
            f"{', '.join(split)} keep to their split share of the pool-wide limits{why}",
        )
    return Cond(
        ConditionType.FleetLimits,
        "True",
        ConditionReason.Shared,
        f"pool-wide limits and warmup counts shared through Redis by {len(modes)} pods",
    )
