"""`BodyLimit`: 413 `request_too_large` for bodies over the listener's cap, before any is buffered."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zguard.app.errors import error_response
from zguard.errors import RequestTooLarge


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
