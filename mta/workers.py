"""Several engine processes in one pod (`mailfleet mta --processes N`): pure decisions.

- ``split``: a whole-number limit shared by N processes, so that together they never exceed it.
- ``worker_config``: the config one worker runs with: its own spool directory, a shared
  submission port (SO_REUSEPORT), its own loopback admin address and its share of every limit.
- ``orphan_spools``: the spools of a larger N that worker i takes over before it accepts.
- ``merge_metrics`` / ``merge_status``: the workers' answers as one engine's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from mailfleet.mta.config import EngineConfig, ProviderSettingsConfig

SPOOL_FILE = "spool.db"


def split(total: int, n: int, i: int) -> int:
    """Worker i's share of `total` over n workers: the floor, one more to the first
    `total mod n` workers. The shares sum to exactly `total`; none is negative."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"worker {i} of {n}")
    total = max(0, total)
    return total // n + (1 if i < total % n else 0)


def split_at_least_one(total: int, n: int, i: int) -> int:
    """A connection limit: validation forbids 0, which would also strand the worker's mail for
    that provider. Only when `total < n` does this exceed the exact split (see `usable_processes`,
    which keeps N at most the smallest connection limit so that it does not happen)."""
    return max(1, split(total, n, i))


def split_rate(rate: float | None, n: int) -> float | None:
    return None if rate is None else rate / n


def connection_limits(cfg: EngineConfig) -> list[int]:
    """Every connection limit in `cfg` that a worker gets a share of."""
    settings: list[ProviderSettingsConfig] = [cfg.shaping.default, *cfg.shaping.providers]
    out = [s.per_ip.max_connections for s in settings]
    out += [s.pool.max_connections for s in settings if s.pool.max_connections is not None]
    for share in cfg.fleet.shares:
        out += [c for c in share.connections.values() if c > 0]
    return out


def usable_processes(cfg: EngineConfig, wanted: int) -> int:
    """At most `wanted`, and no more than the smallest connection limit: a worker with no
    connection to a provider could never deliver the mail it accepted for it."""
    limits = connection_limits(cfg)
    return max(1, min([wanted, *limits]))


def _settings(s: ProviderSettingsConfig, n: int, i: int, shared_pool_rate: bool) -> dict[str, Any]:
    per_ip = s.per_ip.model_copy(
        update={
            "max_connections": split_at_least_one(s.per_ip.max_connections, n, i),
            "max_message_rate": split_rate(s.per_ip.max_message_rate, n),
        }
    )
    pool = s.pool.model_copy(
        update={
            "max_connections": None
            if s.pool.max_connections is None
            else split_at_least_one(s.pool.max_connections, n, i),
            # With Redis the pool-wide bucket is one for every process of every pod.
            "max_message_rate": s.pool.max_message_rate
            if shared_pool_rate
            else split_rate(s.pool.max_message_rate, n),
        }
    )
    return {"per_ip": per_ip, "pool": pool}


def worker_config(cfg: EngineConfig, i: int, n: int, admin_listen: str) -> EngineConfig:
    """The config worker i of n runs with. n == 1: `cfg` itself (one process, as before)."""
    if n == 1:
        return cfg
    redis = cfg.fleet.redis_url is not None
    shaping = cfg.shaping
    providers = [p.model_copy(update=_settings(p, n, i, redis)) for p in shaping.providers]
    default = shaping.default.model_copy(update=_settings(shaping.default, n, i, redis))
    # Warmup counts are kept per spool, so every worker needs its own part of the day's cap.
    warmup = [w.model_copy(update={"daily_cap": split(w.daily_cap, n, i)}) for w in shaping.warmup]
    shares = [
        s.model_copy(
            update={
                # With Redis the pool rate stays whole and the split-mode share is cut instead
                # (the fallback while Redis does not answer); without, the rate is already cut.
                "rate_share": math.floor(s.rate_share / n * 1e6) / 1e6 if redis else s.rate_share,
                "connections": {k: split(c, n, i) for k, c in s.connections.items()},
            }
        )
        for s in cfg.fleet.shares
    ]
    return cfg.model_copy(
        update={
            "submission": cfg.submission.model_copy(update={"reuse_port": True}),
            "admin": cfg.admin.model_copy(update={"listen": admin_listen}),
            "spool": cfg.spool.model_copy(update={"path": cfg.spool.path / str(i)}),
            "shaping": shaping.model_copy(
                update={"providers": providers, "default": default, "warmup": warmup}
            ),
            "fleet": cfg.fleet.model_copy(update={"shares": shares}),
        }
    )


def spool_dir(root: Path, i: int, n: int) -> Path:
    return root if n == 1 else root / str(i)


def orphan_spools(
    root: Path, i: int, n: int, numbered: Collection[int], root_has_spool: bool
) -> list[Path]:
    """Spools no worker of n owns that worker i takes over: `root/<j>` for j >= n (every j when
    n == 1, whose spool is the root itself) with j mod n == i, and, for worker 0 of n > 1, the
    root spool of a single process."""
    first = 0 if n == 1 else n
    out = [root / str(j) for j in sorted(numbered) if j >= first and j % n == i]
    if n > 1 and i == 0 and root_has_spool:
        out.insert(0, root)
    return out


def numbered_dirs(root: Path) -> list[int]:
    """The j of every `root/<j>` that holds a spool."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return sorted(int(e.name) for e in entries if e.name.isdigit() and (e / SPOOL_FILE).exists())


# -- merging the workers' answers ---------------------------------------------------------------

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?(\s.*)$")


def _labelled(line: str, process: int) -> str:
    m = _SAMPLE.match(line)
    if m is None:
        return line
    name, labels, rest = m.groups()
    inner = labels[1:-1] if labels else ""
    joined = f'process="{process}"' + (f",{inner}" if inner else "")
    return f"{name}{{{joined}}}{rest}"


def merge_metrics(texts: Sequence[str]) -> str:
    """The workers' Prometheus text expositions as one: every sample labelled with its
    `process`, grouped under one HELP and one TYPE per family (a second TYPE line for a family
    makes Prometheus reject the whole scrape)."""
    order: list[str] = []
    header: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for process, text in enumerate(texts):
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in header:
                        order.append(family)
                        header[family] = []
                        samples[family] = []
                    if not any(h.split(None, 2)[1] == parts[1] for h in header[family]):
                        header[family].append(line)
                continue
            if family not in samples:
                order.append(family)
                header[family] = []
                samples[family] = []
            samples[family].append(_labelled(line, process))
    out: list[str] = []
    for family in order:
        out += header[family]
        out += samples[family]
    return "\n".join(out) + "\n"


# Booleans true only when every worker says so; the rest is true when any does.
_ALL = frozenset({"ready", "empty", "reloaded", "accepting"})
_MIN = frozenset({"configGeneration"})
# Times: the latest (a pair suspended in one process is suspended for the pod until then).
_MAX = frozenset({"uptimeSeconds", "lastEvent", "suspendedUntil", "quarantinedUntil"})
# Rows of these lists are one pair (or IP) each: the same pair from two workers is one row.
_ROW_KEYS = ("ip", "provider", "day")


def _row_key(row: dict[str, Any]) -> tuple[Any, ...] | None:
    key = tuple(row.get(k) for k in _ROW_KEYS)
    return key if any(k is not None for k in key) else None


def _merge_list(values: Sequence[list[Any]]) -> list[Any]:
    out: list[Any] = []
    rows: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for v in values:
        for item in v:
            key = _row_key(item) if isinstance(item, dict) else None
            if key is not None:
                if key not in rows:
                    rows[key] = []
                    out.append(key)
                rows[key].append(item)
            elif item not in out:
                out.append(item)
    return [merge_values(rows[x], "") if isinstance(x, tuple) and x in rows else x for x in out]


def merge_values(values: Sequence[Any], key: str) -> Any:
    """The workers' values of one field as one: counts summed, `ready`-like flags all, others
    any, equal strings kept (different ones joined, so that a configHash the workers disagree on
    matches nothing), rows of the same pair merged."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool):
        return all(present) if key in _ALL else any(present)
    if isinstance(first, int | float) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in present
    ):
        if key in _MIN:
            return min(present)
        if key in _MAX:
            return max(present)
        total = sum(present)
        return round(total, 6) if isinstance(total, float) else total
    if isinstance(first, dict) and all(isinstance(v, dict) for v in present):
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: merge_values([v.get(k) for v in present], k) for k in keys}
    if isinstance(first, list) and all(isinstance(v, list) for v in present):
        return _merge_list(present)
    distinct = list(dict.fromkeys(str(v) for v in present))
    return first if len(distinct) == 1 else ",".join(distinct)


def merge_status(statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = merge_values(statuses, "")
    merged["processes"] = len(statuses)
    return merged


def adoption_share(body: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Worker i's part of a POST /v1/shaping/adopt body (IPs moving to this pod), once it is
    valid (`admin.ShapingAdoption`): each warmup count split as the cap is, so that the pod's
    workers together count what the old pod sent. Shaping rows go whole: each worker clamps a
    rate to its own share of the limit."""
    return {**body, "warmup": [{**w, "sent": split(w["sent"], n, i)} for w in body["warmup"]]}
