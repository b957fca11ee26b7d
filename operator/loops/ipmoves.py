"""IPs moving between a pool's pods, and the mode of its pool-wide limits: the operator's memory
of what the pods report, and the handover of a moved IP's state to its new owner.

The decisions are fleetsplit's; this holds what they need between polls and does the one write:
the moved IP's shaping rows and warmup counts, posted to the new owner's `/v1/shaping/adopt`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailfleet.operator.api.reasons import EventReason, EventType
from mailfleet.operator.decide import fleetsplit
from mailfleet.operator.decide.pods import PodReport

log = logging.getLogger("mailfleet.operator.loops.ipmoves")


class ShapingAdopter(Protocol):
    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool: ...


@dataclass
class PoolMoves:
    """One pool's moves: plain fields in its PoolMemory (nothing here is keyed by pool)."""

    owners: dict[str, str | None] = field(default_factory=dict)  # as last rendered
    senders: dict[str, frozenset[str]] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # IP -> the pod it leaves
    # IP -> (shaping rows, warmup rows) as the pod sending from it last reported them.
    state: dict[str, tuple[list[Any], list[Any]]] = field(default_factory=dict)
    modes: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def rendered(self, status_ips: Sequence[Mapping[str, Any]]) -> None:
        """The owners the render just gave each sending IP (the pool status's ips[].pod)."""
        self.owners = {
            str(ip["address"]): ip.get("pod") for ip in status_ips if ip.get("state") != "standby"
        }

    async def observe(
        self,
        reports: Sequence[PodReport],
        engines: ShapingAdopter,
        token: str | None,
        event: Callable[[EventType, EventReason, str], None],
    ) -> bool:
        """Take in a poll's reports; hand over the IPs whose old owner stopped sending from
        them. True when the pool must be rendered again (held IPs or modes changed)."""
        by_pod = {r.pod.name: r.status for r in reports}
        sending = fleetsplit.senders(by_pod)
        for ip, pods in sending.items():
            for pod in pods:
                status: Any = by_pod.get(pod) or {}
                self.state[ip] = (
                    [r for r in status.get("shaping") or [] if r.get("ip") == ip],
                    [
                        {"ip": ip, "provider": w["provider"], "sent": int(w.get("sent") or 0)}
                        for w in status.get("warmup") or []
                        if w.get("ip") == ip
                    ],
                )
        held_before = fleetsplit.held_ips(self.owners, self.senders, self.pending)
        pending, ready = fleetsplit.moves(self.owners, sending, self.pending, self.senders)
        ips_of = {r.pod.name: r.pod.ip for r in reports if r.status is not None}
        for ip, frm, to in ready:
            if to is None:
                pending.pop(ip, None)  # nobody sends from it any more (standby, no pods)
                continue
            target = ips_of.get(to)
            if target is None or token is None:
                continue  # the new owner does not answer yet: the IP stays held
            shaping, warmup = self.state.get(ip, ([], []))
            if not await engines.adopt_shaping(
                target, token, {"shaping": shaping, "warmup": warmup}
            ):
                log.warning("pod %s refused the state of %s", to, ip)
                continue
            pending.pop(ip, None)
            sent = sum(w["sent"] for w in warmup if w["provider"] == "*")
            blocked = [r["provider"] for r in shaping if r.get("suspendedUntil")]
            quarantined = [r["provider"] for r in shaping if r.get("quarantinedUntil")]
            event(
                "Normal",
                EventReason.IPOwnerChanged,
                f"{ip} moved from {frm} to {to} with its shaping state ("
                f"{len(shaping)} provider rates, suspended for {', '.join(blocked) or 'none'}, "
                f"quarantined for {', '.join(quarantined) or 'none'}) and {sent} warmup sends "
                "today; no pod sent from it in between",
            )
        self.pending, self.senders = pending, sending
        modes = {
            pod: (str(fl.get("mode")), fl.get("redisError"))
            for pod, status in by_pod.items()
            if status is not None and isinstance(fl := status.get("fleetLimits"), dict)
        }
        changed_modes = modes != self.modes
        self.modes = modes
        return changed_modes or fleetsplit.held_ips(self.owners, sending, pending) != held_before
