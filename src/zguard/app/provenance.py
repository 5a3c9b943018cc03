"""`POST /v1/provenance/trace`: auditors upload an image and learn which request produced it.

The image arrives as the raw body (`image/png`, `image/jpeg`, `image/webp`,
`application/octet-stream`) or as JSON `{"image": "<base64>"}`, at most
`provenance.trace_max_bytes` (the listener's body limit is raised for this path only). The
answer is `TraceResult.summary()`; the request's audit event becomes `provenance.traced` with
what was found. The image is decoded in memory and dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from zguard.app.auth import requires
from zguard.app.context import Services
from zguard.app.middleware.audit_requests import request_record
from zguard.app.wire import parse_json_object
from zguard.config import Settings
from zguard.errors import AuditUnavailable, InvalidValue, RequestTooLarge, ServiceUnavailable, UnsupportedMediaType
from zguard.provenance.trace import TRACED_EVENT, NotAnImage, trace, traced_event
from zguard.security.rbac import Permission

TRACE_PATH = "/v1/provenance/trace"
RAW_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "application/octet-stream"})
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in sorted(RAW_TYPES)},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "contentEncoding": "base64"}},
                    "additionalProperties": False,
                }
            },
        },
    }
}


def trace_body_limit(settings: Settings) -> int:
    """The largest body the trace route reads: the image's limit, base64 and a little JSON around it."""
    return (settings.provenance.trace_max_bytes + 2) // 3 * 4 + 1024


def _image_bytes(media_type: str, body: bytes) -> bytes:
    if media_type in RAW_TYPES:
        return body
    if media_type != "application/json":
        raise UnsupportedMediaType(
            'send the image as image/png, image/jpeg, image/webp or application/octet-stream, or JSON {"image": "<base64>"}'
        )
    data = parse_json_object(body)
    if set(data) != {"image"} or not isinstance(data["image"], str):
        raise InvalidValue('the JSON body must be exactly {"image": "<base64>"}', param="image")
    try:
        return base64.b64decode(data["image"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidValue("'image' is not valid base64", param="image") from None


def add_provenance_routes(app: FastAPI, settings: Settings, services: Services) -> None:
    limit = settings.provenance.trace_max_bytes

    @app.post(
        TRACE_PATH,
        summary="Trace an image to the request that generated it (auditors)",
        openapi_extra=_BODY,
        dependencies=[requires(Permission.AUDIT_READ)],
    )
    async def trace_image(request: Request) -> JSONResponse:
        marker = services.images.provenance
        reader = services.audit_reader
        if marker is None or marker.reader is None:
            raise ServiceUnavailable("this server has no watermark key to read marks with", retry_after=60)
        if reader is None:
            raise AuditUnavailable("this server keeps no readable audit store")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        blob = _image_bytes(media_type, await request.body())
        if len(blob) > limit:
            raise RequestTooLarge(f"the image exceeds {limit} bytes")
        try:
            result = await asyncio.to_thread(trace, blob, marker.reader, reader)
        except NotAnImage:
            raise InvalidValue("the upload is not an image this server can read", param="image") from None
        record = request_record(request.scope)
        if record is not None:
            event = traced_event(result, principal=None, source="api")
            record.type = TRACED_EVENT
            record.detail.update({k: v for k, v in event.detail.items() if v is not None})
            record.set_outcome(event.outcome, event.code)
        summary: dict[str, Any] = result.summary()
        return JSONResponse(summary)
