"""The published contract of the API: what each operation accepts and every error it can answer.

Business systems generate their clients from `docs/openapi.json` and test against it, so the
document says exactly what the server enforces (issue 23):
- Request bounds come from the same settings the server checks them with (`generation.*`, the
  served model's id and largest size): `make docs` renders the defaults, a live server's
  `/openapi.json` its own. Shapes a JSON Schema can state exactly are stated exactly (sizes as the
  list of allowed sides, times as a pattern the parser applies first); what only the server can
  know (the prompt policy) is a declared 400 `prompt_rejected`.
- Every operation lists its error responses by status, each with the shared error shape and the
  enumeration of its stable `code`s: what the listener stack answers before any route runs
  (`STACK`), what authentication and the rate limits answer (`AUTHENTICATED`), and the route's own.
  tests/functional/test_contract.py reaches each declared code, and schemathesis checks that no
  response carries one the document does not declare.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from fastapi import FastAPI

from zguard.app.context import Services
from zguard.app.schemas import ImageGenerationRequest
from zguard.config import Settings
from zguard.config.settings import GenerationSettings
from zguard.config.sizes import SIZE_STEP
from zguard.services.images import MAX_SEED

Codes = Mapping[int, Iterable[str]]

# Answered whatever the route, by the transport (zguard.serve.transport: connection caps, header
# limits and deadlines) and the listener stack (zguard.app.stack: the network allowlist, header
# and Host checks, body limits, the audit record every request needs, the last-resort 500).
STACK: Final[Codes] = {
    400: ("duplicate_header", "invalid_host", "malformed_request"),
    403: ("ip_not_allowed",),
    408: ("request_timeout",),
    413: ("request_too_large",),
    431: ("request_header_fields_too_large",),
    500: ("internal_error",),
    503: ("audit_unavailable", "too_many_connections"),  # nothing is answered that is not recorded
}
# Answered to a route that needs a permission: no or bad credentials, the role lacks it, the
# failed-login and request-rate limits, and the storage those limits (and the IdP's keys) need.
AUTHENTICATED: Final[Codes] = {
    401: ("missing_credentials", "invalid_api_key"),
    403: ("permission_denied",),
    429: ("too_many_failed_logins", "rate_limit_exceeded"),
    503: ("rate_limiter_unavailable", "identity_provider_unavailable"),
}
# `POST /v1/images/generations` and the console's Generate API, beyond the above.
GENERATION_ERRORS: Final[Codes] = {
    400: (
        "invalid_json",
        "missing_required_field",
        "unknown_field",
        "invalid_type",
        "invalid_value",
        "invalid_prompt",
        "invalid_size",
        "unsupported_response_format",
        "model_not_found",
        "prompt_rejected",
    ),
    # With approvals.required (zguard.services.approvals): the grant, its scope and its quota.
    403: ("approval_required", "grant_exhausted", "grant_scope_exceeded"),
    415: ("unsupported_media_type",),
    429: ("too_many_concurrent_requests", "grant_quota_exceeded"),
    503: ("server_busy", "model_not_ready"),
    504: ("generation_timeout",),
}

_DESCRIPTIONS: Final = {
    400: "The request is malformed or a value is out of bounds",
    401: "No credentials, or credentials that are not valid",
    403: "Refused: the address, or a permission the caller's roles do not grant",
    404: "Not found",
    408: "The request did not arrive in time",
    413: "The body is larger than this operation reads",
    415: "The body's media type is not one this operation reads",
    429: "A limit was reached; retry after `Retry-After` seconds",
    431: "The request's header fields are too many or too large",
    500: "An internal error; quote the `X-Request-ID` to the operator",
    503: "Unavailable for now; retry after `Retry-After` seconds",
    504: "The work took longer than the server allows",
}
_RETRY_AFTER: Final = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}


def merge(*parts: Codes) -> dict[int, tuple[str, ...]]:
    """The codes of `parts` by status, each status's codes sorted and unique."""
    merged: dict[int, set[str]] = {}
    for part in parts:
        for status, codes in part.items():
            merged.setdefault(status, set()).update(codes)
    return {status: tuple(sorted(codes)) for status, codes in sorted(merged.items())}


def error_schema(codes: Iterable[str]) -> dict[str, Any]:
    """The error shape (OpenAI's) whose `code` is one of `codes`."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "description": "For people; may change between versions"},
                    "type": {"type": "string", "description": "OpenAI's error type, e.g. `invalid_request_error`"},
                    "param": {"type": ["string", "null"], "description": "The request field at fault, if any"},
                    "code": {"type": "string", "enum": sorted(codes), "description": "Stable: code against this"},
                },
            }
        },
    }


def error_responses(*parts: Codes) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` for the codes of `parts` (with `STACK`'s), one entry per status."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status, codes in merge(STACK, *parts).items():
        listed = ", ".join(f"`{code}`" for code in codes)
        entry: dict[str, Any] = {
            "description": f"{_DESCRIPTIONS.get(status, 'Error')}. Codes: {listed}",
            "content": {"application/json": {"schema": error_schema(codes)}},
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        responses[status] = entry
    return responses


def declared_codes(operation: Mapping[str, Any]) -> dict[int, set[str]]:
    """The error codes an operation object of an OpenAPI document declares, by status."""
    found: dict[int, set[str]] = {}
    for status, response in operation.get("responses", {}).items():
        for content in response.get("content", {}).values():
            schema = content.get("schema", {})
            for branch in [schema, *schema.get("anyOf", ())]:
                code = branch.get("properties", {}).get("error", {}).get("properties", {}).get("code")
                if code is not None:
                    found.setdefault(int(status), set()).update(code.get("enum", ()))
    return found


Patch = Callable[[dict[str, Any]], None]


def patch_document(app: FastAPI, patch: Patch) -> None:
    """Have `install_document`'s document changed by `patch`: for what FastAPI's own document
    models cannot carry, such as integer bounds beyond 2**53 (they become floats there)."""
    patches: list[Patch] | None = getattr(app.state, "contract_patches", None)
    if patches is None:
        patches = app.state.contract_patches = []
    patches.append(patch)


def install_document(app: FastAPI, *, security: bool) -> None:
    """Make `app.openapi()` the published document: FastAPI's, patched (`patch_document`), with
    the security schemes (`add_security`) when the listener authenticates callers."""
    describe = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = describe()
            for patch in getattr(app.state, "contract_patches", ()):
                patch(document)
            app.openapi_schema = add_security(document) if security else document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


def set_parameter(path: str, method: str, name: str, **schema: Any) -> Patch:
    """A patch setting keys of parameter `name`'s schema (its non-null branch when nullable)."""

    def patch(document: dict[str, Any]) -> None:
        for parameter in document["paths"][path][method].get("parameters", []):
            if parameter["name"] == name:
                target = parameter["schema"]
                for branch in target.get("anyOf", []):
                    if branch.get("type") != "null":
                        target = branch
                target.update(schema)

    return patch


def set_request_body(path: str, method: str, body: Callable[[], dict[str, Any]]) -> Patch:
    """A patch setting an operation's request body, made by `body` when the document is built
    (on the first `/openapi.json` or `make docs`, not when the app is)."""

    def patch(document: dict[str, Any]) -> None:
        document["paths"][path][method]["requestBody"] = body()

    return patch


def add_security(document: dict[str, Any]) -> dict[str, Any]:
    """Declare how callers authenticate (a zguard API key or the IdP's JWT as a bearer token, or
    HTTP Basic) on every operation that can answer 401; `document` is changed and returned."""
    schemes = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "A zguard API key (`zg_…`) or the IdP's JWT"},
        "basic": {"type": "http", "scheme": "basic", "description": "A user's name and password"},
    }
    document.setdefault("components", {}).setdefault("securitySchemes", {}).update(schemes)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if isinstance(operation, dict) and "401" in operation.get("responses", {}):
                operation["security"] = [{"bearer": []}, {"basic": []}]
    return document


# --- request bounds ---------------------------------------------------------------------------

# Characters a prompt may not contain (zguard.services.images refuses them): C0 and C1 controls
# but tab, line feed and carriage return.
_CONTROLS: Final = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
TEXT_PATTERN: Final = f"^[^{_CONTROLS}]*$"
PROMPT_PATTERN: Final = f"^[^{_CONTROLS}]*[^{_CONTROLS}\\s][^{_CONTROLS}]*$"  # and not only spaces
SIZE_ENUM_MAX: Final = 256  # allowed sizes listed one by one up to this many; beyond, sides as a pattern


def allowed_sides(limits: GenerationSettings, model_max: int | None) -> list[int]:
    top = min(limits.max_side, model_max) if model_max else limits.max_side
    return list(range(limits.min_side, top + 1, SIZE_STEP))


def size_schema(limits: GenerationSettings, max_width: int | None, max_height: int | None) -> dict[str, Any]:
    """`size`: `auto` or `WxH` with both sides multiples of 16 within the limits and the model's
    own, at most `max_pixels`. Exact: the sizes listed when few, else one alternation per side
    (exact too while `max_pixels` allows every pair, as the defaults do)."""
    widths, heights = allowed_sides(limits, max_width), allowed_sides(limits, max_height)
    sizes = [f"{w}x{h}" for w in widths for h in heights if w * h <= limits.max_pixels]
    described = (
        f"`auto` (the server's default size) or `WxH`: each side a multiple of {SIZE_STEP} from "
        f"{limits.min_side} to {max(widths, default=limits.min_side)}, width × height at most {limits.max_pixels}."
    )
    if len(sizes) <= SIZE_ENUM_MAX:
        return {"type": "string", "enum": ["auto", *sizes], "description": described}

    def sides(values: list[int]) -> str:
        return "|".join(str(v) for v in values)

    pattern = f"^(?:auto|(?:{sides(widths)})x(?:{sides(heights)}))$"
    return {"type": "string", "pattern": pattern, "description": described}


def image_request_schema(
    limits: GenerationSettings, model_id: str, max_width: int | None = None, max_height: int | None = None
) -> dict[str, Any]:
    """The JSON Schema of `POST /v1/images/generations` under these limits and this served model."""
    schema = ImageGenerationRequest.model_json_schema()
    props: dict[str, Any] = schema["properties"]

    def nullable(field: str, **bounds: Any) -> None:
        described = props[field].get("description")
        props[field] = {"anyOf": [{**bounds}, {"type": "null"}], "default": None}
        if described:
            props[field]["description"] = described

    text = limits.max_prompt_chars
    props["prompt"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": text,
        "pattern": PROMPT_PATTERN,
        "description": f"{props['prompt'].get('description', '')} At most {text} characters, not only spaces, "
        "no control characters but tab and line breaks. The prompt policy may still refuse it (400 `prompt_rejected`).",
    }
    nullable("negative_prompt", type="string", maxLength=text, pattern=TEXT_PATTERN)
    nullable("model", type="string", enum=[model_id])
    nullable("size", **size_schema(limits, max_width, max_height))
    nullable("response_format", type="string", enum=["b64_json"])
    nullable("output_compression", type="integer", minimum=0, maximum=100)
    nullable("user", type="string", maxLength=256, pattern=TEXT_PATTERN)
    nullable("seed", type="integer", minimum=0, maximum=MAX_SEED)
    nullable("num_inference_steps", type="integer", minimum=1, maximum=limits.max_steps)
    nullable("background", type="string", **{"not": {"const": "transparent"}})
    props["n"] = {**props["n"], "type": "integer", "minimum": 1, "maximum": limits.max_n}
    schema["additionalProperties"] = False
    return schema


def image_request_body(settings: Settings, services: Services) -> dict[str, Any]:
    """The request body of a generation under `settings` for the model `services` serve."""
    info = services.engine.info
    schema = image_request_schema(settings.generation, info.id, info.max_width, info.max_height)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# --- times in queries -------------------------------------------------------------------------


def up_to(limit: int) -> str:
    """A regular expression for the decimal numbers 0..`limit` (leading zeros allowed)."""
    digits = str(limit)
    parts = [f"[0-9]{{1,{len(digits) - 1}}}"] if len(digits) > 1 else []
    for i, digit in enumerate(digits):
        if digit != "0":
            rest = len(digits) - i - 1
            parts.append(digits[:i] + f"[0-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(digits)
    return "|".join(parts)


# UNIX milliseconds up to the end of 9999, or an ISO 8601 date or date-time with a real day of the
# month, seconds and fractions optional, the zone `Z` or ±HH:MM (none: UTC); any zone for the
# years 1971 to 9998, only UTC for 1970 and 9999 (an offset could move them out of range).
# The parser applies this first, so the document and the server agree on every string.
TIME_MS_MAX: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment ISO 8601 can write
_YEAR = r"(?:197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
_LEAP = r"(?:19(?:7[26]|8[048]|9[26])|[2-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[3579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_CLOCK = r"T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_ZONE = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_ANY_ZONE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29)(?:{_CLOCK}{_ZONE}?)?"
_UTC_ONLY = f"(?:1970|9999)-{_MONTH_DAY}(?:{_CLOCK}Z?)?"
TIME_PATTERN: Final = f"^(?:{up_to(TIME_MS_MAX)}|{_ANY_ZONE}|{_UTC_ONLY})$"
TIME_RE: Final = re.compile(TIME_PATTERN)
