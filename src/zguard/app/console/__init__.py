"""The admin console listener: a separate app with its own middleware stack.

The console's pages and JSON API (zguard.app.console.pages: sign-in, sessions, the status page),
`/readyz/detail`, `/metrics`, and the auditors' read routes (`GET /v1/audit/events`,
`POST /v1/provenance/trace`, the same code and permissions as on the API listener: the
deployment guide puts auditors on the management network). It never serves the generation API.
A browser signs in with a password and gets a server-side session (zguard.services.sessions);
scripts keep using API tokens or Basic. Without a state database there are no sessions and the
pages answer 503 on sign-in. With `identity.scim` on, `/scim/v2` (zguard.app.console.scim) serves
the IdP's SCIM provisioning behind its own bearer credential.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.responses import FileResponse, JSONResponse, Response

from zguard.app.audit_routes import add_audit_routes
from zguard.app.auth import PUBLIC, requires
from zguard.app.console.approval_pages import add_approval_pages
from zguard.app.console.approvals import add_approval_routes
from zguard.app.console.campaigns import add_campaign_routes
from zguard.app.console.contract import install_console_document
from zguard.app.console.csrf import SessionCsrf
from zguard.app.console.grant_report import add_grant_report_routes
from zguard.app.console.model_change_pages import add_model_change_routes
from zguard.app.console.oidc import add_oidc_routes
from zguard.app.console.pages import _status, add_console_pages, refusal_page_for
from zguard.app.console.scim import add_scim_routes
from zguard.app.console.web import STATIC, session_cookie_name
from zguard.app.context import Services
from zguard.app.errors import error_response
from zguard.app.middleware.request_context import CONSOLE_SECURITY_HEADERS, HSTS
from zguard.app.provenance import TRACE_PATH, add_provenance_routes, trace_body_limit
from zguard.app.stack import NO_TELEMETRY, install_listener_stack
from zguard.config import Settings
from zguard.errors import RouteNotFound
from zguard.security.rbac import Permission
from zguard.services.metrics import CONTENT_TYPE, service_gauges

CONSOLE_MAX_BODY = 16 * 1024
GENERATE_PATHS = ("/generate", "/console/api/generate")
STATIC_FILES = {
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "generate.js": "text/javascript; charset=utf-8",
    "trace.js": "text/javascript; charset=utf-8",
    "verify.js": "text/javascript; charset=utf-8",
}


def generate_body_limit(settings: Settings) -> int:
    """The Generate form's body: a prompt and a negative prompt of the longest allowed length, each
    character up to 3 UTF-8 bytes and 3 characters once form-encoded (%E6%9C%BA), plus the rest."""
    return 2 * settings.generation.max_prompt_chars * 9 + 4096


def create_console_app(settings: Settings, services: Services) -> FastAPI:
    app = FastAPI(title="zguard console", docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY)
    tls = settings.console.tls_cert_file is not None
    refusal_page = refusal_page_for(services)
    if services.sessions is not None:
        app.add_middleware(SessionCsrf, valid=services.sessions.csrf_valid, refusal_page=refusal_page)
    install_listener_stack(
        app,
        listener="console",
        allow=settings.console.allow,
        trusted_proxies=settings.trusted_proxies,
        max_body_bytes=CONSOLE_MAX_BODY,
        headers={**CONSOLE_SECURITY_HEADERS, **(HSTS if tls else {})},
        services=services,
        body_limits={
            TRACE_PATH: trace_body_limit(settings),
            **dict.fromkeys(GENERATE_PATHS, generate_body_limit(settings)),
        },
        server_names=settings.console.server_names,
        sessions=services.sessions,
        session_cookie=session_cookie_name(tls),
        refusal_page=refusal_page,
    )
    add_audit_routes(app, services)
    add_console_pages(app, services, services.sessions, tls=tls)
    add_oidc_routes(app, services.oidc, tls=tls)
    add_provenance_routes(app, settings, services)
    if services.scim is not None:
        add_scim_routes(app, services.scim)
    add_approval_routes(app, services)
    add_campaign_routes(app, services)
    add_grant_report_routes(app, services)
    add_model_change_routes(app, services)

    @app.get("/readyz/detail", dependencies=[requires(Permission.SYSTEM_READ)])
    async def readiness_detail() -> JSONResponse:
        """Readiness with the audit trail's state: head, checkpoint, syslog forwarding lag."""
        down = await services.readiness.unavailable()
        try:
            audit = await asyncio.to_thread(services.audit_health.snapshot)
        except Exception:  # noqa: BLE001 - the database is down: `unavailable` says so; the page still answers
            audit = {"store": "unavailable"}
        body = {
            "status": services.readiness.state.value,
            "model": _status(services),
            "audit": audit,
            "unavailable": down,
        }
        if (replica := services.replica) is not None:
            body.update(replica=replica.replica_id, policy=replica.detail())
        return JSONResponse(body, status_code=200 if services.readiness.ready and not down else 503)

    @app.get("/favicon.ico", dependencies=[PUBLIC], include_in_schema=False)
    async def favicon() -> Response:
        """What browsers ask for on every page, signed in or not: answered, not refused and audited."""
        return FileResponse(STATIC / "favicon.svg", media_type=STATIC_FILES["favicon.svg"])

    @app.get("/static/{name}", dependencies=[PUBLIC], include_in_schema=False)
    async def static(name: str) -> Response:
        """The console's own stylesheet (and scripts, when there are any): no CDN, named files only."""
        if name not in STATIC_FILES:
            return error_response(RouteNotFound("no such file"))
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    @app.get("/api/status", dependencies=[requires(Permission.SYSTEM_READ)])
    async def status_json() -> JSONResponse:
        return JSONResponse(_status(services))

    @app.get(
        "/metrics",
        dependencies=[requires(Permission.SYSTEM_READ)],
        responses={
            200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}
        },
    )
    async def metrics() -> Response:
        """Prometheus text format: requests by listener, status and code; generation latency; queue;
        audit forwarding lag; model verified; policy reloads. No prompts, names or tokens in labels."""
        audit = await asyncio.to_thread(services.audit_health.snapshot)
        gauges = service_gauges(
            waiting=services.admission.waiting,
            running=services.admission.running,
            model_verified=services.engine.info.manifest is not None,
            model_ready=services.readiness.ready,
            policy_reloads=services.policy.reloads if services.policy is not None else {},
            audit=audit,
            engine_busy_s=services.admission.busy_s,
            engine_idle_s=services.admission.idle_while_pending_s,
        )
        if services.replica is not None:
            gauges += services.replica.gauges()
        return Response(services.metrics.render(gauges), media_type=CONTENT_TYPE)

    @app.get("/healthz", dependencies=[PUBLIC])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    add_approval_pages(app, services)
    install_console_document(app, settings, services)
    return app
