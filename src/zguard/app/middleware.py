"""Pure ASGI middleware shared by both listeners (one concern per class).

`RequestContext` is the outermost layer of each app: it assigns the request id, adds the
security headers to every response, and turns any exception that escaped the app into a
generic `internal_error` body, so even a crash answers in the error shape with the headers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zguard.app.errors import error_response, internal_error
from zguard.errors import RequestTooLarge

log = logging.getLogger("zguard.http")

# FastAPI's built-in OpenTelemetry instrumentation, all off. Its logs record exception messages
# and stack traces (which may quote client input), and FASTAPI_OTEL_AUTO_CONFIGURE=true in the
# environment would add OTLP exporters sending them off the host. Observability for zguard is
# its own audit trail and logs; it also cost ~100 µs a request.
NO_TELEMETRY: Any = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}

API_SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONSOLE_SECURITY_HEADERS: Mapping[str, str] = {
    **API_SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


class RequestContext:
    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                for name, value in self.headers.items():
                    headers[name] = value
                headers["server"] = "zguard"
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("request %s failed", request_id)
            if started:
                raise
            await internal_error(request_id)(scope, receive, send_with_headers)


class BodyLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length up front or while streaming.
    `per_path` raises the limit for the routes that take uploads (`POST /v1/provenance/trace`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, per_path: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope["path"], self.max_bytes)
        too_large = RequestTooLarge(f"the request body exceeds {max_bytes} bytes")
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > max_bytes):
                await error_response(too_large)(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)
