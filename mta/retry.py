"""Retry decisions: what a reply means for a message, when to try again, when to give up.

Pure functions, no I/O and no clock of their own: the queue runner passes the time and the random
number, so every decision here can be tested over its whole input space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailfleet.mta.config import ReplyAction, RetryConfig

Outcome = Literal["delivered", "deferred", "bounced"]

# Reply-rule actions that blame the IP or the pace, not the message: the recipient is deferred.
# All but "retry" are shaping actions: the recipient goes back into the active set at once (the
# shaper holds it until a pair may send) instead of waiting in the spool for its retry time.
_DEFERRING_ACTIONS: frozenset[str] = frozenset({"retry", "throttle", "suspend", "quarantine"})

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


@dataclass(frozen=True, slots=True)
class ReplyOutcome:
    """What one recipient's reply means: the queue runner records it and acts on it."""

    outcome: Outcome
    # The status a DSN reports (4.x.x or 5.x.x) when bounced; the reply's own otherwise.
    status: str
    # Deferred: when to try again. None otherwise.
    retry_at: float | None
    # The text recorded: the reply, or why it was given up on (expiry).
    reason: str
    # Deferred by a shaping action: back in the active set now, not read from the spool later.
    at_once: bool = False


def decide_outcome(
    code: int,
    enhanced: str | None,
    reply: str,
    action: ReplyAction | None,
    retry_at: float | None,
    attempts: int,
) -> ReplyOutcome:
    """The outcome of one recipient's reply (`code`, its enhanced status, the reply line).

    `action`: the reply rule that fired on it (None: none did); `retry_at`: the job's next
    attempt (next_attempt_at; None: the message expires before it); `attempts`: counting this
    one. A rule's "bounce" gives up on any failure; the other actions defer it whatever the
    code. A 2xx is delivered whatever a rule says: sending it again would deliver it twice.
    A deferral with no retry time left is bounced as 4.4.7 (expired).
    """
    outcome = outcome_for_reply(code)
    status = enhanced or f"{code // 100}.0.0"
    at_once = False
    if action is not None and outcome != "delivered":
        if action == "bounce":
            outcome = "bounced"
        elif action in _DEFERRING_ACTIONS:
            outcome = "deferred"
            at_once = action != "retry"
    if outcome == "deferred" and retry_at is None:
        return ReplyOutcome(
            "bounced",
            "4.4.7",
            None,
            f"message expired after {attempts} attempts; last reply: {reply}",
        )
    if outcome == "deferred":
        return ReplyOutcome("deferred", status, retry_at, reply, at_once)
    if outcome == "bounced" and status[:1] not in ("4", "5"):
        # A DSN's status is a failure's: a 5xx carrying a 2.x.x enhanced code is still a 5xx.
        status = "5.0.0"
    return ReplyOutcome(outcome, status, None, reply)
