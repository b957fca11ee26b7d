"""The status writers: what the operator writes into its objects' status and how it recognizes
the echo of its own writes. Each writer patches only what differs from the live status and
returns what it wrote (or the events it decided), never posting or reconciling itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from mailfleet.operator.api.crd_models import (
    DeliveryPolicy,
    IPWarmup,
    SendingPool,
    SendingPoolStatus,
)
from mailfleet.operator.api.outcomes import Event
from mailfleet.operator.clients import kube
from mailfleet.operator.decide import drift, statuses
from mailfleet.operator.loops.poolmemory import Memory, PoolMemory
from mailfleet.operator.metrics import OperatorMetrics


class StatusApi(Protocol):
    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def patch_status(
        self, res: kube.Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


def version_of(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


# -- SendingPool -------------------------------------------------------------------------------


def old_status(mem: PoolMemory, body: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The pool's live status: the index's, unless it has not yet seen the operator's own
    last write (then that, and True)."""
    if mem.written is not None:
        if version_of(body.get("metadata", {}).get("resourceVersion")) < mem.written[0]:
            return mem.written[1], True
        mem.written = None
    status = body.get("status")
    return (dict(status) if isinstance(status, Mapping) else None), False


def with_fresher_status(pool: SendingPool, status: Mapping[str, Any] | None) -> SendingPool:
    """The pool as its last written status says, when the index lags behind that write."""
    if status is None:
        return pool
    try:
        fresher = SendingPoolStatus.model_validate(status)
    except ValidationError:
        return pool
    return pool.model_copy(update={"status": fresher})


def is_own_pool_write(mem: PoolMemory | None, meta: Mapping[str, Any]) -> bool:
    """Whether a pool's watch event is the echo of the operator's own status write."""
    return (
        mem is not None
        and mem.written is not None
        and version_of(meta.get("resourceVersion")) == mem.written[0]
    )


async def write_pool_status(
    api: StatusApi, mem: PoolMemory, status: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Patch the pool's status and remember the write (its echo is no news); the result, or
    None when the pool is gone."""
    result = await api.patch_status(kube.SENDINGPOOLS, *mem.key, status)
    if result is not None:
        mem.written = (
            version_of(result.get("metadata", {}).get("resourceVersion")),
            dict(result.get("status") or status),
        )
    return result


# -- policies and warmups ----------------------------------------------------------------------


def is_own_write(memory: Memory, kind: str, meta: Mapping[str, Any]) -> bool:
    key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
    mem = memory.objects.get(key)
    return mem is not None and mem.own_write == version_of(meta.get("resourceVersion"))


def note_own_write(memory: Memory, kind: str, result: Mapping[str, Any]) -> None:
    rmeta = result.get("metadata", {})
    key = (kind, str(rmeta.get("namespace")), str(rmeta.get("name")))
    memory.object(key).own_write = version_of(rmeta.get("resourceVersion"))


async def write_status_if_changed(
    api: StatusApi,
    memory: Memory,
    res: kube.Resource,
    body: Mapping[str, Any],
    compute: Callable[[Mapping[str, Any]], dict[str, Any] | None],
) -> tuple[Mapping[str, Any], dict[str, Any]] | None:
    """Patch the status `compute` gives for the object when it differs from the live one;
    when the index has an older version, compute again from the live object
    (lastTransitionTime and startTime come from the status they replace). Returns the
    live object and the status written, when one was."""
    new_status = compute(body)
    if new_status is None or not drift.status_changed(body.get("status"), new_status):
        return None
    meta = body["metadata"]
    live = await api.get(res, meta["namespace"], meta["name"])
    if live is None:
        return None
    new_status = compute(live)
    if new_status is None or not drift.status_changed(live.get("status"), new_status):
        return None
    result = await api.patch_status(res, meta["namespace"], meta["name"], new_status)
    if result is None:
        return None
    note_own_write(memory, res.kind, result)
    return live, new_status


async def write_policy_statuses(
    api: StatusApi,
    memory: Memory,
    bodies: Sequence[Mapping[str, Any]],
    pools: Sequence[SendingPool],
    now: datetime,
) -> None:
    def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
        policy = memory.parse(body)
        if not isinstance(policy, DeliveryPolicy):
            return None
        return statuses.policy_status(policy, list(pools), now)

    for b in bodies:
        await write_status_if_changed(api, memory, kube.DELIVERYPOLICIES, b, compute)


async def write_warmup_statuses(
    api: StatusApi,
    memory: Memory,
    metrics: OperatorMetrics,
    bodies: Sequence[Mapping[str, Any]],
    key: tuple[str, str],
    pool: SendingPool | None,
    now: datetime,
) -> list[tuple[Mapping[str, Any], Event]]:
    """Each warmup's status as its pool and the clock make it; the events (and the live body
    each is about) its changes call for."""
    namespace, pool_name = key

    def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
        warmup = memory.parse(body)
        if not isinstance(warmup, IPWarmup):
            return None
        status = statuses.warmup_status(warmup, pool, now)
        metrics.set_warmup(namespace, str(warmup.metadata.get("name", "")), pool_name, status)
        return status

    out: list[tuple[Mapping[str, Any], Event]] = []
    for b in bodies:
        written = await write_status_if_changed(api, memory, kube.IPWARMUPS, b, compute)
        if written is not None:
            live, new_status = written
            for ev in statuses.warmup_events(live.get("status"), new_status):
                out.append((live, Event(ev.type, ev.reason, ev.message)))
    return out


async def write_warmup_counts(
    api: StatusApi,
    memory: Memory,
    bodies: Sequence[Mapping[str, Any]],
    namespace: str,
    count: Callable[[IPWarmup, Mapping[str, Any]], dict[str, Any] | None],
) -> None:
    """Patch what `count` gives for each warmup (the pods' sentToday, the health check's
    today) where it differs from its status."""
    for b in bodies:
        warmup = memory.parse(b)
        if not isinstance(warmup, IPWarmup):
            continue
        fields = count(warmup, b)
        if fields is None:
            continue
        result = await api.patch_status(kube.IPWARMUPS, namespace, b["metadata"]["name"], fields)
        if result is not None:
            note_own_write(memory, "IPWarmup", result)
