"""Kubernetes Events about mailfleet objects, as the operator posts them (core/v1 Event)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mailfleet.operator.api.conditions import timestamp
from mailfleet.operator.api.reasons import EventType, PostedReason

MESSAGE_MAX = 1024


def event_object(
    involved: Mapping[str, Any],
    type_: EventType,
    reason: PostedReason,
    message: str,
    now: datetime,
    component: str,
    instance: str,
) -> dict[str, Any]:
    """The Event to create for `involved` (a watched body): what kubectl describe and
    `kubectl get events` show, attributed to the operator."""
    meta = involved.get("metadata", {})
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name", ""))
    at = timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": name,
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }
