"""Traffic shaping per (source IP, provider): token-bucket rates that adapt to what providers
answer (the controller in aimd.py: one decrease per window of replies, a remembered ceiling,
slow probing near it), suspensions, quarantines, connection limits, warmup caps, and the choice
of source IP.

No I/O and no clock of its own: every call takes `now` (and `rnd`), so the whole input space can
be tested. The queue runner owns a Shaper and persists `snapshot()`.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailfleet.mta.aimd import Control, on_clean_interval, on_signal
from mailfleet.mta.config import (
    AdaptiveConfig,
    EngineConfig,
    ProviderSettingsConfig,
    ReplyAction,
    ReplyRuleConfig,
)
from mailfleet.mta.providers import ProviderTable
from mailfleet.mta.senderips import SENDER_RESTRICTED

DEFAULT_QUARANTINE = 86400.0
# Waits that end when a connection is released rather than at a time.
CONNECTION_LIMIT = "connection limit"
OBSERVE_WINDOW = 60.0
# How long mail waits when every source IP is excluded for its sender domain, before it is
# looked at again (a config reload that changes the restrictions wakes it sooner).
SENDER_HOLD = 300.0
# How much of the reply a suspension or quarantine keeps as its reason: providers put the code
# that says why (Outlook's S3150) at the end of texts well over 120 characters long.
REASON_LENGTH = 400


def _rule(
    match: str, action: ReplyAction, duration: float | None = None, threshold: int = 1
) -> ReplyRuleConfig:
    return ReplyRuleConfig(match=match, action=action, duration=duration, threshold=threshold)


# What the big providers answer when a sender goes too fast or has lost their trust (sources in
# docs/architecture.md, "Shaping and reputation"). Configured rules come first; these apply to every
# provider after them. A volume deferral slows the pair down (throttle) rather than idling it for
# hours; only replies that say retrying will not help suspend or quarantine.
DEFAULT_RULES: tuple[ReplyRuleConfig, ...] = (
    _rule(r"^421[ -]4\.7\.28\b", "throttle"),  # Gmail: unusual rate from your IP
    _rule(r"^421[ -]4\.7\.0\b.*(low reputation|rate limit)", "throttle"),  # Gmail
    _rule(r"^450[ -]4\.2\.1\b", "retry"),  # Gmail: this recipient receives too fast
    # Gmail: the IP itself is refused (very low IP reputation, or blocked for its rate)
    _rule(
        r"^550[ -]5\.7\.1\b.*(reputation of the sending IP|originating from your IP)", "quarantine"
    ),
    _rule(r"^451[ -]4\.7\.65[01]\b", "throttle"),  # Outlook: rate limited, IP reputation (S775)
    _rule(r"^421[ -]RP-00[123]\b", "throttle"),  # Outlook: per-hour/connection limits
    _rule(r"^451[ -]4\.7\.500\b", "throttle"),  # Outlook: server busy (AS843)
    _rule(r"^550[ -]5\.7\.1\b.*\bS3(140|150)\b", "quarantine"),  # Outlook: block list
    _rule(r"^550[ -]5\.7\.511\b", "quarantine"),  # Outlook: banned sender (delist needed)
    _rule(r"\[TSS04\]", "throttle"),  # Yahoo: unexpected volume: slow down, retry
    _rule(r"\[TSS05\]", "suspend", 3600.0),  # Yahoo: complaints: pacing does not help
    _rule(r"\[TSS09\]|\[TS03\]", "quarantine"),  # Yahoo: retrying will NOT succeed
    _rule(r"\bRL00000\d\b", "throttle"),  # Comcast: too many sessions or messages
    _rule(r"\bBL0000\d\d\b", "quarantine"),  # Comcast: the IP is on a block list
    # Spamhaus ZEN lists IPs (SBL, XBL, PBL): everyone using it refuses the IP. Three receivers
    # (or three replies) within the window, so one stale mirror does not idle the IP for a day.
    _rule(r"\bzen\.spamhaus\.org\b", "quarantine", threshold=3),
)


@dataclass
class CompiledRule:
    rule: ReplyRuleConfig
    pattern: re.Pattern[str]


def compile_rules(rules: Iterable[ReplyRuleConfig]) -> list[CompiledRule]:
    return [CompiledRule(r, re.compile(r.match, re.IGNORECASE)) for r in rules]


# -- rates ---------------------------------------------------------------------------------------


def burst(rate: float) -> float:
    # One second's worth, at least one message: a bucket that never holds a whole token would
    # never send.
    return max(1.0, rate)


@dataclass
class Pair:
    """The shaping state of one (source IP, provider)."""

    ip: str
    provider: str
    max_rate: float | None  # the policy maximum (msgs/s); None: no rate limit
    rate: float | None  # allowed now; None: unlimited
    tokens: float = 1.0
    refilled: float = 0.0
    last_event: float = 0.0  # last decrease or increase: the recovery clock
    peak: float | None = None  # observed rate when an unlimited pair was first throttled
    ceiling: float | None = None  # the rate at which throttling last began (aimd.py)
    probes: int = 0  # clean intervals spent probing above the ceiling's plateau
    last_decrease: float = -math.inf  # replies to messages sent before it add no decrease
    suspended_until: float = 0.0
    quarantined_until: float = 0.0
    reason: str = ""
    inflight: int = 0
    sent: deque[float] = field(default_factory=deque)
    hits: dict[int, deque[float]] = field(default_factory=dict)

    def observed_rate(self, now: float) -> float:
        while self.sent and self.sent[0] < now - OBSERVE_WINDOW:
            self.sent.popleft()
        return len(self.sent) / OBSERVE_WINDOW

    def refill(self, now: float) -> None:
        if self.rate is None:
            self.tokens = 1.0
        else:
            elapsed = max(0.0, now - self.refilled)
            self.tokens = min(burst(self.rate), self.tokens + elapsed * self.rate)
        self.refilled = now

    def recover(self, adaptive: AdaptiveConfig, now: float) -> None:
        """One step of the controller for every clean recovery interval since the last event."""
        if self.rate is None or not adaptive.enabled:
            return
        limit = self.max_rate if self.max_rate is not None else self.peak
        interval = adaptive.recovery_interval
        # After a long quiet spell (a restore, an idle pair) a thousand steps reach anywhere.
        self.last_event = max(self.last_event, now - 1000 * interval)
        while now - self.last_event >= interval and (limit is None or self.rate < limit):
            c = on_clean_interval(Control(self.rate, self.ceiling, self.probes), adaptive, limit)
            self.rate, self.ceiling, self.probes = c.rate, c.ceiling, c.probes
            self.last_event += interval
        if self.max_rate is None and self.peak is not None and self.rate >= self.peak:
            # back to where it was before the throttling
            self.rate, self.peak, self.ceiling, self.probes = None, None, None, 0

    def throttle(self, adaptive: AdaptiveConfig, now: float, sent_at: float | None = None) -> bool:
        """A throttling reply, to a message sent at `sent_at` (None: unknown, it counts).
        Replies to messages sent before the last decrease belong to the congestion that decrease
        already answered: they change nothing. True when the rate went down."""
        if not adaptive.enabled:
            return False
        if sent_at is not None and sent_at < self.last_decrease:
            return False
        self.refill(now)
        if self.rate is None:
            self.peak = max(self.observed_rate(now), adaptive.floor)
            c = on_signal(Control(self.peak), adaptive)
        else:
            c = on_signal(Control(self.rate, self.ceiling, self.probes), adaptive)
        self.rate, self.ceiling, self.probes = c.rate, c.ceiling, c.probes
        # The provider just said "too fast": what the bucket saved up is not spent in a burst.
        self.tokens = min(self.tokens, 0.0)
        self.last_event = self.last_decrease = now
        return True

    def blocked_until(self, now: float) -> float:
        return max(self.suspended_until, self.quarantined_until)

    def token_wait(self, now: float) -> float:
        if self.rate is None or self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate if self.rate > 0 else math.inf


# -- warmup --------------------------------------------------------------------------------------


def warmup_allowance(daily_cap: int, into_day: float, day_length: float, slots: int) -> int:
    """How much of a day's cap may have been sent `into_day` seconds into the day: released in
    `slots` equal steps, the first at the start of the day."""
    if daily_cap <= 0:
        return 0
    slot = min(slots - 1, max(0, int(into_day // (day_length / slots))))
    return min(daily_cap, math.ceil(daily_cap * (slot + 1) / slots))


def next_slot_in(into_day: float, day_length: float, slots: int) -> float:
    size = day_length / slots
    return size - (into_day % size)


def day_index(now: float, day_length: float) -> int:
    return int(now // day_length)


# -- decisions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    ip: str
    helo: str
    provider: str
    warmup: bool  # counts against a warmup cap
    at: float | None = None  # when it was granted: replies to it are judged by it


@dataclass(frozen=True)
class Wait:
    seconds: float
    reason: str


@dataclass(frozen=True)
class RuleHit:
    action: ReplyAction
    rule: str


class PoolGate(Protocol):
    """Pool-wide limits held across pods (sharedlimits.FleetLimiter); None: this engine's own."""

    def connection_limit(self, provider: str, limit: int | None) -> int | None: ...

    def rate_wait(self, provider: str, rate: float, now: float) -> float: ...

    def took(self, provider: str, rated: bool, warmup: list[tuple[str, str, int]]) -> None: ...

    def ip_ready(self, ip: str) -> bool: ...


class Shaper:
    def __init__(self, cfg: EngineConfig, pod_name: str | None = None) -> None:
        self.pool_gate: PoolGate | None = None
        self.pairs: dict[tuple[str, str], Pair] = {}
        self.warmup_sent: dict[tuple[str, str, int], int] = {}
        self.pool_inflight: dict[str, int] = {}
        self.pool_tokens: dict[str, tuple[float, float]] = {}
        self.update_config(cfg, pod_name)

    def update_config(self, cfg: EngineConfig, pod_name: str | None = None) -> None:
        self.cfg = cfg
        self.table = ProviderTable(cfg.shaping)
        own = [
            ip
            for ip in cfg.delivery.source_ips
            if (ip.owner is None or pod_name is None or ip.owner == pod_name) and not ip.hold
        ]
        self.ips = [(str(ip.address), ip.hostname or cfg.hostname, ip.state) for ip in own]
        if not cfg.delivery.source_ips:
            # No addresses configured: the kernel picks one, shaped as the pseudo-address "".
            self.ips = [("", cfg.hostname, "active")]
        self.caps: dict[tuple[str, str], int] = {
            (str(w.address), w.provider): w.daily_cap for w in cfg.shaping.warmup
        }
        self.day_starts: dict[tuple[str, str], float] = {
            (str(w.address), w.provider): w.day_start
            for w in cfg.shaping.warmup
            if w.day_start is not None
        }
        self._rules: dict[str, list[CompiledRule]] = {}
        for pair in self.pairs.values():
            limits = self.settings(pair.provider).per_ip
            if pair.max_rate != limits.max_message_rate:
                pair.max_rate = limits.max_message_rate
                if pair.rate is not None and pair.max_rate is not None:
                    pair.rate = min(pair.rate, pair.max_rate)
                elif pair.peak is None:
                    pair.rate = pair.max_rate

    def settings(self, provider: str) -> ProviderSettingsConfig:
        return self.table.settings(provider)

    def rules(self, provider: str) -> list[CompiledRule]:
        if provider not in self._rules:
            own = list(self.settings(provider).rules)
            self._rules[provider] = compile_rules([*own, *DEFAULT_RULES])
        return self._rules[provider]

    def pair(self, ip: str, provider: str, now: float) -> Pair:
        key = (ip, provider)
        p = self.pairs.get(key)
        if p is None:
            limit = self.settings(provider).per_ip.max_message_rate
            full = burst(limit) if limit is not None else 1.0
            p = Pair(ip, provider, limit, limit, tokens=full, refilled=now, last_event=now)
            self.pairs[key] = p
        return p

    # -- warmup caps -----------------------------------------------------------------------------

    def warmup_keys(self, ip: str, provider: str) -> list[str]:
        """The caps a send from `ip` to `provider` counts against: the provider's own share, and
        the IP's whole daily cap ("*"), which every provider's sends count against together."""
        return [p for p in (provider, "*") if (ip, p) in self.caps]

    def warmup_day(self, ip: str, key: str, now: float) -> tuple[int, float]:
        """(the day a send is counted under, how far into that day `now` is) for one cap: the
        operator's warmup day when it says when the day began, else the engine's own."""
        sh = self.cfg.shaping
        start = self.day_starts.get((ip, key))
        if start is not None and start <= now:
            return int(start), now - start
        day = day_index(now, sh.day_length)
        return day, now - day * sh.day_length

    def warmup_left(self, ip: str, provider: str, now: float) -> int | None:
        """Messages this pair may still send now under its warmup caps; None: not capped."""
        keys = self.warmup_keys(ip, provider)
        if not keys:
            return None
        sh = self.cfg.shaping
        left = []
        for k in keys:
            day, into = self.warmup_day(ip, k, now)
            allowed = warmup_allowance(self.caps[(ip, k)], into, sh.day_length, sh.warmup_slots)
            left.append(max(0, allowed - self.warmup_sent.get((ip, k, day), 0)))
        return min(left)

    def warmup_today(self, now: float) -> list[dict[str, Any]]:
        """Today's count and cap of every warmup cap this engine holds (provider "*": the IP's
        whole day), for the operator to show in the IPWarmup's status."""
        return [
            {
                "ip": ip,
                "provider": provider,
                "sent": self.warmup_sent.get(
                    (ip, provider, self.warmup_day(ip, provider, now)[0]), 0
                ),
                "cap": cap,
            }
            for (ip, provider), cap in sorted(self.caps.items())
        ]

    # -- choosing a source IP --------------------------------------------------------------------

    def acquire(
        self, provider: str, now: float, rnd: float, exclude: Collection[str] = ()
    ) -> Grant | Wait:
        """A source IP that may send one message to `provider` now, or how long to wait.

        Weighted by each pair's allowed rate among the IPs that are neither suspended,
        quarantined, at their connection limit, out of tokens nor over their warmup cap. A
        capped warming IP's share spills to the others, or with overflow `defer` waits.
        `exclude`: IPs that must not send this message (its sender domain's restriction)."""
        settings = self.settings(provider)
        if self._pool_full(provider, settings):
            if self.pool_gate is not None and not self.pool_gate.connection_limit(
                provider, settings.pool.max_connections
            ):
                # This pod's share of the pool's connections is none: no release will wake it.
                return Wait(1.0, "no pool connection share")
            return Wait(0.05, CONNECTION_LIMIT)
        pool_wait = self._pool_wait(provider, settings, now)
        if pool_wait > 0:
            return Wait(pool_wait, "pool rate")
        candidates: list[tuple[float, str, str, bool]] = []
        waits: list[tuple[float, str]] = []
        capped_share = 0.0
        excluded = False
        for ip, helo, state in self.ips:
            if state not in ("active", "warming"):
                continue
            if ip in exclude:
                excluded = True
                continue
            if self.pool_gate is not None and not self.pool_gate.ip_ready(ip):
                waits.append((0.1, "warmup count sync"))
                continue
            p = self.pair(ip, provider, now)
            p.recover(settings.adaptive, now)
            p.refill(now)
            weight = p.rate if p.rate is not None else 1000.0
            blocked = p.blocked_until(now)
            if blocked > now:
                waits.append((blocked - now, p.reason or "suspended"))
                continue
            left = self.warmup_left(ip, provider, now)
            if left is not None and left <= 0:
                capped_share += weight
                sh = self.cfg.shaping
                into = min(self.warmup_day(ip, k, now)[1] for k in self.warmup_keys(ip, provider))
                waits.append((next_slot_in(into, sh.day_length, sh.warmup_slots), "warmup cap"))
                continue
            if p.inflight >= settings.per_ip.max_connections:
                waits.append((0.05, CONNECTION_LIMIT))
                continue
            tw = p.token_wait(now)
            if tw > 0:
                waits.append((tw, "rate"))
                continue
            candidates.append((weight, ip, helo, left is not None))
        if capped_share and self.cfg.shaping.overflow == "defer" and candidates:
            # The capped IPs' share of the traffic waits rather than moving to other IPs.
            total = capped_share + sum(c[0] for c in candidates)
            if rnd * total < capped_share:
                return Wait(min(w for w, r in waits if r == "warmup cap"), "warmup cap (defer)")
            rnd = (rnd * total - capped_share) / (total - capped_share)
        if not candidates:
            if not waits:
                if excluded:
                    return Wait(SENDER_HOLD, SENDER_RESTRICTED)
                return Wait(60.0, "no active source IP")
            seconds, reason = min(waits)
            return Wait(max(seconds, 0.001), reason)
        point = rnd * sum(c[0] for c in candidates)
        chosen = candidates[-1]
        for c in candidates:
            point -= c[0]
            if point < 0:
                chosen = c
                break
        _, ip, helo, warm = chosen
        return self._take(Grant(ip, helo, provider, warm, now), now)

    def _pool_full(self, provider: str, settings: ProviderSettingsConfig) -> bool:
        limit = settings.pool.max_connections
        if self.pool_gate is not None:
            limit = self.pool_gate.connection_limit(provider, limit)
        return limit is not None and self.pool_inflight.get(provider, 0) >= limit

    def _pool_wait(self, provider: str, settings: ProviderSettingsConfig, now: float) -> float:
        pool = settings.pool
        if pool.max_message_rate is None:
            return 0.0
        rate = pool.max_message_rate
        if self.pool_gate is not None:
            return self.pool_gate.rate_wait(provider, rate, now)
        tokens, at = self.pool_tokens.get(provider, (1.0, now))
        tokens = min(burst(rate), tokens + max(0.0, now - at) * rate)
        self.pool_tokens[provider] = (tokens, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def _take(self, grant: Grant, now: float) -> Grant:
        p = self.pair(grant.ip, grant.provider, now)
        if p.rate is not None:
            p.tokens -= 1.0
        p.inflight += 1
        p.sent.append(now)
        pool_rate = self.settings(grant.provider).pool.max_message_rate
        if self.pool_gate is not None:
            self.pool_gate.took(
                grant.provider, pool_rate is not None, self._warmup_days(grant, now)
            )
        elif pool_rate is not None:
            tokens, at = self.pool_tokens[grant.provider]
            self.pool_tokens[grant.provider] = (tokens - 1.0, at)
        self.pool_inflight[grant.provider] = self.pool_inflight.get(grant.provider, 0) + 1
        if grant.warmup:
            for k in self.warmup_keys(grant.ip, grant.provider):
                day = self.warmup_day(grant.ip, k, now)[0]
                self.warmup_sent[(grant.ip, k, day)] = (
                    self.warmup_sent.get((grant.ip, k, day), 0) + 1
                )
        return grant

    def _warmup_days(self, grant: Grant, now: float) -> list[tuple[str, str, int]]:
        if not grant.warmup:
            return []
        keys = self.warmup_keys(grant.ip, grant.provider)
        return [(grant.ip, k, self.warmup_day(grant.ip, k, now)[0]) for k in keys]

    def release(self, grant: Grant) -> None:
        p = self.pairs.get((grant.ip, grant.provider))
        if p is not None:
            p.inflight = max(0, p.inflight - 1)
        self.pool_inflight[grant.provider] = max(0, self.pool_inflight.get(grant.provider, 1) - 1)

    # -- what providers answer -------------------------------------------------------------------

    def observe(
        self, ip: str, provider: str, reply: str, now: float, sent_at: float | None = None
    ) -> RuleHit | None:
        """Act on one reply ("421 4.7.28 ...") to a message sent at `sent_at` (the grant's
        time); returns the rule that fired, if any."""
        if reply[:1] == "2":
            return None
        settings = self.settings(provider)
        for idx, cr in enumerate(self.rules(provider)):
            if not cr.pattern.search(reply):
                continue
            rule = cr.rule
            p = self.pair(ip, provider, now)
            if rule.threshold > 1:
                hits = p.hits.setdefault(idx, deque())
                hits.append(now)
                while hits and hits[0] < now - rule.window:
                    hits.popleft()
                if len(hits) < rule.threshold:
                    return None
                hits.clear()
            if rule.action == "throttle":
                p.throttle(settings.adaptive, now, sent_at)
            elif rule.action == "suspend":
                p.suspended_until = max(p.suspended_until, now + (rule.duration or 3600.0))
                p.reason = f"suspended: {reply[:REASON_LENGTH]}"
            elif rule.action == "quarantine":
                p.quarantined_until = now + (rule.duration or DEFAULT_QUARANTINE)
                p.reason = f"quarantined: {reply[:REASON_LENGTH]}"
            return RuleHit(rule.action, rule.match)
        return None

    # -- persistence and introspection -----------------------------------------------------------

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        out = []
        for (ip, provider), p in sorted(self.pairs.items()):
            out.append(
                {
                    "ip": ip,
                    "provider": provider,
                    "rate": p.rate,
                    "maxRate": p.max_rate,
                    "peak": p.peak,
                    "ceiling": p.ceiling,
                    "lastEvent": p.last_event,
                    "suspendedUntil": p.suspended_until if p.suspended_until > now else None,
                    "quarantinedUntil": (
                        p.quarantined_until if p.quarantined_until > now else None
                    ),
                    "reason": p.reason if p.blocked_until(now) > now else "",
                    "inflight": p.inflight,
                    "warmupLeft": self.warmup_left(ip, provider, now),
                }
            )
        return out

    def restore(self, rows: Iterable[dict[str, Any]], now: float) -> None:
        for r in rows:
            p = self.pair(r["ip"], r["provider"], now)
            limit = p.max_rate
            rate = r.get("rate")
            p.rate = min(rate, limit) if rate is not None and limit is not None else rate
            if p.rate is None and limit is not None:
                p.rate = limit
            p.peak = r.get("peak")
            p.ceiling = r.get("ceiling")
            p.last_event = r.get("lastEvent") or now
            p.suspended_until = r.get("suspendedUntil") or 0.0
            p.quarantined_until = r.get("quarantinedUntil") or 0.0
            p.reason = r.get("reason") or ""
            p.tokens = 1.0
            p.refilled = now
