"""The operator's coordinator: watch events in, the loops' decisions acted on.

The work is in modules of their own, each returning what it decided instead of calling back:
childsync (render inputs, children applied, their events, the merged status), podpoll (config
pushes, autoscale, IP moves, drain), healthloop (health checks and when their figures are
written) and statuswriters (every status write and the echo of the operator's own). What the
operator remembers is in poolmemory: one PoolMemory per pool, one ObjectMemory per other object,
forgotten when they are deleted. Kopf wiring lives in handlers.py; tests drive this object
directly with an in-memory API.

A reconcile with nothing new sends no request: the operator remembers the hash and version of
each child it applied or checked, sees StatefulSets through a watch, and reads the other
children only when it has no such memory of them (after a restart) or when a resync interval
has passed (someone may have edited them by hand). At most `concurrency` reconciles talk to the
API server at once, so a thousand new pools queue instead of timing out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol

from mailfleet.operator.api import naming
from mailfleet.operator.api.conditions import now_utc
from mailfleet.operator.api.crd_models import (
    DeliveryPolicy,
    IPWarmup,
    KubeObject,
    SendingDomain,
    SendingPool,
)
from mailfleet.operator.api.outcomes import Event, EventSink, PoolKey
from mailfleet.operator.clients import kube
from mailfleet.operator.clients.blocklist import BlocklistChecker
from mailfleet.operator.clients.promql import PrometheusApi
from mailfleet.operator.decide import drift, pods, policy_merge, render, statuses
from mailfleet.operator.decide.egressplan import EGRESS_PORT, NodeAddresses
from mailfleet.operator.decide.watched import (
    Indexes,
    LiveStatefulSet,
    bodies,
    live_statefulset,
    owner_pool,
    slim,
    statefulset_is_news,
)
from mailfleet.operator.loops import childsync, healthloop, podpoll, statuswriters
from mailfleet.operator.loops.egress import EgressApi, EgressProxies, EgressSettings
from mailfleet.operator.loops.healthcheck import HealthChecker
from mailfleet.operator.loops.podpoll import EngineApi
from mailfleet.operator.loops.poolmemory import Memory, PoolMemory
from mailfleet.operator.metrics import OperatorMetrics

__all__ = [
    "EngineApi",
    "EventSink",
    "Indexes",
    "KubeApi",
    "LiveStatefulSet",
    "Operator",
    "PoolKey",
    "live_statefulset",
    "owner_pool",
    "slim",
    "statefulset_is_news",
]

log = logging.getLogger("mailfleet.operator")

RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Enough to keep the API server busy, few enough that requests do not queue into timeouts.
RECONCILE_CONCURRENCY = 24
# How long the operator trusts its memory of an unwatched child before reading it again, and
# how often every pool is reconciled for that (spread over the interval).
RESYNC_SECONDS = 600.0
# How often running pods are asked how they are.
POD_POLL_SECONDS = 5.0
POD_POLL_CONCURRENCY = 32
# How often pools are looked at for a due health check (each has its own spec.health.interval).
HEALTH_TICK_SECONDS = 1.0
POLICY_STATUS_QUIET = 1.0
POLICY_STATUS_MAX_DELAY = 5.0


class KubeApi(Protocol):
    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def create(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...
    async def patch_status(
        self, res: kube.Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


class Operator:
    """The entry points (watch events, loops) and the acting on what the loops decided."""

    def __init__(
        self,
        api: KubeApi,
        post_event: EventSink,
        *,
        engines: EngineApi | None = None,
        metrics: OperatorMetrics | None = None,
        image: str = "",
        resync_seconds: float = RESYNC_SECONDS,
        poll_seconds: float = POD_POLL_SECONDS,
        concurrency: int = RECONCILE_CONCURRENCY,
        clock: Callable[[], datetime] = now_utc,
        blocklists: BlocklistChecker | None = None,
        egress: EgressSettings | None = None,
    ) -> None:
        self.api = api
        self.engines = engines
        self.post_event = post_event
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self.image = image
        # Where engines forward DMARC reports mailed to them (the operator's --dmarc-url).
        self.dmarc_url: str | None = None
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.indexes: Indexes | None = None
        self.semaphore = asyncio.Semaphore(concurrency)
        self.memory = Memory()
        # Namespaces whose policies' status waits for a burst of reconciles to pause.
        self.pending_policy_status: dict[str, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.blocklists = blocklists or BlocklistChecker()
        self.prometheus = PrometheusApi()
        # egress: managed pools' proxies, one per node (None: the operator runs none).
        self.egress_port = egress.port if egress is not None else EGRESS_PORT
        self.egress: EgressProxies | None = None
        self.node_addresses: dict[str, NodeAddresses] | None = None  # as on_node last saw
        if egress is not None and isinstance(api, EgressApi):
            self.egress = EgressProxies(api, egress, self.all_pools)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.spawn(self._resync_loop())
        if self.egress is not None:
            self.spawn(self.egress.run())
        if self.engines is not None:
            self.spawn(self._poll_loop())
            self.spawn(self._health_loop())

    async def close(self) -> None:
        self.memory.cancel_all()
        for task in list(self.tasks):
            task.cancel()
        await self.prometheus.close()

    def spawn(self, work: Coroutine[Any, Any, None], pool: PoolKey | None = None) -> None:
        """Run `work` in the background; work for a pool ends when the pool is forgotten."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        mem = self.memory.pools.get(pool) if pool is not None else None
        if mem is not None:
            mem.tasks.add(task)
            task.add_done_callback(mem.tasks.discard)

    def use(self, idx: Indexes) -> Indexes:
        self.indexes = idx
        return idx

    # -- reading watched objects ---------------------------------------------------------------

    def parse(self, body: Mapping[str, Any]) -> KubeObject | None:
        """A mailfleet object from a watched body, kept until it changes or is deleted."""
        return self.memory.parse(body)

    def pools_in(self, idx: Indexes, namespace: str) -> list[SendingPool]:
        out = []
        for key in self.pool_keys(idx, namespace):
            for b in bodies(idx.pools, key):
                if isinstance(p := self.parse(b), SendingPool):
                    out.append(p)
        return out

    def all_pools(self, idx: Indexes) -> list[tuple[PoolKey, SendingPool]]:
        return [
            (key, pool)
            for key, found in idx.pools.items()
            for b in found
            if isinstance(pool := self.parse(b), SendingPool)
        ]

    def pool_of(self, idx: Indexes, key: PoolKey) -> tuple[Mapping[str, Any], SendingPool] | None:
        found = bodies(idx.pools, key)
        pool = self.parse(found[0]) if found else None
        return (found[0], pool) if isinstance(pool, SendingPool) else None

    @staticmethod
    def pool_keys(idx: Indexes, namespace: str) -> list[PoolKey]:
        return sorted(k for k in idx.pools if k[0] == namespace)

    def post(self, body: Mapping[str, Any], events: Iterable[Event]) -> None:
        for ev in events:
            self.post_event(body, ev.type, ev.reason, ev.message)

    # -- reconciling a pool --------------------------------------------------------------------

    async def reconcile_pool(self, idx: Indexes, namespace: str, name: str) -> None:
        key = (namespace, name)
        mem = self.memory.pool(key)
        async with mem.lock, self.semaphore:
            t0 = time.monotonic()
            try:
                changed = await self._reconcile_pool(idx, mem)
            except Exception as e:
                self.metrics.reconciles.labels("SendingPool", "error").inc()
                self.metrics.errors.labels("SendingPool", type(e).__name__).inc()
                # The type too: a timeout's str() is empty.
                log.error(
                    "reconcile of SendingPool %s/%s failed: %s: %s",
                    namespace,
                    name,
                    type(e).__name__,
                    str(e) or repr(e),
                )
                self._schedule_retry(mem)
                return
            finally:
                self.metrics.duration.labels("SendingPool").observe(time.monotonic() - t0)
            mem.failures = 0
            if mem.retry is not None:
                mem.retry.cancel()
                mem.retry = None
            result = "changed" if changed else "unchanged"
            self.metrics.reconciles.labels("SendingPool", result).inc()

    def _schedule_retry(self, mem: PoolMemory) -> None:
        """Watch events are not redelivered: a failed reconcile retries itself, backing off."""
        delay = RETRY_DELAYS[min(mem.failures, len(RETRY_DELAYS) - 1)]
        mem.failures += 1
        self._reconcile_later(mem, "retry", delay)

    def _reconcile_later(self, mem: PoolMemory, timer: str, delay: float) -> None:
        """Reconcile the pool after `delay` on its `retry` or `advance` timer (replacing it)."""
        old: asyncio.TimerHandle | None = getattr(mem, timer)
        if old is not None:
            old.cancel()

        def fire() -> None:
            setattr(mem, timer, None)
            if self.indexes is not None and mem.key in self.indexes.pools:
                self.spawn(self.reconcile_pool(self.indexes, *mem.key), mem.key)

        setattr(mem, timer, asyncio.get_running_loop().call_later(max(delay, 0.0), fire))

    async def _resync_loop(self) -> None:
        """Every pool once per resync interval, spread over it: unwatched children the operator
        has not read for that long are read again, and what drifted is put back."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            idx = self.indexes
            if idx is None:
                continue
            keys = sorted(idx.pools)
            pause = self.resync_seconds / max(len(keys), 1) / 2
            for ns, name in keys:
                if (ns, name) in idx.pools:
                    await self.reconcile_pool(idx, ns, name)
                await asyncio.sleep(pause)

    def forget_pool(self, namespace: str, name: str) -> None:
        mem = self.memory.pools.get((namespace, name))
        if mem is not None:
            self.metrics.forget_pool(mem.series)
        self.memory.forget_pool((namespace, name))

    def _sources(self, idx: Indexes, key: PoolKey) -> childsync.Sources:
        namespace = key[0]
        return childsync.Sources(
            policies=[
                p
                for b in bodies(idx.policies, namespace)
                if isinstance(p := self.parse(b), DeliveryPolicy)
            ],
            warmups=[
                w for b in bodies(idx.warmups, key) if isinstance(w := self.parse(b), IPWarmup)
            ],
            domains=[
                d
                for b in bodies(idx.domains, namespace)
                if isinstance(d := self.parse(b), SendingDomain)
            ],
            secrets=frozenset(idx.secrets.get(namespace, [])),
            statefulset=idx.statefulset(key),
            image=self.image,
            now=self.clock(),
            dmarc_url=self.dmarc_url,
            egress_nodes=idx.node_addresses(),
            pod_nodes={p.name: p.node for p in idx.pods.get(key, []) if p.node and not p.deleting},
            egress_port=self.egress_port,
        )

    async def _reconcile_pool(self, idx: Indexes, mem: PoolMemory) -> bool:
        found = self.pool_of(idx, mem.key)
        if found is None:
            return False
        body, pool = found
        old_status, fresher = statuswriters.old_status(mem, body)
        if fresher:
            pool = statuswriters.with_fresher_status(pool, old_status)
        src = self._sources(idx, mem.key)
        rendered = render.render_pool(childsync.render_inputs(pool, mem, src))
        if childsync.remember_render(mem, rendered, src.statefulset):
            self.schedule_policy_statuses(idx, mem.key[0])
        if rendered.next_warmup_advance is not None:
            delay = (rendered.next_warmup_advance - src.now).total_seconds()
            self._reconcile_later(mem, "advance", delay + 1.0)
        created_secret = await childsync.ensure_admin_secret(self.api, pool, src.secrets)
        egress_secret = await childsync.ensure_egress_secret(self.api, pool, src.secrets)
        sync = await childsync.sync_children(
            self.api,
            mem,
            rendered,
            src.statefulset,
            # Never reconciled (no status, no StatefulSet): applied without reading first.
            new_pool=old_status is None and src.statefulset is None,
            generation=body["metadata"].get("generation"),
            resync_seconds=self.resync_seconds,
        )
        if created_secret:
            sync.done.insert(0, (f"Secret {naming.admin_secret_name(mem.key[1])}", False))
        if egress_secret:
            sync.done.insert(0, (f"Secret {egress_secret}", False))
        self.post(body, sync.summary())
        if sync.error is not None:
            raise sync.error
        new_status = childsync.merged_status(
            mem,
            rendered,
            healthloop.health_fields(mem),
            pool=pool,
            old_status=old_status,
            now=src.now,
        )
        written = await self._write_pool_status(mem, body, old_status, new_status)
        if written is False:
            return sync.changed
        if src.warmups:
            await self.update_warmup_statuses(idx, *mem.key)
            if any(w.status is None or w.status.start_time is None for w in src.warmups):
                # A warmup just started: render again once its startTime is in the index, so
                # the engines count its days from it.
                self._reconcile_later(mem, "advance", 2.0)
        if rendered.config_hash is not None and self.engines is not None:
            self.spawn(self.guarded("SendingPool", self.poll_pool(idx, *mem.key)), mem.key)
        return sync.changed or bool(written)

    async def _write_pool_status(
        self,
        mem: PoolMemory,
        body: Mapping[str, Any],
        old_status: Mapping[str, Any] | None,
        new_status: dict[str, Any],
        *,
        condition_events: bool = True,
    ) -> bool | None:
        """The pool's gauges, and its status when it changed: True when written, False when
        the pool is gone, None when there was nothing to write. Posts the events the change
        of its conditions calls for."""
        self.metrics.set_pool(*mem.key, {**(old_status or {}), **new_status}, mem.series)
        if not drift.status_changed(old_status, new_status):
            return None
        if await statuswriters.write_pool_status(self.api, mem, new_status) is None:
            return False
        if condition_events:
            found = statuses.pool_events(old_status, new_status)
            self.post(body, (Event(e.type, e.reason, e.message) for e in found))
        return True

    # -- IP health -----------------------------------------------------------------------------

    def _checker(self, mem: PoolMemory) -> HealthChecker | None:
        if self.engines is None:
            return None
        if mem.health is None:
            mem.health = HealthChecker(
                self.engines,
                self.blocklists,
                self.metrics,
                prometheus=self.prometheus,
                series=mem.series,
            )
        return mem.health

    async def _health_loop(self) -> None:
        """Each pool's health check when its spec.health.interval has passed."""
        while True:
            await asyncio.sleep(HEALTH_TICK_SECONDS)
            idx = self.indexes
            if idx is None or self.engines is None:
                continue
            now = self.clock()
            due = []
            for key in sorted(idx.pools):
                found = self.pool_of(idx, key)
                if found is not None and healthloop.due(self.memory.pool(key), found[1], now):
                    due.append(key)
            for i in range(0, len(due), POD_POLL_CONCURRENCY):
                await asyncio.gather(
                    *(
                        self.guarded("SendingPool", self.check_health(idx, k))
                        for k in due[i : i + POD_POLL_CONCURRENCY]
                    )
                )

    async def check_health(self, idx: Indexes, key: PoolKey) -> None:
        """One health check: verdicts that changed re-render the pool (the engines stop
        sending from a quarantined IP with the next config), figures go into the pool's and
        its warmups' status, decisions into events."""
        found = self.pool_of(idx, key)
        mem = self.memory.pool(key)
        checker = self._checker(mem)
        if found is None or checker is None:
            return
        body, pool = found
        old_status, _ = statuswriters.old_status(mem, body)
        outcome = await healthloop.check(
            checker, mem, pool, list(idx.pods.get(key, [])), old_status, self.clock()
        )
        self.post(body, outcome.events)
        if outcome.rerender:
            await self.reconcile_pool(idx, *key)
        elif outcome.status is not None:
            await statuswriters.write_pool_status(self.api, mem, outcome.status)
        if outcome.delta:
            delta = outcome.delta

            def today(warmup: IPWarmup, _: Mapping[str, Any]) -> dict[str, Any] | None:
                counted = statuses.warmup_today(warmup, delta)
                return {"today": counted} if counted is not None else None

            await statuswriters.write_warmup_counts(
                self.api, self.memory, bodies(idx.warmups, key), key[0], today
            )

    # -- pods ----------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            idx = self.indexes
            if idx is None:
                continue
            keys = [k for k in sorted(idx.pods) if k in idx.pools and idx.pods.get(k)]
            for i in range(0, len(keys), POD_POLL_CONCURRENCY):
                batch = keys[i : i + POD_POLL_CONCURRENCY]
                await asyncio.gather(
                    *(self.guarded("SendingPool", self.poll_pool(idx, *k)) for k in batch)
                )

    async def poll_pool(self, idx: Indexes, namespace: str, name: str) -> None:
        """Ask each running pod how it is; push the current config where it is behind; write
        what changed into the pool's and its warmups' status."""
        mem = self.memory.pool((namespace, name))
        if self.engines is None or mem.polling:
            return
        mem.polling = True
        try:
            await self._poll_pool(idx, mem, self.engines)
        finally:
            mem.polling = False

    async def _poll_pool(self, idx: Indexes, mem: PoolMemory, engines: EngineApi) -> None:
        key = mem.key
        sts = idx.statefulset(key)
        view = podpoll.PodsView(
            refs=list(idx.pods.get(key, [])),
            token=idx.token(key),
            live_replicas=sts.spec_replicas if sts is not None else None,
            nodes_ready={n: a.ready for n, a in idx.node_addresses().items()},
        )
        reports = await podpoll.ask(engines, mem, view)
        found = self.pool_of(idx, key)
        if reports is None or found is None:
            return
        body, pool = found
        outcome = await podpoll.decide(engines, mem, pool, view, reports, self.clock())
        self.post(body, outcome.events)
        old_status, _ = statuswriters.old_status(mem, body)
        self.post(body, podpoll.engine_quarantine_events(old_status, outcome.fields))
        # The QUARANTINED column counts the health check's quarantines (status.ips) too.
        outcome.fields["quarantinedIPs"] = statuses.quarantined_ip_count(
            {**(old_status or {}), **outcome.fields}
        )
        mem.pod_status = outcome.fields
        await self._write_pool_status(mem, body, old_status, outcome.fields, condition_events=False)
        rows = pods.warmup_rows(outcome.reports)

        def sent_today(warmup: IPWarmup, b: Mapping[str, Any]) -> dict[str, Any] | None:
            sent = {"sentToday": statuses.warmup_sent_today(warmup, rows)}
            return sent if drift.status_changed(b.get("status"), sent) else None

        await statuswriters.write_warmup_counts(
            self.api, self.memory, bodies(idx.warmups, key), key[0], sent_today
        )
        if outcome.rerender:
            self.spawn(self.reconcile_pool(idx, *key), key)

    # -- policy and warmup status --------------------------------------------------------------

    def schedule_policy_statuses(self, idx: Indexes, namespace: str) -> None:
        """Policy status counts pools: a burst of pool reconciles shares one update, written
        once the burst pauses (or after POLICY_STATUS_MAX_DELAY)."""
        pending = namespace in self.pending_policy_status
        self.pending_policy_status[namespace] = time.monotonic()
        if pending:
            return

        async def run() -> None:
            start = time.monotonic()
            while True:
                await asyncio.sleep(POLICY_STATUS_QUIET / 2)
                now = time.monotonic()
                last = self.pending_policy_status.get(namespace, start)
                if now - last >= POLICY_STATUS_QUIET or now - start >= POLICY_STATUS_MAX_DELAY:
                    break
            self.pending_policy_status.pop(namespace, None)
            await self.guarded("DeliveryPolicy", self.update_policy_statuses(idx, namespace))

        self.spawn(run())

    def own_write(self, kind: str, meta: Mapping[str, Any]) -> bool:
        return statuswriters.is_own_write(self.memory, kind, meta)

    async def update_policy_statuses(self, idx: Indexes, namespace: str) -> None:
        await statuswriters.write_policy_statuses(
            self.api,
            self.memory,
            bodies(idx.policies, namespace),
            self.pools_in(idx, namespace),
            self.clock(),
        )

    async def update_warmup_statuses(self, idx: Indexes, namespace: str, pool: str) -> None:
        pools = [p for p in self.pools_in(idx, namespace) if naming.pool_name(p) == pool]
        written = await statuswriters.write_warmup_statuses(
            self.api,
            self.memory,
            self.metrics,
            bodies(idx.warmups, (namespace, pool)),
            (namespace, pool),
            pools[0] if pools else None,
            self.clock(),
        )
        for live, ev in written:
            self.post(live, [ev])

    async def reconcile_all(self, idx: Indexes, keys: Iterable[PoolKey]) -> None:
        await asyncio.gather(
            *(self.reconcile_pool(idx, ns, name) for ns, name in sorted(set(keys)))
        )

    async def guarded(self, kind: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as e:
            self.metrics.errors.labels(kind, type(e).__name__).inc()
            log.error(
                "status update of %s failed: %s: %s", kind, type(e).__name__, str(e) or repr(e)
            )

    # -- watch events --------------------------------------------------------------------------

    async def on_pool(
        self,
        idx: Indexes,
        event_type: str | None,
        namespace: str,
        name: str,
        meta: Mapping[str, Any],
    ) -> None:
        key = (namespace, name)
        if event_type == "DELETED":
            self.forget_pool(namespace, name)
            if self.egress is not None:
                self.egress.schedule(idx)
            self.schedule_policy_statuses(idx, namespace)
            await self.guarded("IPWarmup", self.update_warmup_statuses(idx, namespace, name))
            return
        if self.egress is not None:
            # A managed pool's addresses or ports, or a pool leaving managed mode.
            self.egress.schedule(idx)
        if statuswriters.is_own_pool_write(self.memory.pools.get(key), meta):
            return  # the echo of the operator's own status write: nothing new
        await self.reconcile_pool(idx, namespace, name)

    async def on_node(self, idx: Indexes) -> None:
        """A node's sending addresses changed: the managed pools re-place theirs (condition,
        engine config) and the proxies follow."""
        nodes = idx.node_addresses()
        if nodes == self.node_addresses:
            return
        self.node_addresses = nodes
        if self.egress is not None:
            self.egress.schedule(idx)
        managed = [
            key
            for key, pool in self.all_pools(idx)
            if pool.spec.egress.mode in ("managed", "hostNetwork")
        ]
        await self.reconcile_all(idx, managed)

    def _selects(self, idx: Indexes, key: PoolKey, labels: Mapping[str, str]) -> bool:
        for b in bodies(idx.pools, key):
            pool = self.parse(b)
            if isinstance(pool, SendingPool) and policy_merge.selector_matches(
                pool.spec.policy_selector, labels
            ):
                return True
        return False

    def _selected_by(self, key: PoolKey, policy: str) -> bool:
        mem = self.memory.pools.get(key)
        return mem is not None and mem.selected is not None and policy in mem.selected

    async def on_policy(
        self,
        idx: Indexes,
        event_type: str | None,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
    ) -> None:
        if event_type is None:
            # The initial listing: every pool's own first event renders it with this policy;
            # its status can be written now (every pool is in the index already).
            await self.guarded("DeliveryPolicy", self.update_policy_statuses(idx, namespace))
            return
        deleted = event_type == "DELETED"
        if deleted:
            self.memory.forget_object(("DeliveryPolicy", namespace, name))
        elif self.own_write("DeliveryPolicy", body.get("metadata", {})):
            return
        labels = dict(body.get("metadata", {}).get("labels") or {})
        affected = [
            key
            for key in self.pool_keys(idx, namespace)
            if self._selected_by(key, name) or (not deleted and self._selects(idx, key, labels))
        ]
        await self.reconcile_all(idx, affected)
        self.metrics.reconciles.labels(
            "DeliveryPolicy", "pools-rerendered" if affected else "no-pools"
        ).inc()
        await self.guarded("DeliveryPolicy", self.update_policy_statuses(idx, namespace))

    async def on_warmup(
        self,
        idx: Indexes,
        event_type: str | None,
        namespace: str,
        name: str,
        pool: str,
        meta: Mapping[str, Any],
    ) -> None:
        if event_type != "DELETED" and self.own_write("IPWarmup", meta):
            return
        okey = ("IPWarmup", namespace, name)
        known = self.memory.objects.get(okey)
        before = known.pool if known is not None else None
        if event_type == "DELETED":
            self.memory.forget_object(okey)
            self.metrics.forget_warmup(namespace, name)
        else:
            self.memory.object(okey).pool = pool
        names = {p for p in (pool, before) if p}
        await self.reconcile_all(
            idx, [(namespace, p) for p in names if (namespace, p) in idx.pools]
        )
        self.metrics.reconciles.labels(
            "IPWarmup", "pools-rerendered" if names else "no-pools"
        ).inc()
        for p in names:
            await self.guarded("IPWarmup", self.update_warmup_statuses(idx, namespace, p))

    def on_domain_deleted(self, namespace: str, name: str) -> None:
        self.memory.forget_object(("SendingDomain", namespace, name))

    @staticmethod
    def references(pool: SendingPool, secret: str) -> bool:
        sub = pool.spec.submission
        return (
            secret in naming.dkim_secrets(pool.spec)
            or secret in (sub.auth_secret_ref, sub.tls_secret_ref)
            or secret == naming.admin_secret_name(naming.pool_name(pool))
        )

    async def on_secret(self, idx: Indexes, namespace: str, name: str) -> None:
        if self.egress is not None and name.endswith("-egress"):
            self.egress.schedule(idx)  # a pool's proxy credentials came (or went)
        if idx.secret_refs is not None:
            affected = [(namespace, p) for p in idx.secret_refs.get((namespace, name), [])]
        else:
            affected = [
                (namespace, naming.pool_name(p))
                for p in self.pools_in(idx, namespace)
                if self.references(p, name)
            ]
        await self.reconcile_all(idx, affected)

    async def on_statefulset(
        self,
        idx: Indexes,
        event_type: str | None,
        namespace: str,
        name: str,
        meta: Mapping[str, Any],
        status: Mapping[str, Any],
    ) -> None:
        pool = owner_pool(meta.get("ownerReferences") or [])
        if pool is None or (namespace, pool) not in idx.pools:
            return
        if event_type is None:
            # The initial listing: the pool's own first event reconciles it.
            return
        mem = self.memory.pool((namespace, pool))
        if event_type == "DELETED":
            mem.known.pop(("StatefulSet", name), None)
        elif not statefulset_is_news(
            event_type,
            live_statefulset(meta, status),
            mem.sts_seen,
            mem.known_child("StatefulSet", name, self.resync_seconds),
        ):
            return
        await self.reconcile_pool(idx, namespace, pool)

    async def on_pod(self, idx: Indexes, namespace: str, pool: str) -> None:
        """A pool pod came, went or changed address: ask the pods at once rather than at the
        next poll, so a new pod gets its config and the status its numbers."""
        found = self.pool_of(idx, (namespace, pool))
        if found is not None and found[1].spec.egress.mode == "hostNetwork":
            # Its addresses are sent by the pod on their node: where the pod runs decides.
            await self.reconcile_pool(idx, namespace, pool)
        if self.engines is not None and (namespace, pool) in idx.pools:
            await self.guarded("SendingPool", self.poll_pool(idx, namespace, pool))
