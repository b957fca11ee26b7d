"""DNSBL lookups against a real DNS server (dnsmasq serving a blocklist zone): listing codes
with their TXT reason, Spamhaus-style error codes that must never count, IPv6 nibbles, and the
cache that spares the zone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.dnsserver import DnsServer

from mailfleet.operator.clients.blocklist import BlocklistChecker, Listing, query_name

ZONE = "bl.example.test"


@pytest.fixture
def dnsbl(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(workdir=tmp_path / "dns", ttl=0) as server:
        server.add_dnsbl_listing(ZONE, "192.0.2.10", "127.0.0.2", reason="listed: spam trap hit")
        server.add_dnsbl_listing(ZONE, "192.0.2.11", "127.0.0.4")
        server.add_dnsbl_listing(ZONE, "192.0.2.12", "127.255.255.254", reason="public resolver")
        server.add_a(query_name("2001:db8::25", ZONE), "127.0.0.3")
        server.start()
        yield server


def test_listed_unlisted_and_error_answers(dnsbl: DnsServer) -> None:
    checker = BlocklistChecker()
    ns, port = [dnsbl.host], dnsbl.port

    async def run() -> list[Listing]:
        return list(
            await asyncio.gather(
                *(
                    checker.check(a, ZONE, ns, port)
                    for a in (
                        "192.0.2.10",
                        "192.0.2.11",
                        "192.0.2.12",
                        "192.0.2.99",
                        "2001:db8::25",
                    )
                )
            )
        )

    listed, no_txt, error, clean, six = asyncio.run(run())
    assert listed.listed and listed.codes == ("127.0.0.2",)
    assert listed.reason == "listed: spam trap hit"
    assert no_txt.listed and no_txt.reason is None
    assert not error.listed and "127.255.255.254" in (error.error or "")
    assert not clean.listed and clean.error is None
    assert six.listed


def test_answers_are_cached_until_max_age(dnsbl: DnsServer) -> None:
    now = [1000.0]
    checker = BlocklistChecker(clock=lambda: now[0])
    ns, port = [dnsbl.host], dnsbl.port

    async def check() -> bool:
        return (await checker.check("192.0.2.99", ZONE, ns, port, max_age=10)).listed

    assert asyncio.run(check()) is False
    asked = checker.queries
    assert asyncio.run(check()) is False
    assert checker.queries == asked  # from the cache
    dnsbl.add_dnsbl_listing(ZONE, "192.0.2.99", "127.0.0.2")
    now[0] += 11  # past max_age: asked again, and now listed
    assert asyncio.run(check()) is True
    assert checker.queries > asked


def test_an_unreachable_resolver_is_an_error_not_a_listing() -> None:
    checker = BlocklistChecker()
    # Nothing listens on this port: a timeout, reported, never counted.
    got = asyncio.run(checker.check("192.0.2.10", ZONE, ["127.0.0.1"], 9))
    assert not got.listed and got.error
