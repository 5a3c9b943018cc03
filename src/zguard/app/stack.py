"""The middleware stack and error handling every listener runs, in one place.

Outermost first, as a request meets them:
  RequestContext   request id, security headers, last-resort 500 in the error shape
  AuditRequests    one audit event per request, committed before the response starts (503 audit_unavailable)
  NetworkAcl       the listener's allowlist, before any other work (403 ip_not_allowed)
  RequestHeaders   one copy of each deciding header, `Host` among server_names (400)
  AccessControl    authentication, the route's permission, rate limits (401/403/429)
  BodyLimit        413 for bodies over the listener's cap
  RateLimitHeaders RateLimit-* on the response
then FastAPI's routing (no slash redirects: they reflect `Host` and tell a stranger which
routes exist), with ZguardError, HTTP and request validation errors mapped to the OpenAI error
shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from zguard.app.context import Services
from zguard.app.errors import handle_http_exception, handle_validation_error, handle_zguard_error
from zguard.app.middleware.access_control import AccessControl, RefusalPage, SessionAuthenticator
from zguard.app.middleware.audit_requests import AuditRequests
from zguard.app.middleware.body_limit import BodyLimit
from zguard.app.middleware.network_acl import NetworkAcl
from zguard.app.middleware.rate_limit_headers import RateLimitHeaders
from zguard.app.middleware.request_context import RequestContext
from zguard.app.middleware.request_headers import RequestHeaders
from zguard.errors import ZguardError
from zguard.security.netacl import NetworkAllowlist

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


VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def publish_error_shape(app: FastAPI) -> None:
    """The app's OpenAPI document without FastAPI's 422 `HTTPValidationError`: zguard answers
    validation errors with 400 in its own error shape (`handle_validation_error`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": "Error in the OpenAI shape",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                    }
        schemas = document.get("components", {}).get("schemas", {})
        for name in VALIDATION_SCHEMAS:
            schemas.pop(name, None)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def install_listener_stack(
    app: FastAPI,
    *,
    listener: str,
    allow: list[str],
    trusted_proxies: list[str],
    max_body_bytes: int,
    headers: Mapping[str, str],
    services: Services,
    body_limits: Mapping[str, int] | None = None,
    server_names: Sequence[str] = (),
    sessions: SessionAuthenticator | None = None,
    session_cookie: str | None = None,
    refusal_page: RefusalPage | None = None,
) -> None:
    app.router.redirect_slashes = False
    publish_error_shape(app)
    app.add_exception_handler(ZguardError, handle_zguard_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    # add_middleware puts each new layer outside the previous ones: innermost first.
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, per_path=body_limits)
    app.add_middleware(
        AccessControl,
        router=app.router,
        auth=services.auth,
        rate_limits=services.rate_limits,
        listener=listener,
        sessions=sessions,
        session_cookie=session_cookie,
        refusal_page=refusal_page,
    )
    app.add_middleware(RequestHeaders, server_names=server_names)
    app.add_middleware(
        NetworkAcl,
        listener=listener,
        allow=NetworkAllowlist.from_entries(allow),
        trusted_proxies=NetworkAllowlist.from_entries(trusted_proxies),
        audit=services.audit,
    )
    app.add_middleware(
        AuditRequests,
        listener=listener,
        audit=services.audit,
        metrics=services.metrics,
        strangers=services.strangers,
    )
    app.add_middleware(RequestContext, headers=headers)
    app.state.listener = listener
