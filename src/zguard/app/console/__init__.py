"""The admin console listener: a separate app with its own middleware stack.

A status page (model, demo flag, readiness), `/readyz/detail`, `/metrics`, and the auditors'
read routes (`GET /v1/audit/events`, `POST /v1/provenance/trace`, the same code and permissions
as on the API listener: the deployment guide puts auditors on the management network). It never
serves the generation API.
"""

from __future__ import annotations

import asyncio
from html import escape

from fastapi import FastAPI
from starlette.responses import HTMLResponse, JSONResponse, Response

from zguard.app.audit_routes import add_audit_routes
from zguard.app.auth import PUBLIC, requires
from zguard.app.context import Services
from zguard.app.middleware.request_context import CONSOLE_SECURITY_HEADERS
from zguard.app.provenance import TRACE_PATH, add_provenance_routes, trace_body_limit
from zguard.app.stack import NO_TELEMETRY, install_listener_stack
from zguard.config import Settings
from zguard.security.rbac import Permission
from zguard.services.metrics import CONTENT_TYPE, service_gauges

CONSOLE_MAX_BODY = 16 * 1024


def _status(services: Services) -> dict[str, object]:
    info = services.engine.info
    return {
        "model": info.id,
        "demo": info.demo,
        "device": info.device,
        "dtype": info.dtype,
        "state": services.readiness.state.value,
        "ready": services.readiness.ready,
        "generating": services.admission.running,
        "waiting": services.admission.waiting,
    }


def create_console_app(settings: Settings, services: Services) -> FastAPI:
    app = FastAPI(title="zguard console", docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY)
    install_listener_stack(
        app,
        listener="console",
        allow=settings.console.allow,
        trusted_proxies=settings.trusted_proxies,
        max_body_bytes=CONSOLE_MAX_BODY,
        headers=CONSOLE_SECURITY_HEADERS,
        services=services,
        body_limits={TRACE_PATH: trace_body_limit(settings)},
        server_names=settings.console.server_names,
    )
    add_audit_routes(app, services)
    add_provenance_routes(app, settings, services)

    @app.get("/readyz/detail", dependencies=[requires(Permission.SYSTEM_READ)])
    async def readiness_detail() -> JSONResponse:
        """Readiness with the audit trail's state: head, checkpoint, syslog forwarding lag."""
        audit = await asyncio.to_thread(services.audit_health.snapshot)
        down = await services.readiness.unavailable()
        return JSONResponse(
            {"status": services.readiness.state.value, "model": _status(services), "audit": audit, "unavailable": down},
            status_code=200 if services.readiness.ready and not down else 503,
        )

    @app.get("/", response_class=HTMLResponse, dependencies=[requires(Permission.SYSTEM_READ)])
    async def status_page() -> HTMLResponse:
        status = _status(services)
        demo = (
            "<p><strong>Demo model: random weights, images are noise. "
            "Set model.path to the Z-Image-Turbo directory.</strong></p>"
            if status["demo"]
            else ""
        )
        rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in status.items())
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>zguard console</title></head>'
            f"<body><h1>zguard</h1>{demo}<table>{rows}</table></body></html>"
        )
        return HTMLResponse(page)

    @app.get("/api/status", dependencies=[requires(Permission.SYSTEM_READ)])
    async def status_json() -> JSONResponse:
        return JSONResponse(_status(services))

    @app.get("/metrics", dependencies=[requires(Permission.SYSTEM_READ)])
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
        )
        return Response(services.metrics.render(gauges), media_type=CONTENT_TYPE)

    @app.get("/healthz", dependencies=[PUBLIC])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
