"""What the operator's loops hand back to it: the events they decided to post and the keys they
speak of. The loops (childsync, podpoll, healthloop, statuswriters) return these instead of
posting or re-reconciling themselves; reconciler.Operator acts on them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mailfleet.operator.api.reasons import EventReason, EventType, PostedReason

PoolKey = tuple[str, str]  # namespace, name
ObjectKey = tuple[str, str, str]  # kind, namespace, name
# Posts one event: (body of the object the event is about, type, reason, message).
EventSink = Callable[[Mapping[str, Any], EventType, PostedReason, str], None]


@dataclass(frozen=True)
class Event:
    """One Kubernetes event about an object: posted by the Operator, in the order returned."""

    type: EventType
    reason: EventReason  # a literal fails mypy: the guide lists only the members
    message: str
