"""Status of DeliveryPolicies and IPWarmups, and the events a pool status change posts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailfleet.operator.api.conditions import Cond, condition, merge_conditions, plural, timestamp
from mailfleet.operator.api.crd_models import (
    DeliveryPolicy,
    IPWarmup,
    SendingPool,
)
from mailfleet.operator.api.naming import pool_name, pool_namespace
from mailfleet.operator.api.reasons import ConditionReason, ConditionType, EventReason, EventType
from mailfleet.operator.decide import health, ipplan
from mailfleet.operator.decide import warmup as wu
from mailfleet.operator.decide.ipplan import clock_of, warmup_phase
from mailfleet.operator.decide.policy_merge import selector_matches


@dataclass(frozen=True)
class EventSpec:
    type: EventType
    reason: EventReason
    message: str


def pool_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventSpec]:
    """Events for condition changes an SRE needs to see: Secrets missing and found again,
    policy conflicts, becoming Ready."""
    events: list[EventSpec] = []
    before_ready = condition(old, "Ready")
    after_ready = condition(new, "Ready")
    before_secrets = condition(old, "SecretsFound")
    after_secrets = condition(new, "SecretsFound")
    assert after_ready is not None and after_secrets is not None
    if after_ready["reason"] == "DKIMSecretMissing" and (
        before_ready is None or before_ready.get("message") != after_ready["message"]
    ):
        events.append(EventSpec("Warning", EventReason.DKIMSecretMissing, after_ready["message"]))
    elif after_secrets["status"] == "False" and (
        before_secrets is None or before_secrets.get("message") != after_secrets["message"]
    ):
        events.append(EventSpec("Warning", EventReason.SecretMissing, after_secrets["message"]))
    if (
        after_secrets["status"] == "True"
        and before_secrets is not None
        and before_secrets.get("status") == "False"
    ):
        events.append(
            EventSpec("Normal", EventReason.SecretsFound, "every referenced Secret exists now")
        )
    before_pol = condition(old, "PoliciesResolved")
    after_pol = condition(new, "PoliciesResolved")
    if (
        after_pol is not None
        and after_pol["reason"] == "PolicyConflict"
        and (before_pol is None or before_pol.get("message") != after_pol["message"])
    ):
        events.append(EventSpec("Warning", EventReason.PolicyConflict, after_pol["message"]))
    before_reach = condition(old, "PodsReachable")
    after_reach = condition(new, "PodsReachable")
    if after_reach is not None and after_reach["status"] == "False":
        if before_reach is None or before_reach.get("status") != "False":
            events.append(EventSpec("Warning", EventReason.PodsStranded, after_reach["message"]))
    elif (
        after_reach is not None
        and before_reach is not None
        and before_reach.get("status") == "False"
    ):
        events.append(EventSpec("Normal", EventReason.PodsReturned, after_reach["message"]))
    before_egress = condition(old, "EgressPlaced")
    after_egress = condition(new, "EgressPlaced")
    if after_egress is not None and after_egress["status"] == "False":
        if before_egress is None or before_egress.get("message") != after_egress["message"]:
            reason = {
                "AddressOnTwoNodes": EventReason.AddressOnTwoNodes,
                "NodeNotReady": EventReason.NodeNotReady,
            }.get(after_egress["reason"], EventReason.AddressNotOnNode)
            events.append(EventSpec("Warning", reason, after_egress["message"]))
    elif (
        after_egress is not None
        and before_egress is not None
        and before_egress.get("status") == "False"
    ):
        events.append(EventSpec("Normal", EventReason.AddressesPlaced, after_egress["message"]))
    if after_ready["reason"] == "RenderFailed" and (
        before_ready is None or before_ready.get("message") != after_ready["message"]
    ):
        events.append(EventSpec("Warning", EventReason.RenderFailed, after_ready["message"]))
    return events


def quarantined_ip_count(status: Mapping[str, Any]) -> int:
    """status.quarantinedIPs (the QUARANTINED column) of a pool status with its parts merged:
    pool IPs out of rotation, whether the health check quarantined them (status.ips, state
    quarantined) or an engine did for at least one provider (status.engineQuarantines)."""
    out = {
        str(ip.get("address")) for ip in status.get("ips") or [] if ip.get("state") == "quarantined"
    }
    out |= {
        str(q.get("address")) for q in status.get("engineQuarantines") or [] if q.get("address")
    }
    return len(out)


EXTERNAL_SCALE = "external"


def scale_status(
    pool: SendingPool,
    note: tuple[str, datetime] | None,
    target: int,
    old: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """status.scaleReason and lastScaleTime for a pool whose target pod count is `target`.

    The built-in autoscaler's own note (reason, when) while it is on. Otherwise, when the target
    moved since the last status (replicas.desired set by kubectl scale, an HPA, KEDA or the
    manifest; replicas.min/max moving the clamp), a reason that starts with "external" and now;
    else nothing, so what the status says stands. A note from an autoscaler since switched off
    is not repeated."""
    spec = pool.spec
    if spec.autoscaling.enabled and note is not None:
        return {"scaleReason": note[0], "lastScaleTime": timestamp(note[1])}
    before = (old or {}).get("desiredReplicas")
    if before is None or before == target:
        return {}
    r = spec.replicas
    if spec.autoscaling.enabled:
        why = f"replicas [{r.min}, {r.max}] before the autoscaler's first look"
    elif r.desired is not None and r.desired == target:
        why = "replicas.desired (kubectl scale, an HPA, KEDA or the manifest)"
    else:
        why = f"replicas.desired {r.desired} clamped to replicas [{r.min}, {r.max}]"
    return {
        "scaleReason": f"{EXTERNAL_SCALE}: {why} moved the target from {before} to {target} pods",
        "lastScaleTime": timestamp(now),
    }


def policy_status(
    policy: DeliveryPolicy, pools: Sequence[SendingPool], now: datetime
) -> dict[str, Any]:
    """providerCount, the pools that select the policy (same namespace), and Ready."""
    ns = str(policy.metadata.get("namespace", "default"))
    labels = policy.metadata.get("labels") or {}
    using = sorted(
        pool_name(p)
        for p in pools
        if pool_namespace(p) == ns and selector_matches(p.spec.policy_selector, labels)
    )
    generation = policy.metadata.get("generation")
    old = policy.status.model_dump(mode="json", by_alias=True) if policy.status else {}
    ready = (
        Cond(
            ConditionType.Ready,
            "True",
            ConditionReason.InUse,
            f"selected by {plural(len(using), 'pool')}",
        )
        if using
        else Cond(
            ConditionType.Ready,
            "True",
            ConditionReason.Unused,
            "no SendingPool selects this policy",
        )
    )
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(old.get("conditions", []), [ready], generation, now),
        "pools": using,
        "poolCount": len(using),
        "providerCount": len(policy.spec.providers),
    }


def warmup_status(warmup: IPWarmup, pool: SendingPool | None, now: datetime) -> dict[str, Any]:
    """phase, day and today's cap; Ready says whether the warmup applies to its pool."""
    generation = warmup.metadata.get("generation")
    old = warmup.status.model_dump(mode="json", by_alias=True) if warmup.status else {}
    phase = warmup_phase(warmup, pool, now)
    # Ready's reason below is the phase: Warming, Holding, Complete or Paused (Pending, the one
    # phase that is no ConditionReason, is PoolNotFound or AddressesNotInPool instead).
    clock = clock_of(warmup, pool, now)
    day = clock.day
    ns = str(warmup.metadata.get("namespace", "default"))
    if pool is None:
        ready = Cond(
            ConditionType.Ready,
            "False",
            ConditionReason.PoolNotFound,
            f"SendingPool {warmup.spec.pool_ref} not found in {ns}",
        )
    else:
        pool_ips = {ip.address for ip in pool.spec.ips}
        outside = [str(a) for a in warmup.spec.addresses if a not in pool_ips]
        if len(outside) == len(warmup.spec.addresses):
            ready = Cond(
                ConditionType.Ready,
                "False",
                ConditionReason.AddressesNotInPool,
                f"none of the addresses is in SendingPool {warmup.spec.pool_ref}",
            )
        elif outside:
            ready = Cond(
                ConditionType.Ready,
                "True",
                ConditionReason(phase),
                f"not in SendingPool {warmup.spec.pool_ref}: {', '.join(outside)}",
            )
        else:
            ready = Cond(
                ConditionType.Ready,
                "True",
                ConditionReason(phase),
                f"day {day} of {wu.final_day(warmup.spec.schedule)}",
            )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(old.get("conditions", []), [ready], generation, now),
        "phase": phase,
        "day": day,
        "todayCap": wu.cap_for_day(warmup.spec.schedule, day),
    }
    if phase != "Pending":
        status["startTime"] = old.get("startTime") or timestamp(now)
    if clock.last_advance is not None:
        status["lastAdvanceTime"] = timestamp(clock.last_advance)
    if clock.outcome is not None:
        status["lastVerdict"] = f"{clock.outcome} after day {old.get('day') or 1}: {clock.reason}"
    return status


def warmup_events(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[EventSpec]:
    """What a warmup status change tells an SRE: a day moved on, was repeated or stepped back,
    or the warmup is complete."""
    old = old or {}
    if old.get("phase") in (None, "Pending") or new.get("phase") == old.get("phase") == "Complete":
        return []
    verdict = str(new.get("lastVerdict") or "")
    day, before = int(new.get("day") or 1), int(old.get("day") or 1)
    if new.get("phase") == "Complete":
        return [
            EventSpec(
                "Normal", EventReason.WarmupComplete, f"warmup complete after day {day}: {verdict}"
            )
        ]
    if new.get("lastAdvanceTime") == old.get("lastAdvanceTime"):
        return []
    cap = new.get("todayCap")
    if day > before:
        return [
            EventSpec("Normal", EventReason.WarmupAdvanced, f"day {day} (cap {cap}): {verdict}")
        ]
    if day < before:
        return [
            EventSpec(
                "Warning",
                EventReason.WarmupSteppedBack,
                f"back to day {day} (cap {cap}): {verdict}",
            )
        ]
    return [
        EventSpec("Warning", EventReason.WarmupHeld, f"day {day} repeated (cap {cap}): {verdict}")
    ]


def warmup_sent_today(warmup: IPWarmup, reports: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Messages the warmup's addresses sent today, per provider and in all ("*"), summed over
    what the pool's engines report (`warmup` rows of /v1/status: ip, provider, sent)."""
    addresses = {str(a) for a in warmup.spec.addresses}
    out: dict[str, int] = {}
    for row in reports:
        if str(row.get("ip")) not in addresses:
            continue
        provider = str(row.get("provider"))
        out[provider] = out.get(provider, 0) + int(row.get("sent") or 0)
    return dict(sorted(out.items()))


def warmup_today(warmup: IPWarmup, delta: Mapping[tuple[str, str], Any]) -> dict[str, Any] | None:
    """status.today with `delta` (health.Counts per (IP, provider) since the last check)
    added for the warmup's addresses; a new day starts from zero. None: nothing to add."""
    status = warmup.status
    if status is None or status.phase not in ("Warming", "Holding"):
        return None
    day_start = status.last_advance_time or status.start_time
    if day_start is None:
        return None
    added = health.for_addresses(delta, [str(a) for a in warmup.spec.addresses])
    if not added:
        return None
    before = ipplan.day_figures(warmup)
    total = health.accumulate(before, added)
    providers: dict[str, Any] = {p: c.as_dict() for p, c in total.items()}
    # A merge patch keeps keys it does not name: a new day removes the last day's providers.
    old = status.today.providers if status.today is not None else {}
    providers.update({p: None for p in old if p not in providers})
    return {"since": timestamp(day_start), "providers": providers}
