"""What the console's users and account pages do, apart from their routes: `Administration`
(AdminService calls with the signed-in person as the `Actor`, refusals turned into form errors),
the request bodies, and the JSON shapes of principals and tokens. See zguard.app.console.users
for the decisions."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from zguard.app.auth import request_info
from zguard.app.console.common import N_, Page, form, may
from zguard.app.console.web import negotiate, see_other, translate
from zguard.app.context import Services
from zguard.errors import AuthenticationError, ServiceUnavailable, TooManyRequests, ZguardError
from zguard.security.rbac import Permission
from zguard.services.admin import (
    MAX_TOKEN_LIFETIME,
    Actor,
    AdminService,
    InvalidInput,
    IssuedApiToken,
    NotAUser,
    check_password,
    parse_duration,
    token_status,
)
from zguard.services.auth import AuthService, Identity
from zguard.store.errors import PrincipalNotFound, TokenNotFound
from zguard.store.principals import PrincipalRecord, TokenRecord

API = "/console/api"
NAME_MAX = 128
PASSWORD_MAX = 1024  # bcrypt reads 72 bytes; the policy refuses longer ones without hashing
ROLES_MAX = 32
ROLES_TEXT_MAX = 1024
T = TypeVar("T")

# What a person reads above the service's own message (which is the CLI's, in English).
SUMMARIES = {
    "roles_refused": N_("These roles cannot be given together or do not exist."),
    "invalid_input": N_("This value cannot be used."),
    "name_reserved": N_("This name is taken."),
    "principal_exists": N_("This name is taken."),
    "principal_disabled": N_("This account is disabled: enable it before creating tokens."),
    "declared_in_settings": N_("This user is declared in the settings file; change it there."),
    "not_a_user": N_("Service accounts have no password."),
    "principal_not_found": N_("No such user or service account."),
    "token_not_found": N_("No such token."),
    "invalid_api_key": N_("The current password is wrong."),
    "too_many_failed_logins": N_("Too many failed sign-ins. Wait a few minutes and try again."),
}
REFUSED = N_("The change was refused.")
PASSWORD_METHODS = ("session", "basic")  # identities that may create tokens
DIFFERENT_PASSWORDS = "the two new passwords differ"


# --- JSON bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewPrincipal(_Body):
    name: str = Field(min_length=1, max_length=NAME_MAX)
    kind: Literal["user", "service"] = "user"
    roles: list[str] = Field(min_length=1, max_length=ROLES_MAX)
    password: str | None = Field(default=None, max_length=PASSWORD_MAX, description="required for a user")


class RolesChange(_Body):
    roles: list[str] = Field(min_length=1, max_length=ROLES_MAX)


class EnabledChange(_Body):
    enabled: bool


class PasswordReset(_Body):
    password: str = Field(max_length=PASSWORD_MAX)


class NewToken(_Body):
    label: str | None = Field(default=None, max_length=NAME_MAX)
    expires_in: str | None = Field(default=None, max_length=16, description="90m, 12h, 30d; default: the setting")
    never_expires: bool = Field(default=False, description="service accounts only")
    roles: list[str] | None = Field(default=None, max_length=ROLES_MAX, description="a subset; default: all")


class UnlockRequest(_Body):
    address: str | None = Field(None, max_length=64, description="also clear the failures at this client address")


class PasswordChange(_Body):
    current_password: str = Field(max_length=PASSWORD_MAX)
    new_password: str = Field(max_length=PASSWORD_MAX)


# --- values ----------------------------------------------------------------------------------


def actor_of(identity: Identity, request: Request) -> Actor:
    info = request_info(request)
    return Actor(
        principal=identity.name,
        roles=tuple(sorted(identity.roles)),
        client=info.client,
        request_id=info.request_id,
        listener="console",
    )


def parse_roles(text: str) -> list[str]:
    """A form's roles: names separated by commas or spaces, bounded."""
    return [r for r in text[:ROLES_TEXT_MAX].replace(",", " ").split() if r][:ROLES_MAX]


def parse_expiry(text: str) -> timedelta | None:
    if not text.strip():
        return None
    try:
        return parse_duration(text[:16])
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def principal_json(record: PrincipalRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "kind": record.kind,
        "roles": list(record.roles),
        "enabled": record.enabled,
        "has_password": record.password_hash is not None,
        "created_at": record.created_at.isoformat(),
        "last_used_at": None if record.last_used_at is None else record.last_used_at.isoformat(),
    }


def token_json(token: TokenRecord, status: str) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return None if value is None else str(value.isoformat())

    return {
        "id": token.id,
        "owner": token.principal.name,
        "prefix": token.prefix,
        "label": token.label,
        "roles": None if token.roles is None else list(token.roles),
        "status": status,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
        "last_used_at": iso(token.last_used_at),
    }


def issued_json(issued: IssuedApiToken, now: Any) -> dict[str, Any]:
    """The one answer that holds a token's plaintext."""
    return {**token_json(issued.record, token_status(issued.record, now)), "token": issued.plaintext}


class Failure:
    """A refused form: the field it belongs to, the translated summary and the service's message."""

    def __init__(self, request: Request, error: ZguardError, field: str) -> None:
        self.field = field
        self.code = error.code
        self.status = error.status
        self.summary = translate(negotiate(request), SUMMARIES.get(error.code, REFUSED))
        # A sign-in refusal says no more than the summary (the same words for every wrong password).
        self.detail = "" if isinstance(error, AuthenticationError | TooManyRequests) else error.message


async def call(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """An `AdminService` method off the event loop (database work, bcrypt)."""
    return await asyncio.to_thread(partial(work, *args, **kwargs))


class Administration:
    """The operations the pages and the JSON API share, and the pages' renderers."""

    def __init__(self, services: Services, page: Page) -> None:
        self.services = services
        self.page = page

    def admin(self) -> AdminService:
        if self.services.admin is None:
            raise ServiceUnavailable("user administration needs the state database", retry_after=60)
        return self.services.admin

    def unavailable(self, request: Request, identity: Identity, error: ZguardError) -> Response:
        message = translate(negotiate(request), N_("User administration needs the state database."))
        return self.page(request, "error.html", identity, status=error.status, code=error.code, message=message)

    def not_found(self, request: Request, identity: Identity, error: ZguardError) -> Response:
        message = translate(negotiate(request), SUMMARIES.get(error.code, REFUSED))
        return self.page(request, "error.html", identity, status=error.status, code=error.code, message=message)

    async def principal_by_id(self, principal_id: int) -> PrincipalRecord:
        found = [p for p in await call(self.admin().list_principals) if p.id == principal_id]
        if not found:
            raise PrincipalNotFound(principal_id=principal_id)
        return found[0]

    def configured_users(self) -> list[dict[str, Any]]:
        """The settings file's users, read-only: their names, and roles where the authenticator says."""
        auth = self.services.auth
        users = []
        for name in self.admin().configured_users:
            found = auth.password_user(name) if isinstance(auth, AuthService) else None
            users.append({"name": name, "roles": sorted(found[0].roles) if found else [], "source": "settings"})
        return users

    async def tokens_of(self, name: str) -> list[tuple[TokenRecord, str]]:
        service = self.admin()
        now = service.now()
        return [(t, token_status(t, now)) for t in await call(service.list_tokens, name)]

    # --- changes ---------------------------------------------------------------------------

    async def create_principal(
        self, actor: Actor, name: str, kind: str, roles: list[str], password: str | None
    ) -> PrincipalRecord:
        """A user with its initial password (checked before anything is written), or a service account."""
        service = self.admin()
        if kind not in ("user", "service"):
            raise InvalidInput("kind must be user or service")
        if kind == "service" and password:
            raise NotAUser(name)
        if kind == "user":
            if not password:
                raise InvalidInput("give the new user an initial password")
            check_password(password, username=name, min_length=service.password_min_length)
        record = await call(service.add_principal, name, kind=kind, roles=roles, actor=actor)
        if kind == "user" and password:
            record = await call(service.set_password, name, password, actor=actor)
        return record

    async def unlock(self, actor: Actor, record: PrincipalRecord, address: str | None) -> PrincipalRecord:
        """Clear a user's failed sign-ins; an admin action with its audit event."""
        auth = self.services.auth
        if record.kind != "user":
            raise NotAUser(record.name)
        if address is not None:
            try:
                address = str(ipaddress.ip_address(address))
            except ValueError:
                raise InvalidInput(f"not an IP address: {address!r}") from None
        if not isinstance(auth, AuthService):  # pragma: no cover - the console is wired with AuthService
            raise ServiceUnavailable("sign-in counters are not reachable here", retry_after=60)
        await auth.unlock(record.name, address)
        await call(self.admin().record, "user.unlocked", actor, {"target": record.name, "address": address})
        return record

    async def set_enabled(
        self, actor: Actor, identity: Identity, record: PrincipalRecord, enabled: bool
    ) -> PrincipalRecord:
        if not enabled and record.name == identity.name:
            raise InvalidInput("you cannot disable yourself here; ask another administrator, or use `zguard user`")
        return await call(self.admin().set_enabled, record.name, enabled, actor=actor)

    async def service_token(self, actor: Actor, record: PrincipalRecord, body: NewToken) -> IssuedApiToken:
        if record.kind != "service":
            raise InvalidInput(
                f"{record.name!r} is a person: people create their own tokens (My account), "
                "the console makes tokens for service accounts only"
            )
        return await call(
            self.admin().create_token,
            record.name,
            roles=body.roles or None,
            expires_in=parse_expiry(body.expires_in or ""),
            never_expires=body.never_expires,
            label=body.label or None,
            actor=actor,
        )

    async def revoke_of(self, actor: Actor, identity: Identity, owner: str, token_id: int) -> TokenRecord:
        if token_id == identity.token_id:  # a script would cut its own branch mid-run
            raise InvalidInput("this is the token you are calling with; revoke it with another credential")
        if not any(t.id == token_id for t in await call(self.admin().list_tokens, owner)):
            raise TokenNotFound(token_id)  # another's token is as unknown as none
        record, _done = await call(self.admin().revoke_token, token_id, actor=actor)
        return record

    async def my_token(self, actor: Actor, identity: Identity, body: NewToken) -> IssuedApiToken:
        if identity.method not in PASSWORD_METHODS:  # 400, not 403: the role allows it, the credential does not
            raise InvalidInput("a token cannot create tokens; sign in to the console with your password")
        if body.never_expires:
            raise InvalidInput(f"your own tokens expire; give a lifetime (at most {MAX_TOKEN_LIFETIME.days}d)")
        wanted = body.roles or None
        if wanted is not None and not set(wanted) <= identity.roles:
            lacking = ", ".join(sorted(set(wanted) - identity.roles))
            raise InvalidInput(f"you do not hold the role(s) {lacking}; a token can only narrow your roles")
        return await call(
            self.admin().create_token,
            identity.name,
            roles=wanted,
            expires_in=parse_expiry(body.expires_in or ""),
            label=body.label or None,
            actor=actor,
        )

    async def change_my_password(self, request: Request, identity: Identity, current: str, new: str) -> None:
        auth = self.services.auth
        if not isinstance(auth, AuthService):
            raise ServiceUnavailable("password changes need the password authenticator", retry_after=60)
        service = self.admin()
        if identity.kind != "user":
            raise NotAUser(identity.name)
        await auth.check_password(identity.name, current[:PASSWORD_MAX], request_info(request), method="console")
        await call(service.set_password, identity.name, new, actor=actor_of(identity, request))

    # --- pages -----------------------------------------------------------------------------

    async def users_page(
        self, request: Request, identity: Identity, status: int = 200, failed: Failure | None = None, **values: str
    ) -> Response:
        return self.page(
            request,
            "users.html",
            identity,
            status=status,
            principals=await call(self.admin().list_principals),
            configured=self.configured_users(),
            known_roles=sorted(self.admin().registry.roles),
            failed=failed,
            values={"name": "", "kind": "user", "roles": "", **values},
        )

    async def user_page(
        self,
        request: Request,
        identity: Identity,
        record: PrincipalRecord,
        *,
        status: int = 200,
        failed: Failure | None = None,
    ) -> Response:
        show_tokens = may(self.services, identity, Permission.TOKENS_MANAGE)
        return self.page(
            request,
            "users_detail.html",
            identity,
            status=status,
            principal=record,
            tokens=await self.tokens_of(record.name) if show_tokens else [],
            show_tokens=show_tokens,
            revoke_action=f"/users/{record.id}/tokens/revoke",
            known_roles=sorted(self.admin().registry.roles),
            failed=failed,
        )

    async def user_action(
        self,
        request: Request,
        identity: Identity,
        principal_id: int,
        field: str,
        work: Callable[[PrincipalRecord, dict[str, str]], Awaitable[object]],
    ) -> Response:
        """Run a form's change on one principal; back to its page, or its page with the refusal."""
        fields = await form(request)
        try:
            record = await self.principal_by_id(principal_id)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except PrincipalNotFound as exc:
            return self.not_found(request, identity, exc)
        try:
            done = await work(record, fields)
        except ZguardError as exc:
            fresh = await self.principal_by_id(principal_id)
            failed = Failure(request, exc, field)
            return await self.user_page(request, identity, fresh, status=exc.status, failed=failed)
        if isinstance(done, IssuedApiToken):  # its plaintext is in this answer only
            return self.page(request, "users_token.html", identity, issued=done, back=f"/users/{principal_id}")
        return see_other(f"/users/{principal_id}")

    async def my_tokens_page(
        self, request: Request, identity: Identity, status: int = 200, failed: Failure | None = None
    ) -> Response:
        try:
            listed = await self.tokens_of(identity.name)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:  # a settings-file user, the local anonymous one: no stored tokens
            failed, listed = failed or Failure(request, exc, "token"), []
        return self.page(
            request,
            "account_tokens.html",
            identity,
            status=status,
            tokens=listed,
            my_roles=sorted(identity.roles),
            failed=failed,
            can_create=identity.method in PASSWORD_METHODS,
            revoke_action="/account/tokens/revoke",
        )


def form_id(value: str) -> int:
    """A form's numeric id field; 0 (no such row) for anything else."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else 0


def form_token(fields: dict[str, str], *, never_expires: bool) -> NewToken:
    return NewToken.model_construct(
        label=fields.get("label", "")[:NAME_MAX] or None,
        expires_in=fields.get("expires_in", "")[:16] or None,
        never_expires=never_expires and fields.get("never_expires", "") == "1",
        roles=parse_roles(fields.get("roles", "")) or None,
    )
