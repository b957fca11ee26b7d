"""The admin HTTP API: /healthz, /readyz, /v1/status, /metrics, POST /v1/drain, POST /v1/reload,
/v1/shaping/adopt (IPs moving in),
/v1/suppressions (GET list, POST add, GET/DELETE one), POST /v1/queue/retry and /v1/queue/bounce
(by recipient domain).

Open: /healthz, /readyz, /metrics, /v1/status (probes and Prometheus carry no credentials).
Everything else changes state or lists recipients, and needs `Authorization: Bearer <token>`
when the engine has an admin token. Request bodies must be JSON: a browser cannot send that (nor
the header) to another origin without a preflight, so a web page cannot drive the API.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from mailfleet.mta.config import parse_hostport
from mailfleet.mta.handoff import HandoffError, decode
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.spool import QueuedMessage
from mailfleet.mta.suppression import SuppressionStore

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/status"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _MovedRow(BaseModel):
    """One (IP, provider) row of /v1/status "shaping": what the shaper takes over of it (the
    other fields a row shows are read-only views, ignored here)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    ip: StrictStr
    provider: StrictStr
    rate: float | None = Field(None, ge=0)
    peak: float | None = Field(None, ge=0)
    ceiling: float | None = Field(None, ge=0)
    last_event: float | None = Field(None, alias="lastEvent")
    suspended_until: float | None = Field(None, alias="suspendedUntil")
    quarantined_until: float | None = Field(None, alias="quarantinedUntil")
    reason: StrictStr | None = None


class _MovedCount(BaseModel):
    """One row of /v1/status "warmup": messages an IP sent a provider today."""

    model_config = ConfigDict(extra="ignore")

    ip: StrictStr
    provider: StrictStr
    sent: StrictInt = Field(ge=0)


class ShapingAdoption(BaseModel):
    """POST /v1/shaping/adopt: the shaping rows (as /v1/status "shaping") and today's warmup
    counts (as /v1/status "warmup") of IPs moving here from another pod."""

    model_config = ConfigDict(extra="forbid")

    shaping: list[_MovedRow] = []
    warmup: list[_MovedCount] = []


def first_error(e: ValidationError) -> str:
    """The first problem of a request body, naming its field: `warmup.0.sent: ...`."""
    err = e.errors()[0]
    where = ".".join(str(part) for part in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def authorized(token: bytes | None, header: str | None) -> bool:
    """Whether an Authorization header carries the admin token (no token: everyone)."""
    if token is None:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token)


class Engine(Protocol):
    metrics: EngineMetrics
    suppressions: SuppressionStore
    admin_token: bytes | None
    config_hash: str

    async def suppress(self, recipient: str, reason: str, source: str) -> None: ...
    def readiness(self) -> tuple[bool, str]: ...
    async def queue_action(self, action: str, domain: str) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    async def drain(self, handoff: list[str] | None = None) -> dict[str, Any]: ...
    async def undrain(self) -> dict[str, Any]: ...
    async def adopt(self, messages: list[QueuedMessage]) -> int: ...
    async def adopt_shaping(
        self, pairs: list[dict[str, Any]], warmup: list[dict[str, Any]]
    ) -> int: ...
    async def reload(
        self, text: str | None = None, *, only_if_changed: bool = False
    ) -> tuple[bool, str]: ...


def make_app(engine: Engine) -> web.Application:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            if not authorized(engine.admin_token, request.headers.get("Authorization")):
                return web.json_response(
                    {"error": "this endpoint needs Authorization: Bearer <admin token>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="mailfleet-admin"'},
                )
            if request.can_read_body and request.content_type != "application/json":
                return web.json_response(
                    {"error": "request bodies must be JSON (Content-Type: application/json)"},
                    status=415,
                )
        return await handler(request)

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

    async def drain(request: web.Request) -> web.Response:
        handoff: list[str] = []
        if request.can_read_body:
            try:
                body = await request.json()
                given = body.get("handoff") if isinstance(body, dict) else None
                if not isinstance(given, list | None) or not all(
                    isinstance(u, str) and u.startswith(("http://", "https://"))
                    for u in given or []
                ):
                    raise ValueError
                handoff = [str(u) for u in given or []]
            except ValueError:
                return web.json_response(
                    {"error": 'expected JSON {"handoff": ["http://peer:8025", ...]} or no body'},
                    status=400,
                )
        return web.json_response(await engine.drain(handoff))

    async def undrain(_: web.Request) -> web.Response:
        return web.json_response(await engine.undrain())

    async def handoff(request: web.Request) -> web.Response:
        try:
            messages = decode(await request.json())
        except (ValueError, HandoffError) as e:
            return web.json_response({"error": str(e)}, status=400)
        try:
            taken = await engine.adopt(messages)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=503)
        return web.json_response({"accepted": len(messages), "new": taken})

    async def reload(request: web.Request) -> web.Response:
        text: str | None = None
        if request.can_read_body:
            try:
                body = await request.json()
                text = body.get("config") if isinstance(body, dict) else None
                if text is not None and not isinstance(text, str):
                    raise ValueError
            except ValueError:
                return web.json_response(
                    {"error": 'expected JSON {"config": "<engine.yaml text>"} or no body'},
                    status=400,
                )
        ok, message = await engine.reload(text)
        return web.json_response(
            {"reloaded": ok, "message": message, "configHash": engine.config_hash},
            status=200 if ok else 422,
        )

    async def adopt_shaping(request: web.Request) -> web.Response:
        """IPs moving here from another pod: their shaping rows and today's warmup counts."""
        usage = (
            'expected JSON {"shaping": [{"ip", "provider", ...}], '
            '"warmup": [{"ip", "provider", "sent": int}]}'
        )
        try:
            body = ShapingAdoption.model_validate_json(await request.read())
        except ValidationError as e:
            return web.json_response({"error": f"{first_error(e)}; {usage}"}, status=400)
        n = await engine.adopt_shaping(
            [p.model_dump(by_alias=True) for p in body.shaping],
            [w.model_dump() for w in body.warmup],
        )
        return web.json_response({"adopted": n})

    async def suppressions(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= 10000:
                raise ValueError
        except ValueError:
            return web.json_response(
                {"error": "limit must be a number from 1 to 10000"}, status=400
            )
        rows = await engine.suppressions.list(limit=limit, after=request.query.get("after"))
        return web.json_response(
            {
                "count": await engine.suppressions.count(),
                "items": [asdict(r) for r in rows],
                "next": rows[-1].recipient if len(rows) == limit else None,
            }
        )

    async def add_suppression(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            recipient = body["recipient"]
            if not isinstance(recipient, str) or "@" not in recipient:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'expected JSON {"recipient": "user@domain", "reason": "..."}'},
                status=400,
            )
        try:
            await engine.suppress(recipient, str(body.get("reason") or "manual"), "admin-api")
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        entry = await engine.suppressions.get(recipient)
        return web.json_response(asdict(entry) if entry else {}, status=201)

    async def get_suppression(request: web.Request) -> web.Response:
        entry = await engine.suppressions.get(request.match_info["recipient"])
        if entry is None:
            return web.json_response({"error": "not suppressed"}, status=404)
        return web.json_response(asdict(entry))

    async def remove_suppression(request: web.Request) -> web.Response:
        removed = await engine.suppressions.remove(request.match_info["recipient"])
        return web.json_response({"removed": removed}, status=200 if removed else 404)

    async def queue_action(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        try:
            body = await request.json()
            domain = body["domain"]
            if not isinstance(domain, str) or not domain.strip(".") or "@" in domain:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'expected JSON {"domain": "example.com"}'}, status=400
            )
        return web.json_response(await engine.queue_action(action, domain))

    app = web.Application(middlewares=[guard])
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/v1/status", status),
            web.get("/metrics", metrics),
            web.post("/v1/drain", drain),
            web.post("/v1/undrain", undrain),
            web.post("/v1/handoff", handoff),
            web.post("/v1/reload", reload),
            web.post("/v1/shaping/adopt", adopt_shaping),
            web.get("/v1/suppressions", suppressions),
            web.post("/v1/suppressions", add_suppression),
            web.get("/v1/suppressions/{recipient}", get_suppression),
            web.delete("/v1/suppressions/{recipient}", remove_suppression),
            web.post(r"/v1/queue/{action:retry|bounce}", queue_action),
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
