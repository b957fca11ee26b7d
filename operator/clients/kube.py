"""A small async Kubernetes client for the operator's own reads and writes.

It reuses the credentials Kopf logged in with (kopf.ConnectionInfo: kubeconfig or in-cluster
service account), speaks JSON over aiohttp, writes children with server-side apply and status
with merge patches, and counts every write for the operator's metrics.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from mailfleet.operator.api.naming import MANAGER
from mailfleet.operator.metrics import OperatorMetrics


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        out = f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        if name is not None:
            out += f"/{quote(name)}"
        if sub is not None:
            out += f"/{sub}"
        return out


STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
SENDINGPOOLS = Resource("mailfleet.io", "v1alpha1", "sendingpools", "SendingPool")
DELIVERYPOLICIES = Resource("mailfleet.io", "v1alpha1", "deliverypolicies", "DeliveryPolicy")
IPWARMUPS = Resource("mailfleet.io", "v1alpha1", "ipwarmups", "IPWarmup")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")

BY_KIND = {
    r.kind: r
    for r in (
        STATEFULSETS,
        SERVICES,
        CONFIGMAPS,
        SERVICEACCOUNTS,
        PDBS,
        NETWORKPOLICIES,
        SENDINGPOOLS,
        DELIVERYPOLICIES,
        IPWARMUPS,
        DEPLOYMENTS,
    )
}


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message


LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo | None]]

# Worth another attempt: the API server is busy (429 with Retry-After, 5xx while it starts or
# under load) or the connection broke. Applies and merge patches are idempotent.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def retry_delay(attempt: int, retry_after: str | None) -> float:
    """Seconds before attempt `attempt + 1`: the server's Retry-After when it gives one."""
    base = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
    if retry_after is not None:
        try:
            return min(max(float(retry_after), base), 30.0)
        except ValueError:
            pass
    return base


class KubeClient:
    """One aiohttp session with a bounded connection pool; re-logs in once on 401 (rotated
    service-account tokens); retries what a busy API server refuses for now."""

    def __init__(
        self,
        login: LoginFn,
        metrics: OperatorMetrics,
        timeout: float = 30.0,
        connections: int = 64,
    ) -> None:
        self._login = login
        self._metrics = metrics
        # No total timeout: waiting for a pooled connection is not the server being slow.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout)
        self._connections = connections
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._lock = asyncio.Lock()

    async def _connect(self, fresh: bool = False) -> tuple[aiohttp.ClientSession, str]:
        async with self._lock:
            if fresh or self._info is None:
                info = await self._login()
                if info is None:
                    raise ApiError(401, "LOGIN", "", "no Kubernetes credentials found")
                self._info = info
                self._ssl = info.as_ssl_context() if info.server.startswith("https") else True
                if self._session is not None:
                    await self._session.close()
                self._session = aiohttp.ClientSession(
                    headers=info.as_http_headers(),
                    timeout=self._timeout,
                    connector=aiohttp.TCPConnector(limit=self._connections),
                )
            assert self._session is not None and self._info is not None
            return self._session, self._info.server.rstrip("/")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        kind: str = "",
        verb: str = "",
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        relogged = False
        attempt = 0
        while True:
            session, server = await self._connect()
            headers = {"Content-Type": content_type} if data is not None else {}
            if method in WRITE_METHODS:
                self._metrics.api_writes.labels(kind, verb or method.lower()).inc()
            try:
                async with session.request(
                    method, server + path, params=params, data=data, headers=headers, ssl=self._ssl
                ) as rsp:
                    text = await rsp.text()
                    status, retry_after = rsp.status, rsp.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as e:
                if attempt >= len(RETRY_DELAYS):
                    raise ApiError(0, method, path, f"{type(e).__name__}: {e!r}") from e
                await asyncio.sleep(retry_delay(attempt, None))
                attempt += 1
                continue
            if status == 401 and not relogged:
                relogged, attempt = True, 0
                await self._connect(fresh=True)
                continue
            if status in RETRY_STATUSES and attempt < len(RETRY_DELAYS):
                await asyncio.sleep(retry_delay(attempt, retry_after))
                attempt += 1
                continue
            payload: Any = json.loads(text) if text.startswith("{") else text
            if status >= 400 and status != 404:
                message = payload.get("message", text) if isinstance(payload, dict) else text
                raise ApiError(status, method, path, message)
            return status, payload

    async def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        status, payload = await self.request("GET", res.path(namespace, name))
        if status == 404:
            return None
        assert isinstance(payload, dict)
        return payload

    async def apply(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of the whole object as the operator's field manager."""
        meta = obj["metadata"]
        path = res.path(meta["namespace"], meta["name"])
        params = {"fieldManager": MANAGER, "force": "true"}
        status, payload = await self.request(
            "PATCH",
            path,
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
            kind=res.kind,
            verb="apply",
        )
        if status == 404:
            raise ApiError(404, "PATCH", path, str(payload))
        assert isinstance(payload, dict)
        return payload

    async def create(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST a new object; None when one of that name exists already (409)."""
        meta = obj["metadata"]
        path = res.path(meta["namespace"])
        try:
            _, payload = await self.request("POST", path, body=obj, kind=res.kind, verb="create")
        except ApiError as e:
            if e.status == 409:
                return None
            raise
        assert isinstance(payload, dict)
        return payload

    async def list_names(self, res: Resource, namespace: str, selector: str) -> list[str]:
        """Names of the objects matching a label selector (metadata only)."""
        _, payload = await self.request(
            "GET",
            res.path(namespace),
            params={"labelSelector": selector},
        )
        items = payload.get("items", []) if isinstance(payload, dict) else []
        return [str(i["metadata"]["name"]) for i in items]

    async def delete(self, res: Resource, namespace: str, name: str) -> bool:
        """DELETE (background propagation); False when it was gone already."""
        status, _ = await self.request(
            "DELETE", res.path(namespace, name), kind=res.kind, verb="delete"
        )
        return status != 404

    async def patch_status(
        self, res: Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A merge patch of .status (None when the object is gone)."""
        code, payload = await self.request(
            "PATCH",
            res.path(namespace, name, "status"),
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
            kind=res.kind,
            verb="patch-status",
        )
        if code == 404:
            return None
        assert isinstance(payload, dict)
        return payload
