"""`RateLimitHeaders`: the RateLimit-* headers on responses to rate-limited requests.

`Requires` counts the request and leaves its `RateLimitState` on the request state; this
middleware copies it into the response headers when the response starts, whatever the route
returned (a `Response` of its own included) and whatever error came after the count. Refusals by
the rate limiter itself carry the headers in the error and leave no state.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATE_KEY = "rate_limit"


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {}).get(STATE_KEY)
                if state is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in state.headers().items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
