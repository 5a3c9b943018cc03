"""What the console's page modules share: the page renderer's type, form parsing, permission
checks, and the marker for strings the catalogs must translate."""

from __future__ import annotations

from typing import Annotated, Any, Protocol
from urllib.parse import parse_qs

from fastapi import Path
from starlette.requests import Request
from starlette.responses import Response

from zguard.app.context import Services
from zguard.security.rbac import Permission, authorize
from zguard.services.auth import Identity

FORM_FIELDS = 16  # more than any console form has
# A database row id in a path: what a BIGINT holds, refused (400) beyond it instead of reaching the store.
RowId = Annotated[int, Path(ge=0, le=2**63 - 1)]


class Page(Protocol):
    """The page renderer add_console_pages makes: a template with the caller's CSRF token and permissions."""

    def __call__(
        self, request: Request, template: str, identity: Identity | None, status: int = 200, **context: Any
    ) -> Response: ...


async def form(request: Request) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as {field: value}: the first value of each field,
    at most `FORM_FIELDS` fields (BodyLimit has bounded the bytes). Anything else is no fields."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=FORM_FIELDS)
    except ValueError:
        return {}
    return {name: values[0] for name, values in parsed.items()}


def N_(message: str) -> str:
    """Marks a message for the catalogs (translated where it is shown, `web.translate`)."""
    return message


def may(services: Services, identity: Identity, permission: Permission) -> bool:
    return bool(authorize(identity.roles, permission, services.auth.registry))
