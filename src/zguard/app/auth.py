"""Route access declarations: every route declares the permission it needs, or that it is public.

    @app.get("/v1/models", dependencies=[requires(Permission.MODELS_READ)])
    @app.get("/healthz", dependencies=[PUBLIC])

`declared_access(route)` reads the declaration back; a test walks every route of both listeners
and fails on one that declares neither, so a new route cannot be open by omission.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi.routing import APIRoute
from starlette.requests import Request

from zguard.app.middleware.audit_requests import request_record
from zguard.app.middleware.network_acl import client_of
from zguard.security.rbac import Permission
from zguard.services.auth import Identity, RequestInfo

UNSET = object()


IDENTITY_KEY = "identity"


class Requires:
    """A route's access declaration, as a FastAPI dependency (None: a public route).

    `zguard.app.middleware.access_control.AccessControl` enforces the declarations before routing; here a protected
    route only checks that it did, failing closed if the middleware was left out.
    """

    def __init__(self, permission: Permission | None) -> None:
        self.permission = permission

    async def __call__(self, request: Request) -> Identity | None:
        if self.permission is None:
            return None
        identity: Identity | None = getattr(request.state, IDENTITY_KEY, None)
        if identity is None:
            raise RuntimeError(f"{request.url.path} needs {self.permission} but AccessControl did not run")
        return identity


def current_identity(request: Request) -> Identity:
    """Who is calling, as AccessControl authenticated them; fails closed if it did not run."""
    identity: Identity | None = getattr(request.state, IDENTITY_KEY, None)
    if identity is None:
        raise RuntimeError(f"{request.url.path} asks who is calling but AccessControl did not run")
    return identity


CurrentIdentity = Annotated[Identity, Depends(current_identity)]
"""A route parameter `identity: CurrentIdentity` is the authenticated caller."""


def request_info(request: Request) -> RequestInfo:
    return RequestInfo(
        client=client_of(request.scope),
        request_id=getattr(request.state, "request_id", None),
        listener=getattr(request.app.state, "listener", None),
        record=request_record(request.scope),
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
