"""Pool-wide provider limits that hold across every pod of a pool, and warmup day counts that
follow an IP from pod to pod.

Two modes, switched by whether the pool's Redis answers:

- ``shared``: one token bucket per provider in Redis (a Lua script: atomic, on Redis's clock).
  Each engine leases a few tokens at a time when it has mail waiting for them; a lease it does
  not spend within ``LEASE_TTL`` is dropped, never returned, so the pool can only send less than
  its limit, never more. Warmup sends are added to per-day counters in Redis, and an engine that
  gains an IP takes the larger of its own count and Redis's before it sends from it.
- ``split``: no Redis configured, or Redis unreachable: this engine keeps to the share of each
  limit the operator rendered for its pod (``fleet.shares``), so the pods together never exceed
  it. Its bucket starts empty on every switch, so a switch cannot add a burst.

Connection limits are always split: a connection count held in Redis would stay counted after
its pod died. An engine with no ``fleet`` config at all (``local``) applies the limits alone.

The Shaper calls ``connection_limit``, ``rate_wait``, ``ip_ready`` and ``took`` synchronously;
``run`` is the only code that talks to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mailfleet.mta.config import FleetConfig, PodShareConfig

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("mailfleet.mta.sharedlimits")

Mode = Literal["local", "split", "shared"]

# How often an engine with waiting mail asks Redis for tokens, and how long what it got stays
# usable: short, so that tokens leased by an engine that stops needing them are few.
LEASE_INTERVAL = 0.1
LEASE_TTL = 1.0
# While Redis is down: how often to try it again.
RETRY_INTERVAL = 1.0
REDIS_TIMEOUT = 1.0
WARMUP_KEY_TTL = 8 * 86400

# KEYS[1]: the bucket; ARGV: rate (tokens/s), capacity, tokens wanted. Returns tokens granted.
# Redis's own TIME is the clock, so engines whose clocks disagree still share one bucket.
_TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = 0
  at = now
end
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local n = math.min(want, math.floor(tokens))
tokens = tokens - n
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return n
"""


def bucket_capacity(rate: float) -> float:
    """What a bucket may hold: a fifth of a second's worth, at least one message. Small, so that
    any 60 s window holds at most the limit plus one message."""
    return max(1.0, rate * 0.2)


def lease_size(rate: float) -> int:
    """Tokens asked for at once: what the pool may send in two lease intervals, at least one."""
    return max(1, math.ceil(rate * LEASE_INTERVAL * 2))


def redis_keys(namespace: str) -> tuple[str, str]:
    base = f"mailfleet:fleet:{namespace}"
    return f"{base}:bucket:", f"{base}:warmup:"


class WarmupCounts(Protocol):
    """What the limiter needs of the Shaper: its warmup counts and which day a send is in."""

    warmup_sent: dict[tuple[str, str, int], int]

    def warmup_day(self, ip: str, key: str, now: float) -> tuple[int, float]: ...


@dataclass
class _Lease:
    tokens: float = 0.0
    expires: float = 0.0


@dataclass
class _Bucket:
    tokens: float = 0.0
    at: float = 0.0


@dataclass
class FleetLimiter:
    cfg: FleetConfig = field(default_factory=FleetConfig)
    pod: str | None = None
    clock: Callable[[], float] = time.time
    mode: Mode = "local"
    redis_error: str | None = None
    _share: PodShareConfig | None = None
    _leases: dict[str, _Lease] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _wanted: dict[str, float] = field(default_factory=dict)  # provider -> pool rate
    _warmup_adds: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _unsynced: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    _redis: Redis | None = None
    _redis_url: str | None = None
    _stale: list[Redis] = field(default_factory=list)  # clients of an old URL, to close
    on_mode: Callable[[Mode], None] | None = None

    def __post_init__(self) -> None:
        self.configure(self.cfg, self.pod)

    def configure(self, cfg: FleetConfig, pod: str | None) -> None:
        self.cfg, self.pod = cfg, pod
        self._share = next((s for s in cfg.shares if s.pod == pod), None)
        if cfg.redis_url != self._redis_url:
            self._redis_url = cfg.redis_url
            if self._redis is not None:
                self._stale.append(self._redis)
                self._redis = None
            self._set_mode(self._offline_mode())
        elif self.mode != "shared":
            self._set_mode(self._offline_mode())

    def _offline_mode(self) -> Mode:
        return "split" if self.cfg.shares or self.cfg.redis_url else "local"

    def _set_mode(self, mode: Mode) -> None:
        if mode == self.mode:
            return
        log.info("fleet limits mode", extra={"mode": mode, "error": self.redis_error})
        self.mode = mode
        # A new mode starts with nothing to spend: tokens from one never carry into the other.
        self._buckets.clear()
        self._leases.clear()
        if self.on_mode is not None:
            self.on_mode(mode)

    # -- what the Shaper asks, synchronously -----------------------------------------------------

    def connection_limit(self, provider: str, limit: int | None) -> int | None:
        if limit is None or self.mode == "local":
            return limit
        if self._share is None:
            return 0 if self.cfg.shares else limit
        return min(limit, self._share.connections.get(provider, 0))

    def _split_rate(self, rate: float) -> float:
        if not self.cfg.shares:
            return rate  # Redis configured but no split rendered: a lone engine
        return rate * self._share.rate_share if self._share is not None else 0.0

    def rate_wait(self, provider: str, rate: float, now: float) -> float:
        """0 when a message may go to `provider` under its pool rate now, else seconds to wait."""
        if self.mode == "shared":
            lease = self._leases.get(provider)
            if lease is not None and lease.tokens >= 1.0 and lease.expires > now:
                return 0.0
            self._wanted[provider] = rate
            # Not sooner than the pool makes a token: every waiting job wakes at this pace.
            return max(LEASE_INTERVAL, 1.0 / rate) if rate > 0 else RETRY_INTERVAL
        share = rate if self.mode == "local" else self._split_rate(rate)
        if share <= 0:
            return RETRY_INTERVAL
        b = self._buckets.get(provider)
        if b is None:
            b = self._buckets[provider] = _Bucket(0.0, now)
        b.tokens = min(bucket_capacity(share), b.tokens + max(0.0, now - b.at) * share)
        b.at = now
        return 0.0 if b.tokens >= 1.0 else (1.0 - b.tokens) / share

    def took(self, provider: str, rated: bool, warmup: list[tuple[str, str, int]]) -> None:
        """One message granted: a pool-rate token spent (when the provider has a pool rate) and
        each of its warmup counts (ip, cap key, day) to add to Redis."""
        if rated:
            if self.mode == "shared":
                lease = self._leases.get(provider)
                if lease is not None:
                    lease.tokens -= 1.0
            else:
                b = self._buckets.get(provider)
                if b is not None:
                    b.tokens -= 1.0
        if self._redis_url is not None:
            for k in warmup:
                self._warmup_adds[k] = self._warmup_adds.get(k, 0) + 1

    def ip_ready(self, ip: str) -> bool:
        """False while an IP this engine just gained waits for its warmup counts from Redis."""
        return ip not in self._unsynced or self.mode != "shared"

    def gained(self, ip: str, caps: list[tuple[str, int]]) -> None:
        """This engine now sends from `ip`: fetch its counts (cap key, day) from Redis first."""
        if self._redis_url is not None and caps:
            self._unsynced[ip] = caps

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "redis": self._redis_url is not None}
        if self.redis_error:
            out["redisError"] = self.redis_error
        if self._share is not None:
            out["rateShare"] = self._share.rate_share
        return out

    # -- Redis -----------------------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            from redis.asyncio import Redis

            assert self._redis_url is not None
            self._redis = Redis.from_url(
                self._redis_url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                decode_responses=True,
            )
        return self._redis

    async def run(self, shaper: WarmupCounts) -> None:
        """Lease tokens, add warmup counts, fetch the counts of gained IPs; until cancelled."""
        while True:
            if self._redis_url is None:
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            try:
                await self._round(shaper)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a Redis down is any of several errors: all mean split
                self.redis_error = f"{type(e).__name__}: {e}"[:300]
                self._set_mode("split")
                await asyncio.sleep(RETRY_INTERVAL)
                continue
            self.redis_error = None
            self._set_mode("shared")
            await asyncio.sleep(LEASE_INTERVAL)

    async def _round(self, shaper: WarmupCounts) -> None:
        while self._stale:
            await self._stale.pop().aclose()
        r = self._client()
        bucket_prefix, warmup_prefix = redis_keys(self.cfg.namespace)
        wanted, self._wanted = self._wanted, {}
        if not wanted:
            await r.ping()
        now = self.clock()
        for provider, rate in wanted.items():
            n = int(
                await r.eval(  # type: ignore[misc]
                    _TAKE_SCRIPT,
                    1,
                    bucket_prefix + provider,
                    repr(rate),
                    repr(bucket_capacity(rate)),
                    str(lease_size(rate)),
                )
            )
            if n:
                lease = self._leases.setdefault(provider, _Lease())
                if lease.expires <= now:
                    lease.tokens = 0.0
                lease.tokens += n
                lease.expires = now + LEASE_TTL
        adds, self._warmup_adds = self._warmup_adds, {}
        try:
            if adds:
                pipe = r.pipeline(transaction=False)
                for (ip, key, day), n in adds.items():
                    name = f"{warmup_prefix}{day}"
                    pipe.hincrby(name, f"{ip}|{key}", n)
                    pipe.expire(name, WARMUP_KEY_TTL)
                await pipe.execute()
        except BaseException:
            for k, n in adds.items():  # counted again next round: never lost
                self._warmup_adds[k] = self._warmup_adds.get(k, 0) + n
            raise
        for ip, caps in list(self._unsynced.items()):
            for key, day in caps:
                raw = await r.hget(f"{warmup_prefix}{day}", f"{ip}|{key}")  # type: ignore[misc]
                theirs = int(raw or 0)
                mine = shaper.warmup_sent.get((ip, key, day), 0)
                if theirs > mine:
                    shaper.warmup_sent[(ip, key, day)] = theirs
            self._unsynced.pop(ip, None)

    async def close(self) -> None:
        while self._stale:
            await self._stale.pop().aclose()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
