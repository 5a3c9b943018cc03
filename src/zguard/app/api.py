"""The OpenAI-compatible image API listener."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.audit_routes import add_audit_routes
from zguard.app.auth import PUBLIC, CurrentIdentity, requires
from zguard.app.context import Services
from zguard.app.contract import (
    AUTHENTICATED,
    GENERATION_ERRORS,
    STACK,
    error_responses,
    error_schema,
    image_request_body,
    install_document,
    patch_document,
    set_request_body,
)
from zguard.app.generation import run_generation
from zguard.app.middleware.request_context import API_SECURITY_HEADERS
from zguard.app.provenance import TRACE_PATH, add_provenance_routes, trace_body_limit
from zguard.app.schemas import (
    ImageGenerationResponse,
    ModelCard,
    ModelList,
)
from zguard.app.stack import NO_TELEMETRY, install_listener_stack
from zguard.app.wire import image_request, image_response_json, parse_json_object
from zguard.config import Settings
from zguard.errors import UnsupportedMediaType
from zguard.security.rbac import Permission

API_TITLE = "zguard image API"
API_VERSION = "1"
GENERATIONS_PATH = "/v1/images/generations"


_READY = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {
            "type": "string",
            "description": "`ready`, or why not: `loading`, `warming`, `failed`, `unavailable`",
        },
        "model": {"type": "string"},
        "unavailable": {"type": "array", "items": {"type": "string"}, "description": "Dependencies that are down"},
    },
}


def create_api_app(settings: Settings, services: Services) -> FastAPI:
    docs = settings.api.docs_enabled
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="OpenAI-compatible image generation served by zguard.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        telemetry=NO_TELEMETRY,
    )
    install_listener_stack(
        app,
        listener="api",
        allow=settings.api.allow,
        trusted_proxies=settings.trusted_proxies,
        max_body_bytes=settings.api.max_body_bytes,
        headers=API_SECURITY_HEADERS,
        services=services,
        body_limits={TRACE_PATH: trace_body_limit(settings)},
        server_names=settings.api.server_names,
    )
    add_provenance_routes(app, settings, services)
    patch_document(app, set_request_body(GENERATIONS_PATH, "post", lambda: image_request_body(settings, services)))

    @app.post(
        GENERATIONS_PATH,
        response_model=ImageGenerationResponse,
        responses=error_responses(AUTHENTICATED, GENERATION_ERRORS),
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {}}}},
        summary="Create images from a prompt",
        dependencies=[requires(Permission.IMAGES_GENERATE)],
    )
    async def generate_images(request: Request, identity: CurrentIdentity) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        result = await run_generation(
            request, services, identity, image_request(parse_json_object(await request.body()))
        )
        if result is None:  # the client went away: nobody to answer
            return Response(status_code=499)
        return Response(image_response_json(result), media_type="application/json")

    @app.get(
        "/v1/models",
        response_model=ModelList,
        summary="The served model",
        responses=error_responses(AUTHENTICATED),
        dependencies=[requires(Permission.MODELS_READ)],
    )
    async def list_models() -> ModelList:
        info = services.engine.info
        return ModelList(
            data=[ModelCard(id=info.id, created=services.started_at, demo=info.demo, manifest=info.manifest)]
        )

    add_audit_routes(app, services)

    @app.get("/healthz", summary="Liveness: the process answers", responses=error_responses(), dependencies=[PUBLIC])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up, and the fail-closed dependencies answer",
        responses={
            **error_responses(),
            200: {"description": "Ready", "content": {"application/json": {"schema": _READY}}},
            503: {
                "description": "Not ready, or a dependency every request needs is down (or `too_many_connections`)",
                "content": {"application/json": {"schema": {"anyOf": [_READY, error_schema(STACK[503])]}}},
            },
        },
        dependencies=[PUBLIC],
    )
    async def readyz() -> JSONResponse:
        state = services.readiness.state.value
        if down := await services.readiness.unavailable():  # e.g. Redis: every request would be 503
            return JSONResponse({"status": "unavailable", "model": state, "unavailable": down}, status_code=503)
        return JSONResponse({"status": state}, status_code=200 if services.readiness.ready else 503)

    install_document(app, security=settings.api_auth.enabled)
    return app
