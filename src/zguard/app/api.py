"""The OpenAI-compatible image API listener."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import PUBLIC, CurrentIdentity, request_info, requires
from zguard.app.context import Services
from zguard.app.disconnect import ClientDisconnected, run_unless_disconnected
from zguard.app.middleware.audit_requests import request_record
from zguard.app.middleware.request_context import API_SECURITY_HEADERS
from zguard.app.provenance import TRACE_PATH, add_provenance_routes, trace_body_limit
from zguard.app.schemas import (
    AuditEventList,
    ErrorResponse,
    ImageGenerationRequest,
    ImageGenerationResponse,
    ModelCard,
    ModelList,
)
from zguard.app.stack import NO_TELEMETRY, install_listener_stack
from zguard.app.wire import image_request, image_response, parse_json_object
from zguard.config import Settings
from zguard.errors import AuditUnavailable, InvalidValue, PromptRejected, UnsupportedMediaType
from zguard.security.rbac import Permission

API_TITLE = "zguard image API"
API_VERSION = "1"


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": "Error in the OpenAI shape"} for status in statuses}


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ImageGenerationRequest.model_json_schema()}},
    }
}


AUDIT_PAGE_MAX = 1000
SEQ_MAX = 2**63 - 1  # the largest sequence number a database BIGINT holds
TIME_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment ISO 8601 can write
TEXT_PARAM_MAX = 256  # filters on names, types and ids; nothing stored is longer
TIME_PARAM_MAX = 64


def parse_time_ms(value: str | None, param: str) -> int | None:
    """ISO 8601 (UTC when no zone is given) or UNIX milliseconds, 0 to the end of year 9999."""
    if value is None:
        return None
    problem = f"'{param}' must be ISO 8601 (2026-11-26T09:00:00Z) or UNIX milliseconds"
    if value.isascii() and value.isdigit():
        if len(value) > len(str(TIME_MS_MAX)) or int(value) > TIME_MS_MAX:
            raise InvalidValue(f"{problem} up to {TIME_MS_MAX}", param=param)
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue(problem, param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        ms = int(moment.timestamp() * 1000)
    except (OverflowError, ValueError):  # a zone that moves 0001-01-01 or 9999-12-31 out of range
        raise InvalidValue(problem, param=param) from None
    if not 0 <= ms <= TIME_MS_MAX:
        raise InvalidValue(f"{problem}, from 1970 to the end of 9999", param=param)
    return ms


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
    images = services.images
    add_provenance_routes(app, settings, services)

    @app.post(
        "/v1/images/generations",
        response_model=ImageGenerationResponse,
        responses=_error_responses(400, 401, 403, 413, 415, 429, 503, 504, 500),
        openapi_extra=_REQUEST_BODY,
        summary="Create images from a prompt",
        dependencies=[requires(Permission.IMAGES_GENERATE)],
    )
    async def generate_images(request: Request, identity: CurrentIdentity) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the body as application/json")
        try:
            plan = images.plan(image_request(parse_json_object(await request.body())), roles=identity.roles)
        except PromptRejected as rejected:  # the refusal's audit event names category, detector and term id
            if (refused := request_record(request.scope)) is not None:
                refused.policy = rejected.policy
            raise
        request_id: str = request.state.request_id
        record = request_record(request.scope)
        try:
            where = request_info(request)
            async with services.rate_limits.concurrency(identity, where):
                # Committed before any GPU work; AuditUnavailable (503) stops the request here.
                await images.record_accepted(plan, where, identity, record)
                result = await run_unless_disconnected(request.receive, images.generate(plan, request_id, record))
        except ClientDisconnected:
            if record is not None:
                record.type = "generation.failed"
                record.set_outcome("failed", "client_disconnected")
            return Response(status_code=499)
        except BaseException:
            if record is not None:
                record.type = "generation.failed"
            raise
        if record is not None:
            record.type = "generation.completed"
            record.set_outcome("done")
        return Response(image_response(result).model_dump_json(), media_type="application/json")

    @app.get(
        "/v1/models",
        response_model=ModelList,
        summary="The served model",
        responses=_error_responses(401, 403, 429),
        dependencies=[requires(Permission.MODELS_READ)],
    )
    async def list_models() -> ModelList:
        info = services.engine.info
        return ModelList(
            data=[ModelCard(id=info.id, created=services.started_at, demo=info.demo, manifest=info.manifest)]
        )

    @app.get(
        "/v1/audit/events",
        response_model=AuditEventList,
        summary="Read the audit trail (auditors)",
        responses=_error_responses(400, 401, 403, 429, 503),
        dependencies=[requires(Permission.AUDIT_READ)],
    )
    async def audit_events(
        *,
        since: Annotated[str | None, Query(max_length=TIME_PARAM_MAX)] = None,
        until: Annotated[str | None, Query(max_length=TIME_PARAM_MAX)] = None,
        principal: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        outcome: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        type: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        request_id: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        after: Annotated[int | None, Query(ge=0, le=SEQ_MAX)] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = 100,
    ) -> AuditEventList:
        reader = services.audit_reader
        if reader is None:
            raise AuditUnavailable("this server keeps no readable audit store")
        filters = {
            "since_ms": parse_time_ms(since, "since"),
            "until_ms": parse_time_ms(until, "until"),
            "principal": principal,
            "outcome": outcome,
            "type_prefix": type,
            "request_id": request_id,
            "after_seq": after,
            "limit": limit + 1,
        }
        events = await asyncio.to_thread(reader.search, **filters)
        page = events[:limit]
        data = [{**json.loads(e.body), "hash": e.hash} for e in page]
        return AuditEventList(data=data, next_after=page[-1].seq if len(events) > limit else None)

    @app.get("/healthz", summary="Liveness: the process answers", dependencies=[PUBLIC])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model is loaded and warmed up, and the fail-closed dependencies answer",
        responses={503: {"description": "Not ready, or a dependency every request needs is down"}},
        dependencies=[PUBLIC],
    )
    async def readyz() -> JSONResponse:
        state = services.readiness.state.value
        if down := await services.readiness.unavailable():  # e.g. Redis: every request would be 503
            return JSONResponse({"status": "unavailable", "model": state, "unavailable": down}, status_code=503)
        return JSONResponse({"status": state}, status_code=200 if services.readiness.ready else 503)

    return app
