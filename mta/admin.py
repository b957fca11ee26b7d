"""The admin HTTP API: /healthz, /readyz, /v1/status, /metrics, POST /v1/drain, POST /v1/reload,
/v1/shaping/adopt (IPs moving in),
/v1/suppressions (GET list, POST add, GET/DELETE one), POST /v1/queue/retry and /v1/queue/bounce
(by recipient domain).

Open: /healthz, /readyz, /metrics, /v1/status (probes and Prometheus carry no credentials).
Everything else changes state or lists recipients, and always needs `Authorization: Bearer
<token>`: admin.tokenFile's, or one the engine generated beside its spool. What a web page could
send is refused besides: a request with an Origin header (browsers add it), a body or a
Content-Type that is not JSON (a form post), and on a loopback listener a Host that is not a
loopback name (DNS rebinding: a page whose name now resolves to 127.0.0.1).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from mailfleet.mta.adminapi import (
    AdoptResult,
    DrainState,
    EngineStatus,
    HandoffResult,
    QueueActionResult,
    ReloadResult,
    ShapingAdoption,
)
from mailfleet.mta.config import is_loopback_host, parse_hostport
from mailfleet.mta.handoff import HandoffError, decode
from mailfleet.mta.metrics import EngineMetrics
from mailfleet.mta.spool import QueuedMessage
from mailfleet.mta.suppression import SuppressionStore, check_recipient

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/status"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    # A header of any bytes (aiohttp keeps undecodable ones as surrogates) compares unequal.
    given = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token)


def _host_name(header: str) -> str:
    """The host of a Host header: "127.0.0.1" of "127.0.0.1:8025", "::1" of "[::1]:8025"."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def loopback_name(header: str) -> bool:
    """Whether a Host header names this machine's loopback: "localhost" or a loopback IP."""
    return is_loopback_host(_host_name(header.strip()).rstrip(".").lower())


BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def page_refusal(request: web.Request, loopback: bool) -> web.Response | None:
    """Why a request that came from a web page is refused, or None. `loopback`: the listener
    is on a loopback address, where only a loopback Host is this API (any other is a page's
    own name, rebound to 127.0.0.1)."""
    host = request.headers.get("Host")
    if loopback and host is not None and not loopback_name(host):
        return web.json_response(
            {"error": f"Host {host[:100]!r} is not this admin API's address (a loopback name)"},
            status=403,
        )
    if request.path in OPEN_PATHS:
        return None
    if "Origin" in request.headers:
        return web.json_response(
            {"error": "requests from web pages (with an Origin header) are refused"}, status=403
        )
    return None


# What a web page may send another origin without a preflight (CORS's "simple" requests): a
# form's types. aiohttp's client says application/octet-stream for an empty POST (the
# operator's undrain), which a page cannot send cross-origin.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})


def body_refusal(request: web.Request) -> web.Response | None:
    """Why a request body a form could send is refused, or None: any body must be JSON, and
    an empty one must not say it is a form's (a browser's form says so even when empty)."""
    if request.path not in OPEN_PATHS and request.method in BODY_METHODS:
        ctype = request.content_type
        if "Content-Type" not in request.headers:
            ctype = ""  # aiohttp's default for none is application/octet-stream
        wrong = ctype != "application/json" if request.can_read_body else ctype in FORM_TYPES
        if wrong:
            return web.json_response(
                {"error": "request bodies must be JSON (Content-Type: application/json)"},
                status=415,
            )
    return None


class BadBody(ValueError):
    """A request body that is not JSON the API can take; the message says why."""


def _constant(name: str) -> Any:
    raise BadBody(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """A request body (None when empty): strict JSON (no NaN or Infinity), nesting bounded by
    the parser's recursion limit. BadBody says what is wrong."""
    if not raw:
        return None
    try:
        return json.loads(raw, parse_constant=_constant)
    except RecursionError:
        raise BadBody("the JSON body is nested too deeply") from None
    except BadBody:
        raise
    except ValueError as e:  # UnicodeDecodeError included
        raise BadBody(f"the body is not JSON: {str(e)[:200]}") from None


class Engine(Protocol):
    metrics: EngineMetrics
    suppressions: SuppressionStore
    admin_token: bytes  # always one: admin.tokenFile's or a generated one
    config_hash: str

    async def suppress(self, recipient: str, reason: str, source: str) -> None: ...
    def readiness(self) -> tuple[bool, str]: ...
    async def queue_action(self, action: str, domain: str) -> QueueActionResult: ...
    def status(self) -> EngineStatus: ...
    async def drain(self, handoff: list[str] | None = None) -> DrainState: ...
    async def undrain(self) -> DrainState: ...
    async def adopt(self, messages: list[QueuedMessage]) -> int: ...
    async def adopt_shaping(
        self, pairs: list[dict[str, Any]], warmup: list[dict[str, Any]]
    ) -> int: ...
    async def reload(
        self, text: str | None = None, *, only_if_changed: bool = False
    ) -> tuple[bool, str]: ...


def make_app(engine: Engine, listen: str = "127.0.0.1:8025") -> web.Application:
    loopback = is_loopback_host(parse_hostport(listen)[0])

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = page_refusal(request, loopback)
        if refused is not None:
            return refused
        if request.path not in OPEN_PATHS:
            if not authorized(engine.admin_token, request.headers.get("Authorization")):
                return web.json_response(
                    {"error": "this endpoint needs Authorization: Bearer <admin token>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="mailfleet-admin"'},
                )
            refused = body_refusal(request)
            if refused is not None:
                return refused
            if request.can_read_body:
                try:
                    request["json"] = parse_json(await request.read())
                except BadBody as e:
                    return web.json_response({"error": str(e)}, status=400)
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            # No route, a method it does not take, a body too large: said in JSON too.
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
            return web.json_response({"error": e.reason}, status=e.status, headers=allow)

    def json_of(request: web.Request) -> Any:
        """The JSON body the guard parsed (None without one)."""
        return request.get("json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, reason = engine.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(engine.status().wire())

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(engine.metrics.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def drain(request: web.Request) -> web.Response:
        b = json_of(request)  # None: no body
        given = b.get("handoff") if isinstance(b, dict) else None
        if (
            not isinstance(b, dict | None)
            or not isinstance(given, list | None)
            or not all(
                isinstance(u, str) and u.startswith(("http://", "https://")) for u in given or []
            )
        ):
            return web.json_response(
                {"error": 'expected JSON {"handoff": ["http://peer:8025", ...]} or no body'},
                status=400,
            )
        handoff = [str(u) for u in given or []]
        return web.json_response((await engine.drain(handoff)).wire())

    async def undrain(_: web.Request) -> web.Response:
        return web.json_response((await engine.undrain()).wire())

    async def handoff(request: web.Request) -> web.Response:
        try:
            messages = decode(json_of(request))
        except HandoffError as e:
            return web.json_response({"error": str(e)}, status=400)
        try:
            taken = await engine.adopt(messages)
        except RuntimeError as e:
            return web.json_response({"error": str(e)}, status=503)
        return web.json_response(HandoffResult(accepted=len(messages), new=taken).wire())

    async def reload(request: web.Request) -> web.Response:
        b = json_of(request)  # None: no body, the config file is read again
        text = b.get("config") if isinstance(b, dict) else None
        if not isinstance(b, dict | None) or not isinstance(text, str | None):
            return web.json_response(
                {"error": 'expected JSON {"config": "<engine.yaml text>"} or no body'},
                status=400,
            )
        ok, message = await engine.reload(text)
        answer = ReloadResult(reloaded=ok, message=message, config_hash=engine.config_hash)
        return web.json_response(answer.wire(), status=200 if ok else 422)

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
        return web.json_response(AdoptResult(adopted=n).wire())

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
        # Stored under its canonical spelling (suppression.normalize_recipient); what is no
        # address could never match a RCPT.
        problem = check_recipient(recipient)
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
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
            domain = json_of(request)["domain"]
            if not isinstance(domain, str) or not domain.strip(".") or "@" in domain:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": 'expected JSON {"domain": "example.com"}'}, status=400
            )
        return web.json_response((await engine.queue_action(action, domain)).wire())

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
        self.engine = engine
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None

    async def start(self, listen: str) -> None:
        host, port = parse_hostport(listen)
        self.runner = web.AppRunner(make_app(self.engine, listen), access_log=None)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await self.site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
