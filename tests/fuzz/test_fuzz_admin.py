"""Fuzzing the admin API of a real engine: random bodies for every endpoint (JSON of any shape,
the fields each endpoint reads with values of every type and size, NaN and Infinity, deep
nesting, bytes that are not JSON), random Authorization, Content-Type, Origin and Host headers.
The answer is never a 5xx (a 503 from /v1/handoff while the engine drains is its contract), it
is JSON, and the engine keeps serving. A reload is never applied: every pushed config carries a
field no config has."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from fixtures.engine import EngineProc
from hypothesis import example, given
from hypothesis import strategies as st

from mailfleet.mta.config import config_digest

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
numbers = (
    st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | values
)


def _dict(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `fields` (each with its strategy) and maybe an unknown key."""
    return st.fixed_dictionaries({}, optional={**fields, "extra": values})


recipient = _dict(
    recipient=st.sampled_from(["user@example.org", "x@[127.0.0.1]", "", '"q"@a.b']) | values,
    attempts=numbers,
    nextAttempt=numbers,
    lastReply=values,
)
handoff_message = _dict(
    id=st.sampled_from(["abc123", "", "a-b", "x" * 65]) | values,
    mailFrom=st.sampled_from(["", "app@example.test", "<a@b>"]) | values,
    receivedAt=numbers,
    client=values,
    data=st.sampled_from(["", "aGk=", "not base64!"]) | values,
    recipients=st.lists(recipient, max_size=3) | values,
)
shaping_row = _dict(
    ip=st.sampled_from(["192.0.2.1", "::1", "x"]) | values,
    provider=st.sampled_from(["gmail", "*"]) | values,
    rate=numbers,
    peak=numbers,
    ceiling=numbers,
    lastEvent=numbers,
    suspendedUntil=numbers,
    quarantinedUntil=numbers,
    reason=values,
)
# A pushed config is never valid: the unknown field is always there, whatever follows.
config_text = st.text(max_size=200).map(lambda t: "mailfleetFuzzNeverValid: 1\n" + t)

BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/v1/drain": _dict(handoff=st.lists(values, max_size=3) | values),
    "/v1/undrain": values,
    "/v1/handoff": _dict(messages=st.lists(handoff_message, max_size=3) | values),
    "/v1/reload": _dict(config=config_text | values),
    "/v1/shaping/adopt": _dict(
        shaping=st.lists(shaping_row, max_size=3) | values,
        warmup=st.lists(_dict(ip=values, provider=values, sent=numbers), max_size=3) | values,
    ),
    "/v1/suppressions": _dict(recipient=values, reason=values),
    "/v1/queue/retry": _dict(domain=values),
    "/v1/queue/bounce": _dict(domain=values),
}
RAW = st.sampled_from(
    [
        b"",
        b"NaN",
        b"[Infinity]",
        b'{"handoff": -Infinity}',
        b"1e999",
        b"[" * 50_000,
        b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{}",
        b'{"config": "\\ud800"}',
    ]
) | st.binary(max_size=100)


def _encode(body: Any) -> bytes:
    # JavaScript's spelling of the non-numbers (NaN, Infinity), as a hostile client may send.
    return json.dumps(body, allow_nan=True).encode()


header_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any], bytes]:
    """(method, path, headers but Authorization, body)."""
    kind = draw(st.sampled_from(["post", "post", "post", "suppression", "list"]))
    if kind == "suppression":
        who = urllib.parse.quote(draw(st.text(max_size=40)), safe="@")
        method = draw(st.sampled_from(["GET", "DELETE"]))
        path, body = f"/v1/suppressions/{who}", b""
    elif kind == "list":
        query = urllib.parse.urlencode(
            {"limit": draw(st.text(max_size=8)), "after": draw(st.text(max_size=20))}
        )
        method, path, body = "GET", f"/v1/suppressions?{query}", b""
    else:
        method = "POST"
        path = draw(st.sampled_from(sorted(BODIES)))
        body = _encode(draw(BODIES[path])) if draw(st.booleans()) else draw(RAW)
    headers: dict[str, Any] = {}
    ctype = draw(CONTENT_TYPES) if draw(st.integers(0, 3)) == 0 else "application/json"
    if ctype is not None:
        headers["Content-Type"] = ctype
    if draw(st.integers(0, 7)) == 0:
        headers["Origin"] = draw(st.sampled_from(["null", "http://evil.example"]))
    if draw(st.integers(0, 7)) == 0:
        headers["Host"] = draw(header_text | st.sampled_from([b"evil.example", b"[::1]", b":"]))
    return method, path, headers, body


def _send(
    eng: EngineProc, method: str, path: str, headers: dict[str, Any], body: bytes
) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(eng.host, eng.admin_port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"{eng.host}:{eng.admin_port}", **headers}
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        rsp = conn.getresponse()
        return rsp.status, rsp.getheader("Content-Type", ""), rsp.read()
    finally:
        conn.close()


@pytest.fixture
def engine(mta_engine: Callable[..., EngineProc]) -> EngineProc:
    # Nothing listens on port 9: whatever a handoff adopts waits in the queue.
    return mta_engine({"routing": {"routes": {"*": "127.0.0.1:9"}}, "retry": {"initial": "1h"}})


@given(requests(), st.sampled_from(["right", "right", "none", "wrong", "bytes"]), header_text)
@example(("POST", "/v1/handoff", {"Content-Type": "application/json"}, b"[" * 50_000), "right", b"")
@example(("POST", "/v1/drain", {"Content-Type": "text/plain"}, b""), "none", b"")
@example(("POST", "/v1/reload", {}, b'{"config": NaN}'), "bytes", b"\xc3\xa9\xff")
def test_admin_answers_are_never_5xx(
    engine: EngineProc,
    request: tuple[str, str, dict[str, Any], bytes],
    auth: str,
    raw_auth: bytes,
) -> None:
    method, path, headers, body = request
    token = engine.token()
    assert token
    headers = dict(headers)
    if auth == "right":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "wrong":
        headers["Authorization"] = f"Bearer {token[:-1]}x"
    elif auth == "bytes":
        headers["Authorization"] = b"Bearer " + raw_auth
    status, ctype, answer = _send(engine, method, path, headers, body)
    draining = path == "/v1/handoff" and status == 503 and b"draining" in answer
    assert status < 500 or draining, (status, answer[:300])
    # What the API answers is JSON (aiohttp's HTTP parser refuses a malformed header itself).
    assert ctype.startswith("application/json") or status == 400, (status, answer[:300])
    if ctype.startswith("application/json"):
        assert isinstance(json.loads(answer), dict), answer[:300]
    if path == "/v1/drain" and status == 200:
        undrain = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        assert _send(engine, "POST", "/v1/undrain", undrain, b"")[0] == 200
    if path == "/v1/reload":  # the config file again at most, never a pushed one
        assert engine.status()["configHash"] == config_digest(engine.config_path.read_text())
    assert _send(engine, "GET", "/healthz", {}, b"")[0] == 200
