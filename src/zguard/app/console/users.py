"""The console's users pages: principals, roles, passwords and API tokens; and "my account" extras.

Every change goes through `AdminService` (zguard.services.admin), the class behind `zguard user`
and `zguard token`: the same role checks (separation of duties: `RolesRefused`, with the CLI's
message), the same password policy and the same audit events, with the signed-in person as the
`Actor`. Without a state database (`services.admin` is None) the pages answer 503.

Decisions written here:
- Users and roles need `users:manage`; a principal's tokens need `tokens:manage` (the user's
  page lists them only for those who hold it). The console mints tokens for service accounts
  only: a person makes their own (`/account/tokens`), so an admin cannot quietly hold a
  credential of someone else's.
- A token's plaintext is in the answer to the POST that made it and nowhere else: not in a URL, a
  redirect, a later page, the audit trail or a log (the pages are `Cache-Control: no-store`).
- My tokens: only a password-backed identity (a console session, Basic) may create one, never a
  bearer token, so a stolen token cannot breed fresh ones; a new token's roles are a subset of
  the caller's. My password: the current one is checked by `AuthService.check_password` under
  the failed-login limits, and changing it ends my sessions (their fingerprint changes).
- Settings-file users (`api_auth.users`) are listed read-only: they are changed in that file.
- An admin cannot disable themselves here (that would lock the console out mid-session), and a
  token cannot revoke itself through the API (a script would cut its own branch): both 400.
- A refusal is `AdminService`'s error: the JSON API raises it (its stable code, the CLI's
  message); a form comes back with a translated summary and that message next to the field.
- Principals are addressed by id in URLs: names may hold any printable character, `/` included.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.administration import (
    API,
    DIFFERENT_PASSWORDS,
    NAME_MAX,
    PASSWORD_MAX,
    ROLES_TEXT_MAX,
    Administration,
    EnabledChange,
    Failure,
    NewPrincipal,
    NewToken,
    PasswordChange,
    PasswordReset,
    RolesChange,
    UnlockRequest,
    actor_of,
    call,
    form_id,
    form_token,
    issued_json,
    parse_roles,
    principal_json,
    token_json,
)
from zguard.app.console.common import N_, Page, RowId, form
from zguard.app.console.web import negotiate, see_other, translate
from zguard.app.context import Services
from zguard.errors import ServiceUnavailable, ZguardError
from zguard.security.rbac import Permission
from zguard.services.admin import (
    InvalidInput,
    token_status,
)
from zguard.services.sessions import NoSessions, SessionService
from zguard.store.errors import PrincipalNotFound
from zguard.store.principals import PrincipalRecord


def add_users_pages(app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page) -> None:
    """Register the users pages and their JSON API routes on the console app. (`sessions` is not
    needed: a session ends by itself when its user is changed, zguard.services.sessions.)"""
    ops = Administration(services, page)
    _add_user_pages(app, ops)
    _add_account_pages(app, ops)
    _add_users_api(app, ops)
    _add_account_api(app, ops)


USERS_MANAGE = [requires(Permission.USERS_MANAGE)]
TOKENS_MANAGE = [requires(Permission.TOKENS_MANAGE)]
MINE = [requires(Permission.MODELS_READ)]


def _add_user_pages(app: FastAPI, ops: Administration) -> None:
    @app.get("/users", dependencies=USERS_MANAGE, include_in_schema=False)
    async def users_list(request: Request, identity: CurrentIdentity) -> Response:
        try:
            return await ops.users_page(request, identity)
        except ServiceUnavailable as exc:
            return ops.unavailable(request, identity, exc)

    @app.post("/users", dependencies=USERS_MANAGE, include_in_schema=False)
    async def users_create(request: Request, identity: CurrentIdentity) -> Response:
        fields = await form(request)
        name, kind = fields.get("name", "")[:NAME_MAX], fields.get("kind", "user")[:16]
        roles, password = fields.get("roles", "")[:ROLES_TEXT_MAX], fields.get("password", "")[:PASSWORD_MAX]
        try:
            record = await ops.create_principal(actor_of(identity, request), name, kind, parse_roles(roles), password)
        except ServiceUnavailable as exc:
            return ops.unavailable(request, identity, exc)
        except ZguardError as exc:
            field = {"roles_refused": "roles", "not_a_user": "password"}.get(exc.code, "name")
            if exc.code == "invalid_input" and "password" in exc.message:
                field = "password"
            failed = Failure(request, exc, field)
            return await ops.users_page(
                request, identity, status=exc.status, failed=failed, name=name, kind=kind, roles=roles
            )
        return see_other(f"/users/{record.id}")

    @app.get("/users/{principal_id}", dependencies=USERS_MANAGE, include_in_schema=False)
    async def user_detail(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        try:
            record = await ops.principal_by_id(principal_id)
        except ServiceUnavailable as exc:
            return ops.unavailable(request, identity, exc)
        except PrincipalNotFound as exc:
            return ops.not_found(request, identity, exc)
        return await ops.user_page(request, identity, record)

    @app.post("/users/{principal_id}/roles", dependencies=USERS_MANAGE, include_in_schema=False)
    async def user_roles(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            roles = parse_roles(fields.get("roles", ""))
            return await call(ops.admin().set_roles, record.name, roles, actor=actor_of(identity, request))

        return await ops.user_action(request, identity, principal_id, "roles", work)

    @app.post("/users/{principal_id}/enabled", dependencies=USERS_MANAGE, include_in_schema=False)
    async def user_enabled(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            enabled = fields.get("enabled", "") == "1"
            return await ops.set_enabled(actor_of(identity, request), identity, record, enabled)

        return await ops.user_action(request, identity, principal_id, "enabled", work)

    @app.post("/users/{principal_id}/password", dependencies=USERS_MANAGE, include_in_schema=False)
    async def user_password(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            password = fields.get("password", "")[:PASSWORD_MAX]
            return await call(ops.admin().set_password, record.name, password, actor=actor_of(identity, request))

        return await ops.user_action(request, identity, principal_id, "password", work)

    @app.post("/users/{principal_id}/unlock", dependencies=USERS_MANAGE, include_in_schema=False)
    async def user_unlock(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            return await ops.unlock(actor_of(identity, request), record, fields.get("address", "")[:64].strip() or None)

        return await ops.user_action(request, identity, principal_id, "unlock", work)

    @app.post("/users/{principal_id}/tokens", dependencies=TOKENS_MANAGE, include_in_schema=False)
    async def user_token_create(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            body = form_token(fields, never_expires=True)
            return await ops.service_token(actor_of(identity, request), record, body)

        return await ops.user_action(request, identity, principal_id, "token", work)

    @app.post("/users/{principal_id}/tokens/revoke", dependencies=TOKENS_MANAGE, include_in_schema=False)
    async def user_token_revoke(request: Request, identity: CurrentIdentity, principal_id: RowId) -> Response:
        async def work(record: PrincipalRecord, fields: dict[str, str]) -> object:
            token_id = form_id(fields.get("token", ""))
            return await ops.revoke_of(actor_of(identity, request), identity, record.name, token_id)

        return await ops.user_action(request, identity, principal_id, "tokens", work)


def _add_account_pages(app: FastAPI, ops: Administration) -> None:
    @app.get("/account/password", dependencies=MINE, include_in_schema=False)
    async def my_password_form(request: Request, identity: CurrentIdentity) -> Response:
        return ops.page(request, "account_password.html", identity, failed=None)

    @app.post("/account/password", dependencies=MINE, include_in_schema=False)
    async def my_password(request: Request, identity: CurrentIdentity) -> Response:
        fields = await form(request)
        current, new = fields.get("current_password", ""), fields.get("new_password", "")[:PASSWORD_MAX]
        try:
            if new != fields.get("confirm_password", "")[:PASSWORD_MAX]:
                raise InvalidInput(DIFFERENT_PASSWORDS)
            await ops.change_my_password(request, identity, current, new)
        except ZguardError as exc:
            field = "current_password" if exc.code in ("invalid_api_key", "too_many_failed_logins") else "new_password"
            failed = Failure(request, exc, field)
            if exc.message == DIFFERENT_PASSWORDS:
                failed.summary = translate(negotiate(request), N_("The two new passwords differ."))
            return ops.page(request, "account_password.html", identity, status=exc.status, failed=failed)
        return see_other("/login")  # the new password ended this session too: sign in with it

    @app.get("/account/tokens", dependencies=MINE, include_in_schema=False)
    async def my_tokens(request: Request, identity: CurrentIdentity) -> Response:
        return await ops.my_tokens_page(request, identity)

    @app.post("/account/tokens", dependencies=MINE, include_in_schema=False)
    async def my_token_create(request: Request, identity: CurrentIdentity) -> Response:
        body = form_token(await form(request), never_expires=False)
        try:
            issued = await ops.my_token(actor_of(identity, request), identity, body)
        except ZguardError as exc:
            failed = Failure(request, exc, "token")
            return await ops.my_tokens_page(request, identity, status=exc.status, failed=failed)
        return ops.page(request, "users_token.html", identity, issued=issued, back="/account/tokens")

    @app.post("/account/tokens/revoke", dependencies=MINE, include_in_schema=False)
    async def my_token_revoke(request: Request, identity: CurrentIdentity) -> Response:
        token_id = form_id((await form(request)).get("token", ""))
        try:
            await ops.revoke_of(actor_of(identity, request), identity, identity.name, token_id)
        except ZguardError as exc:
            failed = Failure(request, exc, "tokens")
            return await ops.my_tokens_page(request, identity, status=exc.status, failed=failed)
        return see_other("/account/tokens")


def _add_users_api(app: FastAPI, ops: Administration) -> None:
    @app.get(f"{API}/users", dependencies=USERS_MANAGE)
    async def api_users() -> JSONResponse:
        """Stored principals (users and service accounts) and the settings file's users (read-only)."""
        principals = await call(ops.admin().list_principals)
        return JSONResponse({"data": [principal_json(p) for p in principals], "configured": ops.configured_users()})

    @app.post(f"{API}/users", dependencies=USERS_MANAGE, status_code=201)
    async def api_user_create(request: Request, identity: CurrentIdentity, body: NewPrincipal) -> JSONResponse:
        """A new user (with its initial password, under the password policy) or service account."""
        actor = actor_of(identity, request)
        record = await ops.create_principal(actor, body.name, body.kind, body.roles, body.password)
        return JSONResponse(principal_json(record), status_code=201)

    @app.get(f"{API}/users/{{principal_id}}", dependencies=USERS_MANAGE)
    async def api_user(principal_id: RowId) -> JSONResponse:
        return JSONResponse(principal_json(await ops.principal_by_id(principal_id)))

    @app.post(f"{API}/users/{{principal_id}}/roles", dependencies=USERS_MANAGE)
    async def api_user_roles(
        request: Request, identity: CurrentIdentity, principal_id: RowId, body: RolesChange
    ) -> JSONResponse:
        """Replace the roles (separation of duties refused: `roles_refused`)."""
        record = await ops.principal_by_id(principal_id)
        changed = await call(ops.admin().set_roles, record.name, body.roles, actor=actor_of(identity, request))
        return JSONResponse(principal_json(changed))

    @app.post(f"{API}/users/{{principal_id}}/enabled", dependencies=USERS_MANAGE)
    async def api_user_enabled(
        request: Request, identity: CurrentIdentity, principal_id: RowId, body: EnabledChange
    ) -> JSONResponse:
        """Disable (its sessions and tokens stop working at their next request) or enable."""
        record = await ops.principal_by_id(principal_id)
        changed = await ops.set_enabled(actor_of(identity, request), identity, record, body.enabled)
        return JSONResponse(principal_json(changed))

    @app.post(f"{API}/users/{{principal_id}}/password", dependencies=USERS_MANAGE)
    async def api_user_password(
        request: Request, identity: CurrentIdentity, principal_id: RowId, body: PasswordReset
    ) -> JSONResponse:
        """Reset a user's password (the policy applies); their sessions end."""
        record = await ops.principal_by_id(principal_id)
        actor = actor_of(identity, request)
        changed = await call(ops.admin().set_password, record.name, body.password, actor=actor)
        return JSONResponse(principal_json(changed))

    @app.post(f"{API}/users/{{principal_id}}/unlock", dependencies=USERS_MANAGE)
    async def api_user_unlock(
        request: Request, identity: CurrentIdentity, principal_id: RowId, body: UnlockRequest
    ) -> JSONResponse:
        """Clear a user's failed sign-ins (from every address; at `address` too), so they can sign in now."""
        record = await ops.principal_by_id(principal_id)
        await ops.unlock(actor_of(identity, request), record, body.address)
        return JSONResponse({"unlocked": record.name, "address": body.address})

    @app.get(f"{API}/users/{{principal_id}}/tokens", dependencies=TOKENS_MANAGE)
    async def api_user_tokens(principal_id: RowId) -> JSONResponse:
        record = await ops.principal_by_id(principal_id)
        return JSONResponse({"data": [token_json(t, s) for t, s in await ops.tokens_of(record.name)]})

    @app.post(f"{API}/users/{{principal_id}}/tokens", dependencies=TOKENS_MANAGE, status_code=201)
    async def api_user_token_create(
        request: Request, identity: CurrentIdentity, principal_id: RowId, body: NewToken
    ) -> JSONResponse:
        """A service account's new token; `token` (the plaintext) is in this answer only."""
        record = await ops.principal_by_id(principal_id)
        issued = await ops.service_token(actor_of(identity, request), record, body)
        return JSONResponse(issued_json(issued, ops.admin().now()), status_code=201)

    @app.delete(f"{API}/users/{{principal_id}}/tokens/{{token_id}}", dependencies=TOKENS_MANAGE)
    async def api_user_token_revoke(
        request: Request, identity: CurrentIdentity, principal_id: RowId, token_id: RowId
    ) -> JSONResponse:
        record = await ops.principal_by_id(principal_id)
        revoked = await ops.revoke_of(actor_of(identity, request), identity, record.name, token_id)
        return JSONResponse(token_json(revoked, token_status(revoked, ops.admin().now())))


def _add_account_api(app: FastAPI, ops: Administration) -> None:
    @app.post(f"{API}/account/password", dependencies=MINE)
    async def api_my_password(request: Request, identity: CurrentIdentity, body: PasswordChange) -> JSONResponse:
        """Change my password (the current one is checked under the failed-login limits); my
        console sessions end with it."""
        await ops.change_my_password(request, identity, body.current_password, body.new_password)
        return JSONResponse({"changed": True})

    @app.get(f"{API}/tokens", dependencies=MINE)
    async def api_my_tokens(identity: CurrentIdentity) -> JSONResponse:
        """My API tokens (never their plaintext)."""
        return JSONResponse({"data": [token_json(t, s) for t, s in await ops.tokens_of(identity.name)]})

    @app.post(f"{API}/tokens", dependencies=MINE, status_code=201)
    async def api_my_token_create(request: Request, identity: CurrentIdentity, body: NewToken) -> JSONResponse:
        """A token of mine with a subset of my roles; `token` (the plaintext) is in this answer only."""
        issued = await ops.my_token(actor_of(identity, request), identity, body)
        return JSONResponse(issued_json(issued, ops.admin().now()), status_code=201)

    @app.delete(f"{API}/tokens/{{token_id}}", dependencies=MINE)
    async def api_my_token_revoke(request: Request, identity: CurrentIdentity, token_id: RowId) -> JSONResponse:
        revoked = await ops.revoke_of(actor_of(identity, request), identity, identity.name, token_id)
        return JSONResponse(token_json(revoked, token_status(revoked, ops.admin().now())))
