"""Routing against a real DNS server (dnsmasq on loopback)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fixtures.peers import DnsServer

from mailfleet.mta.config import DNSConfig, RoutingConfig
from mailfleet.mta.routing import Destination, RouteError, Router, is_null_mx, order_mx

MX_PORT = 2525  # what the router puts on MX destinations in these tests


def routing_config(server: DnsServer, **dns: object) -> RoutingConfig:
    return RoutingConfig(
        dns=DNSConfig.model_validate(
            {"nameservers": [server.host], "port": server.port, "timeout": 2, **dns}
        ),
        allow_private_mx=True,  # every MX host here is on loopback
    )


def make_server(tmp_path: Path, name: str, ttl: int = 0) -> DnsServer:
    return DnsServer(ttl=ttl, workdir=tmp_path / name)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[DnsServer]:
    """One dnsmasq with every record these tests need, started once."""
    server = make_server(tmp_path, "dns")
    server.add_mx("multi.test", "mx1.multi.test", 10)
    server.add_mx("multi.test", "mx2.multi.test", 20)
    server.add_mx("multi.test", "mx3.multi.test", 20)
    server.add_a("mx1.multi.test", "127.0.0.2")
    server.add_a("mx2.multi.test", "127.0.0.3")
    server.add_a("mx3.multi.test", "127.0.0.4")
    server.add_aaaa("mx3.multi.test", "::1")
    server.add_a("plain.test", "127.0.0.5")
    server.add_null_mx("null.test")
    server.add_txt("txtonly.test", "v=spf1 -all")
    server.add_mx("dangling.test", "nowhere.dangling.test", 10)
    server.add_a("smarthost.test", "127.0.0.9")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def router(dnsmasq: DnsServer) -> AsyncIterator[Router]:
    yield Router(routing_config(dnsmasq), mx_port=MX_PORT, rng=random.Random(1))


async def test_mx_hosts_in_preference_order_with_their_addresses(router: Router) -> None:
    dests = await router.resolve("multi.test")
    assert dests[0] == Destination("mx1.multi.test", "127.0.0.2", MX_PORT, 10)
    assert {(d.hostname, d.address, d.preference) for d in dests[1:]} == {
        ("mx2.multi.test", "127.0.0.3", 20),
        ("mx3.multi.test", "127.0.0.4", 20),
        ("mx3.multi.test", "::1", 20),
    }
    # A host's IPv4 address comes before its IPv6 one.
    mx3 = [d.address for d in dests if d.hostname == "mx3.multi.test"]
    assert mx3 == ["127.0.0.4", "::1"]


async def test_equal_preference_hosts_are_shuffled_across_lookups(router: Router) -> None:
    seconds = set()
    for _ in range(40):
        dests = await router.resolve("Multi.Test.")  # case and trailing dot do not matter
        assert dests[0].hostname == "mx1.multi.test"
        seconds.add(dests[1].hostname)
    assert seconds == {"mx2.multi.test", "mx3.multi.test"}


async def test_domain_without_mx_falls_back_to_its_address(router: Router) -> None:
    assert await router.resolve("plain.test") == [
        Destination("plain.test", "127.0.0.5", MX_PORT, 0)
    ]


async def test_null_mx_is_a_permanent_556(router: Router) -> None:
    with pytest.raises(RouteError) as e:
        await router.resolve("null.test")
    assert (e.value.temporary, e.value.code, e.value.enhanced) == (False, 556, "5.1.10")
    assert "accepts no mail" in str(e.value)
    assert e.value.reply == "556 5.1.10 domain null.test accepts no mail (null MX)"


async def test_nxdomain_is_a_permanent_550(router: Router) -> None:
    with pytest.raises(RouteError) as e:
        await router.resolve("no-such-domain.test")
    assert (e.value.temporary, e.value.code, e.value.enhanced) == (False, 550, "5.1.2")
    assert "does not exist" in str(e.value)


async def test_domain_with_neither_mx_nor_address_is_permanent(router: Router) -> None:
    with pytest.raises(RouteError) as e:
        await router.resolve("txtonly.test")
    assert (e.value.temporary, e.value.code, e.value.enhanced) == (False, 550, "5.4.4")


async def test_mx_host_without_address_is_temporary(router: Router) -> None:
    with pytest.raises(RouteError) as e:
        await router.resolve("dangling.test")
    assert e.value.temporary and e.value.code == 451
    assert "nowhere.dangling.test" in str(e.value)


async def test_dns_timeout_is_a_temporary_451() -> None:
    # A name server that never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        cfg = RoutingConfig(
            dns=DNSConfig(nameservers=["127.0.0.1"], port=port, timeout=0.3)  # type: ignore[arg-type]
        )
        with pytest.raises(RouteError) as e:
            await Router(cfg).resolve("example.test")
    assert (e.value.temporary, e.value.code, e.value.enhanced) == (True, 451, "4.4.3")
    assert "timeout" in str(e.value).lower()


async def test_static_routes_exact_domain_then_wildcard(dnsmasq: DnsServer) -> None:
    cfg = routing_config(dnsmasq).model_copy(
        update={
            "routes": {
                "multi.test": "127.0.0.7:2600",
                "*": "smarthost.test:2601",
                "null.test": "[::1]",
            }
        }
    )
    router = Router(cfg, mx_port=MX_PORT)
    assert await router.resolve("multi.test") == [Destination("127.0.0.7", "127.0.0.7", 2600, 0)]
    # The wildcard catches everything else, even domains that do not exist in DNS.
    for domain in ("plain.test", "no-such-domain.test"):
        assert await router.resolve(domain) == [Destination("smarthost.test", "127.0.0.9", 2601, 0)]
    # A route overrides the domain's own null MX; the default port is 25.
    assert await router.resolve("null.test") == [Destination("::1", "::1", 25, 0)]


async def test_static_route_to_an_unknown_host_is_temporary(dnsmasq: DnsServer) -> None:
    cfg = routing_config(dnsmasq).model_copy(update={"routes": {"*": "gone.test:25"}})
    with pytest.raises(RouteError) as e:
        await Router(cfg).resolve("anything.test")
    assert e.value.temporary


async def test_address_literal_domains_go_straight_to_the_address(router: Router) -> None:
    assert await router.resolve("[127.0.0.8]") == [
        Destination("127.0.0.8", "127.0.0.8", MX_PORT, 0)
    ]
    assert (await router.resolve("[IPv6:::1]"))[0].address == "::1"


async def test_static_routes_come_before_address_literals(dnsmasq: DnsServer) -> None:
    # With a catch-all smarthost, a literal recipient must not open a direct connection.
    cfg = routing_config(dnsmasq).model_copy(update={"routes": {"*": "127.0.0.9:2601"}})
    assert await Router(cfg, mx_port=MX_PORT).resolve("[127.0.0.8]") == [
        Destination("127.0.0.9", "127.0.0.9", 2601, 0)
    ]


async def test_answers_are_cached_for_their_ttl(tmp_path: Path) -> None:
    server = make_server(tmp_path, "ttl60", ttl=60)
    server.add_a("cached.test", "127.0.0.10")
    server.start()
    try:
        now = [1000.0]
        router = Router(routing_config(server), mx_port=MX_PORT, clock=lambda: now[0])
        assert [d.address for d in await router.resolve("cached.test")] == ["127.0.0.10"]

        server.add_a("cached.test", "127.0.0.11")  # restarts dnsmasq with both addresses
        now[0] += 59
        assert [d.address for d in await router.resolve("cached.test")] == ["127.0.0.10"]
        now[0] += 2
        assert sorted(d.address for d in await router.resolve("cached.test")) == [
            "127.0.0.10",
            "127.0.0.11",
        ]
    finally:
        server.close()


async def test_cache_ttl_is_capped_by_max_cache_ttl(tmp_path: Path) -> None:
    server = make_server(tmp_path, "ttl3600", ttl=3600)
    server.add_a("capped.test", "127.0.0.10")
    server.start()
    try:
        now = [0.0]
        router = Router(routing_config(server, maxCacheTTL="10s"), clock=lambda: now[0])
        assert len(await router.resolve("capped.test")) == 1
        server.add_a("capped.test", "127.0.0.11")
        now[0] += 9
        assert len(await router.resolve("capped.test")) == 1
        now[0] += 2
        assert len(await router.resolve("capped.test")) == 2
    finally:
        server.close()


async def test_negative_answers_are_cached_briefly(dns_server: DnsServer) -> None:
    now = [0.0]
    router = Router(routing_config(dns_server), clock=lambda: now[0])
    with pytest.raises(RouteError):
        await router.resolve("late.test")
    dns_server.add_a("late.test", "127.0.0.12")
    now[0] += 30
    with pytest.raises(RouteError, match="does not exist"):
        await router.resolve("late.test")
    now[0] += 31  # past the default negative TTL: dnsmasq sends no SOA to say otherwise
    assert (await router.resolve("late.test"))[0].address == "127.0.0.12"


async def test_concurrent_lookups_of_one_domain_agree(router: Router) -> None:
    results = await asyncio.gather(*(router.resolve("multi.test") for _ in range(20)))
    assert all(r[0].hostname == "mx1.multi.test" for r in results)


async def test_update_config_switches_name_servers(
    dnsmasq: DnsServer, dns_server: DnsServer
) -> None:
    dns_server.add_a("plain.test", "127.0.0.66")
    router = Router(routing_config(dnsmasq), mx_port=MX_PORT)
    assert (await router.resolve("plain.test"))[0].address == "127.0.0.5"
    router.update_config(routing_config(dns_server))
    assert (await router.resolve("plain.test"))[0].address == "127.0.0.66"
    # Routes alone change without touching DNS.
    with_route = routing_config(dns_server).model_copy(update={"routes": {"*": "127.0.0.1:9"}})
    router.update_config(with_route)
    assert (await router.resolve("plain.test"))[0].port == 9


def test_order_mx_sorts_by_preference_and_keeps_every_host() -> None:
    records = [(20, "c"), (10, "a"), (20, "b"), (5, "z"), (10, "d")]
    for seed in range(20):
        ordered = order_mx(records, random.Random(seed))
        assert sorted(ordered) == sorted(records)
        assert [p for p, _ in ordered] == [5, 10, 10, 20, 20]


def test_is_null_mx() -> None:
    assert is_null_mx([(0, ".")])
    assert not is_null_mx([(10, "mx.example.test")])
    assert not is_null_mx([])
