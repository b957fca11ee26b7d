"""DNSBL lookups of pool IPs with dnspython: which zones list an address, and why.

A DNSBL answers the A query `<reversed address>.<zone>` (IPv4 octets, IPv6 nibbles, RFC 5782
section 2.1/2.4) with a 127.0.0.x code when it lists the address, and its TXT record with the
reason. Spamhaus answers 127.255.255.x for query errors (a public resolver, over quota, a typo
in the zone): those are errors, never listings, and so is any code outside 127.0.0.0/8 (RFC 5782
section 2.3: a zone answering with a real address is broken or hijacked). Answers are cached
for their TTL (within [MIN_CACHE, MAX_CACHE]; NXDOMAIN for MIN_CACHE) and lookups are spaced
by MIN_SPACING, so a thousand pools checking the same zones every interval do not hammer it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailfleet.operator.clients.dnscheck import resolver

MIN_CACHE = 30.0
MAX_CACHE = 3600.0
ERROR_CACHE = 60.0
MIN_SPACING = 0.02  # seconds between two queries to the resolver


def query_name(address: str, zone: str) -> str:
    """`1.2.0.192.zen.spamhaus.org` for 192.0.2.1; nibbles for IPv6."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        reversed_part = ".".join(reversed(str(ip).split(".")))
    else:
        reversed_part = ".".join(reversed(ip.exploded.replace(":", "")))
    return f"{reversed_part}.{zone.rstrip('.')}"


@dataclass(frozen=True)
class Listing:
    zone: str
    listed: bool
    codes: tuple[str, ...] = ()
    reason: str | None = None
    error: str | None = None  # the zone could not say (never counts as listed)

    def describe(self) -> str:
        text = f"{self.zone} ({', '.join(self.codes)})"
        return f"{text}: {self.reason}" if self.reason else text


def interpret(zone: str, codes: Sequence[str], reason: str | None = None) -> Listing:
    """What A answers mean: listed on a 127.0.0.0/8 code other than 127.255.255.x (and other
    than 127.0.0.1, which RFC 5782 reserves as "not listed"); errors otherwise."""
    listing: list[str] = []
    errors: list[str] = []
    for code in codes:
        try:
            ip = ipaddress.ip_address(code)
        except ValueError:
            errors.append(code)
            continue
        if (
            ip.version == 4
            and ip in ipaddress.ip_network("127.0.0.0/8")
            and not str(ip).startswith("127.255.255.")
            and str(ip) != "127.0.0.1"
        ):
            listing.append(str(ip))
        else:
            errors.append(str(ip))
    if listing:
        return Listing(zone, True, tuple(sorted(listing)), reason)
    if errors:
        return Listing(zone, False, tuple(sorted(errors)), error=f"error codes {', '.join(errors)}")
    return Listing(zone, False)


class BlocklistChecker:
    """Cached, spaced DNSBL lookups through resolvers chosen per pool."""

    def __init__(
        self,
        resolver_for: Callable[[Sequence[str], int], dns.asyncresolver.Resolver] = resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolver_for = resolver_for
        self.clock = clock
        # (expires, fetched, answer) per (address, zone, resolvers)
        self.cache: dict[tuple[str, str, tuple[str, ...], int], tuple[float, float, Listing]] = {}
        self.lock = asyncio.Lock()
        self.last_query = 0.0
        self.queries = 0  # sent to a resolver, for metrics and tests

    async def check(
        self,
        address: str,
        zone: str,
        nameservers: Sequence[str] = (),
        port: int = 53,
        max_age: float = MAX_CACHE,
    ) -> Listing:
        """The zone's answer for the address, from the cache while it is younger than its TTL
        and `max_age` (the pool's check interval: a listing is seen at the next check)."""
        key = (address, zone, tuple(nameservers), port)
        hit = self.cache.get(key)
        now = self.clock()
        if hit is not None and now < hit[0] and now - hit[1] < max_age:
            return hit[2]
        res = self.resolver_for(nameservers, port)
        listing, ttl = await self._lookup(res, address, zone)
        at = self.clock()
        self.cache[key] = (at + ttl, at, listing)
        return listing

    async def _space(self) -> None:
        async with self.lock:
            wait = self.last_query + MIN_SPACING - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self.last_query = self.clock()
            self.queries += 1

    async def _lookup(
        self, res: dns.asyncresolver.Resolver, address: str, zone: str
    ) -> tuple[Listing, float]:
        name = query_name(address, zone)
        await self._space()
        try:
            answer = await res.resolve(name, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Listing(zone, False), MIN_CACHE
        except (dns.exception.DNSException, OSError) as e:
            return Listing(zone, False, error=f"{type(e).__name__}: {e}"), ERROR_CACHE
        codes = [r.address for r in answer]
        ttl = float(answer.rrset.ttl if answer.rrset is not None else 0)
        ttl = min(max(ttl, MIN_CACHE), MAX_CACHE)
        listing = interpret(zone, codes)
        if not listing.listed:
            return listing, ERROR_CACHE if listing.error else ttl
        reason: str | None = None
        await self._space()
        try:
            txt = await res.resolve(name, "TXT")
            reason = (
                " ".join(b"".join(r.strings).decode("utf-8", "replace") for r in txt).strip()
                or None
            )
        except (dns.exception.DNSException, OSError):
            pass
        return interpret(zone, codes, reason), ttl
