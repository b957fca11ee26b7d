"""The operator's client of the engines' admin API (one aiohttp session, short timeouts): read
a pod's /v1/status, push a config with an authenticated reload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from mailfleet.operator.naming import ADMIN_PORT


def _url(ip: str, path: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


class EngineAdmin:
    def __init__(self, port: int = ADMIN_PORT, timeout: float = 3.0) -> None:
        self.port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def status(self, ip: str) -> dict[str, Any] | None:
        """The engine's /v1/status, or None when it does not answer."""
        try:
            async with self._client().get(_url(ip, "/v1/status", self.port)) as rsp:
                if rsp.status != 200:
                    return None
                body = await rsp.json()
                return body if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def metrics(self, ip: str) -> str | None:
        """The engine's /metrics text (open, like /v1/status), or None when it does not answer."""
        try:
            async with self._client().get(_url(ip, "/metrics", self.port)) as rsp:
                if rsp.status != 200:
                    return None
                return await rsp.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None

    async def reload(self, ip: str, token: str, config_text: str) -> tuple[bool, str]:
        """Push a config; (applied, the engine's message or the failure)."""
        try:
            async with self._client().post(
                _url(ip, "/v1/reload", self.port),
                json={"config": config_text},
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                body = await rsp.json(content_type=None)
                message = str(body.get("message") or body.get("error") or rsp.status)
                return rsp.status == 200 and bool(body.get("reloaded")), message
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}"

    async def adopt_shaping(self, ip: str, token: str, body: Mapping[str, Any]) -> bool:
        """Hand a moved IP's shaping rows and warmup counts to its new owner."""
        try:
            async with self._client().post(
                _url(ip, "/v1/shaping/adopt", self.port),
                json=dict(body),
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                return rsp.status == 200
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def drain(self, ip: str, token: str, handoff: list[str]) -> dict[str, Any] | None:
        """Tell an engine to stop taking mail and hand its queue to `handoff` (admin URLs of
        the pods that stay; empty: deliver it itself). Its state, or None."""
        try:
            async with self._client().post(
                _url(ip, "/v1/drain", self.port),
                json={"handoff": handoff},
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                body = await rsp.json(content_type=None)
                return body if rsp.status == 200 and isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def undrain(self, ip: str, token: str) -> bool:
        """Take mail again (a scale-down called off)."""
        try:
            async with self._client().post(
                _url(ip, "/v1/undrain", self.port),
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                return rsp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
