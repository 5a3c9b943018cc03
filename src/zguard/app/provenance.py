"""`POST /v1/provenance/trace`: auditors upload an image and learn which request produced it.

The image arrives as the raw body (`image/png`, `image/jpeg`, `image/webp`,
`application/octet-stream`) or as JSON `{"image": "<base64>"}`, at most
`provenance.trace_max_bytes` (the listener's body limit is raised for this path only). The
answer is `TraceResult.summary()`; the request's audit event becomes `provenance.traced` with
what was found. The image is decoded in memory and dropped.

Decisions written here (an upload is hostile until decoded; zguard.provenance.trace and
zguard.services.trace hold the rest):
- The format is read from the bytes, whatever the Content-Type says: anything but PNG, JPEG or
  WebP is 400 `invalid_value` (param `image`) on the event loop, before a thread or Pillow is
  involved. A raw `image/*` Content-Type that names another of the three is refused the same way
  (the client is confused about what it sent; `application/octet-stream` and JSON take any).
- An image declaring more than `provenance.trace_max_pixels` is 400 `invalid_value`, undecoded.
- The trace runs in the trace pool (`TraceService`): more than `provenance.trace_workers` at once
  is 503 `server_busy` (asked before the body is read, so a busy server buffers no upload); past `provenance.trace_timeout_s` it is 504 `trace_timeout`; a client
  that leaves gets nothing (499, `client_disconnected` in the audit) and its work stops.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import requires
from zguard.app.context import Services
from zguard.app.contract import AUTHENTICATED, error_responses
from zguard.app.disconnect import ClientDisconnected, run_unless_disconnected
from zguard.app.middleware.audit_requests import request_record
from zguard.app.wire import parse_json_object
from zguard.config import Settings
from zguard.errors import AuditUnavailable, InvalidValue, RequestTooLarge, ServiceUnavailable, UnsupportedMediaType
from zguard.provenance.trace import TRACE_FORMATS, TRACED_EVENT, ImageTooLarge, NotAnImage, image_format, traced_event
from zguard.security.rbac import Permission
from zguard.services.trace import TraceService

TRACE_PATH = "/v1/provenance/trace"
ANY_IMAGE_TYPE = "application/octet-stream"
RAW_TYPES = frozenset({*TRACE_FORMATS.values(), ANY_IMAGE_TYPE})
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


TRACE_ERRORS = {
    400: ("invalid_json", "invalid_value"),
    415: ("unsupported_media_type",),
    503: ("server_busy", "service_unavailable"),
    504: ("trace_timeout",),
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


def _check_format(media_type: str, blob: bytes) -> None:
    """Refuse anything but PNG, JPEG or WebP bytes, and a raw image type that names another one."""
    found = image_format(blob)
    if found is None:
        raise InvalidValue("the upload is not a PNG, JPEG or WebP image", param="image")
    if media_type in RAW_TYPES and media_type != ANY_IMAGE_TYPE and media_type != TRACE_FORMATS[found]:
        raise InvalidValue(
            f"the upload is a {found} image, not {media_type}: send it as {TRACE_FORMATS[found]} or {ANY_IMAGE_TYPE}",
            param="image",
        )


def add_provenance_routes(app: FastAPI, settings: Settings, services: Services) -> None:
    limit = settings.provenance.trace_max_bytes
    traces = TraceService(settings.provenance)

    @app.post(
        TRACE_PATH,
        summary="Trace an image to the request that generated it (auditors)",
        openapi_extra=_BODY,
        responses=error_responses(AUTHENTICATED, TRACE_ERRORS),
        dependencies=[requires(Permission.AUDIT_READ)],
    )
    async def trace_image(request: Request) -> Response:
        marker = services.images.provenance
        reader = services.audit_reader
        if marker is None or marker.reader is None:
            raise ServiceUnavailable("this server has no watermark key to read marks with", retry_after=60)
        if reader is None:
            raise AuditUnavailable("this server keeps no readable audit store")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        traces.check_capacity()
        blob = _image_bytes(media_type, await request.body())
        if len(blob) > limit:
            raise RequestTooLarge(f"the image exceeds {limit} bytes")
        _check_format(media_type, blob)
        record = request_record(request.scope)
        try:
            result = await run_unless_disconnected(request.receive, traces.trace(blob, marker.reader, reader))
        except ImageTooLarge as large:
            size = "" if large.size is None else f" is {large.size[0]}x{large.size[1]}, which"
            raise InvalidValue(
                f"the image{size} has more than the {large.max_pixels} pixels this server traces", param="image"
            ) from None
        except NotAnImage:
            raise InvalidValue("the upload is not an image this server can read", param="image") from None
        except ClientDisconnected:
            if record is not None:
                record.type = TRACED_EVENT
                record.set_outcome("failed", "client_disconnected")
            return Response(status_code=499)
        if record is not None:
            event = traced_event(result, principal=None, source="api")
            record.type = TRACED_EVENT
            record.detail.update({k: v for k, v in event.detail.items() if v is not None})
            record.set_outcome(event.outcome, event.code)
        summary: dict[str, Any] = result.summary()
        return JSONResponse(summary)
