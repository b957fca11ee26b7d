"""The operator's client of the engines' admin API (one aiohttp session, short timeouts): read
a pod's /v1/status, push a config with an authenticated reload.

Bodies and answers are the engine's own models (mailfleet.mta.adminapi): an answer is parsed
with them, ignoring what this operator does not know and defaulting what an older engine does
not send."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from mailfleet.mta.adminapi import (
    DrainRequest,
    DrainState,
    EngineStatus,
    ReloadRequest,
    ReloadResult,
    ShapingAdoption,
)
from mailfleet.operator.api.naming import ADMIN_PORT
from mailfleet.operator.clients.httpsession import LazySession

log = logging.getLogger("mailfleet.operator.clients.engine_admin")


def _url(ip: str, path: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


class EngineAdmin(LazySession):
    def __init__(self, port: int = ADMIN_PORT, timeout: float = 3.0) -> None:
        super().__init__(timeout)
        self.port = port

    async def status(self, ip: str) -> EngineStatus | None:
        """The engine's /v1/status, or None when it does not answer (or not with a status)."""
        try:
            async with self._client().get(_url(ip, "/v1/status", self.port)) as rsp:
                if rsp.status != 200:
                    return None
                body = await rsp.json()
                if not isinstance(body, dict):
                    return None
                return EngineStatus.model_validate(body)
        except ValidationError as e:
            log.warning("engine %s answered a status this operator cannot read: %s", ip, e)
            return None
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
                json=ReloadRequest(config=config_text).model_dump(),
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                answer = ReloadResult.parse(await rsp.json(content_type=None))
                message = answer.message or answer.error or str(rsp.status)
                return rsp.status == 200 and answer.reloaded, message
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            return False, f"{type(e).__name__}: {e}"

    async def adopt_shaping(
        self, ip: str, token: str, body: ShapingAdoption | Mapping[str, Any]
    ) -> bool:
        """Hand a moved IP's shaping rows and warmup counts to its new owner."""
        try:
            adoption = (
                body if isinstance(body, ShapingAdoption) else ShapingAdoption.model_validate(body)
            )
        except ValidationError as e:
            log.warning("the shaping state for %s is not one an engine takes: %s", ip, e)
            return False
        try:
            async with self._client().post(
                _url(ip, "/v1/shaping/adopt", self.port),
                json=adoption.model_dump(mode="json", by_alias=True, exclude_unset=True),
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                return rsp.status == 200
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def drain(self, ip: str, token: str, handoff: list[str]) -> DrainState | None:
        """Tell an engine to stop taking mail and hand its queue to `handoff` (admin URLs of
        the pods that stay; empty: deliver it itself). Its state, or None."""
        try:
            async with self._client().post(
                _url(ip, "/v1/drain", self.port),
                json=DrainRequest(handoff=handoff).model_dump(),
                headers={"Authorization": f"Bearer {token}"},
            ) as rsp:
                body = await rsp.json(content_type=None)
                if rsp.status != 200 or not isinstance(body, dict):
                    return None
                return DrainState.model_validate(body)
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
