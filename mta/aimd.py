"""The rate controller of one (source IP, provider): find the rate the provider accepts without
being told it, and stay just under it.

AIMD with a memory, after TCP CUBIC's idea (RFC 9438): the rate at which throttling began is
remembered as the ceiling. A throttling signal at that ceiling confirms it and takes a gentle
step down; a signal well below it (or with no ceiling known) means the limit moved, and takes
the configured multiplicative decrease. Clean recovery intervals close half the gap to a plateau
just under the ceiling (fast growth far below it), then probe above it in steps that start small
and double with every further clean interval (slow near the ceiling, fast once it is clearly
stale: past it, at least the configured additive increase).

Which signals count is the caller's business (see `Pair.throttle` in shaping.py: one decrease per
window of replies, a burst of deferrals from one backlog being one signal). Pure: no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailfleet.mta.config import AdaptiveConfig

# A signal at or above this share of the ceiling confirms the ceiling.
NEAR = 0.85
# The step down at a confirmed ceiling: an oscillation between this share and the ceiling keeps
# the average well above 90 % of what the provider accepts.
GENTLE = 0.85
# Growth far below the ceiling stops at this share of it; above is probing.
PLATEAU = 0.95
# Share of the gap to the plateau closed per clean interval.
APPROACH = 0.5
# The first probe above the plateau, as a share of the ceiling; it doubles each clean interval.
PROBE = 0.02
# Probing steps stop doubling here (2**30 times the first step is past any real limit).
MAX_DOUBLINGS = 30


@dataclass(frozen=True)
class Control:
    """What the controller remembers: the rate allowed now, the ceiling (rate where throttling
    began; None: unknown) and how many clean intervals it has probed above the plateau."""

    rate: float
    ceiling: float | None = None
    probes: int = 0


def on_signal(c: Control, adaptive: AdaptiveConfig) -> Control:
    """The state after one counted throttling signal received while sending at `c.rate`."""
    near = c.ceiling is not None and c.rate >= NEAR * c.ceiling
    factor = max(GENTLE, adaptive.decrease) if near else adaptive.decrease
    return Control(rate=max(adaptive.floor, c.rate * factor), ceiling=c.rate, probes=0)


def on_clean_interval(c: Control, adaptive: AdaptiveConfig, limit: float | None) -> Control:
    """The state after one recovery interval without a counted signal; never above `limit`
    (the policy maximum; None: none)."""
    ceiling = c.ceiling
    if ceiling is None:
        rate = c.rate + adaptive.increase
        return Control(rate if limit is None else min(limit, rate))
    plateau = PLATEAU * ceiling
    probes = c.probes
    if c.rate < plateau:
        rate = min(plateau, c.rate + max(adaptive.increase, APPROACH * (ceiling - c.rate)))
    else:
        step = PROBE * ceiling * 2 ** min(probes, MAX_DOUBLINGS)
        if c.rate >= ceiling:
            # Past the ceiling with no signal: it is stale, grow at least as fast as plain AIMD.
            step = max(step, adaptive.increase)
        rate = c.rate + step
        probes += 1
    if limit is not None:
        rate = min(limit, rate)
    return Control(rate, ceiling, probes)


__all__ = ["Control", "on_clean_interval", "on_signal"]
