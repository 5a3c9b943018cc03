"""The one place exceptions become HTTP responses, always in the OpenAI error shape.

`{"error": {"message", "type", "param", "code"}}`. Messages are the ones written for clients on
ZguardError; anything else becomes `internal_error` with the request id, and its details go to
the log only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from zguard.errors import (
    AuthenticationError,
    InternalError,
    InvalidType,
    InvalidValue,
    MethodNotAllowed,
    MissingField,
    OperatorError,
    RequestError,
    RouteNotFound,
    ServiceUnavailable,
    TooManyRequests,
    ZguardError,
)

log = logging.getLogger("zguard.http")


def _encodable(text: str) -> str:
    """`text` with unpaired surrogates (which UTF-8 cannot encode) replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def error_response(error: ZguardError) -> JSONResponse:
    # Messages and params may echo client text (a field name, a model name); keep them encodable.
    param = None if error.param is None else _encodable(error.param)
    body = {"error": {"message": _encodable(error.message), "type": error.type, "param": param, "code": error.code}}
    headers: dict[str, str] = {}
    if isinstance(error, ServiceUnavailable | TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = error.challenge
    headers.update(error.headers)
    return JSONResponse(body, status_code=error.status, headers=headers or None)


def internal_error(request_id: str) -> JSONResponse:
    return error_response(InternalError(f"internal error; quote request id {request_id} to the operator"))


async def handle_zguard_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ZguardError):  # pragma: no cover - registered for ZguardError only
        raise exc
    if isinstance(exc, OperatorError):  # an operator's message names files and keys: not for a client
        log.error("request %s failed: %s: %s", request.state.request_id, exc.code, exc.message)
        return internal_error(request.state.request_id)
    # Refusals are evidence in the audit trail; in the operational log they are debug detail.
    level = logging.DEBUG if exc.status < 500 else logging.WARNING
    log.log(
        level, "request %s refused: %s%s", request.state.request_id, exc.code, f" ({exc.detail})" if exc.detail else ""
    )
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    error: ZguardError
    if status == 404:
        error = RouteNotFound("no such endpoint")
    elif status == 405:
        allow = allowed_methods(request)
        error = MethodNotAllowed(f"method not allowed on this endpoint; it allows {allow}")
        error.headers = {**error.headers, "Allow": allow}
    elif status < 500 and isinstance(exc, StarletteHTTPException):
        error = RequestError("bad request")
        error.status = status
    else:
        return internal_error(request.state.request_id)
    return error_response(error)


def allowed_methods(request: Request) -> str:
    """RFC 9110's `Allow` for a 405: every method some route at this path takes. Starlette names
    only the first route that matched the path, and FastAPI makes one route per method."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


# pydantic error types that mean "not of the declared type" (the rest mean "a value out of bounds")
_TYPE_ERRORS = frozenset(
    {"int_parsing", "int_type", "float_parsing", "float_type", "bool_parsing", "bool_type", "string_type"}
)
_MESSAGE_MAX = 200


def validation_error(errors: list[Any]) -> ZguardError:
    """FastAPI's request validation errors as one of ours: the first problem, named by parameter.

    The message is pydantic's own description ("Input should be a valid integer"), which never
    quotes the input; it is cut short all the same.
    """
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "path", "header", "body", "cookie")]
    param = ".".join(loc)[:64] or None
    kind = str(first.get("type", ""))
    text = str(first.get("msg", "invalid value"))[:_MESSAGE_MAX]
    message = f"'{param}': {text}" if param else text
    if kind == "missing":
        return MissingField(message, param=param)
    if kind in _TYPE_ERRORS:
        return InvalidType(message, param=param)
    return InvalidValue(message, param=param)


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    error = validation_error(list(errors))
    log.debug("request %s refused: %s", request.state.request_id, error.code)
    return error_response(error)
