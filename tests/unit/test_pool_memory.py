"""What the operator remembers of an object is forgotten with it: a deleted pool leaves no memory,
timer or task behind, a deleted DeliveryPolicy or IPWarmup neither its parsed copy nor the record
of the operator's own status writes. And the Kopf wiring reads its settings from the memo, not
from module globals set before import."""

from __future__ import annotations

import asyncio
import copy
import gc
import weakref
from typing import Any

import kopf
from fixtures.objects import example
from unit.test_reconciler import MemoryApi, World, make, pool_body

from mailfleet.operator.reconciler import Indexes, Operator
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
