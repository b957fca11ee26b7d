"""Routing against a real DNS server (dnsmasq on loopback)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from mailfleet.mta.config import DNSConfig, RoutingConfig
from mailfleet.mta.routing import Destination, RouteError, Router, is_null_mx, order_mx

DNSMASQ = "/usr/sbin/dnsmasq"
MX_PORT = 2525  # what the router puts on MX destinations in these tests

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq is not installed")


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


class Dnsmasq:
    """dnsmasq authoritative for .test on a free loopback port; stopped by PID."""

    def __init__(self, tmp: Path, records: list[str], ttl: int = 0) -> None:
        self.port = _free_port()
        self.hosts_file = tmp / f"hosts-{self.port}"
        self.hosts_file.write_text("")
        self.proc = subprocess.Popen(
            [
                DNSMASQ,
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--local=/test/",
                f"--local-ttl={ttl}",
                f"--addn-hosts={self.hosts_file}",
                "--pid-file=",
                *records,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                query = dns.message.make_query("ready.test", "A")
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"dnsmasq did not start: {err!r}") from None

    def set_hosts(self, text: str) -> None:
        """Replace the extra hosts file and make dnsmasq reread it."""
        self.hosts_file.write_text(text)
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)  # dnsmasq rereads asynchronously; give it a moment (not an assertion)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def config(self, **dns: object) -> RoutingConfig:
        return RoutingConfig(
            dns=DNSConfig.model_validate(
                {"nameservers": ["127.0.0.1"], "port": self.port, "timeout": 2, **dns}
            )
        )


RECORDS = [
    "--mx-host=multi.test,mx1.multi.test,10",
    "--mx-host=multi.test,mx2.multi.test,20",
    "--mx-host=multi.test,mx3.multi.test,20",
    "--host-record=mx1.multi.test,127.0.0.2",
    "--host-record=mx2.multi.test,127.0.0.3",
    "--host-record=mx3.multi.test,127.0.0.4,::1",
    "--host-record=plain.test,127.0.0.5",
    "--mx-host=null.test,.,0",
    "--txt-record=txtonly.test,v=spf1 -all",
    "--mx-host=dangling.test,nowhere.dangling.test,10",
    "--host-record=smarthost.test,127.0.0.9",
]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path, RECORDS)
    yield server
    server.stop()


@pytest.fixture
async def router(dnsmasq: Dnsmasq) -> AsyncIterator[Router]:
    yield Router(dnsmasq.config(), mx_port=MX_PORT, rng=random.Random(1))


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


async def test_static_routes_exact_domain_then_wildcard(dnsmasq: Dnsmasq) -> None:
    cfg = dnsmasq.config().model_copy(
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


async def test_static_route_to_an_unknown_host_is_temporary(dnsmasq: Dnsmasq) -> None:
    cfg = dnsmasq.config().model_copy(update={"routes": {"*": "gone.test:25"}})
    with pytest.raises(RouteError) as e:
        await Router(cfg).resolve("anything.test")
    assert e.value.temporary


async def test_address_literal_domains_go_straight_to_the_address(router: Router) -> None:
    assert await router.resolve("[127.0.0.8]") == [
        Destination("127.0.0.8", "127.0.0.8", MX_PORT, 0)
    ]
    assert (await router.resolve("[IPv6:::1]"))[0].address == "::1"


async def test_answers_are_cached_for_their_ttl(tmp_path: Path) -> None:
    server = Dnsmasq(tmp_path, [], ttl=60)
    try:
        now = [1000.0]
        router = Router(server.config(), mx_port=MX_PORT, clock=lambda: now[0])
        server.set_hosts("127.0.0.10 cached.test\n")
        assert [d.address for d in await router.resolve("cached.test")] == ["127.0.0.10"]

        server.set_hosts("127.0.0.11 cached.test\n")
        now[0] += 59
        assert [d.address for d in await router.resolve("cached.test")] == ["127.0.0.10"]
        now[0] += 2
        assert [d.address for d in await router.resolve("cached.test")] == ["127.0.0.11"]
    finally:
        server.stop()


async def test_cache_ttl_is_capped_by_max_cache_ttl(tmp_path: Path) -> None:
    server = Dnsmasq(tmp_path, [], ttl=3600)
    try:
        now = [0.0]
        router = Router(server.config(maxCacheTTL="10s"), clock=lambda: now[0])
        server.set_hosts("127.0.0.10 capped.test\n")
        assert (await router.resolve("capped.test"))[0].address == "127.0.0.10"
        server.set_hosts("127.0.0.11 capped.test\n")
        now[0] += 11
        assert (await router.resolve("capped.test"))[0].address == "127.0.0.11"
    finally:
        server.stop()


async def test_negative_answers_are_cached_briefly(dnsmasq: Dnsmasq) -> None:
    now = [0.0]
    router = Router(dnsmasq.config(), clock=lambda: now[0])
    with pytest.raises(RouteError):
        await router.resolve("late.test")
    dnsmasq.set_hosts("127.0.0.12 late.test\n")
    now[0] += 30
    with pytest.raises(RouteError, match="does not exist"):
        await router.resolve("late.test")
    now[0] += 31  # past the default negative TTL: dnsmasq sends no SOA to say otherwise
    assert (await router.resolve("late.test"))[0].address == "127.0.0.12"


async def test_concurrent_lookups_of_one_domain_agree(router: Router) -> None:
    results = await asyncio.gather(*(router.resolve("multi.test") for _ in range(20)))
    assert all(r[0].hostname == "mx1.multi.test" for r in results)


async def test_update_config_switches_name_servers(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    other = Dnsmasq(tmp_path, ["--host-record=plain.test,127.0.0.66"])
    try:
        router = Router(dnsmasq.config(), mx_port=MX_PORT)
        assert (await router.resolve("plain.test"))[0].address == "127.0.0.5"
        router.update_config(other.config())
        assert (await router.resolve("plain.test"))[0].address == "127.0.0.66"
        # Routes alone change without touching DNS.
        router.update_config(other.config().model_copy(update={"routes": {"*": "127.0.0.1:9"}}))
        assert (await router.resolve("plain.test"))[0].port == 9
    finally:
        other.stop()


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
