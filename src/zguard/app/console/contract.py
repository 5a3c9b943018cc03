"""The console's JSON API document (`docs/console-openapi.json`) gets the API's treatment: every
operation declares its error codes by status, with the shared error shape and the security schemes.

What every console operation can answer comes from the routes themselves (`zguard.app.contract`'s
stack codes; authentication's and a console session's for those behind a permission; the CSRF
check for a session's changes) and `OWN` adds each operation's own. The routes the API listener
shares (`/v1/audit/events`, `/v1/provenance/trace`) declare theirs where they are defined.
tests/functional/test_contract.py checks the codes against zguard.errors; tests/contract runs
schemathesis on this document against a live console.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI
from fastapi.routing import APIRoute

from zguard.app.auth import PUBLIC
from zguard.app.context import Services
from zguard.app.contract import (
    AUTHENTICATED,
    Codes,
    error_responses,
    image_request_body,
    install_document,
    merge,
    patch_document,
    set_request_body,
)
from zguard.config import Settings

API: Final = "/console/api"
GENERATE_API: Final = f"{API}/generate"
SESSION: Final[Codes] = {401: ("session_expired",)}
CHANGE: Final[Codes] = {403: ("csrf_failed",)}
PATH_PARAMETER: Final[Codes] = {400: ("invalid_type", "invalid_value")}
JSON_BODY: Final[Codes] = {
    400: ("invalid_json", "invalid_input", "invalid_type", "invalid_value", "missing_required_field", "unknown_field"),
    415: ("unsupported_media_type",),
}
_USER: Final[Codes] = {404: ("principal_not_found",)}
_ADMIN: Final[Codes] = {400: ("not_a_user", "declared_in_settings", "roles_refused"), 503: ("service_unavailable",)}

# Each operation's own codes, beyond the above (`{method} {path}` as the document writes it).
OWN: Final[dict[str, Codes]] = {
    f"POST {API}/account/password": {**JSON_BODY, 400: (*JSON_BODY[400], "not_a_user")},
    f"GET {API}/audit/events": {400: ("invalid_value", "invalid_type")},
    f"GET {API}/audit/events/{{event_id}}": {404: ("not_found",)},
    f"POST {API}/audit/verify": {},
    f"POST {API}/generate": {},  # declared at the route (zguard.app.console.generate)
    f"DELETE {API}/sessions/{{session_id}}": {404: ("not_found",)},
    f"POST {API}/policy/test": JSON_BODY,
    f"POST {API}/tokens": {**JSON_BODY},
    f"DELETE {API}/tokens/{{token_id}}": {404: ("token_not_found",)},
    f"POST {API}/users": {**JSON_BODY, 400: (*JSON_BODY[400], *_ADMIN[400], "name_reserved"),
                          409: ("principal_exists",), 503: _ADMIN[503]},
    f"GET {API}/users/{{principal_id}}": _USER,
    f"POST {API}/users/{{principal_id}}/enabled": {**JSON_BODY, **_USER, 400: (*JSON_BODY[400], *_ADMIN[400])},
    f"POST {API}/users/{{principal_id}}/password": {**JSON_BODY, **_USER, 400: (*JSON_BODY[400], *_ADMIN[400])},
    f"POST {API}/users/{{principal_id}}/roles": {**JSON_BODY, **_USER, 400: (*JSON_BODY[400], *_ADMIN[400])},
    f"GET {API}/users/{{principal_id}}/tokens": _USER,
    f"POST {API}/users/{{principal_id}}/tokens": {**JSON_BODY, **_USER, 400: (*JSON_BODY[400], *_ADMIN[400])},
    f"DELETE {API}/users/{{principal_id}}/tokens/{{token_id}}": {**_USER, 404: ("principal_not_found", "token_not_found")},
    f"POST {API}/users/{{principal_id}}/unlock": {**_USER, 400: _ADMIN[400], 503: ("rate_limiter_unavailable",)},
    # Model-use approvals (zguard.app.console.approvals); 503 without a state database.
    f"POST {API}/approvals": {**JSON_BODY, 400: (*JSON_BODY[400], "unknown_model", "quota_over_maximum",
                              "validity_over_maximum", "unknown_group"), 403: ("not_group_member",),
                              503: ("service_unavailable",)},
    f"GET {API}/approvals": {400: ("invalid_value",), 503: ("service_unavailable",)},
    f"GET {API}/approvals/mine": {503: ("service_unavailable",)},
    f"POST {API}/approvals/{{request_id}}/approve": {**JSON_BODY, 403: ("self_approval", "group_member_approval"),
                                                    404: ("approval_not_found",),
                                                    409: ("already_decided", "request_decided", "request_expired"),
                                                    503: ("service_unavailable",)},
    f"POST {API}/approvals/{{request_id}}/reject": {**JSON_BODY, 400: (*JSON_BODY[400], "comment_required"),
                                                   403: ("self_approval", "group_member_approval"),
                                                   404: ("approval_not_found",),
                                                   409: ("already_decided", "request_decided", "request_expired"),
                                                   503: ("service_unavailable",)},
    f"GET {API}/approvals/grants": {400: ("invalid_value",), 503: ("service_unavailable",)},
    f"GET {API}/approvals/report": {503: ("service_unavailable",)},  # zguard.app.console.grant_report
    f"POST {API}/approvals/grants/{{grant_id}}/revoke": {**JSON_BODY, 400: (*JSON_BODY[400], "comment_required"),
                                                        404: ("approval_not_found",), 409: ("grant_not_active",),
                                                        503: ("service_unavailable",)},
    # Re-certification campaigns and model-change approval (zguard.app.console.campaigns, .model_change_pages).
    f"GET {API}/approvals/campaigns": {503: ("service_unavailable",)},
    f"POST {API}/approvals/campaigns": {**JSON_BODY, 409: ("campaign_exists",), 503: ("service_unavailable",)},
    f"GET {API}/approvals/campaigns/{{campaign_id}}": {404: ("approval_not_found",), 503: ("service_unavailable",)},
    f"POST {API}/approvals/campaigns/{{campaign_id}}/grants/{{grant_id}}/confirm": {
        **JSON_BODY, 403: ("own_grant_recertification",), 404: ("approval_not_found",),
        409: ("already_decided", "campaign_closed", "grant_not_active"), 503: ("service_unavailable",)},
    f"POST {API}/approvals/campaigns/{{campaign_id}}/grants/{{grant_id}}/revoke": {
        **JSON_BODY, 400: (*JSON_BODY[400], "comment_required"), 403: ("own_grant_recertification",),
        404: ("approval_not_found",), 409: ("already_decided", "campaign_closed", "grant_not_active"),
        503: ("service_unavailable",)},
    f"POST {API}/approvals/campaigns/{{campaign_id}}/close": {404: ("approval_not_found",), 409: ("campaign_closed",),
                                                             503: ("service_unavailable",)},
    f"GET {API}/approvals/campaigns/{{campaign_id}}/export": {400: ("invalid_value",), 404: ("approval_not_found",),
                                                             503: ("service_unavailable",)},
    f"GET {API}/approvals/model-changes": {503: ("service_unavailable",)},
    f"POST {API}/approvals/model-changes/{{seq}}/approve": {
        403: ("model_change_refused", "model_change_self_approval"), 404: ("not_found",),
        409: ("model_change_already_approved",), 503: ("service_unavailable",)},
}  # fmt: skip


def _public(route: APIRoute) -> bool:
    return any(dependency is PUBLIC for dependency in route.dependencies)


def operation_codes(route: APIRoute, method: str) -> dict[int, tuple[str, ...]]:
    """The codes an operation of the console can answer, by status (the stack's added later)."""
    parts: list[Codes] = []
    if not _public(route):
        parts += [AUTHENTICATED, SESSION]
        if method not in ("GET", "HEAD"):
            parts.append(CHANGE)
    if "{" in route.path_format:
        parts.append(PATH_PARAMETER)
    parts.append(OWN.get(f"{method} {route.path_format}", {}))
    return merge(*parts)


def install_console_document(app: FastAPI, settings: Settings, services: Services) -> None:
    """The console's document: its operations' error responses declared, the Generate API's body
    under these settings, then the security schemes."""
    routes = {
        (route.path_format, method.lower()): route
        for route in app.routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods or ()
    }

    def declare(document: dict[str, Any]) -> None:
        for path, item in document["paths"].items():
            for method, operation in item.items():
                route = routes.get((path, method))
                responses = operation.setdefault("responses", {})
                if route is None or any(_has_error_code(r) for r in responses.values()):
                    continue  # declared where the route is defined (shared with the API listener)
                for status, entry in error_responses(operation_codes(route, method.upper())).items():
                    responses.setdefault(str(status), entry)
                # FastAPI's own 422 entry describes a shape zguard never sends (errors are 400s)
                responses.pop("422", None)

    patch_document(app, declare)
    patch_document(app, set_request_body(GENERATE_API, "post", lambda: image_request_body(settings, services)))
    patch_document(app, _bodies(sorted(settings.role_registry().roles), settings.api_auth.password_min_length))
    install_document(app, security=True)


def _bodies(roles: list[str], password_min: int) -> Callable[[dict[str, Any]], None]:
    """The JSON bodies' values under these settings: role names from the registry, passwords at
    least the policy's length (its other rules, such as common passwords, stay a 400 `invalid_input`)."""

    def patch(document: dict[str, Any]) -> None:
        schemas = document.get("components", {}).get("schemas", {})
        for schema in schemas.values():
            for name, field in schema.get("properties", {}).items():
                target = next((b for b in field.get("anyOf", [field]) if b.get("type") != "null"), field)
                if name == "roles" and target.get("type") == "array":
                    target["items"] = {"type": "string", "enum": roles}
                elif name in ("password", "new_password") and target.get("type") == "string":
                    target["minLength"] = password_min
                elif name == "address" and target.get("type") == "string":
                    target["anyOf"] = [{"format": "ipv4"}, {"format": "ipv6"}]

    return patch


def _has_error_code(response: dict[str, Any]) -> bool:
    for content in response.get("content", {}).values():
        if "error" in content.get("schema", {}).get("properties", {}):
            return True
    return False
