"""What the operator's loops hand back to it: the events they decided to post and the keys they
speak of. The loops (childsync, podpoll, healthloop, statuswriters) return these instead of
posting or re-reconciling themselves; reconciler.Operator acts on them."""

from __future__ import annotations

from dataclasses import dataclass

PoolKey = tuple[str, str]  # namespace, name
ObjectKey = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class Event:
    """One Kubernetes event about an object: posted by the Operator, in the order returned."""

    type: str  # Normal or Warning
    reason: str
    message: str
