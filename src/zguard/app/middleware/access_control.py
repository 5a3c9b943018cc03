"""`AccessControl`: authentication, authorization and rate limits, before routing.

Each route declares the permission it needs (or that it is public) with `requires(...)` /
`PUBLIC` from `zguard.app.auth`. This middleware reads those declarations from the app's routes
once, and for a request that matches a protected route it authenticates, authorizes and counts
it before FastAPI routes it, answering a refusal directly in the error shape. Refusals thus cost
no dependency resolution and no exception unwinding through the framework (they must stay cheap:
they are what an attacker can send at will), and no route body or request body is touched for
an unauthenticated caller.

A request that matches no route (an unknown path, or a known path with another method) must
authenticate too before it learns so: a stranger gets 401 for every path that is not a public
route's, so 404s and 405s cannot map which protected routes exist. An authenticated caller then
gets FastAPI's 404/405 (counted against its rates). Public routes answer their own 405s.

The route's own `Requires` dependency then only checks that this middleware ran (fail closed).

On the console a request without `Authorization` may carry a session cookie instead
(zguard.services.sessions); a change (any method but GET, HEAD, OPTIONS) made with a session must
come from the console's own origin: `Sec-Fetch-Site` same-origin (or none: typed by the user),
else an `Origin` whose host is the request's `Host`; neither header is refused too (403
`csrf_failed`). The session's token is checked after the body limit (zguard.app.console.csrf).
`refusal_page` lets the console answer a browser's page request with a page (or the login
redirect) instead of the JSON error; the status and code stay the same.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from fastapi.routing import APIRoute
from starlette.requests import cookie_parser
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from zguard.app.auth import IDENTITY_KEY, UNSET, declared_access
from zguard.app.context import Authenticator, RateLimiter
from zguard.app.errors import error_response
from zguard.app.middleware.audit_requests import request_record
from zguard.app.middleware.network_acl import client_of
from zguard.app.middleware.rate_limit_headers import STATE_KEY as RATE_LIMIT_STATE
from zguard.errors import CsrfFailed, ZguardError
from zguard.security.rbac import Permission
from zguard.services.auth import Identity, RequestInfo
from zguard.services.ratelimit import Bucket

AUTHENTICATE_ONLY = object()  # no route matched: who is calling must be known before a 404/405
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CROSS_ORIGIN = "this change did not come from the console's own pages; reload the page and try again"


class SessionAuthenticator(Protocol):
    """Console sessions (zguard.services.sessions.SessionService)."""

    async def authenticate(self, cookie: str, info: RequestInfo) -> Identity: ...


RefusalPage = Callable[[Scope, ZguardError], ASGIApp | None]


def same_origin(headers: dict[bytes, bytes]) -> bool:
    """A browser says where a request came from: Fetch metadata first, then Origin (RFC 6454)."""
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site in (b"same-origin", b"none")
    origin, host = headers.get(b"origin"), headers.get(b"host")
    if origin is None or host is None or origin == b"null":
        return False
    return urlsplit(origin.decode("latin-1")).netloc.lower() == host.decode("latin-1").lower()


@dataclass(frozen=True)
class _Guard:
    pattern: re.Pattern[str]
    methods: frozenset[str]
    permission: Permission | None


class AccessControl:
    def __init__(
        self,
        app: ASGIApp,
        *,
        router: Router,
        auth: Authenticator,
        rate_limits: RateLimiter,
        listener: str,
        sessions: SessionAuthenticator | None = None,
        session_cookie: str | None = None,
        refusal_page: RefusalPage | None = None,
    ) -> None:
        self.app = app
        self.router = router
        self.auth = auth
        self.rate_limits = rate_limits
        self.listener = listener
        self.sessions = sessions
        self.session_cookie = session_cookie
        self.refusal_page = refusal_page
        self._guards: list[_Guard] | None = None

    def _permission(self, method: str, path: str) -> Permission | object | None:
        """The route's permission, None for a public route, AUTHENTICATE_ONLY for no route."""
        if self._guards is None:
            self._guards = [
                _Guard(route.path_regex, frozenset(route.methods or ()), declared)  # type: ignore[arg-type]
                for route in self.router.routes
                if isinstance(route, APIRoute) and (declared := declared_access(route)) is not UNSET
            ]
        for guard in self._guards:
            if method in guard.methods and guard.pattern.match(path):
                return guard.permission
        if any(guard.permission is None and guard.pattern.match(path) for guard in self._guards):
            return None  # a public path with another method: its 405 reveals nothing
        return AUTHENTICATE_ONLY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        permission = self._permission(scope["method"], scope["path"])
        if permission is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        info = RequestInfo(
            client=client_of(scope),
            request_id=state.get("request_id"),
            listener=self.listener,
            record=request_record(scope),
        )
        cookie = self._session_cookie(headers) if authorization is None else None
        try:
            if cookie is not None and self.sessions is not None:
                identity = await self.sessions.authenticate(cookie, info)
                if scope["method"] not in SAFE_METHODS and not same_origin(headers):
                    raise CsrfFailed(CROSS_ORIGIN, detail="Origin / Sec-Fetch-Site not the console's own")
            else:
                identity = await self.auth.authenticate(
                    authorization.decode("latin-1") if authorization is not None else None, info
                )
            if info.record is not None:
                info.record.authenticated = True  # later refusals (403, 429, 404) are not a stranger's
            if isinstance(permission, Permission):
                self.auth.authorize(identity, permission, info)
            # Generation spends the principal's configured rates; reads, /metrics scrapes and
            # console pages their own, larger budget, so they never crowd out generation.
            # Opening the console's Generate form (a GET) generates nothing, so it spends the other budget.
            generates = permission is Permission.IMAGES_GENERATE and scope["method"] not in SAFE_METHODS
            bucket: Bucket = "generation" if generates else "other"
            state[RATE_LIMIT_STATE] = await self.rate_limits.check(identity, info, bucket=bucket)
        except ZguardError as error:
            page = self.refusal_page(scope, error) if self.refusal_page is not None else None
            await (page or error_response(error))(scope, receive, send)
            return
        state[IDENTITY_KEY] = identity
        await self.app(scope, receive, send)

    def _session_cookie(self, headers: dict[bytes, bytes]) -> str | None:
        if self.sessions is None or self.session_cookie is None:
            return None
        raw = headers.get(b"cookie")
        if raw is None or len(raw) > 8192:  # the transport bounds headers; a cookie this long is not ours
            return None
        value = cookie_parser(raw.decode("latin-1")).get(self.session_cookie)
        return value if value and len(value) <= 128 else None
