"""Status conditions in API-convention form, and the reasons they carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from mailfleet.operator.api.reasons import ConditionReason, ConditionType


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def timestamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: ConditionReason  # a literal fails mypy: the guide lists only the members
    message: str


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Cond], generation: int | None, now: datetime
) -> list[dict[str, Any]]:
    """Conditions in API-convention form; lastTransitionTime moves only when status flips."""
    previous = {c.get("type"): c for c in old}
    out = []
    for c in new:
        before = previous.get(c.type)
        since = (
            before["lastTransitionTime"]
            if before is not None
            and before.get("status") == c.status
            and before.get("lastTransitionTime")
            else timestamp(now)
        )
        item: dict[str, Any] = {
            "type": c.type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def condition(status: Mapping[str, Any] | None, type_: str) -> Mapping[str, Any] | None:
    for c in (status or {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
