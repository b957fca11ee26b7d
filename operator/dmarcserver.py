"""The DMARC report upload endpoint: POST /dmarc/<namespace>/<sendingdomain> with the report as
mailed (XML, .xml.gz or .zip) and `Authorization: Bearer <token>`. Off unless the operator is
started with --dmarc-listen and --dmarc-token-file; a mailbox fetcher or the mail system that
receives the rua= address posts what arrives with that token, and the pools that take reports
by mail (dmarc.acceptReportsFrom) forward them with their own admin token, which counts for the
SendingDomains that list the pool only."""

from __future__ import annotations

import hmac

from aiohttp import web

from mailfleet.operator.loops.domains import DomainController

MAX_UPLOAD = 16 * 1024 * 1024


def app(controller: DomainController, token: str) -> web.Application:
    async def upload(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        given = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if not given or not (
            hmac.compare_digest(given.encode(), token.encode())
            or await controller.pool_token_ok(namespace, name, given)
        ):
            return web.Response(status=401, text="a valid bearer token is required\n")
        data = await request.read()
        status, text = controller.accept_report(namespace, name, data)
        return web.Response(status=status, text=text + "\n")

    application = web.Application(client_max_size=MAX_UPLOAD)
    application.router.add_post("/dmarc/{namespace}/{name}", upload)
    return application


async def start(controller: DomainController, host: str, port: int, token: str) -> web.AppRunner:
    runner = web.AppRunner(app(controller, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
