"""The operator's reconcile logic and all of its memory, in one object with its I/O injected.

Every decision is in the pure modules (render, drift, statuses, pods); here we read (indexes,
GETs of children), compare, and write only what differs: children by server-side apply when
their hash or content drifted, status by merge patch when it changed. Kopf wiring lives in
handlers.py; tests drive this object directly with an in-memory API.

A reconcile with nothing new sends no request: the operator remembers the hash and version of
each child it applied or checked (`known`), sees StatefulSets through a watch, and reads the
other children only when it has no such memory of them (after a restart) or when a resync
interval has passed (someone may have edited them by hand). At most `concurrency` reconciles
talk to the API server at once, so a thousand new pools queue instead of timing out.

Running pods are polled over their admin API: what they report (queue, config hash, warmup
counts, quarantines) goes into the pool's and warmups' status, and a pod that runs another
config than the one rendered gets it pushed at once with an authenticated reload.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from mailfleet.operator import (
    autoscale,
    conditions,
    domainplan,
    drift,
    ipmoves,
    kube,
    naming,
    pods,
    policy_merge,
    quarantine,
    render,
    statuses,
)
from mailfleet.operator.blocklist import BlocklistChecker
from mailfleet.operator.conditions import now_utc, timestamp
from mailfleet.operator.crd_models import (
    GROUP,
    DeliveryPolicy,
    IPWarmup,
    KubeObject,
    SendingDomain,
    SendingPool,
    SendingPoolStatus,
    parse_object,
)
from mailfleet.operator.healthcheck import HealthChecker
from mailfleet.operator.metrics import OperatorMetrics

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
HEALTH_STATUS_MAX_PERIOD = 300.0
POLICY_STATUS_QUIET = 1.0
POLICY_STATUS_MAX_DELAY = 5.0

PoolKey = tuple[str, str]
ChildKey = tuple[str, str, str]  # namespace, kind, name


class KubeApi(Protocol):
    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]: ...
    async def create(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...
    async def patch_status(
        self, res: kube.Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...


class EngineApi(Protocol):
    async def status(self, ip: str) -> dict[str, Any] | None: ...
    async def metrics(self, ip: str) -> str | None: ...
    async def reload(self, ip: str, token: str, config_text: str) -> tuple[bool, str]: ...
    async def drain(self, ip: str, token: str, handoff: list[str]) -> dict[str, Any] | None: ...
    async def undrain(self, ip: str, token: str) -> bool: ...
    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool: ...


# (body of the object the event is about, type, reason, message)
EventSink = Callable[[Mapping[str, Any], str, str, str], None]


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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _bodies(index: Mapping[Any, Collection[Any]], key: Any) -> list[Any]:
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


class Operator:
    """The reconcile logic and everything it remembers between events."""

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
        self.locks: dict[PoolKey, asyncio.Lock] = {}
        # Policies each pool selected at its last render: a policy that stops matching a pool
        # re-renders it too.
        self.selected: dict[PoolKey, frozenset[str]] = {}
        # The pool each warmup named when last seen: moving a warmup re-renders both pools.
        self.warmup_pools: dict[PoolKey, str] = {}
        self.failures: dict[PoolKey, int] = {}
        self.retries: dict[PoolKey, asyncio.TimerHandle] = {}
        # Re-renders when a warmup moves to its next day.
        self.advances: dict[PoolKey, asyncio.TimerHandle] = {}
        # The hash and marker of each child as the operator last applied or read it, and when.
        self.known: dict[ChildKey, tuple[drift.Known, float]] = {}
        # The pool each child belongs to, for forgetting a deleted pool's children.
        self.child_pools: dict[ChildKey, str] = {}
        # The pool status the operator last wrote and its resourceVersion: the index may lag
        # behind it, and the watch event it causes is no news.
        self.written: dict[PoolKey, tuple[int, dict[str, Any]]] = {}
        # The StatefulSet status (replicas, readyReplicas) the pool's status was rendered from.
        self.sts_seen: dict[PoolKey, tuple[int, int]] = {}
        # The engine config last rendered for each pool: (hash, text), pushed to pods.
        self.configs: dict[PoolKey, tuple[str, str]] = {}
        # What the pods last reported, as written into the pool's status.
        self.pod_status: dict[PoolKey, dict[str, Any]] = {}
        # resourceVersions of the operator's own status writes to policies and warmups: their
        # watch events are no news.
        self.own_status_writes: dict[tuple[str, str, str], int] = {}
        self.pending_policy_status: dict[str, float] = {}
        self.parsed: dict[str, tuple[str, KubeObject | None]] = {}
        # Pools whose pods are being asked right now: a second poll would only repeat it.
        self.polling: set[PoolKey] = set()
        # The built-in autoscaler: its count per pool and the recommendations behind it.
        self.autoscaled: dict[PoolKey, int] = {}
        self.scale_history: dict[PoolKey, tuple[autoscale.Recommendation, ...]] = {}
        self.scale_note: dict[PoolKey, tuple[str, datetime]] = {}
        # Pods from this ordinal up have handed off their queue: the StatefulSet may shrink.
        self.drained_to: dict[PoolKey, int] = {}
        # IPs moving between pods and the pods' fleet-limits modes.
        self.ipmoves = ipmoves.IPMoves()
        self.tasks: set[asyncio.Task[None]] = set()
        # When each pool's status last took the health figures (monotonic).
        self.health_written: dict[PoolKey, float] = {}
        # IP health: pods' counters, blocklists, quarantine verdicts (healthcheck.py).
        self.health = (
            HealthChecker(engines, blocklists or BlocklistChecker(), self.metrics)
            if engines is not None
            else None
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.spawn(self._resync_loop())
        if self.engines is not None:
            self.spawn(self._poll_loop())
            self.spawn(self._health_loop())

    async def close(self) -> None:
        for handle in [*self.retries.values(), *self.advances.values()]:
            handle.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.health is not None:
            await self.health.prometheus.close()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def use(self, idx: Indexes) -> Indexes:
        self.indexes = idx
        return idx

    # -- reading watched objects ---------------------------------------------------------------

    def parse(self, body: Mapping[str, Any]) -> KubeObject | None:
        """A mailfleet object from a watched body, cached by uid and resourceVersion."""
        meta = body.get("metadata", {})
        uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
        cached = self.parsed.get(uid)
        if uid and version and cached is not None and cached[0] == version:
            return cached[1]
        obj = _parse(body)
        if uid and version:
            self.parsed[uid] = (version, obj)
        return obj

    def pools_in(self, idx: Indexes, namespace: str) -> list[SendingPool]:
        out = []
        for key in self.pool_keys(idx, namespace):
            for b in _bodies(idx.pools, key):
                if isinstance(p := self.parse(b), SendingPool):
                    out.append(p)
        return out

    @staticmethod
    def pool_keys(idx: Indexes, namespace: str) -> list[PoolKey]:
        return sorted(k for k in idx.pools if k[0] == namespace)

    # -- reconciling a pool --------------------------------------------------------------------

    async def reconcile_pool(self, idx: Indexes, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock, self.semaphore:
            t0 = time.monotonic()
            try:
                changed = await self._reconcile_pool(idx, namespace, name)
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
                self._schedule_retry(key)
                return
            finally:
                self.metrics.duration.labels("SendingPool").observe(time.monotonic() - t0)
            self.failures.pop(key, None)
            handle = self.retries.pop(key, None)
            if handle is not None:
                handle.cancel()
            result = "changed" if changed else "unchanged"
            self.metrics.reconciles.labels("SendingPool", result).inc()

    def _schedule_retry(self, key: PoolKey) -> None:
        """Watch events are not redelivered: a failed reconcile retries itself, backing off."""
        n = self.failures.get(key, 0)
        self.failures[key] = n + 1
        delay = RETRY_DELAYS[min(n, len(RETRY_DELAYS) - 1)]
        self._reconcile_later(self.retries, key, delay)

    def _reconcile_later(
        self, timers: dict[PoolKey, asyncio.TimerHandle], key: PoolKey, delay: float
    ) -> None:
        old = timers.pop(key, None)
        if old is not None:
            old.cancel()

        def fire() -> None:
            timers.pop(key, None)
            if self.indexes is not None and key in self.indexes.pools:
                self.spawn(self.reconcile_pool(self.indexes, *key))

        timers[key] = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)

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

    def _known(self, key: ChildKey) -> drift.Known | None:
        """What the operator last applied or read of a child, unless that is too old to trust
        (StatefulSets are watched: their memory does not expire)."""
        entry = self.known.get(key)
        if entry is None:
            return None
        known, since = entry
        if key[1] != "StatefulSet" and time.monotonic() - since > self.resync_seconds:
            return None
        return known

    def _remember(
        self, namespace: str, kind: str, desired_hash: str, live: Mapping[str, Any]
    ) -> None:
        meta = live.get("metadata", {})
        self.known[(namespace, kind, str(meta.get("name", "")))] = (
            (desired_hash, drift.child_marker(kind, meta)),
            time.monotonic(),
        )

    def forget_pool(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.metrics.forget_pool(namespace, name)
        for k in [k for k, pool in self.child_pools.items() if k[0] == namespace and pool == name]:
            self.known.pop(k, None)
            del self.child_pools[k]
        self.written.pop(key, None)
        self.sts_seen.pop(key, None)
        self.configs.pop(key, None)
        self.pod_status.pop(key, None)
        self.autoscaled.pop(key, None)
        self.scale_history.pop(key, None)
        self.scale_note.pop(key, None)
        self.drained_to.pop(key, None)
        if self.health is not None:
            self.health.forget(key)
        self.health_written.pop(key, None)
        self.ipmoves.forget(key)
        self.selected.pop(key, None)
        self.locks.pop(key, None)
        self.failures.pop(key, None)
        for timers in (self.retries, self.advances):
            handle = timers.pop(key, None)
            if handle is not None:
                handle.cancel()

    def _old_status(
        self, key: PoolKey, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, bool]:
        """The pool's live status: the index's, unless it has not yet seen the operator's own
        last write (then that, and True)."""
        written = self.written.get(key)
        if written is not None:
            if _int(body.get("metadata", {}).get("resourceVersion")) < written[0]:
                return written[1], True
            del self.written[key]
        status = body.get("status")
        return (dict(status) if isinstance(status, Mapping) else None), False

    async def _ensure_admin_secret(self, idx: Indexes, pool: SendingPool) -> bool:
        """The pool's admin token Secret, created once with a random token and never rewritten
        (its pods read it at start). Returns whether it was created."""
        namespace, name = naming.pool_namespace(pool), naming.pool_name(pool)
        secret = naming.admin_secret_name(name)
        if secret in idx.secrets.get(namespace, []):
            return False
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret,
                "namespace": namespace,
                "labels": {**naming.child_labels(name), naming.ADMIN_TOKEN_LABEL: name},
                "ownerReferences": [naming.owner_reference(pool)],
            },
            "type": "Opaque",
            "stringData": {naming.ADMIN_TOKEN_KEY: secrets.token_hex(32)},
        }
        created = await self.api.create(kube.SECRETS, obj)
        return created is not None

    async def _reconcile_pool(self, idx: Indexes, namespace: str, name: str) -> bool:
        key = (namespace, name)
        bodies = _bodies(idx.pools, key)
        if not bodies:
            return False
        body = bodies[0]
        pool = self.parse(body)
        if not isinstance(pool, SendingPool):
            return False
        old_status, fresher_than_index = self._old_status(key, body)
        if fresher_than_index and old_status is not None:
            try:
                fresher = SendingPoolStatus.model_validate(old_status)
            except ValidationError:
                fresher = None
            if fresher is not None:
                pool = pool.model_copy(update={"status": fresher})
        policies = [
            p
            for b in _bodies(idx.policies, namespace)
            if isinstance(p := self.parse(b), DeliveryPolicy)
        ]
        warmups = [w for b in _bodies(idx.warmups, key) if isinstance(w := self.parse(b), IPWarmup)]
        domains = [
            d
            for b in _bodies(idx.domains, namespace)
            if isinstance(d := self.parse(b), SendingDomain)
        ]
        sts_list = list(idx.statefulsets.get(key, []))
        sts = sts_list[0] if sts_list else None
        now = self.clock()
        rendered = render.render_pool(
            render.PoolInputs(
                pool=pool,
                policies=policies,
                warmups=warmups,
                secrets=frozenset(idx.secrets.get(namespace, [])),
                statefulset_status=sts.status() if sts is not None else None,
                image=self.image,
                now=now,
                autoscaled=self.autoscaled.get(key),
                live_replicas=sts.spec_replicas if sts is not None else None,
                drained_to=self.drained_to.get(key),
                domain_keys=domainplan.domain_dkim_keys(name, domains),
                verdicts=self.health.verdicts.get(key) if self.health is not None else None,
                sender_restrictions=domainplan.sender_restrictions(name, domains),
                dmarc_addresses=domainplan.dmarc_report_addresses(name, domains, self.dmarc_url),
                senders=self.ipmoves.of(key).senders,
                pending_moves=frozenset(self.ipmoves.of(key).pending),
                fleet_modes=self.ipmoves.of(key).modes,
            )
        )
        self.ipmoves.rendered(key, rendered.status.get("ips", []))
        self.sts_seen[key] = (sts.replicas, sts.ready) if sts is not None else (0, 0)
        if rendered.config_hash is not None:
            self.configs[key] = (rendered.config_hash, rendered.config_text)
        if rendered.next_warmup_advance is not None:
            delay = (rendered.next_warmup_advance - now).total_seconds()
            self._reconcile_later(self.advances, key, delay + 1.0)
        before = self.selected.get(key)
        self.selected[key] = frozenset(rendered.policies)
        if before != self.selected[key]:
            self.schedule_policy_statuses(idx, namespace)
        generation = body["metadata"].get("generation")
        # Never reconciled (no status, no StatefulSet): its children are applied without
        # reading them first.
        new_pool = old_status is None and sts is None
        created_secret = await self._ensure_admin_secret(idx, pool)

        async def sync(child: dict[str, Any]) -> tuple[str, bool] | None:
            """Apply one child if it needs it: None, or (what, whether it existed)."""
            kind = child["kind"]
            res = kube.BY_KIND[kind]
            child_name = child["metadata"]["name"]
            ckey = (namespace, kind, child_name)
            self.child_pools[ckey] = name
            want = child["metadata"]["annotations"][naming.HASH_ANNOTATION]
            if kind == "StatefulSet":
                action = drift.child_action(
                    want, sts.child if sts is not None else None, self._known(ckey)
                )
            else:
                known = self._known(ckey)
                action = "skip" if known is not None and known[0] == want else "check"
                if action == "check" and new_pool:
                    action = "apply"
            if action == "skip":
                return None
            live: dict[str, Any] | None = None
            if action == "check" or (
                action == "apply" and kind == "StatefulSet" and sts is not None
            ):
                live = await self.api.get(res, namespace, child_name)
                if action == "check" and live is not None and not drift.needs_apply(child, live):
                    self._remember(namespace, kind, want, live)
                    return None
            existed = live is not None or (kind == "StatefulSet" and sts is not None)
            to_apply, ignored = drift.keep_immutable(child, live)
            applied = await self.api.apply(res, to_apply)
            self._remember(namespace, kind, want, applied)
            if kind == "ConfigMap":
                self.post_event(
                    body,
                    "Normal",
                    "ConfigRendered",
                    f"{'Updated' if existed else 'Created'} ConfigMap {child_name}: engine.yaml "
                    f"{rendered.config_hash} rendered for generation {generation} "
                    f"(policies: {', '.join(rendered.policies) or 'none'})",
                )
            if ignored:
                self.post_event(
                    body,
                    "Warning",
                    "ImmutableFieldChanged",
                    f"StatefulSet {child_name}: {', '.join(ignored)} cannot change in place; "
                    "delete the StatefulSet with --cascade=orphan to apply it",
                )
            return f"{kind} {child_name}", existed

        # What the pods use (ServiceAccount, ConfigMap, Services, PDB) at once, then the
        # StatefulSet that makes them: one round trip of latency instead of five.
        first = [c for c in rendered.children if c["kind"] != "StatefulSet"]
        last = [c for c in rendered.children if c["kind"] == "StatefulSet"]
        results: list[tuple[str, bool] | BaseException | None] = []
        for group in (first, last):
            results += await asyncio.gather(*(sync(c) for c in group), return_exceptions=True)
            errors = [e for e in results if isinstance(e, BaseException)]
            if errors:
                raise errors[0]
        done = [x for x in results if isinstance(x, tuple)]
        if created_secret:
            done.insert(0, (f"Secret {naming.admin_secret_name(name)}", False))
        changed = bool(done)
        created = [what for what, existed in done if not existed]
        updated = [what for what, existed in done if existed]
        # One event per verb and reconcile, not one per child: each is a write.
        if created:
            self.post_event(body, "Normal", "Created", "Created " + ", ".join(created))
        if updated:
            self.post_event(body, "Normal", "Updated", "Updated " + ", ".join(updated))
        new_status = rendered.status
        note = self.scale_note.get(key)
        if note is not None:
            new_status = {**new_status, "scaleReason": note[0], "lastScaleTime": timestamp(note[1])}
        if self.health is not None and key in self.health.fields:
            new_status = {**new_status, **self.health.fields[key]}
        if rendered.config_hash is not None and key in self.pod_status:
            # The pods' own report, recounted against the config rendered now.
            new_status = {**new_status, **self.pod_status[key]}
            new_status["updatedPods"] = pods.updated_pods(
                self.pod_status[key]["pods"], rendered.config_hash
            )
        self.metrics.set_pool(namespace, name, {**(old_status or {}), **new_status})
        if drift.status_changed(old_status, new_status):
            result = await self.api.patch_status(kube.SENDINGPOOLS, namespace, name, new_status)
            if result is None:
                return changed
            changed = True
            self.written[key] = (
                _int(result.get("metadata", {}).get("resourceVersion")),
                dict(result.get("status") or new_status),
            )
            for ev in statuses.pool_events(old_status, new_status):
                self.post_event(body, ev.type, ev.reason, ev.message)
        if warmups:
            await self.update_warmup_statuses(idx, namespace, name)
            if any(w.status is None or w.status.start_time is None for w in warmups):
                # A warmup just started: render again once its startTime is in the index, so
                # the engines count its days from it.
                self._reconcile_later(self.advances, key, 2.0)
        if rendered.config_hash is not None and self.engines is not None:
            self.spawn(self.guarded("SendingPool", self.poll_pool(idx, namespace, name)))
        return changed

    # -- IP health -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        """Each pool's health check when its spec.health.interval has passed."""
        while True:
            await asyncio.sleep(HEALTH_TICK_SECONDS)
            idx = self.indexes
            if idx is None or self.health is None:
                continue
            now = self.clock()
            due = []
            for key in sorted(idx.pools):
                bodies = _bodies(idx.pools, key)
                pool = self.parse(bodies[0]) if bodies else None
                if isinstance(pool, SendingPool) and self.health.due(key, pool, now):
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
        if self.health is None:
            return
        bodies = _bodies(idx.pools, key)
        pool = self.parse(bodies[0]) if bodies else None
        if not isinstance(pool, SendingPool):
            return
        old_status, _ = self._old_status(key, bodies[0])
        ready = conditions.condition(old_status, "IPsHealthy")
        result = await self.health.check(
            key,
            pool,
            list(idx.pods.get(key, [])),
            self.clock(),
            prior_no_healthy=ready is not None and ready.get("reason") == quarantine.NO_HEALTHY,
        )
        for n in result.notices:
            self.post_event(bodies[0], n.type, n.reason, n.message)
        if result.changed:
            await self.reconcile_pool(idx, *key)
        elif drift.status_changed(old_status, result.status) and self._health_write_due(
            key, pool, old_status, result.status
        ):
            written = await self.api.patch_status(kube.SENDINGPOOLS, *key, result.status)
            if written is not None:
                self.written[key] = (
                    _int(written.get("metadata", {}).get("resourceVersion")),
                    dict(written.get("status") or {}),
                )
        if result.delta:
            await self._count_warmup_days(idx, key, result.delta)

    def _health_write_due(
        self,
        key: PoolKey,
        pool: SendingPool,
        old_status: Mapping[str, Any] | None,
        fields: Mapping[str, Any],
    ) -> bool:
        """Figures move with every message: the status takes them at most every ten intervals
        (at most 5 min; the operator's metrics have them at every check), a change of listing at
        once."""

        def listed(items: Any) -> list[Any]:
            return [(h.get("address"), h.get("listedOn")) for h in items or []]

        now = time.monotonic()
        last = self.health_written.get(key)
        period = min(10 * pool.spec.health.interval, HEALTH_STATUS_MAX_PERIOD)
        if (
            last is None
            or now - last >= period
            or listed((old_status or {}).get("health")) != listed(fields.get("health"))
        ):
            self.health_written[key] = now
            return True
        return False

    async def _count_warmup_days(
        self, idx: Indexes, key: PoolKey, delta: Mapping[tuple[str, str], Any]
    ) -> None:
        """Adds what the warmups' addresses did since the last check to their status.today,
        which the gates judge when the day ends."""
        for b in _bodies(idx.warmups, key):
            warmup = self.parse(b)
            if not isinstance(warmup, IPWarmup):
                continue
            today = statuses.warmup_today(warmup, delta)
            if today is None:
                continue
            result = await self.api.patch_status(
                kube.IPWARMUPS, key[0], b["metadata"]["name"], {"today": today}
            )
            if result is not None:
                self._note_own_write("IPWarmup", result)

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
        key = (namespace, name)
        if self.engines is None or key in self.polling:
            return
        self.polling.add(key)
        try:
            await self._poll_pool(idx, key, self.engines)
        finally:
            self.polling.discard(key)

    async def _poll_pool(self, idx: Indexes, key: PoolKey, engines: EngineApi) -> None:
        namespace, name = key
        refs = pods.pollable(list(idx.pods.get(key, [])))
        if not refs and key not in self.pod_status:
            return
        answers = await asyncio.gather(*(engines.status(p.ip or "") for p in refs))
        reports = [pods.PodReport(p, a) for p, a in zip(refs, answers, strict=True)]
        desired = self.configs.get(key)
        tokens = list(idx.admin_tokens.get(key, []))
        if desired is not None and tokens:
            behind = [r for r in reports if pods.needs_push(r, desired[0])]
            results = await asyncio.gather(
                *(engines.reload(r.pod.ip or "", tokens[0], desired[1]) for r in behind)
            )
            for r, (ok, message) in zip(behind, results, strict=True):
                if ok:
                    log.info("pushed config %s to pod %s/%s", desired[0], namespace, r.pod.name)
                    fresh = await engines.status(r.pod.ip or "")
                    reports[reports.index(r)] = pods.PodReport(r.pod, fresh)
                else:
                    log.warning(
                        "pod %s/%s refused config %s: %s",
                        namespace,
                        r.pod.name,
                        desired[0],
                        message,
                    )
        fields = pods.pods_status(reports, desired[0] if desired else None)
        bodies = _bodies(idx.pools, key)
        pool = self.parse(bodies[0]) if bodies else None
        if not isinstance(pool, SendingPool):
            return
        rerender = self._autoscale(key, pool, bodies[0], reports, idx)
        pool_body = bodies[0]
        if await self.ipmoves.observe(
            key,
            reports,
            engines,
            tokens[0] if tokens else None,
            lambda t, r, m: self.post_event(pool_body, t, r, m),
        ):
            rerender = True
        fields.update(await self._drain(key, pool, bodies[0], reports, idx, tokens, engines))
        if plan_ready := (
            key in self.drained_to and self._live_replicas(idx, key) != self.drained_to[key]
        ):
            rerender = rerender or plan_ready
        old_status, _ = self._old_status(key, bodies[0])
        for q in pods.new_engine_quarantines(
            (old_status or {}).get("engineQuarantines"), fields["engineQuarantines"]
        ):
            self.post_event(
                bodies[0],
                "Warning",
                "EngineQuarantined",
                f"{q['address']} quarantined for {q['provider']} by pod {q['pod']}: "
                f"{q.get('reason') or 'a reply rule'}",
            )
        self.pod_status[key] = fields
        self.metrics.set_pool(namespace, name, {**(old_status or {}), **fields})
        if drift.status_changed(old_status, fields):
            result = await self.api.patch_status(kube.SENDINGPOOLS, namespace, name, fields)
            if result is not None:
                self.written[key] = (
                    _int(result.get("metadata", {}).get("resourceVersion")),
                    dict(result.get("status") or {}),
                )
        rows = pods.warmup_rows(reports)
        for b in _bodies(idx.warmups, key):
            warmup = self.parse(b)
            if not isinstance(warmup, IPWarmup):
                continue
            sent = {"sentToday": statuses.warmup_sent_today(warmup, rows)}
            if drift.status_changed(b.get("status"), sent):
                meta = b["metadata"]
                result = await self.api.patch_status(kube.IPWARMUPS, namespace, meta["name"], sent)
                if result is not None:
                    self._note_own_write("IPWarmup", result)
        if rerender:
            self.spawn(self.reconcile_pool(idx, namespace, name))

    def _live_replicas(self, idx: Indexes, key: PoolKey) -> int | None:
        sts = list(idx.statefulsets.get(key, []))
        return sts[0].spec_replicas if sts else None

    def _autoscale(
        self,
        key: PoolKey,
        pool: SendingPool,
        body: Mapping[str, Any],
        reports: list[pods.PodReport],
        idx: Indexes,
    ) -> bool:
        """The built-in autoscaler's look at the queue; True when the pod count changes."""
        spec = pool.spec
        if not spec.autoscaling.enabled:
            self.autoscaled.pop(key, None)
            self.scale_history.pop(key, None)
            return False
        current = self.autoscaled.get(key)
        if current is None:
            current = self._live_replicas(idx, key) or render.target_replicas(pool, None)
        depths = [
            q for r in reports if r.status is not None and (q := pods.queued(r.status)) is not None
        ]
        now = self.clock()
        decision = autoscale.decide(
            current,
            sum(depths) if depths else None,
            spec.autoscaling.target_queue_per_pod,
            spec.replicas.min,
            spec.replicas.max,
            self.scale_history.get(key, ()),
            now,
            spec.autoscaling.scale_down_stabilization,
        )
        self.scale_history[key] = decision.history
        self.autoscaled[key] = decision.replicas
        if not decision.changed:
            return False
        self.scale_note[key] = (decision.reason, now)
        verb = "ScaledUp" if decision.replicas > current else "ScaledDown"
        self.post_event(body, "Normal", verb, decision.reason)
        return True

    async def _drain(
        self,
        key: PoolKey,
        pool: SendingPool,
        body: Mapping[str, Any],
        reports: list[pods.PodReport],
        idx: Indexes,
        tokens: list[str],
        engines: EngineApi,
    ) -> dict[str, Any]:
        """Scale-down without losing mail: the leaving pods hand their queue to the pods that
        stay before the StatefulSet shrinks; a scale-down called off undrains them. Everything
        it needs is in the pods' own answers and the StatefulSet, so an operator restarted in
        the middle of a drain carries on where it was."""
        target = render.target_replicas(pool, self.autoscaled.get(key))
        live = self._live_replicas(idx, key)
        plan = pods.drain_plan(reports, target, live, naming.ADMIN_PORT)
        token = tokens[0] if tokens else None
        if token is not None:
            for r in plan.drain:
                queued = pods.queued(r.status) if r.status is not None else None
                state = await engines.drain(r.pod.ip or "", token, plan.handoff)
                if state is not None:
                    to = ", ".join(u.split("//")[1] for u in plan.handoff) or "nobody: it delivers"
                    self.post_event(
                        body,
                        "Normal",
                        "Draining",
                        f"pod {r.pod.name} drains before the scale-down to {target}: "
                        f"{queued if queued is not None else '?'} messages handed to {to}",
                    )
            for r in plan.undrain:
                if await engines.undrain(r.pod.ip or "", token):
                    self.post_event(
                        body,
                        "Normal",
                        "DrainCancelled",
                        f"pod {r.pod.name} takes mail again: the pool scales to {target}",
                    )
        if plan.drained:
            if self.drained_to.get(key) != target:
                self.drained_to[key] = target
                self.post_event(
                    body,
                    "Normal",
                    "Drained",
                    f"{', '.join(plan.leaving)} handed off every message: "
                    f"scaling the StatefulSet from {live} to {target}",
                )
        elif live is None or live <= target:
            self.drained_to.pop(key, None)
        out: dict[str, Any] = {"drainingPods": plan.leaving}
        if plan.left is not None and plan.leaving:
            out["handoffLeft"] = plan.left
        elif not plan.leaving:
            out["handoffLeft"] = 0
        return out

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
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        return self.own_status_writes.get(key) == _int(meta.get("resourceVersion"))

    def _note_own_write(self, kind: str, result: Mapping[str, Any]) -> None:
        rmeta = result.get("metadata", {})
        self.own_status_writes[(kind, str(rmeta.get("namespace")), str(rmeta.get("name")))] = _int(
            rmeta.get("resourceVersion")
        )

    async def _write_status_if_changed(
        self,
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
        live = await self.api.get(res, meta["namespace"], meta["name"])
        if live is None:
            return None
        new_status = compute(live)
        if new_status is None or not drift.status_changed(live.get("status"), new_status):
            return None
        result = await self.api.patch_status(res, meta["namespace"], meta["name"], new_status)
        if result is None:
            return None
        self._note_own_write(res.kind, result)
        return live, new_status

    async def update_policy_statuses(self, idx: Indexes, namespace: str) -> None:
        pools = self.pools_in(idx, namespace)
        now = self.clock()

        def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
            policy = self.parse(body)
            if not isinstance(policy, DeliveryPolicy):
                return None
            return statuses.policy_status(policy, pools, now)

        for b in _bodies(idx.policies, namespace):
            await self._write_status_if_changed(kube.DELIVERYPOLICIES, b, compute)

    async def update_warmup_statuses(self, idx: Indexes, namespace: str, pool: str) -> None:
        pools = [p for p in self.pools_in(idx, namespace) if naming.pool_name(p) == pool]
        now = self.clock()

        def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
            warmup = self.parse(body)
            if not isinstance(warmup, IPWarmup):
                return None
            status = statuses.warmup_status(warmup, pools[0] if pools else None, now)
            name = str(warmup.metadata.get("name", ""))
            self.metrics.set_warmup(namespace, name, pool, status)
            return status

        for b in _bodies(idx.warmups, (namespace, pool)):
            written = await self._write_status_if_changed(kube.IPWARMUPS, b, compute)
            if written is not None:
                live, new_status = written
                for ev in statuses.warmup_events(live.get("status"), new_status):
                    self.post_event(live, ev.type, ev.reason, ev.message)

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
            self.parsed.pop(str(meta.get("uid", "")), None)
            self.schedule_policy_statuses(idx, namespace)
            await self.guarded("IPWarmup", self.update_warmup_statuses(idx, namespace, name))
            return
        written = self.written.get(key)
        if written is not None and _int(meta.get("resourceVersion")) == written[0]:
            # The echo of the operator's own status write: nothing new.
            return
        await self.reconcile_pool(idx, namespace, name)

    def _selects(self, idx: Indexes, key: PoolKey, labels: Mapping[str, str]) -> bool:
        for b in _bodies(idx.pools, key):
            pool = self.parse(b)
            if isinstance(pool, SendingPool) and policy_merge.selector_matches(
                pool.spec.policy_selector, labels
            ):
                return True
        return False

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
        if event_type != "DELETED" and self.own_write("DeliveryPolicy", body.get("metadata", {})):
            return
        labels = dict(body.get("metadata", {}).get("labels") or {})
        deleted = event_type == "DELETED"
        affected = [
            key
            for key in self.pool_keys(idx, namespace)
            if name in self.selected.get(key, frozenset())
            or (not deleted and self._selects(idx, key, labels))
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
        before = self.warmup_pools.get((namespace, name))
        if event_type == "DELETED":
            self.warmup_pools.pop((namespace, name), None)
            self.metrics.forget_warmup(namespace, name)
        else:
            self.warmup_pools[(namespace, name)] = pool
        names = {p for p in (pool, before) if p}
        await self.reconcile_all(
            idx, [(namespace, p) for p in names if (namespace, p) in idx.pools]
        )
        self.metrics.reconciles.labels(
            "IPWarmup", "pools-rerendered" if names else "no-pools"
        ).inc()
        for p in names:
            await self.guarded("IPWarmup", self.update_warmup_statuses(idx, namespace, p))

    @staticmethod
    def references(pool: SendingPool, secret: str) -> bool:
        sub = pool.spec.submission
        return (
            secret in naming.dkim_secrets(pool.spec)
            or secret in (sub.auth_secret_ref, sub.tls_secret_ref)
            or secret == naming.admin_secret_name(naming.pool_name(pool))
        )

    async def on_secret(self, idx: Indexes, namespace: str, name: str) -> None:
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
        ckey = (namespace, "StatefulSet", name)
        if event_type is None:
            # The initial listing: the pool's own first event reconciles it.
            return
        if event_type == "DELETED":
            self.known.pop(ckey, None)
        elif not statefulset_is_news(
            event_type,
            live_statefulset(meta, status),
            self.sts_seen.get((namespace, pool)),
            self._known(ckey),
        ):
            return
        await self.reconcile_pool(idx, namespace, pool)

    async def on_pod(self, idx: Indexes, namespace: str, pool: str) -> None:
        """A pool pod came, went or changed address: ask the pods at once rather than at the
        next poll, so a new pod gets its config and the status its numbers."""
        if self.engines is not None and (namespace, pool) in idx.pools:
            await self.guarded("SendingPool", self.poll_pool(idx, namespace, pool))


def _parse(body: Mapping[str, Any]) -> KubeObject | None:
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
