"""Request bodies of the engine's admin API: what is taken, and errors that name the field."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from mailfleet.mta.admin import ShapingAdoption, first_error


def _error(body: object) -> str:
    with pytest.raises(ValidationError) as e:
        ShapingAdoption.model_validate_json(json.dumps(body))
    return first_error(e.value)


def test_a_status_snapshot_is_taken_with_the_keys_the_shaper_reads() -> None:
    row = {
        "ip": "192.0.2.10",
        "provider": "gmail",
        "rate": 2.5,
        "maxRate": 5.0,  # a view of the config: ignored
        "peak": 3.0,
        "ceiling": None,
        "lastEvent": 1_790_000_000.0,
        "suspendedUntil": 0.0,
        "quarantinedUntil": 0.0,
        "reason": "421 4.7.0 try later",
        "inflight": 2,
        "warmupLeft": None,
    }
    body = ShapingAdoption.model_validate_json(
        json.dumps(
            {"shaping": [row], "warmup": [{"ip": "192.0.2.10", "provider": "*", "sent": 31}]}
        )
    )
    dumped = body.shaping[0].model_dump(by_alias=True)
    assert dumped == {
        k: v for k, v in row.items() if k not in ("maxRate", "inflight", "warmupLeft")
    }
    assert body.warmup[0].model_dump() == {"ip": "192.0.2.10", "provider": "*", "sent": 31}


def test_an_empty_body_adopts_nothing() -> None:
    body = ShapingAdoption.model_validate_json(b"{}")
    assert body.shaping == [] and body.warmup == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"shaping": [{"ip": "192.0.2.1", "provider": "gmail", "rate": "fast"}]}, "shaping.0.rate"),
        ({"shaping": [{"ip": "192.0.2.1", "provider": "gmail", "rate": -1}]}, "shaping.0.rate"),
        ({"shaping": [{"provider": "gmail"}]}, "shaping.0.ip"),
        ({"shaping": [{"ip": 7, "provider": "gmail"}]}, "shaping.0.ip"),
        ({"shaping": [{"ip": "192.0.2.1", "provider": "x", "reason": 5}]}, "shaping.0.reason"),
        ({"warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": "31"}]}, "warmup.0.sent"),
        ({"warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": True}]}, "warmup.0.sent"),
        ({"warmup": [{"ip": "192.0.2.1", "provider": "*", "sent": -3}]}, "warmup.0.sent"),
        ({"warmup": {"ip": "192.0.2.1"}}, "warmup"),
        ({"shapping": []}, "shapping"),
    ],
)
def test_a_bad_body_is_refused_naming_the_field(body: object, field: str) -> None:
    assert _error(body).startswith(f"{field}: ")


def test_a_rate_that_is_not_a_number_is_refused() -> None:
    text = '{"shaping": [{"ip": "192.0.2.1", "provider": "gmail", "rate": NaN}]}'
    with pytest.raises(ValidationError) as e:
        ShapingAdoption.model_validate_json(text)
    assert first_error(e.value).startswith("shaping.0.rate: ")
