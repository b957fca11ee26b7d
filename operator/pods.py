"""What a pool's pods report about themselves, reduced to the pool's status: pure functions.

The operator polls each running pod's admin API (`/v1/status`); these functions turn the
answers into status fields (queue depth, which config each pod runs, quarantined IPs, warmup
counts) and say which pods need the current config pushed to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PodRef:
    """A pool pod as its watch shows it."""

    name: str
    ip: str | None
    ready: bool
    deleting: bool = False


@dataclass(frozen=True)
class PodReport:
    pod: PodRef
    status: Mapping[str, Any] | None  # the engine's /v1/status; None: it did not answer


def pod_ref(body: Mapping[str, Any]) -> PodRef:
    meta = body.get("metadata", {})
    status = body.get("status", {}) or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions", []) or []
    )
    return PodRef(
        name=str(meta.get("name", "")),
        ip=status.get("podIP") or None,
        ready=ready,
        deleting=meta.get("deletionTimestamp") is not None,
    )


def pollable(pods: Sequence[PodRef]) -> list[PodRef]:
    """Pods whose engine can be asked: they have an address and are not being deleted."""
    return sorted((p for p in pods if p.ip and not p.deleting), key=lambda p: p.name)


def needs_push(report: PodReport, desired_hash: str | None) -> bool:
    """A running engine that answers with another config than the one rendered: push it (the
    kubelet's ConfigMap sync can take a minute; a reload carries the text at once)."""
    if desired_hash is None or report.status is None:
        return False
    if report.status.get("draining"):
        return False
    return report.status.get("configHash") != desired_hash


def _queued(status: Mapping[str, Any] | None) -> int | None:
    if status is None:
        return None
    value = (status.get("queue") or {}).get("messages")
    return int(value) if isinstance(value, int) else None


def quarantined_ips(reports: Sequence[PodReport]) -> list[str]:
    """Addresses some engine has quarantined for at least one provider."""
    out: set[str] = set()
    for r in reports:
        for row in (r.status or {}).get("shaping", []) or []:
            if row.get("quarantinedUntil") and row.get("ip"):
                out.add(str(row["ip"]))
    return sorted(out)


def warmup_rows(reports: Sequence[PodReport]) -> list[Mapping[str, Any]]:
    return [row for r in reports for row in (r.status or {}).get("warmup", []) or []]


def pods_status(reports: Sequence[PodReport], desired_hash: str | None) -> dict[str, Any]:
    """The pool status fields the pods' own reports give."""
    pods = []
    for r in sorted(reports, key=lambda r: r.pod.name):
        item: dict[str, Any] = {"name": r.pod.name, "ready": r.pod.ready}
        if r.pod.ip:
            item["ip"] = r.pod.ip
        if r.status is not None:
            if r.status.get("configHash"):
                item["configHash"] = r.status["configHash"]
            queued = _queued(r.status)
            if queued is not None:
                item["queued"] = queued
            item["draining"] = bool(r.status.get("draining"))
        pods.append(item)
    depths = [q for r in reports if (q := _queued(r.status)) is not None]
    out: dict[str, Any] = {
        "pods": pods,
        "updatedPods": sum(
            1
            for r in reports
            if desired_hash is not None
            and r.status is not None
            and r.status.get("configHash") == desired_hash
        ),
        "quarantinedIPs": len(quarantined_ips(reports)),
    }
    if depths:
        # Unknown until some engine answers: an absent queueDepth, not a made-up zero.
        out["queueDepth"] = sum(depths)
    return out
