"""`SessionCsrf`: every change made with a console session carries that session's token.

A synchronizer token (ASVS 5.0 3.5.1), on top of the origin check AccessControl already made and
`SameSite=Strict`. It runs inside BodyLimit, so the body it may read is already bounded: the JSON
API sends the token in `X-CSRF-Token`; a form posts it as the field `csrf_token`
(application/x-www-form-urlencoded), which is read here and handed on unchanged. Requests
authenticated otherwise (an API token, Basic) carry no ambient credential and are not checked.
Refusals are 403 `csrf_failed`: a page for a browser's form, the JSON error for the API.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zguard.app.auth import IDENTITY_KEY
from zguard.app.errors import error_response
from zguard.app.middleware.access_control import SAFE_METHODS, RefusalPage
from zguard.errors import CsrfFailed
from zguard.services.auth import Identity

FIELD = "csrf_token"
HEADER = b"x-csrf-token"
FORM = b"application/x-www-form-urlencoded"
MISSING = "this form has expired or did not come from the console; reload the page and submit it again"


class SessionCsrf:
    def __init__(
        self, app: ASGIApp, *, valid: Callable[[Identity, str | None], bool], refusal_page: RefusalPage
    ) -> None:
        self.app = app
        self.valid = valid
        self.refusal_page = refusal_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        identity: Identity | None = scope.get("state", {}).get(IDENTITY_KEY)
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or identity is None
            or identity.method != "session"
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = headers.get(HEADER)
        if token is not None:
            if self.valid(identity, token.decode("latin-1")):
                await self.app(scope, receive, send)
                return
            await self._refuse(scope, receive, send)
            return
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != FORM:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:  # BodyLimit, outside, has bounded what this can hold
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            values = parse_qs(body.decode("latin-1"), max_num_fields=64).get(FIELD, [])
        except ValueError:  # more fields than any console form has
            values = []
        if len(values) != 1 or not self.valid(identity, values[0]):
            await self._refuse(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = CsrfFailed(MISSING, detail="the session's CSRF token was missing or wrong")
        await (self.refusal_page(scope, error) or error_response(error))(scope, receive, send)
