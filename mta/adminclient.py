"""A small client of an engine's own admin API, for the pod's preStop hook
(`mailfleet mta drain`): stop taking mail, then wait until the queue is empty or time is up."""

from __future__ import annotations

import errno
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailfleet.mta.config import EngineConfig, parse_hostport
from mailfleet.mta.safefiles import TOKEN_MAX, read_file, read_token

# Without admin.tokenFile the engine makes a token of its own, in this file beside the spool
# (mode 0600): the CLI on the same host reads it, a web page cannot.
GENERATED_TOKEN_FILE = "admin.token"


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
    return read_token(path, "admin.tokenFile") if path is not None else None


def generated_token_path(spool_root: Path) -> Path:
    return spool_root / GENERATED_TOKEN_FILE


def read_generated_token(path: Path) -> bytes:
    """The token an engine generated; FileNotFoundError when there is none yet, ValueError when
    the file is not one this user made for itself alone (then it is replaced)."""
    field = f"the generated admin token {path}"
    try:
        raw = read_file(path, field, TOKEN_MAX, nofollow=True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(str(path)) from None
        raise ValueError(f"{field}: cannot read it: {e.strerror}") from None
    st = os.stat(path, follow_symlinks=False)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ValueError(f"{field}: not this user's own file (mode 0600)")
    token = raw.strip()
    if len(token) < 32 or not all(0x21 <= b <= 0x7E for b in token):
        raise ValueError(f"{field}: not a token")
    return token


def ensure_generated_token(path: Path) -> bytes:
    """The admin token for an engine without admin.tokenFile: the one in `path` when it holds
    a sound one (the pod's other processes and a restart share it), else a new random one,
    written 0600. Safe when several processes start at once: one file wins, all read it."""
    replace = False
    try:
        return read_generated_token(path)
    except FileNotFoundError:
        pass
    except ValueError:
        replace = True  # someone else's, readable by others, or damaged: never trusted
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, token + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return read_generated_token(path)  # another process of the pod was first
    finally:
        tmp.unlink(missing_ok=True)
    return token


def admin_token(cfg: EngineConfig) -> str | None:
    """The token a client of this engine sends: admin.tokenFile's, else the one the engine
    generated beside its spool (None when there is none yet)."""
    token = read_admin_token(cfg)
    if token is None:
        try:
            token = read_generated_token(generated_token_path(cfg.spool.path))
        except FileNotFoundError:
            return None
    return token.decode()


def post_drain(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    # JSON even when empty: the engine refuses any other body type (a browser form's).
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
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
