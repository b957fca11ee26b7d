"""Kopf handlers: keep indexes of what render.py needs, reconcile the pools an event affects.

Every decision is in render.py; here we read (Kopf indexes, GETs of children), compare, and
write only what differs: children by server-side apply when their hash or content drifted,
status by merge patch when it changed. Watch events only (no on.create/update handlers), so Kopf
stores nothing on our objects and puts no finalizers on them; children go with their pool by
ownerReference garbage collection.

A reconcile with nothing new sends no request: the operator remembers the hash and version of
each child it applied or checked (`known`), sees StatefulSets through a watch, and reads the
other children only when it has no such memory of them (after a restart) or when a resync
interval has passed (someone may have edited them by hand). At most RECONCILE_CONCURRENCY
reconciles talk to the API server at once, so a thousand new pools queue instead of timing out.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from pydantic import ValidationError

from mailfleet.operator import kube
from mailfleet.operator import render as r
from mailfleet.operator.crd_models import (
    GROUP,
    VERSION,
    DeliveryPolicy,
    IPWarmup,
    KubeObject,
    SendingPool,
    SendingPoolStatus,
    parse_object,
)
from mailfleet.operator.metrics import OperatorMetrics

log = logging.getLogger("mailfleet.operator")

DEFAULT_IMAGE = "ghcr.io/mailfleet/mailfleet:0.1.0"
MANAGED = {"app.kubernetes.io/managed-by": r.MANAGER}
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Enough to keep the API server busy, few enough that requests do not queue into timeouts.
RECONCILE_CONCURRENCY = 24
# How long the operator trusts its memory of an unwatched child before reading it again, and
# how often every pool is reconciled for that (spread over the interval).
RESYNC_SECONDS = 600.0

PoolKey = tuple[str, str]
ChildKey = tuple[str, str, str]  # namespace, kind, name


@dataclass
class OperatorState:
    """Process-wide state: configuration from the command line and in-memory bookkeeping."""

    image: str = DEFAULT_IMAGE
    peering_mandatory: bool = False
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    client: kube.KubeClient | None = None
    settings: kopf.OperatorSettings | None = None
    indexes: Indexes | None = None
    locks: dict[PoolKey, asyncio.Lock] = field(default_factory=dict)
    # Policies each pool selected at its last render: a policy that stops matching a pool
    # re-renders it too.
    selected: dict[PoolKey, frozenset[str]] = field(default_factory=dict)
    # The pool each warmup named when last seen: moving a warmup re-renders both pools.
    warmup_pools: dict[PoolKey, str] = field(default_factory=dict)
    failures: dict[PoolKey, int] = field(default_factory=dict)
    retries: dict[PoolKey, asyncio.TimerHandle] = field(default_factory=dict)
    # The hash and marker of each child as the operator last applied or read it, and when.
    known: dict[ChildKey, tuple[r.Known, float]] = field(default_factory=dict)
    # The pool status the operator last wrote and its resourceVersion: the index may lag
    # behind it, and the watch event it causes is no news.
    written: dict[PoolKey, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    # The StatefulSet status (replicas, readyReplicas) the pool's status was last rendered from.
    sts_seen: dict[PoolKey, tuple[int, int]] = field(default_factory=dict)
    semaphore: asyncio.Semaphore | None = None
    resync_seconds: float = RESYNC_SECONDS


STATE = OperatorState()


@dataclass(frozen=True)
class Indexes:
    pools: kopf.Index[PoolKey, dict[str, Any]]
    policies: kopf.Index[str, dict[str, Any]]
    warmups: kopf.Index[PoolKey, dict[str, Any]]
    secrets: kopf.Index[str, str]
    statefulsets: kopf.Index[PoolKey, LiveStatefulSet]


def _bodies(index: kopf.Index[Any, dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    return list(index.get(key, []))


def _pool_keys(idx: Indexes, namespace: str) -> list[PoolKey]:
    return sorted(k for k in idx.pools if k[0] == namespace)


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


_parsed: dict[str, tuple[str, KubeObject | None]] = {}


def parse(body: Mapping[str, Any]) -> KubeObject | None:
    """A mailfleet object from a watched body, cached by uid and resourceVersion."""
    meta = body.get("metadata", {})
    uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
    cached = _parsed.get(uid)
    if uid and version and cached is not None and cached[0] == version:
        return cached[1]
    obj = _parse(body)
    if uid and version:
        _parsed[uid] = (version, obj)
    return obj


def _parse(body: Mapping[str, Any]) -> KubeObject | None:
    """A status we cannot read is dropped; a spec we cannot read skips the object (the API
    server validates it, so that means a newer schema than ours)."""
    data = _plain(body)
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


# --- settings ----------------------------------------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    STATE.settings = settings
    settings.posting.reporting_component = r.MANAGER
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or os.uname().nodename
    # Watches end server-side after 5 minutes and are re-established; a silent connection is
    # dropped after 10.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Only what the operator manages comes over the StatefulSet watch.
    settings.watching.label_selectors["apps", "statefulsets"] = (
        f"app.kubernetes.io/managed-by={r.MANAGER}"
    )
    # The CRDs are installed before the operator: no CRD or namespace watch (nor the RBAC).
    settings.scanning.disabled = True
    settings.execution.max_workers = 4
    settings.peering.mandatory = STATE.peering_mandatory
    # Events are posted explicitly (post_event); Kopf's own per-object INFO logs stay logs.
    settings.posting.level = logging.WARNING
    STATE.semaphore = asyncio.Semaphore(RECONCILE_CONCURRENCY)
    _spawn(_resync_loop())


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for handle in STATE.retries.values():
        handle.cancel()
    if STATE.client is not None:
        await STATE.client.close()


def client() -> kube.KubeClient:
    if STATE.client is None:

        async def login() -> kopf.ConnectionInfo | None:
            settings = STATE.settings or kopf.OperatorSettings()
            return login_fn(settings)

        STATE.client = kube.KubeClient(login, STATE.metrics)
    return STATE.client


def login_fn(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: KUBECONFIG / ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings)
    return info or kopf.login_with_kubeconfig(settings=settings)


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    return login_fn(settings)


# --- indexes -----------------------------------------------------------------------------------


@kopf.index(GROUP, VERSION, "sendingpools")
def pool_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[PoolKey, Any]:
    namespace = namespace or ""
    return {(namespace, name): _slim(body)}


@kopf.index(GROUP, VERSION, "deliverypolicies")
def policy_index(namespace: str | None, body: kopf.Body, **_: Any) -> dict[str, Any]:
    namespace = namespace or ""
    return {namespace: _slim(body)}


@kopf.index(GROUP, VERSION, "ipwarmups")
def warmup_index(
    namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[PoolKey, Any]:
    namespace = namespace or ""
    return {(namespace, str(spec.get("poolRef", ""))): _slim(body)}


@kopf.index("v1", "secrets")
def secret_index(namespace: str | None, name: str, **_: Any) -> dict[str, str]:
    namespace = namespace or ""
    # Names only: Secret contents never enter the operator's memory beyond the watch itself.
    return {namespace: name}


@dataclass(frozen=True)
class LiveStatefulSet:
    child: r.LiveChild
    replicas: int
    ready: int

    def status(self) -> dict[str, int]:
        return {"replicas": self.replicas, "readyReplicas": self.ready}


def live_statefulset(meta: Mapping[str, Any], status: Mapping[str, Any]) -> LiveStatefulSet:
    return LiveStatefulSet(
        child=r.live_child("StatefulSet", meta),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
    )


@kopf.index("apps", "v1", "statefulsets", labels=MANAGED)
def statefulset_index(
    namespace: str | None, name: str, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[PoolKey, LiveStatefulSet]:
    namespace = namespace or ""
    # What the pool's status and the apply decision need, not the object.
    return {(namespace, name): live_statefulset(meta, status)}


def _indexes(kwargs: Mapping[str, Any]) -> Indexes:
    idx = Indexes(
        pools=kwargs["pool_index"],
        policies=kwargs["policy_index"],
        warmups=kwargs["warmup_index"],
        secrets=kwargs["secret_index"],
        statefulsets=kwargs["statefulset_index"],
    )
    STATE.indexes = idx
    return idx


# --- events ------------------------------------------------------------------------------------


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    STATE.metrics.events.labels(type_, reason).inc()
    kopf.event(dict(body), type=type_, reason=reason, message=message)  # type: ignore[arg-type]
    level = logging.WARNING if type_ == "Warning" else logging.INFO
    meta = body.get("metadata", {})
    log.log(
        level,
        "%s %s/%s: %s: %s",
        body.get("kind"),
        meta.get("namespace"),
        meta.get("name"),
        reason,
        message,
    )


# --- reconciling a pool ------------------------------------------------------------------------


async def reconcile_pool(idx: Indexes, namespace: str, name: str) -> None:
    key = (namespace, name)
    lock = STATE.locks.setdefault(key, asyncio.Lock())
    if STATE.semaphore is None:
        STATE.semaphore = asyncio.Semaphore(RECONCILE_CONCURRENCY)
    async with lock, STATE.semaphore:
        t0 = time.monotonic()
        try:
            changed = await _reconcile_pool(idx, namespace, name)
        except Exception as e:
            STATE.metrics.reconciles.labels("SendingPool", "error").inc()
            STATE.metrics.errors.labels("SendingPool", type(e).__name__).inc()
            # The type too: a timeout's str() is empty.
            log.error(
                "reconcile of SendingPool %s/%s failed: %s: %s",
                namespace,
                name,
                type(e).__name__,
                str(e) or repr(e),
            )
            _schedule_retry(key)
            return
        finally:
            STATE.metrics.duration.labels("SendingPool").observe(time.monotonic() - t0)
        STATE.failures.pop(key, None)
        handle = STATE.retries.pop(key, None)
        if handle is not None:
            handle.cancel()
        STATE.metrics.reconciles.labels("SendingPool", "changed" if changed else "unchanged").inc()


_tasks: set[asyncio.Task[None]] = set()


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _schedule_retry(key: PoolKey) -> None:
    """Watch events are not redelivered: a failed reconcile retries itself, backing off."""
    n = STATE.failures.get(key, 0)
    STATE.failures[key] = n + 1
    delay = RETRY_DELAYS[min(n, len(RETRY_DELAYS) - 1)]
    old = STATE.retries.pop(key, None)
    if old is not None:
        old.cancel()

    def fire() -> None:
        STATE.retries.pop(key, None)
        if STATE.indexes is not None:
            _spawn(reconcile_pool(STATE.indexes, *key))

    STATE.retries[key] = asyncio.get_running_loop().call_later(delay, fire)


async def _resync_loop() -> None:
    """Every pool once per resync interval, spread over it: unwatched children the operator
    has not read for that long are read again, and what drifted is put back."""
    while True:
        await asyncio.sleep(STATE.resync_seconds)
        idx = STATE.indexes
        if idx is None:
            continue
        keys = sorted(idx.pools)
        pause = STATE.resync_seconds / max(len(keys), 1) / 2
        for ns, name in keys:
            if (ns, name) in idx.pools:
                await reconcile_pool(idx, ns, name)
            await asyncio.sleep(pause)


def _known(key: ChildKey) -> r.Known | None:
    """What the operator last applied or read of a child, unless that is too old to trust
    (StatefulSets are watched: their memory does not expire)."""
    entry = STATE.known.get(key)
    if entry is None:
        return None
    known, since = entry
    if key[1] != "StatefulSet" and time.monotonic() - since > STATE.resync_seconds:
        return None
    return known


def _remember(namespace: str, kind: str, desired_hash: str, live: Mapping[str, Any]) -> None:
    meta = live.get("metadata", {})
    STATE.known[(namespace, kind, str(meta.get("name", "")))] = (
        (desired_hash, r.child_marker(kind, meta)),
        time.monotonic(),
    )


def _forget_pool(namespace: str, name: str) -> None:
    key = (namespace, name)
    for k in [k for k, pool in _CHILD_POOLS.items() if k[0] == namespace and pool == name]:
        STATE.known.pop(k, None)
        del _CHILD_POOLS[k]
    STATE.written.pop(key, None)
    STATE.sts_seen.pop(key, None)


# The pool each child belongs to, for forgetting a deleted pool's children.
_CHILD_POOLS: dict[ChildKey, str] = {}


def _old_status(key: PoolKey, body: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The pool's live status: the index's, unless it has not yet seen the operator's own last
    write (then that, and True)."""
    written = STATE.written.get(key)
    if written is not None:
        if _int(body.get("metadata", {}).get("resourceVersion")) < written[0]:
            return written[1], True
        del STATE.written[key]
    status = body.get("status")
    return (dict(status) if isinstance(status, Mapping) else None), False


async def _reconcile_pool(idx: Indexes, namespace: str, name: str) -> bool:
    key = (namespace, name)
    bodies = _bodies(idx.pools, key)
    if not bodies:
        return False
    body = bodies[0]
    pool = parse(body)
    if not isinstance(pool, SendingPool):
        return False
    old_status, fresher_than_index = _old_status(key, body)
    if fresher_than_index and old_status is not None:
        try:
            fresher = SendingPoolStatus.model_validate(old_status)
        except ValidationError:
            fresher = None
        if fresher is not None:
            pool = pool.model_copy(update={"status": fresher})
    policies = [
        p for b in _bodies(idx.policies, namespace) if isinstance(p := parse(b), DeliveryPolicy)
    ]
    warmups = [w for b in _bodies(idx.warmups, key) if isinstance(w := parse(b), IPWarmup)]
    sts_list = list(idx.statefulsets.get(key, []))
    sts = sts_list[0] if sts_list else None
    rendered = r.render_pool(
        r.PoolInputs(
            pool=pool,
            policies=policies,
            warmups=warmups,
            secrets=frozenset(idx.secrets.get(namespace, [])),
            statefulset_status=sts.status() if sts is not None else None,
            image=STATE.image,
            now=r.now_utc(),
        )
    )
    STATE.sts_seen[key] = (sts.replicas, sts.ready) if sts is not None else (0, 0)
    before = STATE.selected.get(key)
    STATE.selected[key] = frozenset(rendered.policies)
    if before != STATE.selected[key]:
        _schedule_policy_statuses(idx, namespace)
    api = client()
    generation = body["metadata"].get("generation")
    # Never reconciled (no status, no StatefulSet): its children are applied without reading
    # them first.
    new_pool = old_status is None and sts is None

    async def sync(child: dict[str, Any]) -> tuple[str, bool] | None:
        """Apply one child if it needs it: None, or (what, whether it existed)."""
        kind = child["kind"]
        res = kube.BY_KIND[kind]
        child_name = child["metadata"]["name"]
        ckey = (namespace, kind, child_name)
        _CHILD_POOLS[ckey] = name
        want = child["metadata"]["annotations"][r.HASH_ANNOTATION]
        if kind == "StatefulSet":
            action = r.child_action(want, sts.child if sts is not None else None, _known(ckey))
        else:
            known = _known(ckey)
            action = "skip" if known is not None and known[0] == want else "check"
            if action == "check" and new_pool:
                action = "apply"
        if action == "skip":
            return None
        live: dict[str, Any] | None = None
        if action == "check" or (action == "apply" and kind == "StatefulSet" and sts is not None):
            live = await api.get(res, namespace, child_name)
            if action == "check" and live is not None and not r.needs_apply(child, live):
                _remember(namespace, kind, want, live)
                return None
        existed = live is not None or (kind == "StatefulSet" and sts is not None)
        to_apply, ignored = r.keep_immutable(child, live)
        applied = await api.apply(res, to_apply)
        _remember(namespace, kind, want, applied)
        if kind == "ConfigMap":
            post_event(
                body,
                "Normal",
                "ConfigRendered",
                f"{'Updated' if existed else 'Created'} ConfigMap {child_name}: engine.yaml "
                f"rendered for generation {generation} "
                f"(policies: {', '.join(rendered.policies) or 'none'})",
            )
        if ignored:
            post_event(
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
    changed = bool(done)
    created = [what for what, existed in done if not existed]
    updated = [what for what, existed in done if existed]
    # One event per verb and reconcile, not one per child: each is a write.
    if created:
        post_event(body, "Normal", "Created", "Created " + ", ".join(created))
    if updated:
        post_event(body, "Normal", "Updated", "Updated " + ", ".join(updated))
    new_status = rendered.status
    if r.status_changed(old_status, new_status):
        result = await api.patch_status(kube.SENDINGPOOLS, namespace, name, new_status)
        if result is None:
            return changed
        changed = True
        STATE.written[key] = (
            _int(result.get("metadata", {}).get("resourceVersion")),
            dict(result.get("status") or new_status),
        )
        for ev in r.pool_events(old_status, new_status):
            post_event(body, ev.type, ev.reason, ev.message)
    if warmups:
        await _update_warmup_statuses(idx, namespace, name)
    return changed


# Namespace -> when its policy statuses were last asked for.
_pending_policy_status: dict[str, float] = {}
POLICY_STATUS_QUIET = 1.0
POLICY_STATUS_MAX_DELAY = 5.0


def _schedule_policy_statuses(idx: Indexes, namespace: str) -> None:
    """Policy status counts pools: a burst of pool reconciles shares one update, written once
    the burst pauses (or after POLICY_STATUS_MAX_DELAY)."""
    pending = namespace in _pending_policy_status
    _pending_policy_status[namespace] = time.monotonic()
    if pending:
        return

    async def run() -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(POLICY_STATUS_QUIET / 2)
            now = time.monotonic()
            last = _pending_policy_status.get(namespace, start)
            if now - last >= POLICY_STATUS_QUIET or now - start >= POLICY_STATUS_MAX_DELAY:
                break
        _pending_policy_status.pop(namespace, None)
        await _guarded("DeliveryPolicy", _update_policy_statuses(idx, namespace))

    _spawn(run())


# resourceVersions of the operator's own status writes to policies and warmups: their watch
# events are no news.
_own_status_writes: dict[tuple[str, str, str], int] = {}


def _own_write(kind: str, meta: Mapping[str, Any]) -> bool:
    key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
    return _own_status_writes.get(key) == _int(meta.get("resourceVersion"))


async def _write_status_if_changed(
    res: kube.Resource,
    body: Mapping[str, Any],
    compute: Callable[[Mapping[str, Any]], dict[str, Any] | None],
) -> None:
    """Patch the status `compute` gives for the object when it differs from the live one; when
    the index has an older version, compute again from the live object (lastTransitionTime and
    startTime come from the status they replace)."""
    new_status = compute(body)
    if new_status is None or not r.status_changed(body.get("status"), new_status):
        return
    meta = body["metadata"]
    api = client()
    live = await api.get(res, meta["namespace"], meta["name"])
    if live is None:
        return
    new_status = compute(live)
    if new_status is None or not r.status_changed(live.get("status"), new_status):
        return
    result = await api.patch_status(res, meta["namespace"], meta["name"], new_status)
    if result is not None:
        rmeta = result.get("metadata", {})
        _own_status_writes[(res.kind, meta["namespace"], meta["name"])] = _int(
            rmeta.get("resourceVersion")
        )


def _pools_in(idx: Indexes, namespace: str) -> list[SendingPool]:
    out = []
    for key in _pool_keys(idx, namespace):
        for b in _bodies(idx.pools, key):
            if isinstance(p := parse(b), SendingPool):
                out.append(p)
    return out


async def _update_policy_statuses(idx: Indexes, namespace: str) -> None:
    pools = _pools_in(idx, namespace)
    now = r.now_utc()

    def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
        policy = parse(body)
        if not isinstance(policy, DeliveryPolicy):
            return None
        status: dict[str, Any] = r.policy_status(policy, pools, now)
        return status

    for b in _bodies(idx.policies, namespace):
        await _write_status_if_changed(kube.DELIVERYPOLICIES, b, compute)


async def _update_warmup_statuses(idx: Indexes, namespace: str, pool: str) -> None:
    pools = [p for p in _pools_in(idx, namespace) if r.pool_name(p) == pool]
    now = r.now_utc()

    def compute(body: Mapping[str, Any]) -> dict[str, Any] | None:
        warmup = parse(body)
        if not isinstance(warmup, IPWarmup):
            return None
        status: dict[str, Any] = r.warmup_status(warmup, pools[0] if pools else None, now)
        return status

    for b in _bodies(idx.warmups, (namespace, pool)):
        await _write_status_if_changed(kube.IPWARMUPS, b, compute)


async def _reconcile_all(idx: Indexes, keys: Iterable[PoolKey]) -> None:
    await asyncio.gather(*(reconcile_pool(idx, ns, name) for ns, name in sorted(set(keys))))


# --- watch handlers ----------------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "sendingpools")
async def pool_event(event: kopf.RawEvent, namespace: str | None, name: str, **kwargs: Any) -> None:
    namespace = namespace or ""
    idx = _indexes(kwargs)
    key = (namespace, name)
    if event["type"] == "DELETED":
        _forget_pool(namespace, name)
        STATE.selected.pop(key, None)
        STATE.locks.pop(key, None)
        STATE.failures.pop(key, None)
        handle = STATE.retries.pop(key, None)
        if handle is not None:
            handle.cancel()
        _parsed.pop(str(kwargs["meta"].get("uid", "")), None)
        _schedule_policy_statuses(idx, namespace)
        await _guarded("IPWarmup", _update_warmup_statuses(idx, namespace, name))
        return
    written = STATE.written.get(key)
    if written is not None and _int(kwargs["meta"].get("resourceVersion")) == written[0]:
        # The echo of the operator's own status write: nothing new.
        return
    await reconcile_pool(idx, namespace, name)


async def _guarded(kind: str, work: Any) -> None:
    try:
        await work
    except Exception as e:
        STATE.metrics.errors.labels(kind, type(e).__name__).inc()
        log.error("status update of %s failed: %s: %s", kind, type(e).__name__, str(e) or repr(e))


def _selects(idx: Indexes, key: PoolKey, labels: Mapping[str, str]) -> bool:
    for b in _bodies(idx.pools, key):
        pool = parse(b)
        if isinstance(pool, SendingPool) and r.selector_matches(pool.spec.policy_selector, labels):
            return True
    return False


@kopf.on.event(GROUP, VERSION, "deliverypolicies")
async def policy_event(
    event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
) -> None:
    namespace = namespace or ""
    idx = _indexes(kwargs)
    if event["type"] is None:
        # The initial listing: every pool's own first event renders it with this policy; its
        # status can be written now (every pool is in the index already).
        await _guarded("DeliveryPolicy", _update_policy_statuses(idx, namespace))
        return
    if event["type"] != "DELETED" and _own_write("DeliveryPolicy", body.get("metadata", {})):
        return
    labels = dict(body.get("metadata", {}).get("labels") or {})
    deleted = event["type"] == "DELETED"
    affected = [
        key
        for key in _pool_keys(idx, namespace)
        if name in STATE.selected.get(key, frozenset())
        or (not deleted and _selects(idx, key, labels))
    ]
    await _reconcile_all(idx, affected)
    STATE.metrics.reconciles.labels(
        "DeliveryPolicy", "pools-rerendered" if affected else "no-pools"
    ).inc()
    await _guarded("DeliveryPolicy", _update_policy_statuses(idx, namespace))


@kopf.on.event(GROUP, VERSION, "ipwarmups")
async def warmup_event(
    event: kopf.RawEvent, namespace: str | None, name: str, spec: kopf.Spec, **kwargs: Any
) -> None:
    namespace = namespace or ""
    idx = _indexes(kwargs)
    pool = str(spec.get("poolRef", ""))
    if event["type"] != "DELETED" and _own_write("IPWarmup", kwargs["meta"]):
        return
    before = STATE.warmup_pools.get((namespace, name))
    if event["type"] == "DELETED":
        STATE.warmup_pools.pop((namespace, name), None)
    else:
        STATE.warmup_pools[(namespace, name)] = pool
    pools = {p for p in (pool, before) if p}
    await _reconcile_all(idx, [(namespace, p) for p in pools if (namespace, p) in idx.pools])
    STATE.metrics.reconciles.labels("IPWarmup", "pools-rerendered" if pools else "no-pools").inc()
    for p in pools:
        await _guarded("IPWarmup", _update_warmup_statuses(idx, namespace, p))


def _references(pool: SendingPool, secret: str) -> bool:
    sub = pool.spec.submission
    return secret in r.dkim_secrets(pool.spec) or secret in (
        sub.auth_secret_ref,
        sub.tls_secret_ref,
    )


@kopf.on.event("v1", "secrets")
async def secret_event(namespace: str | None, name: str, **kwargs: Any) -> None:
    namespace = namespace or ""
    idx = _indexes(kwargs)
    affected = [
        (namespace, r.pool_name(p)) for p in _pools_in(idx, namespace) if _references(p, name)
    ]
    await _reconcile_all(idx, affected)


def _owner_pool(owners: Iterable[Mapping[str, Any]]) -> str | None:
    for ref in owners:
        if ref.get("kind") == "SendingPool" and str(ref.get("apiVersion", "")).startswith(GROUP):
            return str(ref["name"])
    return None


def statefulset_is_news(
    event_type: str | None,
    live: LiveStatefulSet,
    seen: tuple[int, int] | None,
    known: r.Known | None,
) -> bool:
    """Whether a StatefulSet watch event can change anything: it is gone, its status is not
    the one the pool's status was rendered from, or it is not the version the operator applied
    or checked (someone else wrote it)."""
    if event_type == "DELETED" or known is None:
        return True
    if seen != (live.replicas, live.ready):
        return True
    return bool(r.child_action(known[0], live.child, known) != "skip")


@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED)
async def statefulset_event(
    event: kopf.RawEvent,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    **kwargs: Any,
) -> None:
    namespace = namespace or ""
    idx = _indexes(kwargs)
    pool = _owner_pool(meta.get("ownerReferences") or [])
    if pool is None or (namespace, pool) not in idx.pools:
        return
    ckey = (namespace, "StatefulSet", name)
    if event["type"] is None:
        # The initial listing: the pool's own first event reconciles it.
        return
    if event["type"] == "DELETED":
        STATE.known.pop(ckey, None)
    elif not statefulset_is_news(
        event["type"],
        live_statefulset(meta, status),
        STATE.sts_seen.get((namespace, pool)),
        _known(ckey),
    ):
        return
    await reconcile_pool(idx, namespace, pool)
