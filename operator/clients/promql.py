"""Instant PromQL queries (GET /api/v1/query) for the health check, over one aiohttp session."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from mailfleet.operator.clients.httpsession import LazySession

log = logging.getLogger("mailfleet.operator")


class PrometheusApi(LazySession):
    def __init__(self, timeout: float = 5.0) -> None:
        super().__init__(timeout)

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
