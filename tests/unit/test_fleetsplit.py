"""Pool-wide limits split between pods, IPs held while they move, the FleetLimits condition, and
the engine's limiter in split mode: pure, over their input space."""

from __future__ import annotations

import pytest

from mailfleet.mta.config import FleetConfig, PodShareConfig, ProviderConfig, ProviderSettingsConfig
from mailfleet.mta.sharedlimits import FleetLimiter, bucket_capacity
from mailfleet.operator.decide import fleetsplit
from mailfleet.operator.decide.ipplan import IPPlan
from mailfleet.operator.decide.policy_merge import MergedPolicies


@pytest.mark.parametrize(
    ("total", "weights"),
    [(t, w) for t in (0, 1, 2, 5, 7, 100) for w in ([1], [1, 1], [2, 1], [1, 1, 1], [3, 0, 1])],
)
def test_largest_remainder_sums_to_the_total_and_follows_the_weights(
    total: int, weights: list[int]
) -> None:
    out = fleetsplit.largest_remainder(total, weights)
    assert sum(out) == total
    for w, n in zip(weights, out, strict=True):
        exact = total * w / sum(weights)
        assert exact - 1 < n < exact + 1
        if w == 0:
            assert n == 0


def plans(owners: list[str | None], states: list[str] | None = None) -> list[IPPlan]:
    states = states or ["active"] * len(owners)
    return [
        IPPlan(f"10.0.0.{i}", f"m{i}.test", s, None, o)  # type: ignore[arg-type]
        for i, (o, s) in enumerate(zip(owners, states, strict=True), 1)
    ]


def merged(conns: int | None, rate: float | None) -> MergedPolicies:
    gmail = ProviderConfig.model_validate(
        {"name": "gmail", "pool": {"maxConnections": conns, "maxMessageRate": rate}}
    )
    default = ProviderSettingsConfig.model_validate({"pool": {"maxConnections": 3}})
    return MergedPolicies(providers=[gmail], default=default, sources=["p"])


@pytest.mark.parametrize("owners", [["a"], ["a", "b"], ["a", "b", "a"], ["a", "b", "c", "a", "b"]])
@pytest.mark.parametrize("conns", [1, 2, 5, 10])
def test_pod_shares_never_exceed_the_pool_limit(owners: list[str], conns: int) -> None:
    shares = fleetsplit.pod_shares(plans(list(owners)), merged(conns, 10.0))
    assert sum(s.rate_share for s in shares) <= 1.0
    assert sum(s.connections["gmail"] for s in shares) == conns
    assert sum(s.connections["default"] for s in shares) == 3
    # In proportion to the IPs each pod owns.
    by_pod = {s.pod: s.rate_share for s in shares}
    for pod in set(owners):
        assert by_pod[pod] == pytest.approx(owners.count(pod) / len(owners), abs=1e-5)


def test_standby_and_unowned_ips_weigh_nothing() -> None:
    shares = fleetsplit.pod_shares(
        plans(["a", None, "b"], ["active", "standby", "warming"]), merged(None, 5.0)
    )
    assert [(s.pod, s.rate_share) for s in shares] == [("a", 0.5), ("b", 0.5)]
    assert fleetsplit.pod_shares(plans([None], ["standby"]), merged(2, None)) == []


def test_ip_held_while_another_pod_sends_from_it_or_its_state_waits() -> None:
    owners = {"1": "p2", "2": "p0"}
    assert fleetsplit.held_ips(owners, {"1": {"p0"}, "2": {"p0"}}, ()) == {"1"}
    assert fleetsplit.held_ips(owners, {"1": {"p2"}}, ()) == frozenset()
    assert fleetsplit.held_ips(owners, {}, {"1"}) == {"1"}
    assert fleetsplit.held_ips(owners, {"9": {"p0"}}, {"9"}) == frozenset()  # not the pool's


def test_a_move_is_ready_only_once_the_old_owner_stopped() -> None:
    owners: dict[str, str | None] = {"1": "p2"}
    pending, ready = fleetsplit.moves(owners, {"1": {"p0"}}, {})
    assert pending == {"1": "p0"} and ready == []
    pending, ready = fleetsplit.moves(owners, {"1": {"p0", "p2"}}, pending)
    assert ready == []
    pending, ready = fleetsplit.moves(owners, {}, pending)
    assert ready == [("1", "p0", "p2")]
    # The old owner went away between two looks: the move is still handed over.
    assert fleetsplit.moves(owners, {}, {}, {"1": {"p0"}}) == ({"1": "p0"}, [("1", "p0", "p2")])
    # Nothing moves while the owner is the only sender.
    assert fleetsplit.moves(owners, {"1": {"p2"}}, {}) == ({}, [])


def test_fleet_condition_says_which_mode() -> None:
    assert fleetsplit.fleet_condition(False, {}, 3).reason == "Split"
    assert fleetsplit.fleet_condition(True, {}, 3).status == "Unknown"
    shared = {"p0": ("shared", None), "p1": ("shared", None)}
    assert fleetsplit.fleet_condition(True, shared, 2).reason == "Shared"
    down = {**shared, "p1": ("split", "ConnectionError: refused")}
    c = fleetsplit.fleet_condition(True, down, 2)
    assert (c.status, c.reason) == ("False", "RedisUnreachable")
    assert "p1" in c.message and "refused" in c.message


@pytest.mark.parametrize(
    ("share", "rate"), [(s, r) for s in (0.25, 1 / 3, 0.5, 1.0) for r in (0.5, 2, 30)]
)
def test_split_bucket_sends_at_most_the_share_in_any_window(share: float, rate: float) -> None:
    cfg = FleetConfig(shares=[PodShareConfig(pod="p", rate_share=share)])
    lim = FleetLimiter(cfg, "p")
    assert lim.mode == "split"
    sent, now = [], 1000.0
    while now < 1060.0:
        if lim.rate_wait("gmail", rate, now) == 0:
            lim.took("gmail", True, [])
            sent.append(now)
        else:
            now += 0.01
    assert len(sent) <= rate * share * 60 + bucket_capacity(rate * share)
    # The clock steps by 10 ms here: a send waits up to a step past its token.
    assert len(sent) >= 0.95 * rate * share * 60 - 1


def test_a_pod_without_a_share_sends_nothing_under_a_pool_limit() -> None:
    cfg = FleetConfig(shares=[PodShareConfig(pod="p", rate_share=1.0, connections={"gmail": 2})])
    lim = FleetLimiter(cfg, "other")
    assert lim.rate_wait("gmail", 10.0, 0.0) > 0
    assert lim.connection_limit("gmail", 5) == 0
    own = FleetLimiter(cfg, "p")
    assert own.connection_limit("gmail", 5) == 2
    assert own.connection_limit("yahoo", None) is None
    # No fleet config at all: the engine applies the limits alone.
    alone = FleetLimiter(FleetConfig(), None)
    assert alone.mode == "local" and alone.connection_limit("gmail", 5) == 5


def test_render_holds_a_moving_ip_and_gives_each_pod_its_share() -> None:
    from fixtures.objects import inputs, pool

    from mailfleet.operator.decide import render

    steady = render.render_pool(inputs(autoscaled=2, live_replicas=2))
    assert steady.config is not None
    owners = {str(s.address): s.owner for s in steady.config.delivery.source_ips}
    assert not any(s.hold for s in steady.config.delivery.source_ips)
    shares = steady.config.fleet.shares
    assert {s.pod for s in shares} == {o for o in owners.values() if o}
    assert sum(s.connections["gmail"] for s in shares) == 20  # the example's pool limit
    # The pod that sent from an address before is not its owner now: held.
    moving, owner = next((a, o) for a, o in owners.items() if o is not None)
    other = "transactional-9"
    out = render.render_pool(
        inputs(autoscaled=2, live_replicas=2, senders={moving: frozenset({other})})
    )
    assert out.config is not None
    held = [s for s in out.config.delivery.source_ips if s.hold]
    assert [str(s.address) for s in held] == [moving] and held[0].owner == owner
    ip = next(i for i in out.status["ips"] if i["address"] == moving)
    assert "held" in ip["reason"]
    # With Redis the engines share the limits: the config says where.
    redis = pool(fleetLimits={"redisURL": "redis://10.0.0.9:6379/0"})
    shared = render.render_pool(inputs(redis))
    assert shared.config is not None
    assert shared.config.fleet.redis_url == "redis://10.0.0.9:6379/0"
    assert shared.config.fleet.namespace == "ns1/transactional"
