"""What a pool's pods report about themselves, reduced to the pool's status: pure functions.

The operator polls each running pod's admin API (`/v1/status`); these functions turn the
answers into status fields (queue depth, which config each pod runs, quarantined IPs, warmup
counts) and say which pods need the current config pushed to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailfleet.mta.adminapi import EngineStatus


@dataclass(frozen=True)
class PodRef:
    """A pool pod as its watch shows it."""

    name: str
    ip: str | None
    ready: bool
    deleting: bool = False
    node: str | None = None  # spec.nodeName: where it runs (and its queue's storage lives)


@dataclass(frozen=True)
class PodReport:
    pod: PodRef
    status: EngineStatus | None  # the engine's /v1/status; None: it did not answer

    def __post_init__(self) -> None:
        # A decoded answer (a test's, an engine client's) is read as the typed one.
        if self.status is not None and not isinstance(self.status, EngineStatus):
            object.__setattr__(self, "status", EngineStatus.parse(self.status))


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
        node=(body.get("spec") or {}).get("nodeName") or None,
    )


def stranded(
    refs: Sequence[PodRef], ready_nodes: Mapping[str, bool], last_queued: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Pods on a node that is known and not Ready (its kubelet gone, unreachable): their queue
    is on that node and waits for it (with node-local storage: delivered when it returns). The
    messages are what the pod last reported (None: never heard)."""
    out = []
    for p in sorted(refs, key=lambda p: p.name):
        if p.node is not None and ready_nodes.get(p.node) is False:
            item: dict[str, Any] = {"pod": p.name, "node": p.node}
            if p.name in last_queued:
                item["queued"] = last_queued[p.name]
            out.append(item)
    return out


def pollable(pods: Sequence[PodRef]) -> list[PodRef]:
    """Pods whose engine can be asked: they have an address and are not being deleted."""
    return sorted((p for p in pods if p.ip and not p.deleting), key=lambda p: p.name)


def needs_push(report: PodReport, desired_hash: str | None) -> bool:
    """A running engine that answers with another config than the one rendered: push it (the
    kubelet's ConfigMap sync can take a minute; a reload carries the text at once)."""
    if desired_hash is None or report.status is None:
        return False
    if report.status.draining:
        return False
    return report.status.config_hash != desired_hash


def queued(status: EngineStatus | None) -> int | None:
    return status.queued if status is not None else None


def quarantined_ips(reports: Sequence[PodReport]) -> list[str]:
    """Addresses some engine has quarantined for at least one provider."""
    out: set[str] = set()
    for r in reports:
        for row in r.status.shaping if r.status is not None else []:
            if row.quarantined_until and row.ip:
                out.add(row.ip)
    return sorted(out)


def engine_quarantines(reports: Sequence[PodReport]) -> list[dict[str, Any]]:
    """Each (IP, provider) some engine quarantined from a reply rule (e.g. Outlook's S3150),
    with the pod, until when (epoch seconds) and the reply that did it."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(reports, key=lambda r: r.pod.name):
        for row in r.status.shaping if r.status is not None else []:
            until = row.quarantined_until
            if not until or not row.ip:
                continue
            key = (row.ip, row.provider)
            item = {"address": key[0], "provider": key[1], "pod": r.pod.name, "until": int(until)}
            if row.reason:
                item["reason"] = row.reason[:1024]
            if key not in out or out[key]["until"] < item["until"]:
                out[key] = item
    return [out[k] for k in sorted(out)]


def new_engine_quarantines(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Engine quarantines the last status did not show (for a Warning event each)."""
    before = {(q.get("address"), q.get("provider")) for q in old or []}
    return [q for q in new if (q.get("address"), q.get("provider")) not in before]


def warmup_rows(reports: Sequence[PodReport]) -> list[Mapping[str, Any]]:
    """Every pod's warmup rows, as /v1/status "warmup" shows them."""
    return [row.wire() for r in reports if r.status is not None for row in r.status.warmup]


def updated_pods(pods: Sequence[Mapping[str, Any]], desired_hash: str | None) -> int:
    """Pods (as in status.pods) whose engine runs the config with `desired_hash`."""
    if desired_hash is None:
        return 0
    return sum(1 for p in pods if p.get("configHash") == desired_hash)


def pods_status(
    reports: Sequence[PodReport],
    desired_hash: str | None,
    stranded_pods: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The pool status fields the pods' own reports give (and those on nodes that are not
    Ready: `stranded`)."""
    pods = []
    for r in sorted(reports, key=lambda r: r.pod.name):
        item: dict[str, Any] = {"name": r.pod.name, "ready": r.pod.ready}
        if r.pod.ip:
            item["ip"] = r.pod.ip
        if r.pod.node:
            item["node"] = r.pod.node
        if r.status is not None:
            if r.status.config_hash:
                item["configHash"] = r.status.config_hash
            depth = queued(r.status)
            if depth is not None:
                item["queued"] = depth
            item["draining"] = r.status.draining
        pods.append(item)
    depths = [q for r in reports if (q := queued(r.status)) is not None]
    out: dict[str, Any] = {
        "pods": pods,
        "updatedPods": updated_pods(pods, desired_hash),
        "quarantinedIPs": len(quarantined_ips(reports)),
        "engineQuarantines": engine_quarantines(reports),
    }
    if depths:
        # Unknown until some engine answers: an absent queueDepth, not a made-up zero.
        out["queueDepth"] = sum(depths)
    out["strandedPods"] = [dict(s) for s in stranded_pods]
    out["strandedMessages"] = sum(int(s.get("queued") or 0) for s in stranded_pods)
    return out


def ordinal(pod: str) -> int | None:
    """A StatefulSet pod's ordinal, from its name (`<pool>-<n>`)."""
    _, _, tail = pod.rpartition("-")
    return int(tail) if tail.isdigit() else None


def admin_url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


@dataclass(frozen=True)
class DrainPlan:
    leaving: list[str]  # pods a scale-down removes (the highest ordinals)
    drain: list[PodReport]  # leaving pods to tell to drain
    undrain: list[PodReport]  # pods that stay but still drain: the scale-down was called off
    handoff: list[str]  # admin URLs of the ready pods that stay, to take the queue
    drained: bool  # every leaving pod drains and holds nothing: the StatefulSet may shrink
    left: int | None  # messages the leaving pods still hold (None: none answered)


def drain_plan(
    reports: Sequence[PodReport], target: int, live: int | None, admin_port: int
) -> DrainPlan:
    """What to do about a scale-down from `live` pods to `target`: the pods at ordinals target
    and up hand their queue to the ready pods below target; once every one of them answers
    that it is draining and empty, they may go. A pod with no address never ran, so holds
    nothing; one that does not answer holds back the scale-down (its spool may hold mail)."""
    shrinking = live is not None and live > target
    by_ordinal = [(ordinal(r.pod.name), r) for r in reports]
    leaving = sorted(
        (r for n, r in by_ordinal if shrinking and n is not None and n >= target),
        key=lambda r: r.pod.name,
    )
    staying = [r for n, r in by_ordinal if n is not None and n < target]
    handoff = [
        admin_url(r.pod.ip, admin_port)
        for r in staying
        if r.pod.ready and r.pod.ip and r.status is not None and not r.status.draining
    ]
    drain = [r for r in leaving if r.status is not None and not r.status.draining]
    undrain = [r for r in staying if r.status is not None and r.status.draining]
    answered = [r for r in leaving if r.status is not None]
    drained = shrinking and all(
        r.status is not None and r.status.draining and queued(r.status) == 0 for r in leaving
    )
    left = sum(queued(r.status) or 0 for r in answered) if answered else None
    return DrainPlan(
        leaving=[r.pod.name for r in leaving],
        drain=drain,
        undrain=undrain,
        handoff=handoff,
        drained=drained,
        left=left,
    )
