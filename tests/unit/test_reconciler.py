"""The Operator object in-process, with an in-memory API and engines: what it writes and when,
echo suppression, retries, config pushes to pods. Fast checks of the reconcile logic; the same
paths run against a real API server and real engines in tests/operator and tests/e2e."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import pytest
from fixtures.objects import NOW, example, pool_doc

from mailfleet.operator.api import naming
from mailfleet.operator.clients import kube
from mailfleet.operator.decide import pods
from mailfleet.operator.loops.reconciler import Indexes, Operator


class MemoryApi:
    """Objects by (kind, namespace, name); every write counted; resourceVersions move."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 100
        self.fail_next = 0

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    def _check(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise kube.ApiError(503, "PATCH", "/", "the API server is busy")

    async def get(self, res: kube.Resource, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((res.kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def apply(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        meta = obj["metadata"]
        key = (res.kind, meta["namespace"], meta["name"])
        self.writes.append(("apply", res.kind, meta["name"]))
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["generation"] = (
            self.objects.get(key, {}).get("metadata", {}).get("generation", 0) + 1
        )
        self.objects[key] = stored
        return self._bump(stored)

    async def create(self, res: kube.Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        key = (res.kind, meta["namespace"], meta["name"])
        if key in self.objects:
            return None
        self.writes.append(("create", res.kind, meta["name"]))
        self.objects[key] = copy.deepcopy(dict(obj))
        return self._bump(self.objects[key])

    async def patch_status(
        self, res: kube.Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self._check()
        self.writes.append(("status", res.kind, name))
        obj = self.objects.setdefault((res.kind, namespace, name), {"metadata": {"name": name}})
        obj["metadata"].update(namespace=namespace, name=name)
        obj.setdefault("status", {}).update(copy.deepcopy(dict(status)))
        return self._bump(obj)


class MemoryEngines:
    def __init__(self) -> None:
        self.status_of: dict[str, dict[str, Any]] = {}
        self.pushes: list[tuple[str, str, str]] = []  # ip, token, config hash

    async def status(self, ip: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.status_of.get(ip))

    async def reload(self, ip: str, token: str, config_text: str) -> tuple[bool, str]:
        from mailfleet.mta.config import config_digest

        digest = config_digest(config_text)
        self.pushes.append((ip, token, digest))
        self.status_of[ip]["configHash"] = digest
        return True, "applied"


class World:
    """The indexes the watches would hold, fed from the API's objects."""

    def __init__(self, api: MemoryApi) -> None:
        self.api = api
        self.pools: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.policies: dict[str, list[dict[str, Any]]] = {}
        self.pods: dict[tuple[str, str], list[pods.PodRef]] = {}
        self.tokens: dict[tuple[str, str], list[str]] = {}

    def add_pool(self, doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        meta.setdefault("resourceVersion", "1")
        self.pools[(meta["namespace"], meta["name"])] = [doc]

    def sync_pool_status(self, ns: str, name: str) -> None:
        """The watch catching up with the operator's own status write."""
        stored = self.api.objects.get(("SendingPool", ns, name))
        if stored is not None:
            doc = self.pools[(ns, name)][0]
            doc["status"] = copy.deepcopy(stored["status"])
            doc["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]

    def indexes(self) -> Indexes:
        secrets = {
            ns: [name for (kind, n, name) in self.api.objects if kind == "Secret" and n == ns]
            for ns in {k[0] for k in self.pools}
        }
        return Indexes(
            pools=self.pools,
            policies=self.policies,
            warmups={},
            secrets=secrets,
            statefulsets={},
            admin_tokens=self.tokens,
            pods=self.pods,
        )


def events_sink(store: list[tuple[str, str]]) -> Any:
    def post(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        store.append((type_, reason))

    return post


def make(api: MemoryApi, engines: MemoryEngines | None = None) -> tuple[Operator, list[Any]]:
    events: list[tuple[str, str]] = []
    op = Operator(api, events_sink(events), engines=engines, image="img:1", clock=lambda: NOW)
    return op, events


def config_of(op: Operator, key: tuple[str, str]) -> tuple[str, str]:
    config = op.memory.pools[key].config
    assert config is not None
    return config


def pool_body(name: str = "transactional") -> dict[str, Any]:
    doc = pool_doc()
    doc["metadata"].update(name=name, uid=f"uid-{name}")
    doc["spec"]["dkim"] = []
    return doc


async def test_a_new_pool_is_written_once_and_then_left_alone() -> None:
    api = MemoryApi()
    world = World(api)
    world.add_pool(pool_body())
    op, events = make(api)
    await op.reconcile_pool(world.indexes(), "ns1", "transactional")
    kinds = sorted(k for verb, k, _ in api.writes if verb != "status")
    assert kinds == [
        "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "Service",
        "ServiceAccount", "StatefulSet",
    ]  # fmt: skip
    assert ("Normal", "Created") in events
    token = api.objects[("Secret", "ns1", naming.admin_secret_name("transactional"))]
    assert len(token["stringData"][naming.ADMIN_TOKEN_KEY]) == 64
    first = len(api.writes)
    # The watch shows the status the operator wrote; nothing changed: no request at all.
    world.sync_pool_status("ns1", "transactional")
    await op.reconcile_pool(world.indexes(), "ns1", "transactional")
    assert len(api.writes) == first


async def test_a_failed_reconcile_retries_itself_with_backoff() -> None:
    api = MemoryApi()
    api.fail_next = 1
    world = World(api)
    world.add_pool(pool_body())
    op, _ = make(api)
    idx = op.use(world.indexes())
    await op.reconcile_pool(idx, "ns1", "transactional")
    mem = op.memory.pools[("ns1", "transactional")]
    assert mem.failures == 1 and mem.retry is not None
    await op.reconcile_pool(idx, "ns1", "transactional")
    assert mem.failures == 0 and mem.retry is None
    await op.close()


async def test_pods_behind_get_the_current_config_and_the_status_their_numbers() -> None:
    api = MemoryApi()
    engines = MemoryEngines()
    world = World(api)
    world.add_pool(pool_body())
    op, _ = make(api, engines)
    idx = op.use(world.indexes())
    await op.reconcile_pool(idx, "ns1", "transactional")
    desired = config_of(op, ("ns1", "transactional"))[0]
    world.pods[("ns1", "transactional")] = [
        pods.PodRef("transactional-0", "127.10.0.2", True),
        pods.PodRef("transactional-1", "127.10.0.3", True),
    ]
    world.tokens[("ns1", "transactional")] = ["t" * 64]
    engines.status_of["127.10.0.2"] = {"configHash": desired, "queue": {"messages": 3}}
    engines.status_of["127.10.0.3"] = {"configHash": "stale", "queue": {"messages": 4}}
    await op.poll_pool(world.indexes(), "ns1", "transactional")
    assert engines.pushes == [("127.10.0.3", "t" * 64, desired)]
    status = api.objects[("SendingPool", "ns1", "transactional")]["status"]
    assert (status["queueDepth"], status["updatedPods"]) == (7, 2)
    writes = len(api.writes)
    world.sync_pool_status("ns1", "transactional")
    await op.poll_pool(world.indexes(), "ns1", "transactional")
    assert len(api.writes) == writes and len(engines.pushes) == 1
    # Without the token in the index, nothing is pushed (and nothing breaks).
    world.tokens.clear()
    engines.status_of["127.10.0.3"]["configHash"] = "stale-again"
    await op.poll_pool(world.indexes(), "ns1", "transactional")
    assert len(engines.pushes) == 1
    await op.close()


async def test_a_policy_edit_rerenders_only_the_pools_that_select_it() -> None:
    api = MemoryApi()
    world = World(api)
    a = pool_body("a")
    a["spec"]["policySelector"] = {"matchLabels": {"tier": "transactional"}}
    b = pool_body("b")
    b["spec"]["policySelector"] = {"matchLabels": {"tier": "bulk"}}
    world.add_pool(a)
    world.add_pool(b)
    policy = example("deliverypolicy.yaml")
    policy["metadata"].update(labels={"tier": "transactional"}, resourceVersion="5")
    world.policies["ns1"] = [policy]
    op, _ = make(api)
    idx = op.use(world.indexes())
    for name in ("a", "b"):
        await op.reconcile_pool(idx, "ns1", name)
        world.sync_pool_status("ns1", name)
    api.writes.clear()
    policy["spec"]["providers"][0]["perIP"]["maxMessageRate"] = "120/min"
    policy["metadata"]["resourceVersion"] = "6"
    await op.on_policy(world.indexes(), "MODIFIED", "ns1", policy["metadata"]["name"], policy)
    touched = {name for verb, kind, name in api.writes if kind == "ConfigMap"}
    assert touched == {"a-config"}
    await asyncio.sleep(0)
    await op.close()


@pytest.mark.parametrize("event", ["DELETED"])
async def test_a_deleted_pool_is_forgotten(event: str) -> None:
    api = MemoryApi()
    world = World(api)
    world.add_pool(pool_body())
    op, _ = make(api)
    idx = op.use(world.indexes())
    await op.reconcile_pool(idx, "ns1", "transactional")
    mem = op.memory.pools[("ns1", "transactional")]
    assert mem.known and mem.config
    del world.pools[("ns1", "transactional")]  # Kopf's index drops it before the event
    await op.on_pool(idx, event, "ns1", "transactional", {"uid": "uid-transactional"})
    assert op.memory.pools == {} and op.memory.objects == {}
    await op.close()


class DrainingEngines(MemoryEngines):
    """Engines that hand off their queue at once when told to drain (to the first peer)."""

    def __init__(self) -> None:
        super().__init__()
        self.drains: list[tuple[str, list[str]]] = []
        self.undrains: list[str] = []

    async def drain(self, ip: str, token: str, handoff: list[str]) -> dict[str, Any] | None:
        self.drains.append((ip, handoff))
        me = self.status_of[ip]
        if handoff:
            peer = self.status_of[handoff[0].removeprefix("http://").rpartition(":")[0]]
            peer["queue"]["messages"] += me["queue"]["messages"]
            me["queue"]["messages"] = 0
        me["draining"] = True
        return copy.deepcopy(me)

    async def undrain(self, ip: str, token: str) -> bool:
        self.undrains.append(ip)
        self.status_of[ip]["draining"] = False
        return True


async def test_a_scale_down_waits_for_the_leaving_pod_to_hand_off() -> None:
    api = MemoryApi()
    engines = DrainingEngines()
    world = World(api)
    doc = pool_body()
    doc["spec"]["replicas"] = {"min": 1, "max": 3, "desired": 1}
    doc["spec"]["autoscaling"] = {"enabled": False}
    world.add_pool(doc)
    op, events = make(api, engines)
    world.tokens[("ns1", "transactional")] = ["t" * 64]
    # Two pods run (the StatefulSet asks for 2); the pool now wants 1.
    from mailfleet.operator.decide import drift
    from mailfleet.operator.loops.reconciler import LiveStatefulSet

    live = LiveStatefulSet(drift.LiveChild("StatefulSet", "transactional", None, 1, False), 2, 2, 2)
    idx = world.indexes()
    idx = Indexes(**{**idx.__dict__, "statefulsets": {("ns1", "transactional"): [live]}})
    op.use(idx)
    await op.reconcile_pool(idx, "ns1", "transactional")
    sts = api.objects[("StatefulSet", "ns1", "transactional")]
    assert sts["spec"]["replicas"] == 2  # not before the drain
    world.pods[("ns1", "transactional")] = [
        pods.PodRef("transactional-0", "127.10.0.2", True),
        pods.PodRef("transactional-1", "127.10.0.3", True),
    ]
    desired = config_of(op, ("ns1", "transactional"))[0]
    engines.status_of["127.10.0.2"] = {"configHash": desired, "queue": {"messages": 1}}
    engines.status_of["127.10.0.3"] = {"configHash": desired, "queue": {"messages": 9}}
    await op.poll_pool(idx, "ns1", "transactional")
    assert engines.drains == [("127.10.0.3", ["http://127.10.0.2:8025"])]
    assert ("Normal", "Draining") in events
    status = api.objects[("SendingPool", "ns1", "transactional")]["status"]
    assert status["drainingPods"] == ["transactional-1"]
    # The next look sees it empty: the StatefulSet may shrink now.
    await op.poll_pool(idx, "ns1", "transactional")
    assert ("Normal", "Drained") in events
    assert op.memory.pools[("ns1", "transactional")].drained_to == 1
    await asyncio.gather(*list(op.tasks))
    assert api.objects[("StatefulSet", "ns1", "transactional")]["spec"]["replicas"] == 1
    assert engines.status_of["127.10.0.2"]["queue"]["messages"] == 10  # nothing lost
    await op.close()


def test_pool_gauges_follow_the_status_and_drop_what_it_no_longer_says() -> None:
    from mailfleet.operator.metrics import OperatorMetrics, PoolSeries

    m, exported = OperatorMetrics(), PoolSeries()

    def sample(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    ready = {"type": "Ready", "status": "False", "reason": "PodsNotReady"}
    m.set_pool(
        "mail",
        "p",
        {"conditions": [ready], "ips": [{"address": "192.0.2.1", "state": "active"}]},
        exported,
    )
    base = {"pool_namespace": "mail", "pool": "p"}
    assert (
        sample(
            "mailfleet_pool_condition", **base, type="Ready", status="False", reason="PodsNotReady"
        )
        == 1
    )
    m.set_pool(
        "mail",
        "p",
        {
            "conditions": [{**ready, "status": "True", "reason": "PodsReady"}],
            "ips": [{"address": "192.0.2.1", "state": "quarantined"}],
            "drainingPods": ["p-1"],
            "handoffLeft": 12,
            "desiredReplicas": 1,
            "replicas": 2,
        },
        exported,
    )
    assert (
        sample(
            "mailfleet_pool_condition", **base, type="Ready", status="False", reason="PodsNotReady"
        )
        is None
    )
    assert sample("mailfleet_pool_ip_state", **base, address="192.0.2.1", state="active") is None
    assert sample("mailfleet_pool_ip_state", **base, address="192.0.2.1", state="quarantined") == 1
    assert sample("mailfleet_pool_draining_pods", **base) == 1
    assert sample("mailfleet_pool_handoff_left", **base) == 12
    assert sample("mailfleet_pool_replicas", **base, kind="running") == 2
    m.forget_pool(exported)
    assert sample("mailfleet_pool_replicas", **base, kind="running") is None


def test_events_name_the_object_and_the_operator() -> None:
    from mailfleet.operator.decide.events import event_object

    body = {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "metadata": {"name": "p", "namespace": "mail", "uid": "u-1"},
    }
    ev = event_object(body, "Normal", "ScaledUp", "x" * 5000, NOW, "mailfleet-operator", "op-0")
    assert ev["metadata"] == {"generateName": "p.", "namespace": "mail"}
    assert ev["involvedObject"] == {
        "apiVersion": "mailfleet.io/v1alpha1",
        "kind": "SendingPool",
        "name": "p",
        "namespace": "mail",
        "uid": "u-1",
    }
    assert (ev["type"], ev["reason"], len(ev["message"])) == ("Normal", "ScaledUp", 1024)
    assert ev["reportingComponent"] == "mailfleet-operator" and ev["reportingInstance"] == "op-0"
    assert ev["firstTimestamp"] == ev["lastTimestamp"] == "2026-03-04T05:06:07Z"
