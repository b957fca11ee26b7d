"""Hostile requests to the admin API (issue 21, item 8 and the handoff bodies): what a web page
could make a browser send to the example's loopback engine (a form post, DNS rebinding), and
bodies that gave 500s. Each test sends the request as bytes and asserts the answer."""

from __future__ import annotations

import http.client
import json
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.engine import MAILFLEET, EngineProc

from mailfleet.mta.handoff import encode
from mailfleet.mta.spool import QueuedMessage, QueuedRecipient


def send(
    eng: EngineProc,
    method: str,
    path: str,
    headers: dict[str, str | bytes] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    """One request as written: no header added but Host (unless given) and Content-Length."""
    headers = dict(headers or {})
    conn = http.client.HTTPConnection(eng.host, eng.admin_port, timeout=15)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers.setdefault("Host", f"{eng.host}:{eng.admin_port}")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        rsp = conn.getresponse()
        data = rsp.read()
    finally:
        conn.close()
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {"text": data.decode(errors="replace")}
    return rsp.status, answer if isinstance(answer, dict) else {"json": answer}


def bearer(eng: EngineProc) -> dict[str, str | bytes]:
    token = eng.token()
    assert token
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def test_the_tokenless_example_generates_a_token_only_this_user_reads(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine()
    path = Path(eng.config["spool"]["path"]) / "admin.token"
    mode = path.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    json_body = {"Content-Type": "application/json"}
    status, answer = send(eng, "POST", "/v1/drain", json_body)
    assert status == 401, answer
    assert send(eng, "GET", "/v1/suppressions")[0] == 401
    assert eng.status()["draining"] is False
    # The probes and Prometheus still need nothing.
    for open_path in ("/healthz", "/readyz", "/metrics", "/v1/status"):
        assert send(eng, "GET", open_path)[0] == 200, open_path
    # The token in the file works, and survives a restart (the CLI of a preStop reads it).
    token = path.read_text().strip()
    eng.stop()
    eng.start()
    assert path.read_text().strip() == token
    status, answer = send(eng, "POST", "/v1/undrain", bearer(eng))
    assert status == 200, answer


def test_a_browser_form_post_does_not_drain_the_engine(
    mta_engine: Callable[..., EngineProc],
) -> None:
    # <form method=post action=http://127.0.0.1:8025/v1/drain> submitted by any web page.
    eng = mta_engine()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert send(eng, "POST", "/v1/drain", form)[0] == 401
    # Even with the token: a form's body type is refused, empty or not.
    with_token: dict[str, str | bytes] = {**bearer(eng), **form}
    status, answer = send(eng, "POST", "/v1/drain", with_token)
    assert status == 415 and "application/json" in answer["error"]
    text_plain = {**bearer(eng), "Content-Type": "text/plain"}
    assert send(eng, "POST", "/v1/drain", text_plain, b"{}")[0] == 415
    assert send(eng, "POST", "/v1/drain", text_plain)[0] == 415
    multipart = {**bearer(eng), "Content-Type": "multipart/form-data; boundary=x"}
    assert send(eng, "POST", "/v1/drain", multipart)[0] == 415
    assert eng.status()["draining"] is False
    # The operator's client (aiohttp) says application/octet-stream for an empty POST, which
    # no page can send cross-origin; a client that says nothing is fine too.
    octet = {**bearer(eng), "Content-Type": "application/octet-stream"}
    assert send(eng, "POST", "/v1/undrain", octet)[0] == 200
    assert send(eng, "POST", "/v1/undrain", {"Authorization": f"Bearer {eng.token()}"})[0] == 200
    assert send(eng, "POST", "/v1/drain", octet, b"{}")[0] == 415  # a body is JSON


def test_dns_rebinding_cannot_push_an_open_relay(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine()
    before = eng.status()["configHash"]
    opened = dict(eng.config)
    opened["submission"] = {**opened["submission"], "trustedNetworks": ["0.0.0.0/0"]}
    body = json.dumps({"config": yaml.safe_dump(opened)}).encode()
    # The page's own name, now resolving to 127.0.0.1: the browser sends it as Host.
    rebound: dict[str, str | bytes] = {
        "Host": f"evil.example:{eng.admin_port}",
        "Content-Type": "application/json",
    }
    status, answer = send(eng, "POST", "/v1/reload", rebound, body)
    assert status == 403 and "evil.example" in answer["error"], answer
    # Refused before the token is even looked at, and the status page is not served either.
    status, _ = send(eng, "POST", "/v1/reload", {**bearer(eng), "Host": "evil.example"}, body)
    assert status == 403
    assert send(eng, "GET", "/v1/status", {"Host": "evil.example"})[0] == 403
    assert eng.status()["configHash"] == before
    # Loopback names are this API: localhost and any loopback address, with or without port.
    for host in ("localhost", f"localhost:{eng.admin_port}", "127.0.0.1", "[::1]:8025"):
        assert send(eng, "GET", "/healthz", {"Host": host})[0] == 200, host


def test_a_request_with_an_origin_header_is_refused(
    mta_engine: Callable[..., EngineProc],
) -> None:
    # fetch(url, {method: "POST", mode: "no-cors"}) sends no Content-Type, but an Origin.
    eng = mta_engine()
    status, answer = send(eng, "POST", "/v1/drain", {**bearer(eng), "Origin": "null"})
    assert status == 403 and "Origin" in answer["error"]
    origin = {**bearer(eng), "Origin": "http://evil.example"}
    assert send(eng, "POST", "/v1/drain", origin, b"{}")[0] == 403
    assert eng.status()["draining"] is False


def test_the_cli_drains_with_the_generated_token(mta_engine: Callable[..., EngineProc]) -> None:
    eng = mta_engine()
    done = subprocess.run(
        [MAILFLEET, "mta", "drain", "--config", str(eng.config_path), "--wait", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "empty" in done.stdout
    assert eng.status()["draining"] is True


@pytest.mark.parametrize(
    "value",
    ["Bearer \u00e9t\u00e9-token-0123456789".encode(), b"Bearer \xff\xfe\x80", b"\xc3\xa9"],
    ids=["latin-1", "invalid-utf8", "no-scheme"],
)
def test_a_non_ascii_authorization_header_is_a_401(
    mta_engine: Callable[..., EngineProc], value: bytes
) -> None:
    eng = mta_engine()
    headers: dict[str, str | bytes] = {"Authorization": value, "Content-Type": "application/json"}
    status, _ = send(eng, "POST", "/v1/drain", headers)
    assert status == 401


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "path",
    ["/v1/drain", "/v1/reload", "/v1/handoff", "/v1/queue/retry", "/v1/shaping/adopt"],
)
def test_deeply_nested_json_is_a_400(mta_engine: Callable[..., EngineProc], path: str) -> None:
    eng = mta_engine()
    for body in (DEEP, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        status, answer = send(eng, "POST", path, bearer(eng), body)
        assert status == 400, (status, answer)
    assert send(eng, "GET", "/healthz")[0] == 200


def _handoff(**recipient: Any) -> bytes:
    msg = QueuedMessage(
        id="fromapeer1",
        mail_from="app@example.test",
        received_at=1_790_000_000.0,
        data=b"Subject: hi\r\n\r\nhello\r\n",
        recipients=[QueuedRecipient("user@example.org", 1, 1_790_000_300.0, "")],
        client="192.0.2.1",
    )
    body = encode(msg)
    body["recipients"][0].update(recipient)
    text = json.dumps({"messages": [body]})
    # json.dumps writes the non-numbers as JavaScript does: NaN, Infinity.
    return text.encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_handoff(attempts=10**30), "messages[0].recipients[0].attempts"),
        (_handoff(attempts=-1), "messages[0].recipients[0].attempts"),
        (_handoff(attempts=True), "messages[0].recipients[0].attempts"),
        (_handoff(nextAttempt=float("nan")), "NaN"),
        (_handoff(nextAttempt=float("inf")), "Infinity"),
        (
            _handoff().replace(b"1790000300.0", b"1e999"),  # parses as infinity
            "messages[0].recipients[0].nextAttempt",
        ),
        (_handoff(nextAttempt=10**30), "messages[0].recipients[0].nextAttempt"),
        (_handoff(nextAttempt="soon"), "messages[0].recipients[0].nextAttempt"),
        (_handoff(lastReply=7), "messages[0].recipients[0].lastReply"),
    ],
    ids=["huge", "negative", "bool", "nan", "infinity", "1e999", "year-3e22", "text", "reply"],
)
def test_a_handoff_out_of_bounds_is_a_400_naming_the_field(
    mta_engine: Callable[..., EngineProc], body: bytes, field: str
) -> None:
    eng = mta_engine()
    status, answer = send(eng, "POST", "/v1/handoff", bearer(eng), body)
    assert status == 400, answer
    assert field in answer["error"], answer
    assert eng.status()["queue"]["messages"] == 0
    # A sound one is taken (the same body, in bounds).
    status, answer = send(eng, "POST", "/v1/handoff", bearer(eng), _handoff())
    assert (status, answer) == (200, {"accepted": 1, "new": 1})


def test_the_supervisor_refuses_what_a_web_page_sends(
    mta_engine: Callable[..., EngineProc],
) -> None:
    eng = mta_engine(start=False)
    eng.args = ["--processes", "2"]
    eng.start()
    rebound = {**bearer(eng), "Host": "evil.example"}
    assert send(eng, "POST", "/v1/drain", rebound)[0] == 403
    assert (
        send(eng, "POST", "/v1/drain", {**bearer(eng), "Origin": "http://evil.example"})[0] == 403
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert send(eng, "POST", "/v1/drain", form)[0] in (401, 415)
    assert send(eng, "POST", "/v1/drain", {"Content-Type": "application/json"})[0] == 401
    assert eng.status()["draining"] is False
    # Every process has the one generated token: the CLI drains them all.
    done = subprocess.run(
        [MAILFLEET, "mta", "drain", "--config", str(eng.config_path), "--wait", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert eng.status()["draining"] is True
