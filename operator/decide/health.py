"""Delivery health per (source IP, provider) from the engines' counters: pure functions.

The operator scrapes each ready pod's /metrics every `spec.health.interval`. Counters only grow
while a pod lives, so what happened between two scrapes is their difference; a counter lower
than before means the pod restarted (a new process counts from zero), and then the new value is
all that happened since. The differences, stamped with the scrape time, are kept for
`spec.health.window` and summed into the figures quarantine and warmup gates judge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

ATTEMPTS_METRIC = "mailfleet_delivery_attempts"
COMPLAINTS_METRIC = "mailfleet_complaints"
# The engine's delivery outcomes (mta/queue.py) and the Outcomes field each one counts in.
RESULT_FIELDS = {"delivered": "delivered", "deferred": "deferred", "bounced": "bounced"}
ALL = "*"

PairKey = tuple[str, str]  # (source IP, provider)
_ATTEMPTS = f"{ATTEMPTS_METRIC}_total{{"
_COMPLAINTS = f"{COMPLAINTS_METRIC}_total{{"


@dataclass(frozen=True)
class Counts:
    attempts: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    complaints: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Counts:
        return cls(**{f.name: int(str(data.get(f.name) or 0)) for f in fields(cls)})

    def bounce_rate(self) -> float | None:
        return self.bounced / self.attempts if self.attempts else None

    def deferral_rate(self) -> float | None:
        return self.deferred / self.attempts if self.attempts else None

    def complaint_rate(self) -> float | None:
        # Complaints come from delivered mail only (a feedback loop reports what it received).
        return self.complaints / self.delivered if self.delivered else None


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_engine_metrics(text: str) -> dict[PairKey, Counts]:
    """Cumulative counts per (source IP, provider) from an engine's /metrics text; attempts
    without a source IP (no address configured) count under "". Other lines are ignored.

    Only the two counter families are read, line by line: prometheus_client's parser takes most
    of a second on a busy engine's text (per-domain series), a tenth of that here (bench.health).
    """
    raw: dict[PairKey, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith(_ATTEMPTS):
            field = None
        elif line.startswith(_COMPLAINTS):
            field = "complaints"
        else:
            continue
        labels_end = line.rfind("}")
        if labels_end < 0:
            continue
        try:
            value = float(line[labels_end + 1 :].split()[0])
        except (IndexError, ValueError):
            continue
        labels = dict(_LABEL.findall(line[line.index("{") + 1 : labels_end]))
        key = (labels.get("source_ip", ""), labels.get("provider", "default"))
        row = raw.setdefault(key, {})
        if field == "complaints":
            row["complaints"] = row.get("complaints", 0.0) + value
            continue
        row["attempts"] = row.get("attempts", 0.0) + value
        name = RESULT_FIELDS.get(labels.get("result", ""))
        if name is not None:
            row[name] = row.get(name, 0.0) + value
    return {k: Counts(**{n: int(v) for n, v in row.items()}) for k, row in sorted(raw.items())}


def counter_delta(prev: Counts | None, cur: Counts) -> Counts:
    """What happened between two scrapes of one series. A first scrape is the baseline
    (nothing is known about when its counts happened); any counter going down is a restart."""
    if prev is None:
        return Counts()
    if any(getattr(cur, f.name) < getattr(prev, f.name) for f in fields(cur)):
        return cur
    return Counts(*(getattr(cur, f.name) - getattr(prev, f.name) for f in fields(cur)))


def scrape_delta(
    prev: Mapping[PairKey, Counts] | None, cur: Mapping[PairKey, Counts]
) -> dict[PairKey, Counts]:
    """The non-zero differences of one pod between two scrapes. A pod seen for the first time
    is a baseline; once seen, a series that appears later started from zero in between."""
    if prev is None:
        return {}
    out: dict[PairKey, Counts] = {}
    for key, counts in cur.items():
        d = counter_delta(prev.get(key, Counts()), counts)
        if d:
            out[key] = d
    return out


@dataclass(frozen=True)
class Entry:
    at: datetime
    delta: Mapping[PairKey, Counts]  # one check's differences


@dataclass(frozen=True)
class Window:
    """The checks within the window, oldest first, and their running sums per (IP, provider)."""

    entries: tuple[Entry, ...] = ()
    totals: Mapping[PairKey, Counts] = field(default_factory=dict)


def _sub(a: Counts, b: Counts) -> Counts:
    return Counts(*(getattr(a, f.name) - getattr(b, f.name) for f in fields(a)))


def slide(win: Window, at: datetime, delta: Mapping[PairKey, Counts], window: float) -> Window:
    """The window at `at` with one check's `delta` added and the checks older than `window`
    taken out of the sums: the work is the size of what comes and goes, not of the window."""
    start = at - timedelta(seconds=window)
    totals = dict(win.totals)
    kept = list(win.entries)
    while kept and kept[0].at <= start:
        for k, c in kept.pop(0).delta.items():
            left = _sub(totals[k], c)
            if left:
                totals[k] = left
            else:
                del totals[k]
    for k, c in delta.items():
        totals[k] = totals.get(k, Counts()) + c
    if delta:
        kept.append(Entry(at, dict(delta)))
    return Window(tuple(kept), totals)


def by_ip(totals: Mapping[PairKey, Counts]) -> dict[str, Counts]:
    """Every provider of an IP together."""
    out: dict[str, Counts] = {}
    for (ip, _), counts in totals.items():
        out[ip] = out.get(ip, Counts()) + counts
    return out


def for_addresses(delta: Mapping[PairKey, Counts], addresses: Iterable[str]) -> dict[str, Counts]:
    """Per provider, and in all under "*", the counts of some addresses (a warmup's)."""
    wanted = set(addresses)
    out: dict[str, Counts] = {}
    for (ip, provider), counts in delta.items():
        if ip not in wanted:
            continue
        out[provider] = out.get(provider, Counts()) + counts
        out[ALL] = out.get(ALL, Counts()) + counts
    return out


def accumulate(before: Mapping[str, Counts], delta: Mapping[str, Counts]) -> dict[str, Counts]:
    out = dict(before)
    for k, c in delta.items():
        out[k] = out.get(k, Counts()) + c
    return dict(sorted(out.items()))


def ip_summary(address: str, counts: Counts, listed_on: Sequence[str]) -> dict[str, object]:
    """One entry of the pool's status.health."""
    out: dict[str, object] = {"address": address, **counts.as_dict()}
    for name, rate in (
        ("bounceRate", counts.bounce_rate()),
        ("deferralRate", counts.deferral_rate()),
        ("complaintRate", counts.complaint_rate()),
    ):
        if rate is not None:
            out[name] = round(rate, 4)
    if listed_on:
        out["listedOn"] = list(listed_on)
    return out


# --- from Prometheus -----------------------------------------------------------------------


def _ip_matcher(addresses: Iterable[str]) -> str:
    # RE2 inside a PromQL string: a literal dot is `\\.` in the query text.
    return "|".join(a.replace(".", "\\\\.") for a in sorted(addresses))


def promql_queries(addresses: Iterable[str], window: float) -> tuple[str, str]:
    """Instant queries for the window's outcomes and complaints of the pool's addresses, by
    (source IP, provider[, result]); increase() takes counter resets (pod restarts) in its
    stride."""
    ips = _ip_matcher(addresses)
    rng = f"{max(int(window), 1)}s"
    attempts = (
        f"sum by (source_ip, provider, result) (increase({ATTEMPTS_METRIC}_total"
        f'{{source_ip=~"{ips}"}}[{rng}]))'
    )
    complaints = (
        f"sum by (source_ip, provider) (increase({COMPLAINTS_METRIC}_total"
        f'{{source_ip=~"{ips}"}}[{rng}]))'
    )
    return attempts, complaints


def _value(sample: Mapping[str, Any]) -> float:
    value = sample.get("value") or [0, "0"]
    try:
        v = float(value[1])
    except (TypeError, ValueError, IndexError):
        return 0.0
    return v if v == v and v >= 0 else 0.0  # NaN from an empty range counts nothing


def from_promql(
    attempts: Sequence[Mapping[str, Any]], complaints: Sequence[Mapping[str, Any]]
) -> dict[PairKey, Counts]:
    """Counts per (IP, provider) from the two queries' vector results (increase() gives
    extrapolated floats: rounded)."""
    raw: dict[PairKey, dict[str, float]] = {}
    for sample in attempts:
        labels = sample.get("metric") or {}
        key = (str(labels.get("source_ip", "")), str(labels.get("provider", "default")))
        row = raw.setdefault(key, {})
        v = _value(sample)
        row["attempts"] = row.get("attempts", 0.0) + v
        name = RESULT_FIELDS.get(str(labels.get("result", "")))
        if name is not None:
            row[name] = row.get(name, 0.0) + v
    for sample in complaints:
        labels = sample.get("metric") or {}
        key = (str(labels.get("source_ip", "")), str(labels.get("provider", "default")))
        row = raw.setdefault(key, {})
        row["complaints"] = row.get("complaints", 0.0) + _value(sample)
    out = {k: Counts(**{n: round(v) for n, v in row.items()}) for k, row in sorted(raw.items())}
    return {k: c for k, c in out.items() if c}
