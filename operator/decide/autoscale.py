"""The built-in autoscaler: how many pods a pool wants from its queue, and when it may change.

Pure: every call takes the recommendations seen so far and `now`, so the whole input space is
tested. Up at once when the backlog per pod exceeds the target; down only to the highest count
recommended over the last `stabilization` (as the HPA does), so a load that comes and goes keeps
its pods instead of draining and re-adding them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Recommendation:
    at: datetime
    replicas: int


@dataclass(frozen=True)
class ScaleDecision:
    replicas: int
    reason: str  # the numbers behind it, for the event and the status
    history: tuple[Recommendation, ...]

    @property
    def changed(self) -> bool:
        return self.reason != ""


def wanted_replicas(queued: int, target_per_pod: int, low: int, high: int) -> int:
    """Pods for `queued` messages at `target_per_pod` each, within [low, high]."""
    want = math.ceil(max(queued, 0) / max(target_per_pod, 1))
    return max(low, min(high, want))


def autoscaling_floor(low: int, high: int) -> int:
    """The fewest pods the autoscaler runs: replicas.min, but at least one. A pool without pods
    takes no mail and reports no queue, so nothing would ever scale it up again; replicas.min 0
    lets a person stop the pool (autoscaling off, kubectl scale --replicas=0), not the queue."""
    return max(low, min(1, high))


def decide(
    current: int,
    queued: int | None,
    target_per_pod: int,
    low: int,
    high: int,
    history: Sequence[Recommendation],
    now: datetime,
    stabilization: float,
) -> ScaleDecision:
    """The replica count to run after this look at the queue.

    `current` is what runs now; `queued` the messages the pods reported (None: no pod
    answered, so nothing is decided); `history` the recommendations of earlier looks.
    Never fewer than one pod, whatever `low` says (`autoscaling_floor`).
    """
    low = autoscaling_floor(low, high)
    window = timedelta(seconds=stabilization)
    inside = tuple(r for r in history if now - r.at <= window)
    # The newest look from before the window is kept only as proof that a whole window was seen.
    anchor = tuple(r for r in history if now - r.at > window)[-1:]
    kept = anchor + inside
    bounded = max(low, min(high, current))
    if queued is None:
        return ScaleDecision(bounded, _bounds_reason(current, bounded, low, high), kept)
    want = wanted_replicas(queued, target_per_pod, low, high)
    kept = (*kept, Recommendation(now, want))
    inside = (*inside, Recommendation(now, want))
    per_pod = queued / max(current, 1)
    if want > current:
        return ScaleDecision(
            want,
            f"queue {queued} messages is {per_pod:.0f} per pod over {current} pods, above the "
            f"target of {target_per_pod}: scaling up to {want}",
            kept,
        )
    if want < current:
        if not anchor:
            # Not a whole window seen yet (a fresh start too): hold until it is.
            return ScaleDecision(bounded, _bounds_reason(current, bounded, low, high), kept)
        highest = max(r.replicas for r in inside)
        if highest < current:
            return ScaleDecision(
                highest,
                f"queue {queued} messages needs {want} pods at {target_per_pod} per pod, and no "
                f"more than {highest} for {_duration(stabilization)}: scaling down to {highest}",
                kept,
            )
    return ScaleDecision(bounded, _bounds_reason(current, bounded, low, high), kept)


def _bounds_reason(current: int, bounded: int, low: int, high: int) -> str:
    if bounded == current:
        return ""
    return f"{current} pods is outside replicas [{low}, {high}]: scaling to {bounded}"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"
