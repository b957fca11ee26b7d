"""Limits the submission listener enforces against abusive clients, as pure objects: the caller
passes the time in and acts on the answer; nothing here does I/O or reads a clock.

- ``SessionLimiter``: sessions open at once, over all clients and per client IP.
- ``AuthLimiter``: AUTH failures per (client IP, user name) and per client IP in a sliding
  window; past the limit the key is locked out for a while.
- ``data_deadline``: when a DATA transfer must be over, given how much has arrived (a minimum
  data rate, like Postfix's smtpd_min_data_rate, capped by a total DATA timeout).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["AuthLimiter", "SessionLimiter", "auth_keys", "data_deadline"]


class SessionLimiter:
    """Counts open sessions; ``open`` says the refusal reply, or None and counts the session."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.total = 0
        self.per_client: dict[str, int] = {}

    def configure(self, max_total: int, max_per_client: int) -> None:
        """New limits (reload): open sessions stay; new ones are counted against these."""
        self.max_total, self.max_per_client = max_total, max_per_client

    def open(self, client: str) -> str | None:
        if self.total >= self.max_total:
            return "421 4.7.0 Too many connections, try again later"
        if self.per_client.get(client, 0) >= self.max_per_client:
            return "421 4.7.0 Too many connections from your address, try again later"
        self.total += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return None

    def close(self, client: str) -> None:
        n = self.per_client.get(client, 0)
        if n <= 0:
            return
        self.total -= 1
        if n == 1:
            del self.per_client[client]
        else:
            self.per_client[client] = n - 1


def auth_keys(peer_ip: str, login: str) -> tuple[str, str]:
    """The keys an AUTH attempt counts against: its client address, and the pair (client
    address, user). Never the user alone: failures from elsewhere would then lock the real user
    out everywhere, a lockout switch for anyone who knows a user name."""
    return (f"ip:{peer_ip}", f"ip-user:{peer_ip} {login.lower()}")


@dataclass
class AuthLimiter:
    """``max_failures`` AUTH failures of one key within ``window`` seconds lock that key out for
    ``lockout`` seconds; a client-address key ("ip:<address>", see `auth_keys`) has a bound of
    its own, ``max_failures_per_client`` (None: the same), so that a few users behind one NAT
    who mistype do not lock each other out while one client guessing many users still is.
    Memory is bounded: keys whose failures and lockout have expired are swept."""

    max_failures: int = 5
    window: float = 300.0
    lockout: float = 900.0
    max_failures_per_client: int | None = None
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _next_sweep: float = 0.0

    def configure(
        self,
        max_failures: int,
        window: float,
        lockout: float,
        max_failures_per_client: int | None = None,
    ) -> None:
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self.max_failures_per_client = max_failures_per_client

    def _limit(self, key: str) -> int:
        if key.startswith("ip:") and self.max_failures_per_client is not None:
            return self.max_failures_per_client
        return self.max_failures

    def locked(self, keys: tuple[str, ...], now: float) -> bool:
        return any(self._locked_until.get(k, 0.0) > now for k in keys)

    def failure(self, keys: tuple[str, ...], now: float) -> bool:
        """Count one failure for each key; True when one of them is now locked out."""
        self._sweep(now)
        locked = False
        for k in keys:
            times = self._failures.setdefault(k, deque())
            times.append(now)
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self._limit(k):
                self._locked_until[k] = now + self.lockout
                times.clear()
                locked = True
        return locked

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self.window, 60.0)
        for k in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[k]
        for k in [k for k, until in self._locked_until.items() if until <= now]:
            del self._locked_until[k]

    def __len__(self) -> int:
        return len(self._failures) + len(self._locked_until)


def data_deadline(
    start: float, received: int, *, grace: float, min_rate: float, max_duration: float
) -> float:
    """When a DATA transfer that began at `start` and has brought `received` bytes must end:
    `grace` seconds plus the time `received` bytes take at `min_rate` bytes/s, and never later
    than `max_duration` after the start. A client slower than `min_rate` falls behind it."""
    allowed = grace + (received / min_rate if min_rate > 0 else max_duration)
    return start + min(allowed, max_duration)
