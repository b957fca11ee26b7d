"""DNS lookups for the SendingDomain checks, with dnspython's async resolver.

`gather` asks what the pure checks (domainplan.check) say they need, round after round, until
they need nothing new: SPF includes and redirects are followed that way. Bounded: at most
MAX_ROUNDS rounds and MAX_QUERIES queries per check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailfleet.operator.decide.domainplan import Answer, Checked, Facts, Query

MAX_ROUNDS = 16
MAX_QUERIES = 200
TIMEOUT = 3.0


def resolver(nameservers: Sequence[str], port: int = 53) -> dns.asyncresolver.Resolver:
    """The given nameservers, or the system's (/etc/resolv.conf) when there are none."""
    if not nameservers:
        r = dns.asyncresolver.Resolver()
    else:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = list(nameservers)
        r.port = port
    r.timeout = TIMEOUT
    r.lifetime = 2 * TIMEOUT
    r.cache = None
    return r


async def lookup(res: dns.asyncresolver.Resolver, query: Query) -> Answer:
    name, rtype = query
    try:
        answer = await res.resolve(name, rtype, search=False)
    except dns.resolver.NXDOMAIN:
        return Answer(error="NXDOMAIN")
    except dns.resolver.NoAnswer:
        return Answer(error="NODATA")
    except dns.resolver.NoNameservers as e:
        return Answer(error=f"no nameserver answered ({e})")
    except dns.exception.Timeout:
        return Answer(error="timed out")
    except dns.exception.DNSException as e:
        return Answer(error=str(e) or type(e).__name__)
    out: list[str] = []
    for rdata in answer:
        if rtype == "TXT":
            out.append(b"".join(rdata.strings).decode(errors="replace"))
        elif rtype in ("PTR",):
            out.append(rdata.target.to_text(omit_final_dot=True).lower())
        elif rtype == "MX":
            out.append(rdata.exchange.to_text(omit_final_dot=True).lower())
        else:
            out.append(rdata.address)
    return Answer(tuple(out))


async def gather(res: dns.asyncresolver.Resolver, run: Callable[[Facts], Checked]) -> Checked:
    """Look up what `run` needs until it needs nothing new; the last result."""
    facts: dict[Query, Answer] = {}
    result = run(facts)
    for _ in range(MAX_ROUNDS):
        todo = sorted(q for q in result.needed if q not in facts)
        if not todo or len(facts) + len(todo) > MAX_QUERIES:
            break
        answers = await asyncio.gather(*(lookup(res, q) for q in todo))
        facts.update(zip(todo, answers, strict=True))
        result = run(facts)
    if result.needed:
        # Bounded out: what is still unknown counts as a failed lookup.
        for q in result.needed:
            facts.setdefault(q, Answer(error="too many DNS lookups for one check"))
        result = run(facts)
    return result
