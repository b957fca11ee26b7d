"""A small client of an engine's own admin API, for the pod's preStop hook
(`mailfleet mta drain`): stop taking mail, then wait until the queue is empty or time is up."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from mailfleet.mta.config import EngineConfig, parse_hostport


def admin_url(cfg: EngineConfig) -> str:
    host, port = parse_hostport(cfg.admin.listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    literal = f"[{host}]" if ":" in host else host
    return f"http://{literal}:{port}"


def read_admin_token(cfg: EngineConfig) -> bytes | None:
    """The admin bearer token from admin.tokenFile (None without one); ValueError names the
    field when it cannot be read or is too short to be a secret."""
    path = cfg.admin.token_file
    if path is None:
        return None
    try:
        token = path.read_bytes().strip()
    except OSError as e:
        raise ValueError(f"admin.tokenFile {path}: cannot read it: {e.strerror}") from None
    if len(token) < 16:
        raise ValueError(f"admin.tokenFile {path}: the token must be at least 16 characters")
    return token


def admin_token(cfg: EngineConfig) -> str | None:
    token = read_admin_token(cfg)
    return token.decode() if token is not None else None


def post_drain(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{url}/v1/drain", method="POST", data=b"", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as rsp:
        body: dict[str, Any] = json.load(rsp)
        return body


def drain_until_empty(
    url: str,
    token: str | None,
    wait: float,
    *,
    poll: float = 2.0,
    post: Callable[[str, str | None], dict[str, Any]] = post_drain,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bool, str]:
    """Drain, then poll until the engine says its queue is empty or `wait` seconds pass.
    Returns (empty, last state) and never raises: a preStop hook that fails ends the grace
    period no sooner than one that waits."""
    deadline = clock() + wait
    last = "no answer"
    while True:
        try:
            state = post(url, token)
            queue = state.get("queue", {})
            last = f"queue {queue.get('messages', '?')} messages"
            if state.get("empty"):
                return True, last
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = f"admin API: {e}"
        if clock() + poll > deadline:
            return False, last
        sleep(poll)
