"""Where mail for a domain goes: static routes, else MX records (RFC 5321 §5.1), with a TTL cache.

`Router.resolve(domain)` returns the destinations to try in order, or raises `RouteError` saying
whether the failure is permanent (bounce now) or temporary (retry later) and with which reply.

Unless `routing.allowPrivateMX` is on, the addresses of MX hosts and address-literal recipients
outside the public unicast space are never used: whoever controls a recipient domain's DNS must
not be able to aim the engine at services inside the cluster. Static routes are the operator's
own and are used as written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from mailfleet.mta.config import DNSConfig, RoutingConfig, parse_hostport

MX_PORT = 25
# Negative answers without an SOA to say how long they hold are cached this long (seconds).
DEFAULT_NEGATIVE_TTL = 60.0

RecordType = Literal["MX", "A", "AAAA"]


@dataclass(frozen=True)
class Destination:
    """One address to connect to; `hostname` is the MX host name (or the route's host)."""

    hostname: str
    address: str
    port: int
    preference: int


class RouteError(Exception):
    """No destination for a domain; `temporary` says whether to retry or bounce."""

    def __init__(self, message: str, *, temporary: bool, code: int, enhanced: str) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.code = code
        self.enhanced = enhanced

    @property
    def reply(self) -> str:
        """The error as an SMTP reply line, e.g. for a DSN's Diagnostic-Code."""
        return f"{self.code} {self.enhanced} {self.message}"

    def __repr__(self) -> str:
        return f"RouteError({self.reply!r}, temporary={self.temporary})"


def permanent(message: str, code: int = 550, enhanced: str = "5.1.2") -> RouteError:
    return RouteError(message, temporary=False, code=code, enhanced=enhanced)


def temporary(message: str, code: int = 451, enhanced: str = "4.4.3") -> RouteError:
    return RouteError(message, temporary=True, code=code, enhanced=enhanced)


@dataclass(frozen=True)
class _Answer:
    """A cached lookup: records (MX as "pref host"), or a negative answer."""

    status: Literal["ok", "nodata", "nxdomain"]
    records: tuple[str, ...]
    expires: float


class _TemporaryDNSError(Exception):
    pass


def order_mx(records: list[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """MX hosts by preference, shuffled within equal preference to spread load (RFC 5321 §5.1)."""
    ordered: list[tuple[int, str]] = []
    for _, group in groupby(sorted(records, key=lambda r: r[0]), key=lambda r: r[0]):
        same = list(group)
        rng.shuffle(same)
        ordered.extend(same)
    return ordered


def is_null_mx(records: list[tuple[int, str]]) -> bool:
    """RFC 7505: an MX whose exchange is the root name says the domain accepts no mail."""
    return any(host in ("", ".") for _, host in records)


def address_literal(domain: str) -> str | None:
    """The IP of a domain literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


# RFC 6052's well-known NAT64 prefix: a DNS64 resolver synthesises these for IPv4-only hosts,
# and the NAT64 gateway connects to the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# IANA special-purpose space that not every Python's ipaddress tables cover.
_SPECIAL = (ipaddress.IPv4Network("192.0.0.0/24"),)
_PRIVATE_HINT = "mail is not sent to non-public addresses (routing.allowPrivateMX is off)"


def non_public_reason(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why the engine must not connect to `address` for a recipient ("loopback", "private",
    ...), or None for a public unicast address.

    An IPv6 address that carries an IPv4 one the packets end up at (IPv4-mapped, NAT64, 6to4)
    is judged by that IPv4 address, so ::ffff:10.0.0.1 is as private as 10.0.0.1 and a DNS64
    answer for a public host stays usable.
    """
    try:
        ip = address if not isinstance(address, str) else ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return non_public_reason(embedded)
        if ip.is_site_local:  # deprecated fec0::/10: neither private nor global to ipaddress
            return "site-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved or any(ip in net for net in _SPECIAL):
        return "reserved"
    if not ip.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT and some clouds' internals
        return "non-public"
    return None


def _ip_or_none(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


class Router:
    """Resolves a recipient domain into destinations; one per engine, shared by all deliveries."""

    def __init__(
        self,
        cfg: RoutingConfig,
        *,
        mx_port: int = MX_PORT,
        ipv6: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        # Tests point MX routes at an unprivileged port; real mail always uses 25.
        self._mx_port = mx_port
        self._ipv6 = ipv6
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: dict[tuple[str, RecordType], _Answer] = {}
        self._inflight: dict[tuple[str, RecordType], asyncio.Future[_Answer]] = {}
        self._resolver = self._make_resolver(cfg.dns)

    @property
    def config(self) -> RoutingConfig:
        return self._cfg

    def update_config(self, cfg: RoutingConfig) -> None:
        """Swap the config (reload); a DNS change also empties the cache."""
        if cfg.dns != self._cfg.dns:
            self._resolver = self._make_resolver(cfg.dns)
            self._cache.clear()
        self._cfg = cfg

    def clear_cache(self) -> None:
        self._cache.clear()

    async def resolve(self, domain: str) -> list[Destination]:
        """Destinations for `domain` in the order to try them; RouteError if there are none."""
        domain = domain.strip().lower().rstrip(".")
        if not domain:
            raise permanent("empty recipient domain", 501, "5.1.3")
        # Static routes first, address literals included: with a "*" smarthost route nothing
        # leaves any other way (the submission listener refuses literals unless configured).
        route = self._cfg.routes.get(domain) or self._cfg.routes.get("*")
        if route is not None:
            return await self._static(route)
        literal = address_literal(domain)
        if literal is not None:
            reason = None if self._cfg.allow_private_mx else non_public_reason(literal)
            if reason is not None:
                raise permanent(
                    f"address literal {domain} is {reason}; {_PRIVATE_HINT}",
                    550,
                    "5.4.4",
                )
            return [Destination(literal, literal, self._mx_port, 0)]
        if domain.startswith("["):
            raise permanent(f"unusable address literal {domain}", 501, "5.1.3")
        return await self._mx(domain)

    async def _static(self, route: str) -> list[Destination]:
        host, port = parse_hostport(route, default_port=MX_PORT)
        ip = _ip_or_none(host)
        if ip is not None:
            return [Destination(host, ip, port, 0)]
        # A broken smarthost is our configuration's fault, never the recipient's: retry.
        try:
            addresses = await self._addresses(host)
        except _TemporaryDNSError as e:
            raise temporary(f"static route host {host}: {e}") from None
        if not addresses:
            raise temporary(f"static route host {host} has no address", enhanced="4.4.4")
        return [Destination(host, a, port, 0) for a in addresses]

    async def _mx(self, domain: str) -> list[Destination]:
        try:
            mx = await self._lookup(domain, "MX")
        except _TemporaryDNSError as e:
            raise temporary(f"MX lookup for {domain} failed: {e}") from None
        if mx.status == "nxdomain":
            raise permanent(f"domain {domain} does not exist")
        if mx.status == "nodata":
            return await self._implicit_mx(domain)
        records = []
        for text in mx.records:
            pref_text, _, host = text.partition(" ")
            records.append((int(pref_text), host.rstrip(".").lower() or "."))
        if is_null_mx(records):
            raise permanent(f"domain {domain} accepts no mail (null MX)", 556, "5.1.10")
        ordered = order_mx(records, self._rng)
        results = await asyncio.gather(
            *(self._host_addresses(host) for _, host in ordered), return_exceptions=True
        )
        destinations: list[Destination] = []
        failures: list[str] = []
        refused: list[str] = []
        dns_failed = False
        for (pref, host), result in zip(ordered, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, _TemporaryDNSError):
                    raise result
                failures.append(f"{host}: {result}")
                dns_failed = True
                continue
            usable = self._usable(host, result, refused)
            destinations.extend(Destination(host, a, self._mx_port, pref) for a in usable)
            if not result:
                failures.append(f"{host}: no address")
        if destinations:
            return destinations
        if refused and not dns_failed:
            # The domain's own DNS names only hosts we will not connect to: asking again
            # gives the same answer, so bounce now rather than after days of retries.
            raise permanent(
                f"no usable MX host for {domain}: {'; '.join(refused + failures)}; "
                + _PRIVATE_HINT,
                550,
                "5.4.4",
            )
        # MX hosts that do not resolve are usually a transient mistake in the recipient's DNS;
        # retrying until the message expires costs little and bounces the same in the end.
        raise temporary(
            f"no MX host of {domain} has an address ({'; '.join(refused + failures)})",
            enhanced="4.4.4",
        )

    async def _implicit_mx(self, domain: str) -> list[Destination]:
        """RFC 5321 §5.1: without MX records the domain itself is the mail host."""
        try:
            addresses = await self._addresses(domain)
        except _TemporaryDNSError as e:
            raise temporary(f"address lookup for {domain} failed: {e}") from None
        if not addresses:
            raise permanent(f"domain {domain} has no MX, A or AAAA record", 550, "5.4.4")
        refused: list[str] = []
        usable = self._usable(domain, addresses, refused)
        if not usable:
            raise permanent(
                f"no usable mail host for {domain} (no MX, its own address):"
                f" {'; '.join(refused)}; {_PRIVATE_HINT}",
                550,
                "5.4.4",
            )
        return [Destination(domain, a, self._mx_port, 0) for a in usable]

    def _usable(self, host: str, addresses: list[str], refused: list[str]) -> list[str]:
        """The `addresses` of a recipient's mail host the engine may connect to; each one it
        may not is described in `refused`."""
        if self._cfg.allow_private_mx:
            return addresses
        usable: list[str] = []
        for address in addresses:
            reason = non_public_reason(address)
            if reason is None:
                usable.append(address)
            else:
                refused.append(f"{host} {address} is {reason}")
        return usable

    async def _host_addresses(self, host: str) -> list[str]:
        ip = _ip_or_none(host)
        if ip is not None:
            return [ip]
        return await self._addresses(host)

    async def _addresses(self, host: str) -> list[str]:
        """A then AAAA addresses; [] when the name has neither (or does not exist)."""
        kinds: list[RecordType] = ["A", "AAAA"] if self._ipv6 else ["A"]
        answers = await asyncio.gather(
            *(self._lookup(host, k) for k in kinds), return_exceptions=True
        )
        addresses: list[str] = []
        errors: list[BaseException] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                errors.append(answer)
            else:
                addresses.extend(answer.records)
        for error in errors:
            if not isinstance(error, _TemporaryDNSError):
                raise error
        # One family failing transiently is fine as long as the other gave addresses.
        if not addresses and errors:
            raise errors[0]
        return addresses

    async def _lookup(self, name: str, rdtype: RecordType) -> _Answer:
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached is not None and cached.expires > self._clock():
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._query(name, rdtype)
        except BaseException as e:
            future.set_exception(e)
            # Nobody else may be waiting; retrieve it so asyncio does not log it as lost.
            future.exception()
            raise
        else:
            future.set_result(answer)
            if answer.expires > self._clock():
                self._cache[key] = answer
            return answer
        finally:
            del self._inflight[key]

    async def _query(self, name: str, rdtype: RecordType) -> _Answer:
        cap = float(self._cfg.dns.max_cache_ttl)
        try:
            result = await self._resolver.resolve(
                name, rdtype, search=False, raise_on_no_answer=True
            )
        except dns.resolver.NXDOMAIN as e:
            ttl = min(_negative_ttl(e.kwargs.get("responses", {}).values()), cap)
            return _Answer("nxdomain", (), self._clock() + ttl)
        except dns.resolver.NoAnswer as e:
            response = e.kwargs.get("response")
            ttl = min(_negative_ttl([response] if response is not None else []), cap)
            return _Answer("nodata", (), self._clock() + ttl)
        except dns.resolver.NoNameservers:
            raise _TemporaryDNSError("the name servers failed to answer (SERVFAIL)") from None
        except dns.exception.Timeout:
            raise _TemporaryDNSError("DNS timeout") from None
        except dns.exception.DNSException as e:
            raise _TemporaryDNSError(f"DNS error: {e}") from None
        assert result.rrset is not None  # raise_on_no_answer=True
        records = tuple(r.to_text() for r in result.rrset)
        return _Answer("ok", records, self._clock() + min(float(result.rrset.ttl), cap))

    @staticmethod
    def _make_resolver(cfg: DNSConfig) -> dns.asyncresolver.Resolver:
        try:
            resolver = dns.asyncresolver.Resolver(configure=not cfg.nameservers)
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
        if cfg.nameservers:
            resolver.nameservers = list(cfg.nameservers)
            resolver.port = cfg.port
        resolver.timeout = float(cfg.timeout)
        resolver.lifetime = float(cfg.timeout)
        resolver.cache = None  # ours respects max_cache_ttl and negative TTLs
        return resolver


def _negative_ttl(responses: Iterable[object]) -> float:
    """RFC 2308: a negative answer holds for min(SOA TTL, SOA MINIMUM) of its authority SOA."""
    ttls: list[float] = []
    for response in responses:
        if not isinstance(response, dns.message.Message):
            continue
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                ttls.extend(min(float(rrset.ttl), float(r.minimum)) for r in rrset)
    return min(ttls) if ttls else DEFAULT_NEGATIVE_TTL
