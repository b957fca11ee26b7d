"""Everything the operator remembers between events, in two places: one `PoolMemory` per
SendingPool and one `ObjectMemory` per other watched object (DeliveryPolicy, IPWarmup,
SendingDomain). Forgetting a deleted object is one pop; a pool's timers and tasks are cancelled
with it, so nothing of a deleted pool outlives it (no dict keyed by pool anywhere else)."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mailfleet.operator.api.crd_models import KubeObject, parse_object
from mailfleet.operator.api.outcomes import ObjectKey, PoolKey
from mailfleet.operator.decide import autoscale, drift
from mailfleet.operator.loops.healthcheck import HealthChecker
from mailfleet.operator.loops.ipmoves import PoolMoves
from mailfleet.operator.metrics import PoolSeries

log = logging.getLogger("mailfleet.operator")

ChildKey = tuple[str, str]  # kind, name (in the pool's namespace)


@dataclass
class PoolMemory:
    key: PoolKey
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Policies the pool selected at its last render: a policy that stops matching it re-renders
    # it too.
    selected: frozenset[str] | None = None
    failures: int = 0
    retry: asyncio.TimerHandle | None = None
    # A re-render when a warmup moves to its next day (or just started).
    advance: asyncio.TimerHandle | None = None
    # The hash and marker of each child as last applied or read, and when (monotonic).
    known: dict[ChildKey, tuple[drift.Known, float]] = field(default_factory=dict)
    # The status the operator last wrote and its resourceVersion: the index may lag behind it,
    # and the watch event it causes is no news.
    written: tuple[int, dict[str, Any]] | None = None
    # The StatefulSet status (replicas, readyReplicas) the status was rendered from.
    sts_seen: tuple[int, int] | None = None
    # The engine config last rendered: (hash, text), pushed to pods.
    config: tuple[str, str] | None = None
    # What the pods last reported, as written into the status.
    pod_status: dict[str, Any] | None = None
    # Each pod's queue as it last answered: what a pod whose node went away holds.
    last_queued: dict[str, int] = field(default_factory=dict)
    # Its pods are being asked right now: a second poll would only repeat it.
    polling: bool = False
    # The built-in autoscaler: its count, the recommendations behind it, its last decision.
    autoscaled: int | None = None
    scale_history: tuple[autoscale.Recommendation, ...] = ()
    scale_note: tuple[str, datetime] | None = None
    # Pods from this ordinal up have handed off their queue: the StatefulSet may shrink.
    drained_to: int | None = None
    # When the status last took the health figures (monotonic).
    health_written: float | None = None
    # IPs moving between pods and the pods' fleet-limits modes.
    moves: PoolMoves = field(default_factory=PoolMoves)
    # IP health (last scrapes, window, verdicts); made by the Operator when it has engines.
    health: HealthChecker | None = None
    # The gauges exported for it: removed when it is forgotten.
    series: PoolSeries = field(default_factory=PoolSeries)
    # Work started for this pool (polls, re-renders): cancelled when it is forgotten.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def known_child(self, kind: str, name: str, max_age: float) -> drift.Known | None:
        """What was last applied or read of a child, unless older than `max_age` (StatefulSets
        are watched: their memory does not expire)."""
        entry = self.known.get((kind, name))
        if entry is None:
            return None
        known, since = entry
        if kind != "StatefulSet" and time.monotonic() - since > max_age:
            return None
        return known

    def remember_child(self, kind: str, desired_hash: str, live: dict[str, Any]) -> None:
        meta = live.get("metadata", {})
        self.known[(kind, str(meta.get("name", "")))] = (
            (desired_hash, drift.child_marker(kind, meta)),
            time.monotonic(),
        )

    def cancel_timers(self) -> None:
        for handle in (self.retry, self.advance):
            if handle is not None:
                handle.cancel()
        self.retry = self.advance = None

    def cancel(self) -> None:
        """Its timers and tasks: nothing of it runs after this."""
        self.cancel_timers()
        current = asyncio.current_task() if _loop_running() else None
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self.tasks.clear()


@dataclass
class ObjectMemory:
    """What is kept of a DeliveryPolicy, IPWarmup, SendingDomain or SendingPool body."""

    # (uid, resourceVersion, the object read from it): parsing is most of a reconcile's CPU.
    parsed: tuple[str, str, KubeObject | None] | None = None
    # The resourceVersion of the operator's own last status write: its watch event is no news.
    own_write: int | None = None
    # An IPWarmup's pool when last seen: moving a warmup re-renders both pools.
    pool: str | None = None


@dataclass
class Memory:
    pools: dict[PoolKey, PoolMemory] = field(default_factory=dict)
    objects: dict[ObjectKey, ObjectMemory] = field(default_factory=dict)

    def pool(self, key: PoolKey) -> PoolMemory:
        mem = self.pools.get(key)
        if mem is None:
            mem = self.pools[key] = PoolMemory(key)
        return mem

    def object(self, key: ObjectKey) -> ObjectMemory:
        mem = self.objects.get(key)
        if mem is None:
            mem = self.objects[key] = ObjectMemory()
        return mem

    def parse(self, body: Mapping[str, Any]) -> KubeObject | None:
        """A mailfleet object from a watched body, kept until its resourceVersion moves or it
        is forgotten."""
        meta = body.get("metadata", {})
        uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
        if not (uid and version):
            return parse_body(body)
        mem = self.object(object_key(body))
        if mem.parsed is not None and mem.parsed[:2] == (uid, version):
            return mem.parsed[2]
        obj = parse_body(body)
        mem.parsed = (uid, version, obj)
        return obj

    def forget_pool(self, key: PoolKey) -> None:
        mem = self.pools.pop(key, None)
        if mem is not None:
            mem.cancel()
        self.objects.pop(("SendingPool", *key), None)

    def forget_object(self, key: ObjectKey) -> None:
        self.objects.pop(key, None)

    def cancel_all(self) -> None:
        for mem in self.pools.values():
            mem.cancel()


def object_key(body: Mapping[str, Any]) -> ObjectKey:
    meta = body.get("metadata", {})
    return (str(body.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def parse_body(body: Mapping[str, Any]) -> KubeObject | None:
    """A status we cannot read is dropped; a spec we cannot read skips the object (the API
    server validates it, so that means a newer schema than ours)."""
    data = copy.deepcopy(dict(body))
    try:
        return parse_object(data)
    except (ValidationError, ValueError):
        pass
    data.pop("status", None)
    try:
        return parse_object(data)
    except (ValidationError, ValueError) as e:
        meta = data.get("metadata", {})
        log.error(
            "cannot read %s %s/%s: %s",
            data.get("kind"),
            meta.get("namespace"),
            meta.get("name"),
            str(e).splitlines()[0],
        )
        return None


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
