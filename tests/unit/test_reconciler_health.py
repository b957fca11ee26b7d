"""The Operator's health check in-process (in-memory API, engines serving real /metrics text):
a pod's bounces quarantine its IP, the standby is promoted in the rendered config, the pool's
status and events say so, and a restart (a new Operator on the same status) keeps it."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from unit.test_reconciler import MemoryApi, MemoryEngines, World, config_of, make, pool_body

from mailfleet.mta.config import parse_config_text
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.operator.decide import pods

KEY = ("ns1", "transactional")
POD_IP = "127.10.0.2"
A, STANDBY = "203.0.113.10", "203.0.113.11"


class MetricsEngines(MemoryEngines):
    def __init__(self) -> None:
        super().__init__()
        self.registry = EngineMetrics()

    async def metrics(self, ip: str) -> str | None:
        return generate_latest(self.registry.registry).decode() if ip == POD_IP else None


def a_world(api: MemoryApi) -> World:
    world = World(api)
    body = pool_body()
    body["spec"]["health"] = {"quarantine": {"minAttempts": 100}, "blocklists": []}
    world.add_pool(body)
    world.pods[KEY] = [pods.PodRef("transactional-0", POD_IP, True)]
    return world


def states(api: MemoryApi) -> dict[str, Any]:
    status = api.objects[("SendingPool", *KEY)]["status"]
    return {i["address"]: i["state"] for i in status["ips"]}


async def test_bounces_quarantine_the_ip_and_promote_the_standby() -> None:
    api = MemoryApi()
    engines = MetricsEngines()
    world = a_world(api)
    op, events = make(api, engines)
    idx = op.use(world.indexes())
    await op.reconcile_pool(idx, *KEY)
    world.sync_pool_status(*KEY)
    await op.check_health(world.indexes(), KEY)  # the first look at the pod: a baseline
    assert states(api)[A] == "active" and states(api)[STANDBY] == "standby"
    status = api.objects[("SendingPool", *KEY)]["status"]
    assert [h["address"] for h in status["health"]] == [A, STANDBY, "203.0.113.12"]

    attempts = engines.registry.attempts
    attempts.labels(A, "gmail", "gmail.com", "delivered", "ok").inc(150)
    attempts.labels(A, "gmail", "gmail.com", "bounced", "invalid-recipient").inc(50)
    op.memory.pools[KEY].health.last_check = None  # type: ignore[union-attr]
    world.sync_pool_status(*KEY)
    await op.check_health(world.indexes(), KEY)

    assert states(api)[A] == "quarantined" and states(api)[STANDBY] == "active"
    status = api.objects[("SendingPool", *KEY)]["status"]
    ip = next(i for i in status["ips"] if i["address"] == A)
    assert ip["reason"].startswith("BounceRate: 0.250 (50/200)")
    figures = next(h for h in status["health"] if h["address"] == A)
    assert (figures["attempts"], figures["bounced"], figures["bounceRate"]) == (200, 50, 0.25)
    cond = next(c for c in status["conditions"] if c["type"] == "IPsHealthy")
    assert (cond["status"], cond["reason"]) == ("False", "Quarantined")
    assert ("Warning", "IPQuarantined") in events and ("Normal", "StandbyPromoted") in events
    config = parse_config_text(config_of(op, KEY)[1], "engine.yaml")
    sources = {str(s.address): s.state for s in config.delivery.source_ips}
    assert sources[A] == "quarantined" and sources[STANDBY] == "active"
    # The operator's own metrics carry the window's figures per (IP, provider).
    value = op.metrics.registry.get_sample_value(
        "mailfleet_pool_ip_rate",
        {"pool_namespace": "ns1", "pool": "transactional", "address": A, "provider": "gmail",
         "rate": "bounce"},
    )  # fmt: skip
    assert value == 0.25

    # A restarted operator reads the verdicts back from the status: same config, nothing new.
    world.sync_pool_status(*KEY)
    op2, events2 = make(api, MetricsEngines())
    writes = len(api.writes)
    await op2.reconcile_pool(op2.use(world.indexes()), *KEY)
    assert states(api)[A] == "quarantined"
    assert not [w for w in api.writes[writes:] if w[1] == "ConfigMap"]
    assert ("Normal", "IPRecovered") not in events2
    await op.close()
    await op2.close()
