"""Units in configs and CRDs: durations ("30s", "5m", "1h30m", "3d") and sizes ("25Mi")."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds from "90s", "5m", "1h30m", "3d" or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("a duration is a number of seconds or a string like '30s', '5m', '1h'")
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(
            f"{value!r} is not a duration; expected e.g. '500ms', '30s', '5m', '1h', '3d'"
        )
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest exact string for a duration, so a rendered config reads like a written one."""
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]

_SIZE_UNITS = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
}
SIZE_PATTERN = r"^[0-9]+(k|K|M|G|Ki|Mi|Gi)?$"


def parse_size(value: object) -> int:
    """Bytes from 26214400, "25Mi", "10M" (Kubernetes quantity suffixes)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '25Mi'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]+)(k|K|M|G|Ki|Mi|Gi)?", value.strip())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2) or ""]
    raise ValueError(f"{value!r} is not a size; expected bytes or e.g. '512Ki', '25Mi', '1Gi'")


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "pattern": SIZE_PATTERN}]}),
]

RATE_PATTERN = r"^[0-9]+(\.[0-9]+)?/(s|min|h|d)$"
_RATE_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(value: object) -> float:
    """Messages per second from "300/min", "5/s", "1000/h", "50000/d"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a rate cannot be negative")
        return float(value)
    if not isinstance(value, str) or not re.fullmatch(RATE_PATTERN, value.strip()):
        raise ValueError(f"{value!r} is not a rate; expected e.g. '5/s', '300/min', '1000/h'")
    number, unit = value.strip().split("/")
    return float(number) / _RATE_UNITS[unit]


def format_rate(per_second: float) -> str:
    """The first unit (s, min, h, d) that makes the rate a whole number: 5.0 -> "5/s"."""
    for unit, seconds in _RATE_UNITS.items():
        n = per_second * seconds
        if math.isclose(n, round(n), rel_tol=1e-9, abs_tol=1e-9):
            return f"{round(n)}/{unit}"
    return f"{per_second * 86400:g}/d"


Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    PlainSerializer(format_rate, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": RATE_PATTERN, "maxLength": 32}),
]
"""A message rate; held as messages per second."""
