"""`/scim/v2` on the console listener: SCIM 2.0 provisioning for the bank's IdP (zguard.services.scim).

The routes are declared `PUBLIC` to AccessControl (no zguard API key, Basic or session opens
them, and the console's session CSRF check never applies: no session is involved) and each one
first asks `ScimService.authenticate` for the SCIM bearer; nothing else runs for a caller without
it. They are kept out of any OpenAPI document (`include_in_schema=False`). Every answer is SCIM
JSON (`application/scim+json`); every refusal is a SCIM error (RFC 7644 3.12:
`urn:ietf:params:scim:api:messages:2.0:Error`, `status`, `scimType`, `detail`), never a 500 for
input, and its code goes into the request's audit record. A path under `/scim/v2` that is no
route (`/Bulk`, `/Me`) is answered 404 in the same shape, after the credential check. Bodies are
bounded (`identity.scim.max_body_bytes`, within the console's cap) and must be JSON
(`application/scim+json` or `application/json`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from zguard.app.auth import PUBLIC, request_info
from zguard.app.middleware.audit_requests import request_record
from zguard.errors import (
    AuthenticationError,
    RequestTooLarge,
    ScimError,
    ScimNotFound,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
    ZguardError,
)
from zguard.services.scim import ScimClient, ScimService
from zguard.services.scim_requests import Page, parse_page
from zguard.store.scim import ScimGroupRecord, ScimUserRecord

PREFIX: Final = "/scim/v2"
MEDIA_TYPE: Final = "application/scim+json"
ACCEPTED_TYPES: Final = frozenset({"application/scim+json", "application/json"})
USER_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR_SCHEMA: Final = "urn:ietf:params:scim:api:messages:2.0:Error"
CONFIG_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA: Final = "urn:ietf:params:scim:schemas:core:2.0:Schema"
CHALLENGE: Final = 'Bearer realm="zguard-scim"'
METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE"]

Handler = Callable[[Request, ScimClient], Awaitable[Response]]


def scim_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def scim_error(error: ZguardError) -> Response:
    """Any refusal in the SCIM error shape, with the headers its class carries."""
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(error.status), "detail": error.message}
    if isinstance(error, ScimError) and error.scim_type:
        body["scimType"] = error.scim_type
    headers: dict[str, str] = {}
    if isinstance(error, ServiceUnavailable | TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, AuthenticationError) or error.status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    return scim_response(body, error.status, headers)


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _dropping_none(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}


def user_resource(record: ScimUserRecord) -> dict[str, Any]:
    location = f"{PREFIX}/Users/{record.scim_id}"
    return _dropping_none(
        {
            "schemas": [USER_SCHEMA],
            "id": record.scim_id,
            "externalId": record.external_id,
            "userName": record.user_name,
            "displayName": record.display_name,
            "active": record.active,
            "groups": [
                {"value": gid, "display": name, "$ref": f"{PREFIX}/Groups/{gid}", "type": "direct"}
                for gid, name in record.groups
            ],
            "roles": [{"value": role, "type": "zguard"} for role in record.roles] or None,
            "meta": {
                "resourceType": "User",
                "created": _time(record.created_at),
                "lastModified": _time(record.updated_at),
                "location": location,
            },
        }
    )


def group_resource(record: ScimGroupRecord, *, members: bool = True) -> dict[str, Any]:
    return _dropping_none(
        {
            "schemas": [GROUP_SCHEMA],
            "id": record.scim_id,
            "externalId": record.external_id,
            "displayName": record.display_name,
            "members": [
                {"value": uid, "display": name, "$ref": f"{PREFIX}/Users/{uid}", "type": "User"}
                for uid, name in record.members
            ]
            if members
            else None,
            "meta": {
                "resourceType": "Group",
                "created": _time(record.created_at),
                "lastModified": _time(record.updated_at),
                "location": f"{PREFIX}/Groups/{record.scim_id}",
            },
        }
    )


def list_response(total: int, page: Page, resources: Sequence[dict[str, Any]]) -> Response:
    return scim_response(
        {
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": page.start_index,
            "itemsPerPage": len(resources),
            "Resources": list(resources),
        }
    )


def _excluded(request: Request, attribute: str) -> bool:
    excluded = request.query_params.get("excludedAttributes") or ""
    return attribute.lower() in {part.strip().lower() for part in excluded.split(",")}


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object, bounded; refusals in SCIM's terms."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(f"send the body as {MEDIA_TYPE} (or application/json)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise RequestTooLarge(f"the request body exceeds {max_bytes} bytes")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise ScimError("the body is not valid JSON", scim_type="invalidSyntax") from None
    if not isinstance(parsed, dict):
        raise ScimError("the body must be a JSON object", scim_type="invalidSyntax")
    return parsed


def service_provider_config(scim: ScimService) -> dict[str, Any]:
    return {
        "schemas": [CONFIG_SCHEMA],
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": scim.settings.max_page_size},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "Authorization: Bearer <the secret whose SHA-256 is identity.scim.token_sha256>",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{PREFIX}/ServiceProviderConfig"},
    }


RESOURCE_TYPES: Final = [
    {
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "schema": USER_SCHEMA,
        "meta": {"resourceType": "ResourceType", "location": f"{PREFIX}/ResourceTypes/User"},
    },
    {
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": "Group",
        "name": "Group",
        "endpoint": "/Groups",
        "schema": GROUP_SCHEMA,
        "meta": {"resourceType": "ResourceType", "location": f"{PREFIX}/ResourceTypes/Group"},
    },
]


def _attribute(name: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "multiValued": False,
        "required": False,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none",
        **({"caseExact": False} if kind == "string" else {}),
        **extra,
    }


SCHEMAS: Final = [
    {
        "schemas": [SCHEMA_SCHEMA],
        "id": USER_SCHEMA,
        "name": "User",
        "attributes": [
            _attribute("userName", required=True, uniqueness="server"),
            _attribute("externalId"),
            _attribute("displayName"),
            _attribute("active", "boolean"),
        ],
        "meta": {"resourceType": "Schema", "location": f"{PREFIX}/Schemas/{USER_SCHEMA}"},
    },
    {
        "schemas": [SCHEMA_SCHEMA],
        "id": GROUP_SCHEMA,
        "name": "Group",
        "attributes": [
            _attribute("displayName", required=True, uniqueness="server"),
            _attribute("externalId"),
            {**_attribute("members", "complex"), "multiValued": True},
        ],
        "meta": {"resourceType": "Schema", "location": f"{PREFIX}/Schemas/{GROUP_SCHEMA}"},
    },
]


def add_scim_routes(app: FastAPI, scim: ScimService) -> None:
    """The `/scim/v2` routes, each behind the SCIM bearer."""
    max_body = scim.settings.max_body_bytes
    max_page = scim.settings.max_page_size

    def route(path: str, methods: list[str]) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                info = request_info(request)
                try:
                    client = await scim.authenticate(request.headers.get("authorization"), info)
                    return await handler(request, client)
                except ZguardError as error:
                    record = request_record(request.scope)
                    if record is not None:
                        record.set_outcome("failed" if error.status >= 500 else "denied", error.code)
                    return scim_error(error)

            endpoint.__name__ = f"scim_{handler.__name__}"
            app.add_api_route(PREFIX + path, endpoint, methods=methods, dependencies=[PUBLIC], include_in_schema=False)
            return handler

        return register

    def page_of(request: Request) -> Page:
        return parse_page(request.query_params.get("startIndex"), request.query_params.get("count"), max_page)

    @route("/Users", ["POST"])
    async def create_user(request: Request, client: ScimClient) -> Response:
        record = await scim.create_user(client, await json_body(request, max_body))
        return scim_response(user_resource(record), 201, {"Location": f"{PREFIX}/Users/{record.scim_id}"})

    @route("/Users", ["GET"])
    async def list_users(request: Request, client: ScimClient) -> Response:
        page = page_of(request)
        total, records = await scim.list_users(request.query_params.get("filter"), page)
        return list_response(total, page, [user_resource(r) for r in records])

    @route("/Users/{scim_id}", ["GET"])
    async def get_user(request: Request, client: ScimClient) -> Response:
        return scim_response(user_resource(await scim.get_user(request.path_params["scim_id"])))

    @route("/Users/{scim_id}", ["PUT"])
    async def replace_user(request: Request, client: ScimClient) -> Response:
        body = await json_body(request, max_body)
        return scim_response(user_resource(await scim.replace_user(client, request.path_params["scim_id"], body)))

    @route("/Users/{scim_id}", ["PATCH"])
    async def patch_user(request: Request, client: ScimClient) -> Response:
        body = await json_body(request, max_body)
        return scim_response(user_resource(await scim.patch_user(client, request.path_params["scim_id"], body)))

    @route("/Users/{scim_id}", ["DELETE"])
    async def delete_user(request: Request, client: ScimClient) -> Response:
        await scim.delete_user(client, request.path_params["scim_id"])
        return Response(status_code=204)

    @route("/Groups", ["POST"])
    async def create_group(request: Request, client: ScimClient) -> Response:
        record = await scim.create_group(client, await json_body(request, max_body))
        return scim_response(group_resource(record), 201, {"Location": f"{PREFIX}/Groups/{record.scim_id}"})

    @route("/Groups", ["GET"])
    async def list_groups(request: Request, client: ScimClient) -> Response:
        page = page_of(request)
        total, records = await scim.list_groups(request.query_params.get("filter"), page)
        members = not _excluded(request, "members")
        return list_response(total, page, [group_resource(r, members=members) for r in records])

    @route("/Groups/{scim_id}", ["GET"])
    async def get_group(request: Request, client: ScimClient) -> Response:
        record = await scim.get_group(request.path_params["scim_id"])
        return scim_response(group_resource(record, members=not _excluded(request, "members")))

    @route("/Groups/{scim_id}", ["PUT"])
    async def replace_group(request: Request, client: ScimClient) -> Response:
        body = await json_body(request, max_body)
        return scim_response(group_resource(await scim.replace_group(client, request.path_params["scim_id"], body)))

    @route("/Groups/{scim_id}", ["PATCH"])
    async def patch_group(request: Request, client: ScimClient) -> Response:
        body = await json_body(request, max_body)
        record = await scim.patch_group(client, request.path_params["scim_id"], body)
        return scim_response(group_resource(record))

    @route("/Groups/{scim_id}", ["DELETE"])
    async def delete_group(request: Request, client: ScimClient) -> Response:
        await scim.delete_group(client, request.path_params["scim_id"])
        return Response(status_code=204)

    @route("/ServiceProviderConfig", ["GET"])
    async def provider_config(request: Request, client: ScimClient) -> Response:
        return scim_response(service_provider_config(scim))

    @route("/ResourceTypes", ["GET"])
    async def resource_types(request: Request, client: ScimClient) -> Response:
        return list_response(len(RESOURCE_TYPES), Page(1, len(RESOURCE_TYPES)), RESOURCE_TYPES)

    @route("/Schemas", ["GET"])
    async def schemas(request: Request, client: ScimClient) -> Response:
        return list_response(len(SCHEMAS), Page(1, len(SCHEMAS)), SCHEMAS)

    # Last: any other path or method under /scim/v2, answered in SCIM's shape once authenticated.
    @route("/{rest:path}", METHODS)
    async def unknown(request: Request, client: ScimClient) -> Response:
        raise ScimNotFound(
            "no such SCIM endpoint; zguard serves /Users, /Groups, /ServiceProviderConfig, /ResourceTypes and /Schemas"
        )
