"""A SendingDomain's decisions, pure (no clock, no I/O: `now` and DNS answers are passed in).

- `plan_keys`: the DKIM key life cycle. Per wanted algorithm one key signs (active). A new key
  starts pending (generated, not signing) and becomes active only once DNS serves its record;
  the key it replaces turns retiring, stays published for dkim.gracePeriod, then goes. A key is
  due for replacement dkim.rotateEvery after it became active. Every step is an event.
- `records` / `zone`: what DNS must hold (DKIM TXT per selector, SPF, DMARC, PTR and A/AAAA of
  every pool IP).
- `check`: the conditions (DKIMPublished, SPFValid, DMARCAligned, ReverseDNS, Ready) from DNS
  answers. Checks say which names they still need (`Checked.needed`); the I/O side looks those
  up and checks again until nothing new is needed (SPF includes are found that way).
- `domain_dkim_keys`: the DKIM keys a pool signs with for the SendingDomains that list it.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from mailfleet.operator.api.conditions import Cond
from mailfleet.operator.api.crd_models import (
    DKIMAlgorithm,
    DKIMKeyRef,
    SelectorState,
    SendingDomain,
    SendingDomainSpec,
    SendingPool,
)
from mailfleet.operator.api.reasons import ConditionReason, ConditionType, EventReason, EventType
from mailfleet.operator.decide.dkimrecords import dkim_name, same_key, tags

# --- keys --------------------------------------------------------------------------------------

ALGO_SUFFIX: dict[str, str] = {"rsa-sha256": "r", "ed25519-sha256": "e"}
CONDITION_TYPES = ("DKIMPublished", "SPFValid", "DMARCAligned", "ReverseDNS", "Ready")


@dataclass(frozen=True)
class Selector:
    selector: str
    algorithm: DKIMAlgorithm
    state: SelectorState
    since: datetime


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: EventReason
    message: str
    pool: str | None = None  # also posted on this SendingPool


@dataclass(frozen=True)
class KeyPlan:
    selectors: list[Selector]
    generate: list[Selector]  # new (pending) selectors whose keys must be generated
    events: list[Event]
    next_step: datetime | None  # when a rotation or removal falls due


def secret_name(domain_object: str) -> str:
    """The Secret holding a SendingDomain's private keys, `<selector>.pem` each."""
    return f"{domain_object}-dkim"


def key_file(selector: str) -> str:
    return f"{selector}.pem"


def selector_name(algorithm: DKIMAlgorithm, now: datetime) -> str:
    """mf + UTC time to the second + r (RSA) or e (Ed25519): unique, sortable, DNS-safe."""
    return f"mf{now:%Y%m%d%H%M%S}{ALGO_SUFFIX[algorithm]}"


def plan_keys(
    spec: SendingDomainSpec,
    current: Sequence[Selector],
    have_keys: frozenset[str],
    published: Mapping[str, bool],
    now: datetime,
) -> KeyPlan:
    """The next step of every key; `have_keys`: selectors whose private key is in the Secret,
    `published`: selectors whose DNS record carries their key."""
    events: list[Event] = []
    out: list[Selector] = []
    name = spec.domain
    rotate = timedelta(seconds=spec.dkim.rotate_every)
    grace = timedelta(seconds=spec.dkim.grace_period)
    for s in current:
        if s.selector not in have_keys:
            events.append(
                Event(
                    "Warning",
                    EventReason.DKIMKeyLost,
                    f"the private key of selector {s.selector} ({s.state}) is no longer in the "
                    "Secret; the selector is dropped",
                )
            )
        elif s.state == "retiring" and now >= s.since + grace:
            events.append(
                Event(
                    "Normal",
                    EventReason.DKIMKeyRemoved,
                    f"selector {s.selector} ({s.algorithm}) retired after the grace period: "
                    f"its record {dkim_name(s.selector, name)} may be deleted from DNS",
                )
            )
        elif s.algorithm not in spec.dkim.algorithms and s.state == "pending":
            events.append(
                Event(
                    "Normal",
                    EventReason.DKIMKeyRemoved,
                    f"selector {s.selector} removed: {s.algorithm} is no longer wanted",
                )
            )
        elif s.algorithm not in spec.dkim.algorithms and s.state == "active":
            out.append(replace(s, state="retiring", since=now))
            events.append(
                Event(
                    "Normal",
                    EventReason.DKIMKeyRetiring,
                    f"selector {s.selector} stops signing ({s.algorithm} is no longer wanted); "
                    "it stays published for the grace period",
                )
            )
        else:
            out.append(s)
    generate: list[Selector] = []
    for algorithm in spec.dkim.algorithms:
        active = [s for s in out if s.algorithm == algorithm and s.state == "active"]
        pending = [s for s in out if s.algorithm == algorithm and s.state == "pending"]
        if pending and published.get(pending[0].selector):
            new = pending[0]
            for old in active:
                out[out.index(old)] = replace(old, state="retiring", since=now)
                events.append(
                    Event(
                        "Normal",
                        EventReason.DKIMKeyRetiring,
                        f"selector {old.selector} ({algorithm}) replaced by {new.selector}; it "
                        "stays published for the grace period",
                    )
                )
            out[out.index(new)] = replace(new, state="active", since=now)
            events.append(
                Event(
                    "Normal",
                    EventReason.DKIMKeyActivated,
                    f"selector {new.selector} ({algorithm}) is published in DNS and signs now",
                )
            )
        elif not pending and (not active or now >= active[0].since + rotate):
            sel = Selector(selector_name(algorithm, now), algorithm, "pending", now)
            out.append(sel)
            generate.append(sel)
            what = "rotation: new" if active else "new"
            events.append(
                Event(
                    "Normal",
                    EventReason.DKIMKeyGenerated,
                    f"{what} {algorithm} key with selector {sel.selector}: publish "
                    f"{dkim_name(sel.selector, name)} TXT (status.records); it signs once DNS "
                    "serves it",
                )
            )
    due: list[datetime] = [s.since + rotate for s in out if s.state == "active"]
    due += [s.since + grace for s in out if s.state == "retiring"]
    return KeyPlan(out, generate, events, min(due) if due else None)


# --- what DNS must hold ------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolIP:
    pool: str
    address: str
    hostname: str
    standby: bool = False


def spf_record(ips: Sequence[PoolIP]) -> str:
    terms = []
    for ip in dict.fromkeys(i.address for i in ips):
        terms.append(f"ip{ipaddress.ip_address(ip).version}:{ip}")
    return " ".join(["v=spf1", *terms, "-all"])


def dmarc_record(spec: SendingDomainSpec) -> str:
    out = f"v=DMARC1; p={spec.dmarc.expected_policy}"
    if spec.dmarc.report_address:
        out += f"; rua=mailto:{spec.dmarc.report_address}"
    return out


def records(
    spec: SendingDomainSpec,
    selectors: Sequence[Selector],
    txt: Mapping[str, str],
    ips: Sequence[PoolIP],
) -> list[dict[str, str]]:
    """status.records: the TXT of each selector with a key, SPF, DMARC, then each pool IP's
    PTR and the A/AAAA of its hostname."""
    out = [
        {"name": dkim_name(s.selector, spec.domain), "type": "TXT", "value": txt[s.selector]}
        for s in selectors
        if s.selector in txt
    ]
    out.append({"name": spec.domain, "type": "TXT", "value": spf_record(ips)})
    out.append({"name": f"_dmarc.{spec.domain}", "type": "TXT", "value": dmarc_record(spec)})
    for ip in ips:
        addr = ipaddress.ip_address(ip.address)
        out.append({"name": addr.reverse_pointer, "type": "PTR", "value": ip.hostname})
        out.append(
            {"name": ip.hostname, "type": "A" if addr.version == 4 else "AAAA", "value": ip.address}
        )
    return out


def zone(recs: Sequence[Mapping[str, str]]) -> str:
    """Zone-file lines; long TXT values split into quoted strings of 255 characters."""
    lines = []
    for r in recs:
        value = r["value"]
        if r["type"] == "TXT":
            parts = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
            value = (
                "( " + " ".join(f'"{p}"' for p in parts) + " )" if len(parts) > 1 else f'"{value}"'
            )
        elif r["type"] == "PTR":
            value = f"{value}."
        lines.append(f"{r['name']}. IN {r['type']} {value}")
    return "\n".join(lines) + "\n"


# --- checks ------------------------------------------------------------------------------------

RRType = Literal["TXT", "A", "AAAA", "PTR", "MX"]
Query = tuple[str, RRType]


@dataclass(frozen=True)
class Answer:
    """A DNS answer: the records (TXT strings joined, names without the final dot, lowercase),
    or the error: NXDOMAIN, NODATA, or another failure's description."""

    records: tuple[str, ...] = ()
    error: str | None = None

    @property
    def missing(self) -> bool:
        return self.error in ("NXDOMAIN", "NODATA")

    @property
    def failed(self) -> bool:
        return self.error is not None and not self.missing


Facts = Mapping[Query, Answer]


@dataclass
class Checked:
    conditions: list[Cond]
    published: dict[str, bool]  # selector -> DNS serves its key
    needed: set[Query] = field(default_factory=set)
    # status.transportSecurity: the MTA-STS and TLS-RPT records found (noted, not judged).
    notes: dict[str, str] = field(default_factory=dict)
    # Pool IPs failing SPF or reverse DNS: address -> [(reason, message)]; and the IPs whose
    # verdict a failed lookup left unknown.
    ip_failures: dict[str, list[tuple[ConditionReason, str]]] = field(default_factory=dict)
    ip_unknown: set[str] = field(default_factory=set)


def transport_notes(domain: str, dns: _Lookups) -> dict[str, str]:
    """The domain's MTA-STS (_mta-sts) and TLS-RPT (_smtp._tls) TXT records, or what is
    missing: receivers use them for mail *to* the domain; noted for whoever runs it."""
    out: dict[str, str] = {}
    for key, name, version in (
        ("mtaSts", f"_mta-sts.{domain}", "v=stsv1"),
        ("tlsRpt", f"_smtp._tls.{domain}", "v=tlsrptv1"),
    ):
        try:
            a = dns.get(name, "TXT")
        except _Need:
            continue
        found = [r for r in a.records if r.lower().replace(" ", "").startswith(version)]
        if found:
            out[key] = found[0]
        elif a.failed:
            out[key] = f"lookup of {name} failed: {a.error}"
        else:
            out[key] = f"none ({name} has no {version.replace('v=', '').upper()} record)"
    return out


def _q(name: str, rtype: RRType) -> Query:
    return (name.lower().rstrip("."), rtype)


class _Need(Exception):
    pass


class _Lookups:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.needed: set[Query] = set()

    def get(self, name: str, rtype: RRType) -> Answer:
        q = _q(name, rtype)
        if q not in self.facts:
            self.needed.add(q)
            raise _Need
        return self.facts[q]


def _dns_failure(what: str, a: Answer) -> str:
    return f"DNS lookup of {what} failed: {a.error}"


def check_dkim(
    domain: str, selectors: Sequence[Selector], txt: Mapping[str, str], dns: _Lookups
) -> tuple[Cond, dict[str, bool]]:
    published: dict[str, bool] = {}
    problems: list[tuple[ConditionReason, str]] = []
    failures: list[str] = []
    waiting: list[str] = []
    for s in selectors:
        if s.selector not in txt:
            continue
        name = dkim_name(s.selector, domain)
        try:
            a = dns.get(name, "TXT")
        except _Need:
            continue
        if a.failed:
            failures.append(_dns_failure(f"{name} TXT", a))
            continue
        keys = [r for r in a.records if tags(r).get("p") is not None]
        ok = any(same_key(r, txt[s.selector]) for r in keys)
        published[s.selector] = ok
        if ok:
            continue
        if s.state == "pending" and not keys:
            waiting.append(s.selector)
        elif not keys:
            problems.append(
                (
                    ConditionReason.KeyNotPublished,
                    f"{name} has no DKIM key record ({s.state} selector)",
                )
            )
        else:
            problems.append(
                (
                    ConditionReason.KeyMismatch,
                    f"{name} publishes another key than the one in the Secret "
                    f"({s.state} selector): publish the value in status.records",
                )
            )
    if failures:
        return Cond(
            ConditionType.DKIMPublished, "Unknown", ConditionReason.DNSError, "; ".join(failures)
        ), published
    if problems:
        return Cond(
            ConditionType.DKIMPublished, "False", problems[0][0], "; ".join(p[1] for p in problems)
        ), published
    live = [s.selector for s in selectors if s.state != "pending"]
    if not live:
        names = ", ".join(dkim_name(s, domain) for s in waiting)
        return (
            Cond(
                ConditionType.DKIMPublished,
                "False",
                ConditionReason.AwaitingPublication,
                f"publish {names} TXT (status.records); the key signs once DNS serves it",
            ),
            published,
        )
    msg = f"selectors {', '.join(live)} published and matching their keys"
    if waiting:
        msg += f"; new selector {', '.join(waiting)} waits for its record (rotation)"
        return Cond(
            ConditionType.DKIMPublished, "True", ConditionReason.RotationPending, msg
        ), published
    return Cond(ConditionType.DKIMPublished, "True", ConditionReason.Published, msg), published


SPF_LOOKUP_LIMIT = 10
_SPF_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}


class _SPFError(Exception):
    def __init__(self, reason: ConditionReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _spf_of(domain: str, dns: _Lookups) -> str:
    a = dns.get(domain, "TXT")
    if a.failed:
        raise _SPFError(ConditionReason.DNSError, _dns_failure(f"{domain} TXT", a))
    spf = [r for r in a.records if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    if not spf:
        raise _SPFError(ConditionReason.NoSPFRecord, f"{domain} has no SPF record (TXT v=spf1 ...)")
    if len(spf) > 1:
        raise _SPFError(
            ConditionReason.MultipleSPFRecords,
            f"{domain} has {len(spf)} SPF records; one is allowed",
        )
    return spf[0]


def _addresses(name: str, dns: _Lookups) -> list[str]:
    out: list[str] = []
    for rtype in ("A", "AAAA"):
        a = dns.get(name, rtype)  # type: ignore[arg-type]
        if a.failed:
            raise _SPFError(ConditionReason.DNSError, _dns_failure(f"{name} {rtype}", a))
        out += a.records
    return out


def _spf_networks(
    domain: str, dns: _Lookups, counter: list[int], depth: int = 0
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks an SPF record passes (+ mechanisms), following include and redirect."""
    if depth > 10:
        raise _SPFError(
            ConditionReason.SPFLoop, f"SPF of {domain}: includes nest too deep (a loop?)"
        )
    record = _spf_of(domain, dns)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    redirect: str | None = None
    has_all = False
    for term in record.split()[1:]:
        low = term.lower()
        if "=" in low and ":" not in low.split("=", 1)[0]:
            mod, value = term.split("=", 1)
            if mod.lower() == "redirect":
                redirect = value
            elif mod.lower() != "exp":
                pass  # unknown modifiers are ignored (RFC 7208 §6)
            continue
        qualifier = "+"
        if low[0] in "+-~?":
            qualifier, term, low = low[0], term[1:], low[1:]
        mech, _, arg = term.partition(":")
        mech, arg_cidr = mech.lower(), ""
        if "/" in mech:
            mech, _, arg_cidr = mech.partition("/")
        if mech not in _SPF_MECHANISMS:
            raise _SPFError(
                ConditionReason.SPFSyntaxError, f"SPF of {domain}: unknown term {term!r}"
            )
        if mech in ("include", "a", "mx", "ptr", "exists"):
            counter[0] += 1
        if mech == "all":
            has_all = True
            continue
        if mech in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _SPFError(
                    ConditionReason.SPFSyntaxError, f"SPF of {domain}: bad address in {term!r}"
                ) from None
            if net.version != int(mech[-1]):
                raise _SPFError(
                    ConditionReason.SPFSyntaxError,
                    f"SPF of {domain}: {term!r} is the wrong IP version",
                )
            if qualifier == "+":
                nets.append(net)
            continue
        if mech == "include":
            if not arg:
                raise _SPFError(
                    ConditionReason.SPFSyntaxError, f"SPF of {domain}: include needs a domain"
                )
            inner = _spf_networks(arg, dns, counter, depth + 1)
            if qualifier == "+":
                nets += inner
            continue
        if mech in ("a", "mx"):
            if "/" in arg:
                arg, _, arg_cidr = arg.partition("/")
            target = arg or domain
            hosts = [target]
            if mech == "mx":
                mx = dns.get(target, "MX")
                if mx.failed:
                    raise _SPFError(ConditionReason.DNSError, _dns_failure(f"{target} MX", mx))
                hosts = list(mx.records)
            for h in hosts:
                for addr in _addresses(h, dns):
                    ip = ipaddress.ip_address(addr)
                    bits = (
                        int(arg_cidr)
                        if arg_cidr.isdigit() and ip.version == 4
                        else ip.max_prefixlen
                    )
                    if qualifier == "+":
                        nets.append(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
        # ptr and exists: counted, never relied on to authorise
    if redirect and not has_all:
        counter[0] += 1
        nets += _spf_networks(redirect, dns, counter, depth + 1)
    return nets


def check_spf(
    domain: str, ips: Sequence[PoolIP], dns: _Lookups, verdicts: Checked | None = None
) -> Cond:
    """SPFValid; `verdicts` collects the IPs SPF does not authorise (a record that is missing
    or broken fails every IP alike: no IP is singled out)."""
    counter = [0]
    try:
        nets = _spf_networks(domain, dns, counter)
    except _SPFError as e:
        status: Literal["False", "Unknown"] = (
            "Unknown" if e.reason == ConditionReason.DNSError else "False"
        )
        if verdicts is not None and status == "Unknown":
            verdicts.ip_unknown.update(i.address for i in ips)
        return Cond(ConditionType.SPFValid, status, e.reason, e.message)
    if counter[0] > SPF_LOOKUP_LIMIT:
        return Cond(
            ConditionType.SPFValid,
            "False",
            ConditionReason.TooManyLookups,
            f"SPF of {domain} needs {counter[0]} DNS lookups; receivers allow {SPF_LOOKUP_LIMIT}",
        )
    active = [i for i in ips if not i.standby]
    missing = [i for i in active if not any(ipaddress.ip_address(i.address) in n for n in nets)]
    if verdicts is not None:
        for i in missing:
            verdicts.ip_failures.setdefault(i.address, []).append(
                (ConditionReason.IPNotAuthorized, f"SPF of {domain} does not authorise {i.address}")
            )
    if missing:
        what = ", ".join(f"{i.address} (pool {i.pool})" for i in missing)
        return Cond(
            ConditionType.SPFValid,
            "False",
            ConditionReason.IPNotAuthorized,
            f"SPF of {domain} does not authorise {what}",
        )
    return Cond(
        ConditionType.SPFValid,
        "True",
        ConditionReason.Valid,
        f"SPF of {domain} authorises all {len(active)} sending IPs ({counter[0]} DNS lookups)",
    )


def check_dmarc(spec: SendingDomainSpec, dns: _Lookups) -> Cond:
    name = f"_dmarc.{spec.domain}"
    a = dns.get(name, "TXT")
    if a.failed:
        return Cond(
            ConditionType.DMARCAligned,
            "Unknown",
            ConditionReason.DNSError,
            _dns_failure(f"{name} TXT", a),
        )
    found = [r for r in a.records if tags(r).get("v", "").upper() == "DMARC1"]
    if not found:
        return Cond(
            ConditionType.DMARCAligned,
            "False",
            ConditionReason.NoDMARCRecord,
            f"{name} has no DMARC record (TXT v=DMARC1; p=...)",
        )
    if len(found) > 1:
        return Cond(
            ConditionType.DMARCAligned,
            "False",
            ConditionReason.MultipleDMARCRecords,
            f"{name} has {len(found)} DMARC records",
        )
    t = tags(found[0])
    policy = t.get("p", "").lower()
    if policy != spec.dmarc.expected_policy:
        return Cond(
            ConditionType.DMARCAligned,
            "False",
            ConditionReason.PolicyMismatch,
            f"{name} says p={policy or '(none given)'}; expected p={spec.dmarc.expected_policy}",
        )
    if spec.dmarc.report_address:
        want = f"mailto:{spec.dmarc.report_address}".lower()
        rua = [u.split("!")[0].lower() for u in t.get("rua", "").split(",") if u]
        if want not in rua:
            return Cond(
                ConditionType.DMARCAligned,
                "False",
                ConditionReason.ReportAddressMissing,
                f"{name} rua={t.get('rua', '') or '(none)'} does not include {want}",
            )
    return Cond(
        ConditionType.DMARCAligned,
        "True",
        ConditionReason.Aligned,
        f"{name} has p={policy}; mail is signed with d={spec.domain} (aligned)",
    )


def check_reverse_dns(
    ips: Sequence[PoolIP], dns: _Lookups, verdicts: Checked | None = None
) -> Cond:
    """ReverseDNS; `verdicts` collects each IP's failure (or unknown verdict)."""
    if not ips:
        return Cond(
            ConditionType.ReverseDNS, "True", ConditionReason.NoPoolIPs, "no pool IPs to check"
        )
    problems: list[tuple[ConditionReason, str]] = []
    failures: list[str] = []
    for ip in ips:
        n_problems, n_failures = len(problems), len(failures)
        _reverse_dns_of(ip, dns, problems, failures)
        if verdicts is not None:
            for reason, message in problems[n_problems:]:
                verdicts.ip_failures.setdefault(ip.address, []).append((reason, message))
            if len(failures) > n_failures:
                verdicts.ip_unknown.add(ip.address)
    if problems:
        return Cond(
            ConditionType.ReverseDNS, "False", problems[0][0], "; ".join(p[1] for p in problems)
        )
    if failures:
        return Cond(
            ConditionType.ReverseDNS, "Unknown", ConditionReason.DNSError, "; ".join(failures)
        )
    return Cond(
        ConditionType.ReverseDNS,
        "True",
        ConditionReason.ForwardConfirmed,
        f"all {len(ips)} pool IPs have a PTR to their HELO name, which resolves back",
    )


def _reverse_dns_of(
    ip: PoolIP, dns: _Lookups, problems: list[tuple[ConditionReason, str]], failures: list[str]
) -> None:
    """One IP's PTR -> HELO name -> same IP; what fails is appended to problems or failures."""
    addr = ipaddress.ip_address(ip.address)
    rev = addr.reverse_pointer
    try:
        ptr = dns.get(rev, "PTR")
    except _Need:
        return
    if ptr.failed:
        failures.append(_dns_failure(f"PTR of {ip.address}", ptr))
        return
    if not ptr.records:
        problems.append(
            (
                ConditionReason.NoPTR,
                f"{ip.address} (pool {ip.pool}) has no PTR record; want {ip.hostname}",
            )
        )
        return
    if ip.hostname not in ptr.records:
        problems.append(
            (
                ConditionReason.PTRMismatch,
                f"PTR of {ip.address} (pool {ip.pool}) is {', '.join(ptr.records)}, "
                f"not its HELO name {ip.hostname}",
            )
        )
        return
    rtype: RRType = "A" if addr.version == 4 else "AAAA"
    try:
        fwd = dns.get(ip.hostname, rtype)
    except _Need:
        return
    if fwd.failed:
        failures.append(_dns_failure(f"{ip.hostname} {rtype}", fwd))
    elif not any(ipaddress.ip_address(r) == addr for r in fwd.records):
        problems.append(
            (
                ConditionReason.ForwardMismatch,
                f"{ip.hostname} {rtype} is {', '.join(fwd.records) or 'missing'}, not "
                f"{ip.address} (pool {ip.pool}): reverse DNS is not forward-confirmed",
            )
        )


def check(
    spec: SendingDomainSpec,
    selectors: Sequence[Selector],
    txt: Mapping[str, str],
    ips: Sequence[PoolIP],
    missing_pools: Sequence[str],
    facts: Facts,
) -> Checked:
    """Every condition from the DNS answers in `facts`; `needed` lists queries still to make
    (while it is not empty, the conditions are not final)."""
    dns = _Lookups(facts)
    dkim, published = check_dkim(spec.domain, selectors, txt, dns)
    conds = [dkim]
    verdicts = Checked([], {})
    with contextlib.suppress(_Need):
        conds.append(check_spf(spec.domain, ips, dns, verdicts))
    with contextlib.suppress(_Need):
        conds.append(check_dmarc(spec, dns))
    conds.append(check_reverse_dns(ips, dns, verdicts))
    notes = transport_notes(spec.domain, dns)
    if dns.needed:
        return Checked(conds, published, dns.needed)
    conds.append(ready(conds, selectors, missing_pools))
    return Checked(
        conds,
        published,
        notes=notes,
        ip_failures=verdicts.ip_failures,
        ip_unknown=verdicts.ip_unknown,
    )


# --- IPs that stop sending the domain's mail (onFailingIP: StopSending) ------------------------


@dataclass(frozen=True)
class Stopped:
    address: str
    pool: str
    reason: str
    message: str
    since: datetime


def plan_stops(
    spec: SendingDomainSpec,
    ips: Sequence[PoolIP],
    checked: Checked,
    previous: Sequence[Stopped],
    now: datetime,
) -> tuple[list[Stopped], list[Event]]:
    """status.stoppedIPs after a check, and the events of what changed. An IP stops when a
    check fails for it and the domain says StopSending; it resumes once no check fails for it.
    An IP whose lookups failed keeps its previous state: a DNS outage neither stops nor lifts."""
    name = spec.domain
    before = {(s.pool, s.address): s for s in previous}
    out: list[Stopped] = []
    events: list[Event] = []
    stop = spec.on_failing_ip == "StopSending"
    for ip in ips:
        key = (ip.pool, ip.address)
        was = before.get(key)
        failures = checked.ip_failures.get(ip.address, [])
        if stop and failures:
            message = "; ".join(m for _, m in failures)
            reason = failures[0][0]
            out.append(Stopped(ip.address, ip.pool, reason, message, was.since if was else now))
            if was is None:
                events.append(
                    Event(
                        "Warning",
                        EventReason.SendingStopped,
                        f"mail of {name} is no longer sent from {ip.address} (pool {ip.pool}): "
                        f"{message}",
                        ip.pool,
                    )
                )
        elif stop and was is not None and ip.address in checked.ip_unknown:
            out.append(was)
        elif was is not None:
            why = "its checks pass again" if stop else "onFailingIP is Warn"
            events.append(
                Event(
                    "Normal",
                    EventReason.SendingResumed,
                    f"mail of {name} is sent from {ip.address} (pool {ip.pool}) again: {why}",
                    ip.pool,
                )
            )
    for pool in dict.fromkeys(ip.pool for ip in ips):
        sending = {i.address for i in ips if i.pool == pool and not i.standby}
        stopped_now = {s.address for s in out if s.pool == pool}
        stopped_before = {s.address for s in previous if s.pool == pool}
        if sending and sending <= stopped_now and not sending <= stopped_before:
            events.append(
                Event(
                    "Warning",
                    EventReason.NoSendingIP,
                    f"none of pool {pool}'s IPs may send mail of {name}: it waits in the queue "
                    "(deferred) until DNS is fixed",
                    pool,
                )
            )
    return out, events


def ready(
    conds: Sequence[Cond], selectors: Sequence[Selector], missing_pools: Sequence[str]
) -> Cond:
    if missing_pools:
        return Cond(
            ConditionType.Ready,
            "False",
            ConditionReason.PoolNotFound,
            f"SendingPool {', '.join(missing_pools)} not found",
        )
    for c in conds:
        if c.status != "True":
            return Cond(ConditionType.Ready, "False", c.reason, f"{c.type}: {c.message}")
    active = [s.selector for s in selectors if s.state == "active"]
    if not active:
        return Cond(
            ConditionType.Ready, "False", ConditionReason.NoActiveKey, "no DKIM key signs yet"
        )
    return Cond(
        ConditionType.Ready,
        "True",
        ConditionReason.Ready,
        f"signing with {', '.join(active)}; DNS checks pass",
    )


# --- pools -------------------------------------------------------------------------------------


def domain_dkim_keys(pool: str, domains: Sequence[SendingDomain]) -> list[DKIMKeyRef]:
    """The DKIM keys pool `pool` signs with for the SendingDomains (of its namespace) that list
    it: each domain's active selectors, from the domain's Secret. Render appends them to the
    pool's spec.dkim (keys the spec names itself first, for the same domain and selector)."""
    out: list[DKIMKeyRef] = []
    for d in sorted(domains, key=lambda d: str(d.metadata.get("name"))):
        if pool not in d.spec.pools or d.status is None:
            continue
        for s in d.status.selectors:
            if s.state == "active":
                out.append(
                    DKIMKeyRef(
                        domain=d.spec.domain,
                        selector=s.selector,
                        secret_ref=secret_name(str(d.metadata["name"])),
                        secret_key=key_file(s.selector),
                        algorithm=s.algorithm,
                    )
                )
    return out


def sender_restrictions(pool: str, domains: Sequence[SendingDomain]) -> list[dict[str, Any]]:
    """The pool's delivery.senderRestrictions: per domain, the pool's IPs that must not send
    its mail (status.stoppedIPs of the SendingDomains listing the pool)."""
    by_domain: dict[str, dict[str, str]] = {}
    for d in domains:
        if pool not in d.spec.pools or d.status is None:
            continue
        for s in d.status.stopped_ips:
            if s.pool == pool:
                by_domain.setdefault(d.spec.domain, {})[str(s.address)] = s.message
    return [
        {
            "domain": domain,
            "excludedIPs": sorted(ips),
            "reason": "; ".join(dict.fromkeys(ips.values()))[:1024],
        }
        for domain, ips in sorted(by_domain.items())
    ]


def dmarc_report_addresses(
    pool: str, domains: Sequence[SendingDomain], base_url: str | None
) -> list[dict[str, Any]]:
    """The pool's dmarcReports.addresses: the report address of each SendingDomain listing it
    with dmarc.acceptReportsFrom, forwarded to <base_url>/dmarc/<namespace>/<name>. None
    without the operator's --dmarc-url (nowhere to forward)."""
    if not base_url:
        return []
    out: dict[str, dict[str, Any]] = {}
    for d in sorted(domains, key=lambda d: str(d.metadata.get("name"))):
        dmarc = d.spec.dmarc
        if pool not in d.spec.pools or dmarc.accept_reports_from is None:
            continue
        if dmarc.report_address is None:
            continue
        senders = dmarc.accept_reports_from
        out.setdefault(
            dmarc.report_address.lower(),
            {
                "address": dmarc.report_address.lower(),
                "forwardURL": f"{base_url.rstrip('/')}/dmarc/"
                f"{d.metadata.get('namespace')}/{d.metadata.get('name')}",
                "sources": [str(n) for n in senders.networks],
                "signedBy": list(senders.dkim_domains),
            },
        )
    return list(out.values())


def with_domain_keys(pool: SendingPool, keys: Sequence[DKIMKeyRef]) -> SendingPool:
    """The pool as render sees it: its own spec.dkim, then the domains' keys it does not name
    itself (same domain and selector)."""
    own = {(k.domain, k.selector.lower()) for k in pool.spec.dkim}
    extra = [k for k in keys if (k.domain, k.selector.lower()) not in own]
    if not extra:
        return pool
    spec = pool.spec.model_copy(update={"dkim": [*pool.spec.dkim, *extra]})
    return pool.model_copy(update={"spec": spec})
