"""The console's pages (HTML, for people) and its JSON API under /console/api (for automation).

Both call the same services with the same permissions: a page is the API's decision rendered.
Every page and API route declares its permission (`requires`), like every other route, and the
route-walk test covers them; every change is a POST with the session's CSRF token
(zguard.app.console.csrf). The pages any signed-in person has (home, account) declare
`models:read`, which every built-in role holds.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Scope

from zguard.app.auth import PUBLIC, CurrentIdentity, request_info, requires
from zguard.app.console.audit import add_audit_pages
from zguard.app.console.common import N_, Page, RowId, form, may
from zguard.app.console.generate import add_generate_pages
from zguard.app.console.oidc import login_button, signed_out_at_idp
from zguard.app.console.system import add_system_pages
from zguard.app.console.users import add_users_pages
from zguard.app.console.verify import add_verify_routes
from zguard.app.console.web import (
    LANGUAGE_COOKIE,
    LANGUAGES,
    clear_session_cookie,
    negotiate,
    render,
    see_other,
    set_session_cookie,
    translate,
)
from zguard.app.context import Services
from zguard.app.middleware.access_control import same_origin
from zguard.app.middleware.audit_requests import request_record
from zguard.errors import (
    AuthenticationError,
    CsrfFailed,
    InvalidApiKey,
    RateLimiterUnavailable,
    RouteNotFound,
    SecondFactorNotEnrolled,
    SecondFactorRequired,
    ServiceUnavailable,
    TooManyFailedLogins,
    ZguardError,
)
from zguard.security.rbac import Permission
from zguard.services.auth import GROUPS_DETAIL, Identity
from zguard.services.oidc import OidcLogin
from zguard.services.sessions import NoSessions, SessionService
from zguard.services.totp import SecondFactor
from zguard.store.sessions import SessionRecord

GROUPS_REFUSED = N_(
    "Your directory groups ({groups}) grant roles one person may not hold together (separation of duties). "
    "Ask the directory's administrators to remove one."
)

API = "/console/api"
PAGE_PREFIXES_NOT = (API, "/v1/", "/api/", "/metrics", "/readyz", "/healthz", "/static/")
USERNAME_MAX = 128
PASSWORD_MAX = 1024  # bcrypt reads 72 bytes; the rest is refused cheaply, not hashed


def wants_page(scope: Scope) -> bool:
    """A browser asking for a page (not the JSON API, not a probe)."""
    path: str = scope["path"]
    if path.startswith(PAGE_PREFIXES_NOT):
        return False
    return b"text/html" in dict(scope["headers"]).get(b"accept", b"")  # what browsers send for a page or a form


def refusal_page_for(services: Services) -> Any:
    """AccessControl's and SessionCsrf's hook: pages get a page (or the login redirect)."""

    def refusal_page(scope: Scope, error: ZguardError) -> ASGIApp | None:
        if not wants_page(scope):
            return None
        record = request_record(scope)
        if record is not None:
            record.set_outcome("failed" if error.status >= 500 else "denied", error.code)
        if isinstance(error, AuthenticationError):
            return see_other("/login")
        request = Request(scope)
        return render(request, "error.html", status=error.status, code=error.code, message=_message(request, error))

    return refusal_page


def _message(request: Request, error: ZguardError) -> str:
    messages = {
        "csrf_failed": N_(
            "This form has expired or did not come from the console. Reload the page and submit it again."
        ),
        "permission_denied": N_("Your roles do not allow this page. Ask an administrator if you need it."),
        "rate_limit_exceeded": N_("Too many requests. Wait a moment and try again."),
        "too_many_failed_logins": N_("Too many failed sign-ins. Wait a few minutes and try again."),
    }
    return translate(negotiate(request), messages.get(error.code, N_("The console could not do this.")))


def _audit_action(request: Request, kind: str, identity: Identity) -> None:
    """Name the request's audit event after the console action it did."""
    record = request_record(request.scope)
    if record is not None:
        record.type = kind
        record.principal = identity.name
        record.set_outcome("done")


def _session_json(record: SessionRecord, current: int | None) -> dict[str, Any]:
    return {
        "id": record.id,
        "client": record.client,
        "created_at": record.created_at.isoformat(),
        "last_seen_at": record.last_seen_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "current": record.id == current,
    }


def add_console_pages(app: FastAPI, services: Services, sessions: SessionService | None, *, tls: bool) -> None:
    """The pages and the JSON API. Without `sessions` (no state database: tests, `zguard docs`)
    nobody can sign in (503 on the form); tokens, Basic and the local mode reach the pages."""
    live: SessionService | NoSessions = sessions or NoSessions()

    def page(request: Request, template: str, identity: Identity | None, status: int = 200, **context: Any) -> Response:
        csrf = live.csrf_token(identity) if identity is not None and identity.session_hash else ""
        allowed = {p.value: may(services, identity, p) for p in Permission} if identity is not None else {}
        return render(request, template, status=status, identity=identity, csrf=csrf, may=allowed, **context)

    _add_sign_in(app, live, page, tls=tls, oidc=services.oidc)
    _add_account(app, services, live, page, tls=tls)
    _add_api(app, services, live, tls=tls)
    for add in (add_generate_pages, add_users_pages, add_audit_pages, add_system_pages):
        add(app, services, live, page)
    add_verify_routes(app, services, page)


def _sign_in_refusal(refused: ZguardError) -> tuple[str, int, str, str]:
    """What the login page says for a refused sign-in: the message, status, audit code and groups."""
    detail = refused.detail or ""
    if isinstance(refused, InvalidApiKey) and detail.startswith(GROUPS_DETAIL):  # after a right password only
        return GROUPS_REFUSED, 401, refused.code, detail.removeprefix(GROUPS_DETAIL)
    if isinstance(refused, InvalidApiKey):
        return N_("The username or password is wrong."), 401, refused.code, ""
    if isinstance(refused, SecondFactorRequired):
        return N_("Enter the 6-digit code of your authenticator app; each code works once."), 401, refused.code, ""
    if isinstance(refused, SecondFactorNotEnrolled):
        message = N_("Your role needs a second factor and you have none yet. Ask an operator to enrol one.")
        return message, 403, refused.code, ""
    if isinstance(refused, TooManyFailedLogins):
        return N_("Too many failed sign-ins. Wait a few minutes and try again."), 429, refused.code, ""
    return N_("Sign-in is unavailable right now. Try again shortly."), 503, refused.code, ""


def _add_sign_in(
    app: FastAPI, sessions: SessionService | NoSessions, page: Page, *, tls: bool, oidc: OidcLogin | None = None
) -> None:
    @app.get("/login", dependencies=[PUBLIC], include_in_schema=False)
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", None, error=None, username="", oidc=login_button(oidc))

    @app.post("/login", dependencies=[PUBLIC], include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await form(request)
        username = fields.get("username", "")[:USERNAME_MAX]
        password = fields.get("password", "")
        if len(password) > PASSWORD_MAX:
            password = ""  # refused below without hashing: bcrypt reads 72 bytes anyway
        headers = dict(request.scope["headers"])
        if not same_origin(headers):  # login CSRF: a foreign page signing the browser in as someone else
            raise CsrfFailed("sign in from the console's own login page", detail="cross-origin login")
        info = request_info(request)
        error: str | None = None
        try:
            if not username or not password:
                raise InvalidApiKey("invalid credentials")
            signed = await sessions.login(username, password, info, fields.get("code", "")[:16])
        except (
            InvalidApiKey,
            SecondFactorRequired,
            SecondFactorNotEnrolled,
            TooManyFailedLogins,
            RateLimiterUnavailable,
            ServiceUnavailable,
        ) as refused:
            error, status, code, groups = _sign_in_refusal(refused)
        if error is not None:
            record = request_record(request.scope)
            if record is not None:
                record.type = "console.login"
                record.set_outcome("denied", code if status in (401, 403) else None)
            return page(
                request,
                "login.html",
                None,
                status=status,
                error=error,
                groups=groups,
                username=username,
                oidc=login_button(oidc),
            )
        response = see_other("/")
        set_session_cookie(response, signed.cookie, tls=tls)
        return response

    @app.post("/logout", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def logout(request: Request, identity: CurrentIdentity) -> Response:
        response = await _sign_out(request, identity, sessions, oidc)
        clear_session_cookie(response, tls=tls)
        return response

    @app.post("/language", dependencies=[PUBLIC], include_in_schema=False)
    async def language(request: Request) -> Response:
        """The language switch: remembered in a cookie (not a secret, not a session); back to the
        page it was used on (a path of this console only: `see_other`)."""
        fields = await form(request)
        lang, back = fields.get("lang", ""), fields.get("back", "/")[:512]
        if not same_origin(dict(request.scope["headers"])):
            raise CsrfFailed("switch the language from the console's own pages", detail="cross-origin language switch")
        response = see_other(back)
        if lang in LANGUAGES:
            response.set_cookie(
                LANGUAGE_COOKIE, lang, path="/", secure=tls, httponly=True, samesite="strict", max_age=365 * 86400
            )
        return response


async def _sign_out(
    request: Request, identity: Identity, sessions: SessionService | NoSessions, oidc: OidcLogin | None
) -> Response:
    """End the session; for an OIDC one, a page that goes on to the IdP's end-session endpoint
    (RP-initiated logout, zguard.app.console.oidc), else back to the login page."""
    ending = await oidc.logout_url(identity) if oidc is not None else None
    await sessions.logout(identity, request_info(request))
    return see_other("/login") if ending is None else signed_out_at_idp(request, ending)


def _add_account(
    app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page, *, tls: bool
) -> None:
    @app.get("/", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def home(request: Request, identity: CurrentIdentity) -> Response:
        service = _status(services) if may(services, identity, Permission.SYSTEM_READ) else None
        return page(request, "home.html", identity, service=service)

    async def _account(request: Request, identity: Identity, status: int = 200, **extra: Any) -> Response:
        mine = await sessions.sessions_of(identity) if identity.method == "session" else []
        factor = sessions.factor if isinstance(sessions, SessionService) else None
        enrolled = factor is not None and await factor.enrolled(identity.name)
        secret = extra.pop("secret", None) or SecondFactor.new_secret()
        totp = {
            "available": factor is not None,
            "enrolled": enrolled,
            "required": factor is not None and factor.required_for(identity.roles),
            "secret": secret,
            "uri": SecondFactor.provisioning_uri(identity.name, secret),
            "error": extra.pop("totp_error", None),
        }
        return page(request, "account.html", identity, status, sessions=mine, current=identity.session_id, totp=totp)

    @app.get("/account", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def account(request: Request, identity: CurrentIdentity) -> Response:
        return await _account(request, identity)

    @app.post("/account/totp", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def enrol_totp(request: Request, identity: CurrentIdentity) -> Response:
        """Set up (or replace) my authenticator: the secret the page showed, proven by a code from it."""
        fields = await form(request)
        secret, code = fields.get("secret", "")[:64], fields.get("code", "")[:16].strip()
        if not isinstance(sessions, SessionService) or not await sessions.factor.enrol(identity.name, secret, code):
            return await _account(
                request,
                identity,
                status=400,
                totp_error=N_("That code does not match this secret. Try the next code."),
                secret=secret,
            )
        _audit_action(request, "console.totp_enrolled", identity)
        return see_other("/account")

    @app.post("/account/totp/remove", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def remove_totp(request: Request, identity: CurrentIdentity) -> Response:
        """Remove my second factor: a current code proves it is me; refused where my role needs one."""
        code = (await form(request)).get("code", "")[:16].strip()
        if not isinstance(sessions, SessionService):
            return see_other("/account")
        if sessions.factor.required_for(identity.roles):
            return await _account(
                request, identity, status=409, totp_error=N_("Your role needs a second factor; it cannot be removed.")
            )
        if not await sessions.factor.verify(identity.name, code):
            return await _account(
                request, identity, status=400, totp_error=N_("That code is wrong or was used already.")
            )
        await sessions.factor.remove(identity.name)
        _audit_action(request, "console.totp_removed", identity)
        return see_other("/account")

    @app.post("/account/sessions/revoke", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def revoke_session(request: Request, identity: CurrentIdentity) -> Response:
        value = (await form(request)).get("session", "")
        session = int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else 0
        if session:
            await sessions.revoke(identity, session, request_info(request))
        return see_other("/login" if session == identity.session_id else "/account")

    @app.post("/account/sessions/revoke-all", dependencies=[requires(Permission.MODELS_READ)], include_in_schema=False)
    async def revoke_all(request: Request, identity: CurrentIdentity) -> Response:
        await sessions.revoke_all(identity, request_info(request))
        response = see_other("/login")
        clear_session_cookie(response, tls=tls)
        return response


def _add_api(app: FastAPI, services: Services, sessions: SessionService | NoSessions, *, tls: bool) -> None:
    @app.get(f"{API}/session", dependencies=[requires(Permission.MODELS_READ)])
    async def whoami(identity: CurrentIdentity) -> JSONResponse:
        """Who is signed in, with which roles and permissions (any credential: session, token, Basic)."""
        granted = sorted(p.value for p in Permission if may(services, identity, p))
        body: dict[str, Any] = {
            "name": identity.name,
            "kind": identity.kind,
            "roles": sorted(identity.roles),
            "permissions": granted,
            "auth_method": identity.method,
            "session": identity.session_id,
        }
        if identity.session_hash is not None:
            body["csrf_token"] = sessions.csrf_token(identity)
        return JSONResponse(body)

    @app.get(f"{API}/sessions", dependencies=[requires(Permission.MODELS_READ)])
    async def list_sessions(identity: CurrentIdentity) -> JSONResponse:
        """The caller's open console sessions, newest first."""
        mine = await sessions.sessions_of(identity)
        return JSONResponse({"data": [_session_json(r, identity.session_id) for r in mine]})

    # `:int`: /sessions/revoke-all is another route, and other methods on it get 405, not a 400 here
    @app.delete(f"{API}/sessions/{{session_id:int}}", dependencies=[requires(Permission.MODELS_READ)])
    async def delete_session(request: Request, identity: CurrentIdentity, session_id: RowId) -> JSONResponse:
        """End one of the caller's own sessions (404 when it is not theirs or already ended)."""
        if not await sessions.revoke(identity, session_id, request_info(request)):
            raise RouteNotFound("no such open session of yours")
        return JSONResponse({"revoked": session_id})

    @app.post(f"{API}/sessions/revoke-all", dependencies=[requires(Permission.MODELS_READ)])
    async def delete_all_sessions(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """Sign out everywhere: every console session of the caller ends, this one included."""
        count = await sessions.revoke_all(identity, request_info(request))
        return JSONResponse({"revoked": count})

    @app.post(f"{API}/logout", dependencies=[requires(Permission.MODELS_READ)])
    async def api_logout(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """End the calling session."""
        await sessions.logout(identity, request_info(request))
        response = JSONResponse({"signed_out": identity.session_id is not None})
        clear_session_cookie(response, tls=tls)
        return response


def _status(services: Services) -> dict[str, object]:
    info = services.engine.info
    return {
        "model": info.id,
        "demo": info.demo,
        "device": info.device,
        "dtype": info.dtype,
        "state": services.readiness.state.value,
        "ready": services.readiness.ready,
        "generating": services.admission.running,
        "waiting": services.admission.waiting,
    }
