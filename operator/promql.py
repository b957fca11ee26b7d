"""Instant PromQL queries (GET /api/v1/query) for the health check, over one aiohttp session."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

log = logging.getLogger("mailfleet.operator")


class PrometheusApi:
    def __init__(self, timeout: float = 5.0) -> None:
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

    async def query(self, base_url: str, expr: str) -> list[dict[str, Any]] | None:
        """The vector result of `expr`, or None (logged) when Prometheus does not answer
        with one."""
        url = base_url.rstrip("/") + "/api/v1/query"
        try:
            async with self._client().get(url, params={"query": expr}) as rsp:
                body = await rsp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("Prometheus %s: %s: %s", base_url, type(e).__name__, e)
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if body.get("status") != "success" or not isinstance(data, dict):
            log.warning("Prometheus %s refused the query: %s", base_url, body.get("error"))
            return None
        if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            return None
        return list(data["result"])
