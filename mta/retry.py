"""Retry decisions: what a reply means for a message, when to try again, when to give up.

Pure functions, no I/O and no clock of their own: the queue runner passes the time and the random
number, so every decision here can be tested over its whole input space.
"""

from __future__ import annotations

from typing import Literal

from mailfleet.mta.config import RetryConfig

Outcome = Literal["delivered", "deferred", "bounced"]

# Past this many doublings every realistic config has long reached its cap; stopping here keeps
# 2**n finite for any attempt number a corrupted retry counter might hold.
_MAX_DOUBLINGS = 64


def outcome_for_reply(code: int) -> Outcome:
    """2xx delivered, 5xx bounced, everything else (4xx, and nonsense) deferred.

    A code outside 2xx-5xx is a broken peer or a local error, never proof that the recipient
    does not exist, so it is retried like a 4xx rather than bounced.
    """
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "bounced"
    return "deferred"


def base_delay(attempt: int, cfg: RetryConfig) -> float:
    """The delay before retry number `attempt` (1 = after the first failure), without jitter."""
    doublings = min(max(attempt, 1) - 1, _MAX_DOUBLINGS)
    return float(min(cfg.initial * 2.0**doublings, cfg.max))


def retry_delay(attempt: int, cfg: RetryConfig, rnd: float) -> float:
    """Seconds to wait before the next attempt after `attempt` failed ones.

    Exponential from `cfg.initial`, doubling per attempt, capped at `cfg.max`, then spread by
    ±`cfg.jitter` of itself so that messages deferred together do not come back together.
    `rnd` is a uniform number in [0, 1); 0.5 gives the base delay.
    """
    rnd = min(max(rnd, 0.0), 1.0)
    spread = 1.0 + cfg.jitter * (2.0 * rnd - 1.0)
    return max(0.0, base_delay(attempt, cfg) * float(spread))


def is_expired(first_attempt_at: float, now: float, cfg: RetryConfig) -> bool:
    """True once a message has been queued for `cfg.max_age` or longer: time to bounce it."""
    return now - first_attempt_at >= float(cfg.max_age)


def next_attempt_at(
    attempt: int, first_attempt_at: float, now: float, cfg: RetryConfig, rnd: float
) -> float | None:
    """When to try again after `attempt` failed attempts, or None if the message expires first.

    A retry that would land after the max age is not scheduled: the message is bounced now
    rather than held for an attempt it may not make.
    """
    if is_expired(first_attempt_at, now, cfg):
        return None
    at = now + retry_delay(attempt, cfg, rnd)
    if at - first_attempt_at > cfg.max_age:
        # One last try right at the deadline, so a short outage near the end still gets a chance.
        deadline = first_attempt_at + cfg.max_age
        return deadline if deadline > now else None
    return at
