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

from mailfleet.operator.metrics import OperatorMetrics
from mailfleet.operator.render import MANAGER


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
SENDINGPOOLS = Resource("mailfleet.io", "v1alpha1", "sendingpools", "SendingPool")
DELIVERYPOLICIES = Resource("mailfleet.io", "v1alpha1", "deliverypolicies", "DeliveryPolicy")
IPWARMUPS = Resource("mailfleet.io", "v1alpha1", "ipwarmups", "IPWarmup")

BY_KIND = {
    r.kind: r
    for r in (
        STATEFULSETS,
        SERVICES,
        CONFIGMAPS,
        SERVICEACCOUNTS,
        PDBS,
        SENDINGPOOLS,
        DELIVERYPOLICIES,
        IPWARMUPS,
    )
}


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message


LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo | None]]


class KubeClient:
    """One aiohttp session; re-logs in once on 401 (rotated service-account tokens)."""

    def __init__(self, login: LoginFn, metrics: OperatorMetrics, timeout: float = 30.0) -> None:
        self._login = login
        self._metrics = metrics
        self._timeout = aiohttp.ClientTimeout(total=timeout)
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
                    headers=info.as_http_headers(), timeout=self._timeout
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
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        for attempt in (0, 1):
            session, server = await self._connect(fresh=attempt == 1)
            headers = {"Content-Type": content_type} if data is not None else {}
            async with session.request(
                method, server + path, params=params, data=data, headers=headers, ssl=self._ssl
            ) as rsp:
                text = await rsp.text()
                if rsp.status == 401 and attempt == 0:
                    continue
                payload: Any = json.loads(text) if text.startswith("{") else text
                if rsp.status >= 400 and rsp.status != 404:
                    message = payload.get("message", text) if isinstance(payload, dict) else text
                    raise ApiError(rsp.status, method, path, message)
                return rsp.status, payload
        raise AssertionError("unreachable")

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
        self._metrics.api_writes.labels(res.kind, "apply").inc()
        status, payload = await self.request(
            "PATCH", path, params=params, body=obj, content_type="application/apply-patch+yaml"
        )
        if status == 404:
            raise ApiError(404, "PATCH", path, str(payload))
        assert isinstance(payload, dict)
        return payload

    async def patch_status(
        self, res: Resource, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A merge patch of .status (None when the object is gone)."""
        self._metrics.api_writes.labels(res.kind, "patch-status").inc()
        code, payload = await self.request(
            "PATCH",
            res.path(namespace, name, "status"),
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
        if code == 404:
            return None
        assert isinstance(payload, dict)
        return payload
