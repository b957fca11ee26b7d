"""The admin HTTP API: /healthz, /readyz, /v1/status, /metrics, POST /v1/drain, POST /v1/reload."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailfleet.mta.config import parse_hostport
from mailfleet.mta.metrics import EngineMetrics


class Engine(Protocol):
    metrics: EngineMetrics

    def readiness(self) -> tuple[bool, str]: ...
    def status(self) -> dict[str, Any]: ...
    async def drain(self) -> dict[str, Any]: ...
    async def reload(self) -> tuple[bool, str]: ...


def make_app(engine: Engine) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = engine.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(engine.status())

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(engine.metrics.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def drain(_: web.Request) -> web.Response:
        return web.json_response(await engine.drain())

    async def reload(_: web.Request) -> web.Response:
        ok, message = await engine.reload()
        return web.json_response({"reloaded": ok, "message": message}, status=200 if ok else 422)

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/v1/status", status),
            web.get("/metrics", metrics),
            web.post("/v1/drain", drain),
            web.post("/v1/reload", reload),
        ]
    )
    return app


class AdminServer:
    def __init__(self, engine: Engine) -> None:
        self.runner = web.AppRunner(make_app(engine), access_log=None)
        self.site: web.TCPSite | None = None

    async def start(self, listen: str) -> None:
        host, port = parse_hostport(listen)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await self.site.start()

    async def stop(self) -> None:
        await self.runner.cleanup()
