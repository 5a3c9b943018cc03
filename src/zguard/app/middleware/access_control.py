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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.routing import APIRoute
from starlette.routing import Router
from starlette.types import ASGIApp, Receive, Scope, Send

from zguard.app.auth import IDENTITY_KEY, UNSET, declared_access
from zguard.app.context import Authenticator, RateLimiter
from zguard.app.errors import error_response
from zguard.app.middleware.audit_requests import request_record
from zguard.app.middleware.network_acl import client_of
from zguard.app.middleware.rate_limit_headers import STATE_KEY as RATE_LIMIT_STATE
from zguard.errors import ZguardError
from zguard.security.rbac import Permission
from zguard.services.auth import RequestInfo
from zguard.services.ratelimit import Bucket

AUTHENTICATE_ONLY = object()  # no route matched: who is calling must be known before a 404/405


@dataclass(frozen=True)
class _Guard:
    pattern: re.Pattern[str]
    methods: frozenset[str]
    permission: Permission | None


class AccessControl:
    def __init__(
        self, app: ASGIApp, *, router: Router, auth: Authenticator, rate_limits: RateLimiter, listener: str
    ) -> None:
        self.app = app
        self.router = router
        self.auth = auth
        self.rate_limits = rate_limits
        self.listener = listener
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
        try:
            identity = await self.auth.authenticate(
                authorization.decode("latin-1") if authorization is not None else None, info
            )
            if info.record is not None:
                info.record.authenticated = True  # later refusals (403, 429, 404) are not a stranger's
            if isinstance(permission, Permission):
                self.auth.authorize(identity, permission, info)
            # Generation spends the principal's configured rates; reads, /metrics scrapes and
            # console pages their own, larger budget, so they never crowd out generation.
            bucket: Bucket = "generation" if permission is Permission.IMAGES_GENERATE else "other"
            state[RATE_LIMIT_STATE] = await self.rate_limits.check(identity, info, bucket=bucket)
        except ZguardError as error:
            await error_response(error)(scope, receive, send)
            return
        state[IDENTITY_KEY] = identity
        await self.app(scope, receive, send)
