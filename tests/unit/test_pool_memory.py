"""What the operator remembers of an object is forgotten with it: a deleted pool leaves no memory,
timer or task behind, a deleted DeliveryPolicy or IPWarmup neither its parsed copy nor the record
of the operator's own status writes. And the Kopf wiring reads its settings from the memo, not
from module globals set before import."""

from __future__ import annotations

import asyncio
import collections
import copy
import gc
import weakref
from collections.abc import Mapping
from typing import Any

import kopf
from fixtures.objects import example
from prometheus_client import generate_latest
from unit.test_reconciler import MemoryApi, MemoryEngines, World, make, pool_body

from mailfleet.mta.metrics import EngineMetrics
from mailfleet.operator.decide import pods
from mailfleet.operator.loops.reconciler import Indexes, Operator
from mailfleet.operator.settings import Memo, Settings

KEY = ("ns1", "transactional")


def a_warmup() -> dict[str, Any]:
    doc = example("ipwarmup.yaml")
    doc["metadata"].update(namespace="ns1", uid="uid-warmup", resourceVersion="7")
    return doc


def a_policy() -> dict[str, Any]:
    doc = example("deliverypolicy.yaml")
    doc["metadata"].update(namespace="ns1", uid="uid-policy", resourceVersion="5")
    return doc


def indexes(world: World, warmups: dict[tuple[str, str], list[dict[str, Any]]]) -> Indexes:
    return Indexes(**{**world.indexes().__dict__, "warmups": warmups})


async def a_pool_with(
    warmup: dict[str, Any], policy: dict[str, Any]
) -> tuple[Operator, World, dict[Any, Any]]:
    api = MemoryApi()
    api.objects[("IPWarmup", "ns1", warmup["metadata"]["name"])] = copy.deepcopy(warmup)
    world = World(api)
    world.add_pool(pool_body())
    world.policies["ns1"] = [policy]
    warmups = {KEY: [warmup]}
    op, _ = make(api)
    await op.reconcile_pool(op.use(indexes(world, warmups)), *KEY)
    return op, world, warmups


async def test_a_deleted_policy_and_warmup_leave_no_parsed_copy_behind() -> None:
    warmup, policy = a_warmup(), a_policy()
    op, world, warmups = await a_pool_with(warmup, policy)
    parsed = [weakref.ref(o) for o in (op.parse(warmup), op.parse(policy)) if o is not None]
    assert len(parsed) == 2

    world.policies["ns1"] = []
    del warmups[KEY]
    idx = indexes(world, warmups)
    name = policy["metadata"]["name"]
    await op.on_policy(idx, "DELETED", "ns1", name, policy)
    wname = warmup["metadata"]["name"]
    await op.on_warmup(idx, "DELETED", "ns1", wname, "transactional", warmup["metadata"])
    gc.collect()
    assert [r() for r in parsed] == [None, None]
    await op.close()


async def test_a_deleted_warmup_forgets_the_operators_own_status_writes() -> None:
    warmup, policy = a_warmup(), a_policy()
    op, world, warmups = await a_pool_with(warmup, policy)
    written = op.api.objects[("IPWarmup", "ns1", warmup["metadata"]["name"])]  # type: ignore[attr-defined]
    meta = {**written["metadata"], "namespace": "ns1"}
    assert op.own_write("IPWarmup", meta)  # the echo of its status write is recognized

    del warmups[KEY]
    await op.on_warmup(indexes(world, warmups), "DELETED", "ns1", meta["name"], "x", meta)
    assert not op.own_write("IPWarmup", meta)
    assert ("IPWarmup", "ns1", meta["name"]) not in op.memory.objects
    await op.close()


async def test_a_deleted_pool_is_one_pop_and_its_timers_and_tasks_stop() -> None:
    warmup, policy = a_warmup(), a_policy()
    op, world, warmups = await a_pool_with(warmup, policy)
    mem = op.memory.pools[KEY]
    # The warmup just started: a re-render is due once its startTime is in the index.
    timer = mem.advance
    assert timer is not None and not timer.cancelled()
    pending = asyncio.get_running_loop().create_future()
    op.spawn(asyncio.wait_for(pending, None), KEY)
    task = next(iter(mem.tasks))

    del world.pools[KEY]
    del warmups[KEY]
    await op.on_pool(indexes(world, warmups), "DELETED", *KEY, {"uid": "uid-transactional"})
    await asyncio.sleep(0)
    assert timer.cancelled() and task.cancelled()
    assert KEY not in op.memory.pools
    assert ("SendingPool", *KEY) not in op.memory.objects
    await op.close()


def test_kopf_copies_the_memo_per_object_and_every_copy_shares_the_settings() -> None:
    settings = Settings(image="img:2")
    memo = Memo(settings)
    assert copy.copy(memo).settings is settings


async def test_the_webhook_is_configured_after_import_and_off_without_options() -> None:
    from mailfleet.operator import webhook  # registers the handlers; configures nothing

    kopf_settings = kopf.OperatorSettings()
    memo = Memo(Settings())
    await webhook.serve_webhooks(settings=kopf_settings, memo=memo)
    assert kopf_settings.admission.server is None and memo.settings.webhook_runtime is None
    await webhook.stop_webhooks(memo=memo)


# -- no per-pool dict outside PoolMemory ------------------------------------------------------


def _names_pool(value: Any, key: tuple[str, str]) -> bool:
    """A dict key or set member that stands for the pool: its (namespace, name), a tuple holding
    it ((pool, pod)), or a tuple with the namespace and the name side by side (("SendingPool",
    ns, name), a gauge's label values)."""
    if not isinstance(value, tuple):
        return False
    if value == key or key in value:
        return True
    return any(value[i : i + 2] == key for i in range(len(value) - 1))


def _walk(root: object, key: tuple[str, str]) -> list[str]:
    """The paths of every dict or set reachable from `root` (through the operator's own objects
    and the metrics library's) that is keyed by the pool."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [("op", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(obj))
        if isinstance(obj, Mapping):
            items = list(obj.items())
            if any(_names_pool(k, key) for k, _ in items):
                found.append(path)
            stack += [(f"{path}[{k!r}]", v) for k, v in items]
            stack += [(f"{path}<key {k!r}>", k) for k, _ in items]
        elif isinstance(obj, set | frozenset):
            if any(_names_pool(m, key) for m in obj):
                found.append(path)
            stack += [(f"{path}{{}}", m) for m in obj]
        elif isinstance(obj, list | tuple | collections.deque):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif type(obj).__module__.startswith(("mailfleet.", "prometheus_client")):
            attrs = dict(getattr(obj, "__dict__", {}))
            for slot in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, slot):
                    attrs[slot] = getattr(obj, slot)
            stack += [(f"{path}.{a}", v) for a, v in attrs.items()]
    return sorted(found)


class HealthyEngines(MemoryEngines):
    """One pod answering /v1/status and /metrics (what the poll and the health check read)."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = EngineMetrics()

    async def metrics(self, ip: str) -> str | None:
        return generate_latest(self.registry.registry).decode()

    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool:
        return True


async def test_nothing_but_its_pool_memory_is_keyed_by_a_pool_and_nothing_outlives_it() -> None:
    """Every loop has run for the pool (reconcile, poll with IP moves and autoscaler, health
    check with metrics): the only places keyed by it are its PoolMemory (and its parsed body),
    the watch's index and the exported metric series. Deleted, it is nowhere."""
    api, engines = MemoryApi(), HealthyEngines()
    world = World(api)
    body = pool_body()
    body["spec"]["health"] = {"blocklists": []}
    world.add_pool(body)
    op, _ = make(api, engines)
    await op.reconcile_pool(op.use(world.indexes()), *KEY)
    world.pods[KEY] = [pods.PodRef("transactional-0", "127.10.0.2", True)]
    world.tokens[KEY] = ["t" * 64]
    ip = str(body["spec"]["ips"][0]["address"])
    engines.status_of["127.10.0.2"] = {
        "configHash": op.memory.pools[KEY].config[0],  # type: ignore[index]
        "queue": {"messages": 3},
        "sourceIPs": [ip],
        "shaping": [{"ip": ip, "provider": "gmail", "rate": 1.0}],
        "fleetLimits": {"mode": "split"},
    }
    world.sync_pool_status(*KEY)
    await op.poll_pool(world.indexes(), *KEY)
    world.sync_pool_status(*KEY)
    await op.check_health(world.indexes(), KEY)  # the first look at the pod: a baseline
    mem = op.memory.pools[KEY]
    assert mem.health is not None
    mem.health.last_check = None
    engines.registry.attempts.labels(ip, "gmail", "gmail.com", "delivered", "ok").inc(5)
    await op.check_health(world.indexes(), KEY)
    assert mem.health.last_scrape and mem.moves.senders
    assert mem.series.status and mem.series.health

    allowed = ("op.memory.pools", "op.memory.objects")
    keyed = [
        p
        for p in _walk(op, KEY)
        if p not in allowed and not p.startswith("op.indexes.") and "._metrics" not in p
    ]
    assert keyed == []

    for index in (world.pools, world.pods, world.tokens):
        del index[KEY]  # Kopf's indexes drop it before the event
    await op.on_pool(world.indexes(), "DELETED", *KEY, {"uid": "uid-transactional"})
    await asyncio.sleep(0)
    assert _walk(op, KEY) == []
    await op.close()
