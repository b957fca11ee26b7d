"""Which source IPs may send mail of a sender domain (delivery.senderRestrictions). Pure.

A SendingDomain with onFailingIP: StopSending makes the operator list, per sender domain, the
IPs whose SPF or reverse DNS fails for it; the queue asks `excluded` before shaping picks an IP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailfleet.mta.config import SenderRestrictionConfig

# The shaping wait reason when every source IP is excluded for the message's sender domain.
SENDER_RESTRICTED = "sender domain restricted"


def sender_domain(mail_from: str) -> str:
    """The domain of an envelope sender, lowercase; "" for the null sender (<>)."""
    address = mail_from.strip().removeprefix("<").removesuffix(">")
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


class SenderRestrictions:
    def __init__(self, entries: Sequence[SenderRestrictionConfig]) -> None:
        self.by_domain: dict[str, frozenset[str]] = {
            e.domain: frozenset(str(ip) for ip in e.excluded_ips) for e in entries
        }
        self.reasons: dict[str, str] = {e.domain: e.reason for e in entries}

    def __bool__(self) -> bool:
        return bool(self.by_domain)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SenderRestrictions) and other.by_domain == self.by_domain

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> dict[str, dict[str, Any]]:
        """For /v1/status: per sender domain, the excluded IPs and why."""
        return {
            d: {"excludedIPs": sorted(ips), "reason": self.reasons[d]}
            for d, ips in sorted(self.by_domain.items())
        }

    def entry(self, domain: str) -> str | None:
        """The entry that governs `domain`: its own, else its nearest parent's."""
        labels = domain.split(".")
        for i in range(len(labels)):
            d = ".".join(labels[i:])
            if d in self.by_domain:
                return d
        return None

    def excluded(self, domain: str) -> frozenset[str]:
        """The source IPs that must not send mail whose envelope sender is at `domain`."""
        entry = self.entry(domain) if domain else None
        return self.by_domain[entry] if entry is not None else frozenset()
