"""The pod poll: ask each running pod of a pool how it is, push the current config where it is
behind, let the built-in autoscaler look at the queue, hand moved IPs' state over, and drain
the pods a scale-down removes.

It talks to the engines and keeps its memory in the pool's PoolMemory; what it decided (the
status fields, the events, whether the pool must be rendered again) it returns (`PollOutcome`):
the Operator writes the status, posts the events and re-renders."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mailfleet.mta.adminapi import DrainState, EngineStatus
from mailfleet.operator.api import naming
from mailfleet.operator.api.crd_models import SendingPool
from mailfleet.operator.api.outcomes import Event
from mailfleet.operator.api.reasons import EventReason, EventType
from mailfleet.operator.decide import autoscale, pods, render
from mailfleet.operator.loops.poolmemory import PoolMemory

log = logging.getLogger("mailfleet.operator")


class EngineApi(Protocol):
    async def status(self, ip: str) -> EngineStatus | None: ...
    async def metrics(self, ip: str) -> str | None: ...
    async def reload(self, ip: str, token: str, config_text: str) -> tuple[bool, str]: ...
    async def drain(self, ip: str, token: str, handoff: list[str]) -> DrainState | None: ...
    async def undrain(self, ip: str, token: str) -> bool: ...
    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool: ...


@dataclass
class PollOutcome:
    fields: dict[str, Any]  # the pool status fields the pods' answers fill
    reports: list[pods.PodReport]
    events: list[Event] = field(default_factory=list)
    rerender: bool = False  # the pod count, held IPs or a drain's end change the render


@dataclass(frozen=True)
class PodsView:
    """What the poll reads of the watches: the pods, the admin token, the StatefulSet's size."""

    refs: list[pods.PodRef]
    token: str | None
    live_replicas: int | None
    # Node -> Ready, for the nodes the operator knows (pods on one that is not are stranded).
    nodes_ready: Mapping[str, bool] = field(default_factory=dict)


async def ask(engines: EngineApi, mem: PoolMemory, view: PodsView) -> list[pods.PodReport] | None:
    """Each pod's answer, after pushing the current config to those behind; None when there
    is nothing to ask and nothing to clear."""
    refs = pods.pollable(view.refs)
    if not refs and mem.pod_status is None:
        return None
    answers = await asyncio.gather(*(engines.status(p.ip or "") for p in refs))
    reports = [pods.PodReport(p, a) for p, a in zip(refs, answers, strict=True)]
    if mem.config is not None and view.token is not None:
        await _push_config(engines, mem, reports, mem.config, view.token)
    return reports


async def _push_config(
    engines: EngineApi,
    mem: PoolMemory,
    reports: list[pods.PodReport],
    desired: tuple[str, str],
    token: str,
) -> None:
    behind = [r for r in reports if pods.needs_push(r, desired[0])]
    results = await asyncio.gather(
        *(engines.reload(r.pod.ip or "", token, desired[1]) for r in behind)
    )
    for r, (ok, message) in zip(behind, results, strict=True):
        if ok:
            log.info("pushed config %s to pod %s/%s", desired[0], mem.key[0], r.pod.name)
            fresh = await engines.status(r.pod.ip or "")
            reports[reports.index(r)] = pods.PodReport(r.pod, fresh)
        else:
            log.warning(
                "pod %s/%s refused config %s: %s", mem.key[0], r.pod.name, desired[0], message
            )


async def decide(
    engines: EngineApi,
    mem: PoolMemory,
    pool: SendingPool,
    view: PodsView,
    reports: list[pods.PodReport],
    now: datetime,
) -> PollOutcome:
    """Autoscale, IP moves and drain on the pods' answers."""
    names = {p.name for p in view.refs}
    mem.last_queued = {n: q for n, q in mem.last_queued.items() if n in names}
    for r in reports:
        if (q := pods.queued(r.status)) is not None:
            mem.last_queued[r.pod.name] = q
    stranded = pods.stranded(view.refs, view.nodes_ready, mem.last_queued)
    desired = mem.config[0] if mem.config else None
    out = PollOutcome(pods.pods_status(reports, desired, stranded), reports)
    if mem.pod_status is None or mem.pod_status.get("strandedPods") != stranded:
        out.rerender = True  # the PodsReachable condition is the render's
    scaled = autoscale_pool(mem, pool, reports, view.live_replicas, now)
    if scaled is not None:
        out.events.append(scaled)
        out.rerender = True

    def moved(type_: EventType, reason: EventReason, message: str) -> None:
        out.events.append(Event(type_, reason, message))

    if await mem.moves.observe(reports, engines, view.token, moved):
        out.rerender = True
    out.fields.update(await drain(engines, mem, pool, reports, view, out.events))
    if mem.drained_to is not None and view.live_replicas != mem.drained_to:
        out.rerender = True
    return out


def autoscale_pool(
    mem: PoolMemory,
    pool: SendingPool,
    reports: Sequence[pods.PodReport],
    live_replicas: int | None,
    now: datetime,
) -> Event | None:
    """The built-in autoscaler's look at the queue: the event when the pod count changes."""
    spec = pool.spec
    if not spec.autoscaling.enabled:
        mem.autoscaled, mem.scale_history = None, ()
        return None
    current = mem.autoscaled
    if current is None:
        current = live_replicas or render.target_replicas(pool, None)
    depths = [
        q for r in reports if r.status is not None and (q := pods.queued(r.status)) is not None
    ]
    decision = autoscale.decide(
        current,
        sum(depths) if depths else None,
        spec.autoscaling.target_queue_per_pod,
        spec.replicas.min,
        spec.replicas.max,
        mem.scale_history,
        now,
        spec.autoscaling.scale_down_stabilization,
    )
    mem.scale_history = decision.history
    mem.autoscaled = decision.replicas
    if not decision.changed:
        return None
    mem.scale_note = (decision.reason, now)
    verb = EventReason.ScaledUp if decision.replicas > current else EventReason.ScaledDown
    return Event("Normal", verb, decision.reason)


async def drain(
    engines: EngineApi,
    mem: PoolMemory,
    pool: SendingPool,
    reports: list[pods.PodReport],
    view: PodsView,
    events: list[Event],
) -> dict[str, Any]:
    """Scale-down without losing mail: the leaving pods hand their queue to the pods that
    stay before the StatefulSet shrinks; a scale-down called off undrains them. Everything
    it needs is in the pods' own answers and the StatefulSet, so an operator restarted in
    the middle of a drain carries on where it was. Returns the status fields."""
    target = render.target_replicas(pool, mem.autoscaled)
    live = view.live_replicas
    plan = pods.drain_plan(reports, target, live, naming.ADMIN_PORT)
    if view.token is not None:
        events += await _hand_off(engines, plan, target, view.token)
    if plan.drained:
        if mem.drained_to != target:
            mem.drained_to = target
            events.append(
                Event(
                    "Normal",
                    EventReason.Drained,
                    f"{', '.join(plan.leaving)} handed off every message: "
                    f"scaling the StatefulSet from {live} to {target}",
                )
            )
    elif live is None or live <= target:
        mem.drained_to = None
    out: dict[str, Any] = {"drainingPods": plan.leaving}
    if plan.left is not None and plan.leaving:
        out["handoffLeft"] = plan.left
    elif not plan.leaving:
        out["handoffLeft"] = 0
    return out


async def _hand_off(
    engines: EngineApi, plan: pods.DrainPlan, target: int, token: str
) -> list[Event]:
    events = []
    for r in plan.drain:
        queued = pods.queued(r.status) if r.status is not None else None
        if await engines.drain(r.pod.ip or "", token, plan.handoff) is not None:
            to = ", ".join(u.split("//")[1] for u in plan.handoff) or "nobody: it delivers"
            events.append(
                Event(
                    "Normal",
                    EventReason.Draining,
                    f"pod {r.pod.name} drains before the scale-down to {target}: "
                    f"{queued if queued is not None else '?'} messages handed to {to}",
                )
            )
    for r in plan.undrain:
        if await engines.undrain(r.pod.ip or "", token):
            events.append(
                Event(
                    "Normal",
                    EventReason.DrainCancelled,
                    f"pod {r.pod.name} takes mail again: the pool scales to {target}",
                )
            )
    return events


def engine_quarantine_events(
    old_status: Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> list[Event]:
    """One warning per reply-rule quarantine a pod newly reports."""
    return [
        Event(
            "Warning",
            EventReason.EngineQuarantined,
            f"{q['address']} quarantined for {q['provider']} by pod {q['pod']}: "
            f"{q.get('reason') or 'a reply rule'}",
        )
        for q in pods.new_engine_quarantines(
            (old_status or {}).get("engineQuarantines"), fields["engineQuarantines"]
        )
    ]
