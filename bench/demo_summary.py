"""The fleet demo's terminal summary, as pure functions: snapshots in, text out.

bench/demo.py gathers a :class:`Snapshot` every couple of seconds (Kubernetes objects as the API
server returns them, each pod's engine ``/v1/status``, the ISP simulator's counts, the traffic
generator's counts) and prints :func:`render_summary` of it; :func:`verdict` says whether a
bounded demo worked. Nothing here does I/O or reads a clock: ``Snapshot.now`` is the time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

JSON = Mapping[str, Any]
EVENTS_SHOWN = 8
# The endpoint controllers' complaint that a Service cannot list a loopback pod IP: true on the
# local node, repeated every few seconds, and nothing the demo's reader can act on.
HIDDEN_REASONS = frozenset({"FailedToUpdateEndpoint", "FailedToUpdateEndpointSlices"})


@dataclass(frozen=True)
class SimCounts:
    """What one simulated provider saw from one source IP."""

    provider: str
    ip: str
    delivered: int = 0
    last_minute: int = 0
    """Delivered in the last 60 seconds."""
    refused: int = 0
    """Answers that were not 2xx (throttling, deferrals, blocks)."""
    last_refusal: str = ""


@dataclass(frozen=True)
class Traffic:
    """The demo's own client: messages submitted to the pods' submission port."""

    rate: float = 0.0
    """Target messages per second."""
    submitted: int = 0
    failed: int = 0
    last_error: str = ""
    per_pod: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DkimCheck:
    """Signatures of delivered messages checked against the DKIM keys in DNS."""

    checked: int = 0
    """Messages checked."""
    passed: int = 0
    """Messages whose every signature verified."""
    last_failure: str = ""


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    elapsed: float
    """Seconds since the demo started."""
    pools: Sequence[JSON] = ()
    pods: Sequence[JSON] = ()
    warmups: Sequence[JSON] = ()
    events: Sequence[JSON] = ()
    engines: Mapping[str, JSON] = field(default_factory=dict)
    """Pod name -> its engine's /v1/status (absent when it did not answer)."""
    sim: Sequence[SimCounts] = ()
    traffic: Traffic = Traffic()
    dkim: DkimCheck = DkimCheck()
    notes: Sequence[str] = ()
    """What the demo is doing or waiting for, shown under the title."""
    deadline: float | None = None
    """Seconds after the start at which a bounded demo ends."""


# --- reading Kubernetes objects -----------------------------------------------------------------


def _name(obj: JSON) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def _condition(obj: JSON, type_: str) -> JSON | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time as the API server writes it (``Z`` or an offset, optional fraction)."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def pod_phase(pod: JSON) -> str:
    """What `kubectl get pods` shows in STATUS: Terminating, a waiting reason, or the phase."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    phase = str(status.get("phase") or "Pending")
    if phase == "Pending":
        scheduled = _condition(pod, "PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False":
            return str(scheduled.get("reason") or "Unschedulable")
    return phase


def pod_ready(pod: JSON) -> bool:
    c = _condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def pod_restarts(pod: JSON) -> int:
    return sum(
        int(cs.get("restartCount") or 0)
        for cs in pod.get("status", {}).get("containerStatuses") or []
    )


def ready_pod_ips(pods: Iterable[JSON]) -> dict[str, str]:
    """Pod name -> pod IP for the pods that are Ready and have an IP (where to submit)."""
    out = {}
    for p in pods:
        ip = p.get("status", {}).get("podIP")
        if ip and pod_ready(p) and not p.get("metadata", {}).get("deletionTimestamp"):
            out[_name(p)] = str(ip)
    return dict(sorted(out.items()))


def event_time(event: JSON) -> datetime | None:
    series = event.get("series") or {}
    for text in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("metadata", {}).get("creationTimestamp"),
    ):
        t = parse_time(text)
        if t is not None:
            return t
    return None


def recent_events(events: Iterable[JSON], n: int = EVENTS_SHOWN) -> list[JSON]:
    """The n newest events, oldest first (as `kubectl get events` sorts them)."""
    floor = datetime.min.replace(tzinfo=UTC)
    ordered = sorted(events, key=lambda e: event_time(e) or floor)
    return ordered[-n:] if n > 0 else []


# --- formatting ---------------------------------------------------------------------------------


def age(seconds: float) -> str:
    """Like kubectl: 5s, 119s, 2m10s, 12m, 4h, 2d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 600:
        m, r = divmod(s, 60)
        return f"{m}m{r}s" if r else f"{m}m"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def per_minute(rate: float | None) -> str:
    """A msgs/s rate as msgs/min; None is no limit."""
    if rate is None:
        return "unlimited"
    value = rate * 60
    return f"{value:.0f}/min" if value >= 10 else f"{value:.1f}/min"


def short_hash(h: object) -> str:
    return str(h)[:8] if h else "-"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "  "
) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)] + [r[-1]]
        out.append((indent + "  ".join(parts)).rstrip())
    return out


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


# --- the summary --------------------------------------------------------------------------------


def delivered_total(snap: Snapshot) -> int:
    return sum(c.delivered for c in snap.sim)


def _pools(snap: Snapshot) -> list[str]:
    rows = []
    for p in sorted(snap.pools, key=_name):
        st = p.get("status", {})
        ready = _condition(p, "Ready") or {}
        replicas = p.get("spec", {}).get("replicas", {})
        updated = st.get("updatedPods")
        rows.append(
            [
                _name(p),
                ready.get("status", "-"),
                ready.get("reason", "-"),
                f"{st.get('readyReplicas', 0) or 0}/{st.get('desiredReplicas', '-')}",
                f"{replicas.get('min', '-')}-{replicas.get('max', '-')}",
                st.get("queueDepth", "-"),
                short_hash(st.get("configHash")),
                "-" if updated is None else updated,
            ]
        )
    if not rows:
        return ["  (none yet)"]
    heads = ["NAME", "READY", "REASON", "PODS", "MIN-MAX", "QUEUE", "CONFIG", "UPDATED"]
    lines = table(heads, rows)
    for p in sorted(snap.pools, key=_name):
        st = p.get("status", {})
        if st.get("scaleReason"):
            at = parse_time(st.get("lastScaleTime"))
            when = f" ({age((snap.now - at).total_seconds())} ago)" if at else ""
            lines.append(f"  {_name(p)} scaled: {st['scaleReason']}{when}")
        if st.get("drainingPods"):
            left = st.get("handoffLeft")
            handoff = f", {left} message(s) to hand off" if left is not None else ""
            lines.append(f"  {_name(p)} draining: {', '.join(st['drainingPods'])}{handoff}")
    return lines


def _pool_pod_status(snap: Snapshot) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for p in snap.pools:
        for entry in p.get("status", {}).get("pods") or []:
            if entry.get("name"):
                out[str(entry["name"])] = entry
    return out


def _pods(snap: Snapshot) -> list[str]:
    from_pool = _pool_pod_status(snap)
    rows = []
    for pod in sorted(snap.pods, key=_name):
        name = _name(pod)
        engine = snap.engines.get(name) or {}
        listed = from_pool.get(name, {})
        queued = (engine.get("queue") or {}).get("messages", listed.get("queued", "-"))
        started = parse_time(pod.get("status", {}).get("startTime"))
        rows.append(
            [
                name,
                pod_phase(pod),
                pod.get("status", {}).get("podIP") or "-",
                "yes" if pod_ready(pod) else "no",
                pod_restarts(pod),
                short_hash(listed.get("configHash")),
                engine.get("configGeneration", "-"),
                queued,
                snap.traffic.per_pod.get(name, 0),
                age((snap.now - started).total_seconds()) if started else "-",
            ]
        )
    if not rows:
        return ["  (none yet)"]
    heads = ["NAME", "STATUS", "IP", "READY", "RESTARTS", "CONFIG", "GEN", "QUEUED", "SUBMITTED"]
    return table([*heads, "AGE"], rows)


def _held_by_engines(snap: Snapshot) -> dict[str, str]:
    """Per address: the providers an engine has quarantined or suspended it for, e.g.
    "quarantined for outlook"."""
    held: dict[str, dict[str, list[str]]] = {}
    for (ip, provider), row in sorted(_shaping_rows(snap).items()):
        for key, word in (("quarantinedUntil", "quarantined"), ("suspendedUntil", "suspended")):
            if row.get(key):
                held.setdefault(ip, {}).setdefault(word, []).append(provider)
    return {
        ip: "; ".join(f"{word} for {', '.join(ps)}" for word, ps in sorted(words.items()))
        for ip, words in held.items()
    }


def _ips(snap: Snapshot) -> list[str]:
    held = _held_by_engines(snap)
    rows = []
    for p in sorted(snap.pools, key=_name):
        for ip in p.get("status", {}).get("ips") or []:
            address = str(ip.get("address", "?"))
            rows.append(
                [
                    address,
                    ip.get("state", "?"),
                    ip.get("pod") or "-",
                    held.get(address, "-"),
                    _truncate(str(ip.get("reason") or ""), 60),
                ]
            )
    if not rows:
        return ["  (the operator has not reported any yet)"]
    return table(["ADDRESS", "STATE", "POD", "ENGINES", "REASON"], rows)


def _shaping_rows(snap: Snapshot) -> dict[tuple[str, str], JSON]:
    out: dict[tuple[str, str], JSON] = {}
    for status in snap.engines.values():
        for row in status.get("shaping") or []:
            out[(str(row.get("ip")), str(row.get("provider")))] = row
    return out


def _shaping_state(row: JSON | None, now: float) -> str:
    if row is None:
        return "-"
    if row.get("quarantinedUntil"):
        return f"quarantined {age(float(row['quarantinedUntil']) - now)}"
    if row.get("suspendedUntil"):
        return f"suspended {age(float(row['suspendedUntil']) - now)}"
    rate, max_rate = row.get("rate"), row.get("maxRate")
    if rate is not None and max_rate is not None and rate < max_rate:
        return "throttled"
    if rate is not None and max_rate is None:
        return "throttled"
    return "ok"


def _rates(snap: Snapshot) -> list[str]:
    shaping = _shaping_rows(snap)
    sim = {(c.ip, c.provider): c for c in snap.sim}
    now = snap.now.timestamp()
    rows = []
    for ip, provider in sorted(set(shaping) | set(sim)):
        row = shaping.get((ip, provider))
        c = sim.get((ip, provider), SimCounts(provider, ip))
        left = row.get("warmupLeft") if row else None
        rows.append(
            [
                ip,
                provider,
                per_minute(row.get("rate")) if row else "-",
                f"{c.last_minute}/min",
                c.delivered,
                c.refused,
                "-" if left is None else left,
                _shaping_state(row, now),
            ]
        )
    if not rows:
        return ["  (no deliveries yet)"]
    heads = ["IP", "PROVIDER", "ALLOWED", "DELIVERED", "TOTAL", "REFUSED", "WARMUP-LEFT", "STATE"]
    return table(heads, rows)


def _warmups(snap: Snapshot) -> list[str]:
    rows = []
    for w in sorted(snap.warmups, key=_name):
        st = w.get("status", {})
        sent = st.get("sentToday") or {}
        rows.append(
            [
                _name(w),
                ",".join(str(a) for a in w.get("spec", {}).get("addresses") or []),
                st.get("phase", "-"),
                st.get("day", "-"),
                st.get("todayCap", "-"),
                " ".join(f"{k}={v}" for k, v in sorted(sent.items())) or "-",
            ]
        )
    if not rows:
        return ["  (none)"]
    return table(["NAME", "ADDRESSES", "PHASE", "DAY", "TODAY-CAP", "SENT-TODAY"], rows)


def _delivered(snap: Snapshot) -> list[str]:
    ips = sorted({c.ip for c in snap.sim})
    providers = sorted({c.provider for c in snap.sim})
    if not ips:
        return ["  (nothing delivered yet)"]
    counts = {(c.provider, c.ip): c.delivered for c in snap.sim}
    refused = {p: sum(c.refused for c in snap.sim if c.provider == p) for p in providers}
    rows = []
    for p in providers:
        row = [counts.get((p, ip), 0) for ip in ips]
        rows.append([p, *row, sum(row), refused[p]])
    lines = table(["PROVIDER", *ips, "TOTAL", "REFUSED"], rows)
    last = [c for c in snap.sim if c.last_refusal]
    if last:
        c = max(last, key=lambda c: c.refused)
        lines.append(f"  last refusal ({c.provider} to {c.ip}): {_truncate(c.last_refusal, 90)}")
    return lines


def _events(snap: Snapshot, width: int) -> list[str]:
    shown = [e for e in snap.events if e.get("reason") not in HIDDEN_REASONS]
    hidden = len(snap.events) - len(shown)
    rows = []
    for e in recent_events(shown):
        t = event_time(e)
        obj = e.get("involvedObject") or e.get("regarding") or {}
        message = e.get("message") or e.get("note") or ""
        rows.append(
            [
                age((snap.now - t).total_seconds()) if t else "-",
                e.get("type", "-"),
                e.get("reason", "-"),
                f"{obj.get('kind', '?')}/{obj.get('name', '?')}",
                _truncate(str(message), max(20, width - 60)),
            ]
        )
    lines = (
        table(["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"], rows) if rows else ["  (none yet)"]
    )
    if hidden:
        lines.append(
            f"  ({hidden} endpoint warnings not shown: Services cannot list loopback pod IPs)"
        )
    return lines


def headline(snap: Snapshot) -> str:
    ready = sum(1 for p in snap.pods if pod_ready(p))
    t = snap.traffic
    parts = [
        f"pods {ready}/{len(snap.pods)} ready",
        f"submitted {t.submitted}" + (f" ({t.failed} failed)" if t.failed else ""),
        f"delivered {delivered_total(snap)}",
    ]
    if snap.dkim.checked:
        parts.append(f"DKIM pass {snap.dkim.passed}/{snap.dkim.checked}")
    return " · ".join(parts)


def render_summary(snap: Snapshot, width: int = 110) -> str:
    """The whole screen, as text (no terminal control codes)."""
    until = (
        f"ends in {age(snap.deadline - snap.elapsed)}"
        if snap.deadline is not None
        else "Ctrl-C stops everything"
    )
    lines = [
        f"mailfleet demo · {clock(snap.elapsed)} · {until}",
        f"  {headline(snap)}",
        *(f"  {n}" for n in snap.notes),
    ]
    if snap.traffic.last_error:
        lines.append(f"  last submission error: {_truncate(snap.traffic.last_error, width - 26)}")
    if snap.dkim.last_failure:
        lines.append(f"  last DKIM failure: {_truncate(snap.dkim.last_failure, width - 22)}")
    sections = [
        ("SENDING POOLS", _pools(snap)),
        ("PODS", _pods(snap)),
        ("IP STATES", _ips(snap)),
        (
            "RATES per (IP, provider): allowed by the engine's shaping; delivered per the ISP "
            "simulator",
            _rates(snap),
        ),
        ("WARMUPS", _warmups(snap)),
        ("DELIVERED (ISP simulator, by source IP)", _delivered(snap)),
        (f"EVENTS (last {EVENTS_SHOWN})", _events(snap, width)),
    ]
    for title, body in sections:
        lines += ["", title, *body]
    return "\n".join(_truncate_line(ln, width) for ln in lines) + "\n"


def _truncate_line(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


# --- the outcome of a bounded demo --------------------------------------------------------------


def verdict(snap: Snapshot) -> tuple[bool, str]:
    """Whether the demo showed a fleet delivering, and one sentence saying so (or what failed)."""
    delivered = delivered_total(snap)
    ips = sorted({c.ip for c in snap.sim if c.delivered})
    if delivered:
        dkim = (
            f"; DKIM verified on {snap.dkim.passed} of {snap.dkim.checked} checked"
            if snap.dkim.checked
            else ""
        )
        return True, (
            f"delivered {delivered} message(s) from {', '.join(ips)} "
            f"({snap.traffic.submitted} submitted){dkim}"
        )
    if not snap.pools:
        return False, "no SendingPool was created: did examples/local/ apply?"
    if not snap.pods:
        return False, "the operator created no pods: see the operator log"
    running = [p for p in snap.pods if pod_phase(p) == "Running"]
    if not running:
        phases = ", ".join(sorted({pod_phase(p) for p in snap.pods}))
        unbound = all(not p.get("spec", {}).get("nodeName") for p in snap.pods)
        why = " (no pod was scheduled to a node: is the node agent running?)" if unbound else ""
        return False, f"no pod ever ran: pods are {phases}{why}"
    if not any(pod_ready(p) for p in snap.pods):
        return False, "pods run but none became ready: see the pod logs"
    if not snap.traffic.submitted:
        err = snap.traffic.last_error or "no error recorded"
        return False, f"pods are ready but no message could be submitted ({err})"
    refused = sum(c.refused for c in snap.sim)
    return False, (
        f"{snap.traffic.submitted} message(s) submitted but none delivered "
        f"({refused} refusals by the simulator): see the pods' engine logs"
    )
