"""A small Kubernetes API client over HTTPS with a client certificate (standard library only)."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("nodeagent.api")

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{what}: HTTP {status}: {msg}")


@dataclass
class Credentials:
    server: str  # https://127.0.0.1:PORT
    ca: str
    cert: str
    key: str


class Api:
    """One connection per thread (kept alive); JSON in and out."""

    def __init__(self, creds: Credentials, *, user_agent: str = "mailfleet-nodeagent") -> None:
        u = urllib.parse.urlsplit(creds.server)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 443
        self.ctx = ssl.create_default_context(cafile=creds.ca)
        self.ctx.load_cert_chain(creds.cert, creds.key)
        self.user_agent = user_agent
        self._local = threading.local()

    def _conn(self, timeout: float) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ctx, timeout=timeout
            )
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float = 15.0,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        """The decoded JSON answer; raises ApiError for any status not in ok."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                rsp = conn.getresponse()
                raw = rsp.read()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode(errors="replace")
        if rsp.status not in ok:
            raise ApiError(rsp.status, decoded, f"{method} {path}")
        return decoded

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str) -> Any:
        try:
            return self.request("GET", path)
        except ApiError as e:
            if e.status in (403, 404):
                return None
            raise

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def watch(self, path: str, resource_version: str, timeout_s: int = 240) -> Iterator[Obj]:
        """Events of one watch request (ends when the server closes it)."""
        sep = "&" if "?" in path else "?"
        q = urllib.parse.urlencode(
            {
                "watch": "1",
                "resourceVersion": resource_version,
                "timeoutSeconds": str(timeout_s),
                "allowWatchBookmarks": "true",
            }
        )
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.ctx, timeout=timeout_s + 30
        )
        try:
            conn.request("GET", f"{path}{sep}{q}", headers={"User-Agent": self.user_agent})
            rsp = conn.getresponse()
            if rsp.status != 200:
                raise ApiError(rsp.status, rsp.read().decode(errors="replace"), f"watch {path}")
            while True:
                line = rsp.readline()
                if not line:
                    return
                yield json.loads(line)
        finally:
            conn.close()


class Informer(threading.Thread):
    """List, then watch, a collection; calls handler(type, obj) for every change (the initial
    list as ADDED, and objects gone across a relist as DELETED). Runs until stop is set."""

    def __init__(
        self,
        api: Api,
        path: str,
        handler: Callable[[str, Obj], None],
        stop: threading.Event,
        *,
        name: str,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.api = api
        self.path = path
        self.handler = handler
        self.stop = stop
        self.known: dict[str, Obj] = {}
        self.synced = threading.Event()

    @staticmethod
    def _key(obj: Obj) -> str:
        m = obj.get("metadata", {})
        return f"{m.get('namespace', '')}/{m.get('name', '')}"

    def _emit(self, kind: str, obj: Obj) -> None:
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("%s: handler failed on %s %s", self.name, kind, self._key(obj))

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                listing = self.api.get(self.path)
                rv = listing["metadata"]["resourceVersion"]
                seen: dict[str, Obj] = {}
                for item in listing.get("items", []):
                    seen[self._key(item)] = item
                for key, obj in list(self.known.items()):
                    if key not in seen:
                        self._emit("DELETED", obj)
                self.known = seen
                for obj in seen.values():
                    self._emit("ADDED", obj)
                self.synced.set()
                backoff = 0.5
                while not self.stop.is_set():
                    for ev in self.api.watch(self.path, rv):
                        if self.stop.is_set():
                            return
                        kind, obj = ev.get("type", ""), ev.get("object", {})
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), obj, f"watch {self.path}")
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if kind == "BOOKMARK":
                            continue
                        key = self._key(obj)
                        if kind == "DELETED":
                            self.known.pop(key, None)
                        else:
                            self.known[key] = obj
                        self._emit(kind, obj)
            except Exception as e:  # relist after any failure, bounded backoff
                if self.stop.is_set():
                    return
                log.warning("%s: %s; relisting", self.name, e)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def now_micro() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
