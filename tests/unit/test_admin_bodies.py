"""Request bodies of the engine's admin API: what is taken, and errors that name the field."""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from mailfleet.mta.admin import BadBody, ShapingAdoption, first_error, loopback_name, parse_json
from mailfleet.mta.adminclient import ensure_generated_token
from mailfleet.mta.handoff import HandoffError, decode, encode
from mailfleet.mta.spool import QueuedMessage, QueuedRecipient


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


# -- handoff bodies, JSON parsing, Host names, the generated token (issue 21) --------------------


def _handoff(**recipient: object) -> dict[str, object]:
    msg = QueuedMessage(
        id="abc123",
        mail_from="app@example.test",
        received_at=1_790_000_000.0,
        data=b"hi\r\n",
        recipients=[QueuedRecipient("user@example.org", 1, 1_790_000_300.0, "")],
        client="192.0.2.1",
    )
    body = encode(msg)
    body["recipients"][0].update(recipient)
    return {"messages": [body]}


@pytest.mark.parametrize(
    ("recipient", "field"),
    [
        ({"attempts": 10**30}, "messages[0].recipients[0].attempts"),
        ({"attempts": 2.5}, "messages[0].recipients[0].attempts"),
        ({"nextAttempt": math.nan}, "messages[0].recipients[0].nextAttempt"),
        ({"nextAttempt": math.inf}, "messages[0].recipients[0].nextAttempt"),
        ({"nextAttempt": -1}, "messages[0].recipients[0].nextAttempt"),
        ({"nextAttempt": "1"}, "messages[0].recipients[0].nextAttempt"),
        ({"recipient": "a@b@c.example"}, "messages[0].recipients[0].recipient"),
    ],
)
def test_a_handoff_out_of_bounds_names_the_field(recipient: dict[str, object], field: str) -> None:
    with pytest.raises(HandoffError) as e:
        decode(_handoff(**recipient))
    assert str(e.value).startswith(f"{field}: ")


def test_a_sound_handoff_is_decoded_as_encoded() -> None:
    (msg,) = decode(_handoff())
    assert msg.recipients[0].attempts == 1
    assert msg.recipients[0].next_attempt == 1_790_000_300.0
    assert msg.data == b"hi\r\n"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"NaN", "NaN"),
        (b'{"a": [-Infinity]}', "-Infinity"),
        (b"[" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
    ],
)
def test_request_bodies_are_strict_json(raw: bytes, words: str) -> None:
    with pytest.raises(BadBody, match=words):
        parse_json(raw)
    assert parse_json(b"") is None
    assert parse_json(b'{"a": 1.5}') == {"a": 1.5}


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8025", True),
        ("localhost", True),
        ("LOCALHOST.:8025", True),
        ("[::1]:8025", True),
        ("127.9.9.9", True),
        ("evil.example:8025", False),
        ("localhost.evil.example", False),
        ("192.0.2.1:8025", False),
        ("", False),
    ],
)
def test_only_loopback_names_are_this_api(host: str, ok: bool) -> None:
    assert loopback_name(host) is ok


def test_the_generated_token_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "admin.token"
    token = ensure_generated_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_generated_token(path) == token  # a restart, another process: the same
    # One others could read (or someone else's) is never used: a new one replaces it.
    path.chmod(0o644)
    fresh = ensure_generated_token(path)
    assert fresh != token and stat.S_IMODE(path.stat().st_mode) == 0o600
    # A symlink planted in its place is replaced, not followed.
    target = tmp_path / "elsewhere"
    target.write_text("x" * 40)
    path.unlink()
    path.symlink_to(target)
    assert ensure_generated_token(path) != b"x" * 40
    assert not path.is_symlink() and target.read_text() == "x" * 40
