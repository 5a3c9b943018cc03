"""The OpenAI-compatible image API listener."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive

from zguard.app.auth import PUBLIC, request_info, requires
from zguard.app.context import Services
from zguard.app.middleware import API_SECURITY_HEADERS, NO_TELEMETRY
from zguard.app.stack import install_listener_stack
from zguard.config import Settings
from zguard.errors import UnsupportedMediaType
from zguard.schemas import ErrorResponse, ImageGenerationRequest, ImageGenerationResponse, ModelCard, ModelList
from zguard.security.rbac import Permission
from zguard.services.auth import Identity
from zguard.services.images import parse_json_object

T = TypeVar("T")
API_TITLE = "zguard image API"
API_VERSION = "1"


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nothing is sent."""


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": "Error in the OpenAI shape"} for status in statuses}


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
    }
}


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; cancel it (freeing its queue slot) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnected
    return task.result()


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
    )
    images = services.images

    @app.post(
        "/v1/images/generations",
        response_model=ImageGenerationResponse,
        responses=_error_responses(400, 401, 403, 413, 415, 429, 503, 504, 500),
        openapi_extra=_REQUEST_BODY,
        summary="Create images from a prompt",
        dependencies=[requires(Permission.IMAGES_GENERATE)],
    )
    async def generate_images(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        plan = images.plan(parse_json_object(await request.body()))
        request_id: str = request.state.request_id
        identity: Identity = request.state.identity
        try:
            async with services.rate_limits.concurrency(identity, request_info(request)):
                result = await run_unless_disconnected(request.receive, images.generate(plan, request_id))
        except ClientDisconnected:
            return Response(status_code=499)
        return Response(result.model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/models",
        response_model=ModelList,
        summary="The served model",
        responses=_error_responses(401, 403, 429),
        dependencies=[requires(Permission.MODELS_READ)],
    )
    async def list_models() -> ModelList:
        info = services.engine.info
        return ModelList(data=[ModelCard(id=info.id, created=services.started_at, demo=info.demo)])

    @app.get("/healthz", summary="Liveness: the process answers", dependencies=[PUBLIC])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up",
        responses={503: {"description": "Not ready"}},
        dependencies=[PUBLIC],
    )
    async def readyz() -> JSONResponse:
        state = services.readiness.state.value
        return JSONResponse({"status": state}, status_code=200 if services.readiness.ready else 503)

    return app
