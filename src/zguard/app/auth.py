"""Route guards: every route declares the permission it needs, or that it is public.

    @app.get("/v1/models", dependencies=[requires(Permission.MODELS_READ)])
    @app.get("/healthz", dependencies=[PUBLIC])

`declared_access(route)` reads the declaration back; a test walks every route of both listeners
and fails on one that declares neither, so a new route cannot be open by omission.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends
from fastapi.routing import APIRoute
from starlette.requests import Request

from zguard.app.ratelimit import STATE_KEY as RATE_LIMIT_STATE
from zguard.security.rbac import Permission
from zguard.services.auth import AuthService, Identity, RequestInfo
from zguard.services.ratelimit import RateLimitService

UNSET = object()


class Requires:
    """A FastAPI dependency: authenticate, authorize `permission`, then count the request against
    the principal's rates (None: a public route, none of these)."""

    def __init__(self, permission: Permission | None) -> None:
        self.permission = permission

    async def __call__(self, request: Request) -> Identity | None:
        if self.permission is None:
            return None
        auth: AuthService = request.app.state.auth
        info = request_info(request)
        identity = await auth.authenticate(request.headers.get("authorization"), info)
        auth.authorize(identity, self.permission, info)
        request.state.identity = identity
        # Only routes with a permission are rate limited; RateLimitHeaders puts the state on the response.
        rate_limits: RateLimitService = request.app.state.rate_limits
        setattr(request.state, RATE_LIMIT_STATE, await rate_limits.check(identity, info))
        return identity


def request_info(request: Request) -> RequestInfo:
    state = request.state
    client = getattr(state, "client_address", None) or (request.client.host if request.client else "unknown")
    return RequestInfo(
        client=client,
        request_id=getattr(state, "request_id", None),
        listener=getattr(request.app.state, "listener", None),
    )


def requires(permission: Permission) -> Any:
    return Depends(Requires(permission))


PUBLIC: Any = Depends(Requires(None))


def declared_access(route: APIRoute) -> Permission | object | None:
    """The permission a route declared, None when public, UNSET when it declared nothing."""
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, Requires):
            return dependency.call.permission
    return UNSET
