"""The console's OpenID Connect routes: start a sign-in at the IdP, take its answer back.

- `GET /login/oidc` starts one: the login transaction's sealed cookie, then 303 to the IdP's
  authorization endpoint. A link (not a form) leads here, and pages answer with a page rather
  than a redirect where they hand over to another origin: the console's CSP says
  `form-action 'self'`, which browsers also apply to the redirects after a form is sent.
- `GET /login/oidc/callback` is where the IdP sends the browser back (`identity.oidc.redirect_uri`).
  Success sets the session cookie exactly as the password form does and answers a small page
  that moves on to `/` by itself: the session cookie is `SameSite=Strict`, and a browser does not
  send it on a navigation whose redirect chain began at another site, so the step to `/` is
  made from this page. Every refusal is a page in the console's style with the error code and
  the stable reason (the audit event's), never a 500.
- `signed_out_at_idp` is the page `/logout` answers for an OIDC session: it moves on to the
  IdP's end-session endpoint (RP-initiated logout).

Both routes are public (no session yet); the service (zguard.services.oidc) audits every outcome.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from zguard.app.auth import PUBLIC, request_info
from zguard.app.console.common import N_
from zguard.app.console.web import render, set_session_cookie
from zguard.audit import RequestRecord
from zguard.config.identity_oidc import CALLBACK_PATH
from zguard.errors import IdentityProviderUnavailable, RateLimiterUnavailable, SignInFailed, SignInRefused
from zguard.services.oidc import OidcLogin

START_PATH = "/login/oidc"
TRANSACTION_COOKIE = "zguard-oidc-login"
QUERY_FIELDS = 8  # code, state, iss, session_state, error, error_description, ... : more is refused unread

MESSAGES = {
    "sod_conflict": N_(
        "Your groups at the identity provider ({groups}) give roles that one person may not hold together "
        "(separation of duties). Ask your administrator to remove you from one of them."
    ),
    "acr_not_met": N_(
        "Your role {role} needs a stronger sign-in (multi-factor) at the identity provider. Sign in again with it."
    ),
    "amr_not_met": N_(
        "Your role {role} needs a stronger sign-in (multi-factor) at the identity provider. Sign in again with it."
    ),
    "disabled": N_("Your zguard account is disabled. Ask an administrator."),
    "not_provisioned": N_("You have no zguard account yet. Ask your administrator to give you access."),
    "name_taken": N_("Your name at the identity provider belongs to another zguard account. Ask an administrator."),
    "no_username": N_("The identity provider did not say who you are. Ask your administrator to check its setup."),
    "bad_username": N_("Your name at the identity provider cannot be used in zguard. Ask an administrator."),
    "replayed": N_("This sign-in was completed already. Start again from the sign-in page."),
    "transaction_expired": N_("The sign-in took too long. Start again from the sign-in page."),
    "idp_error": N_("The identity provider did not sign you in. Start again from the sign-in page."),
}
FAILED = N_("The sign-in through the identity provider did not complete. Start again from the sign-in page.")
UNAVAILABLE = N_("The identity provider cannot be reached right now. Try again shortly, or sign in with a password.")
BUSY = N_("Sign-in is unavailable right now. Try again shortly.")


def _transaction_cookie(response: Response, value: str | None, *, tls: bool, max_age: int = 0) -> None:
    if value is None:
        response.delete_cookie(TRANSACTION_COOKIE, path=START_PATH, secure=tls, httponly=True, samesite="lax")
        return
    response.set_cookie(
        TRANSACTION_COOKIE, value, path=START_PATH, secure=tls, httponly=True, samesite="lax", max_age=max_age
    )


def _refusal(request: Request, *, status: int, code: str, reason: str, message: str, **values: str) -> Response:
    return render(request, "oidc_refused.html", status=status, code=code, reason=reason, message=message, values=values)


def login_button(oidc: OidcLogin | None) -> str | None:
    """What the login page's "Sign in with <label>" says; None: no button (OIDC off)."""
    return oidc.label if oidc is not None else None


def signed_out_at_idp(request: Request, url: str) -> Response:
    """The page `/logout` answers for an OIDC session: on to the IdP's end-session endpoint."""
    return render(request, "oidc_signed_out.html", end_session=url)


def add_oidc_routes(app: FastAPI, oidc: OidcLogin | None, *, tls: bool) -> None:
    """The routes, when `identity.oidc` is on; without it, none (the paths are 404)."""
    if oidc is None:
        return

    @app.get(START_PATH, dependencies=[PUBLIC], include_in_schema=False)
    async def start(request: Request) -> Response:
        info = request_info(request)
        try:
            url, cookie = await oidc.begin(info)
        except IdentityProviderUnavailable as exc:
            response = _refusal(request, status=503, code=exc.code, reason=exc.code, message=UNAVAILABLE)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        response = RedirectResponse(url, status_code=303)
        response.headers["cache-control"] = "no-store"
        _transaction_cookie(response, cookie, tls=tls, max_age=oidc.settings.login_timeout_s)
        return response

    @app.get(CALLBACK_PATH, dependencies=[PUBLIC], include_in_schema=False)
    async def callback(request: Request) -> Response:
        info = request_info(request)
        query = request.query_params
        if len(query) > QUERY_FIELDS or len(query.keys()) != len(set(query.keys())):
            params: dict[str, str] = {}  # refused below as having no state
        else:
            params = dict(query.items())
        try:
            signed = await oidc.complete(params, request.cookies.get(TRANSACTION_COOKIE), info)
        except SignInRefused as exc:
            if info.record is not None:
                _vouched(info.record)
            response = _refusal(
                request,
                status=exc.status,
                code=exc.code,
                reason=exc.reason,
                message=MESSAGES.get(exc.reason, FAILED),
                **exc.context,
            )
        except SignInFailed as exc:
            message = MESSAGES.get(exc.reason, FAILED)
            response = _refusal(request, status=exc.status, code=exc.code, reason=exc.reason, message=message)
        except (IdentityProviderUnavailable, RateLimiterUnavailable) as exc:
            message = UNAVAILABLE if isinstance(exc, IdentityProviderUnavailable) else BUSY
            response = _refusal(request, status=exc.status, code=exc.code, reason=exc.code, message=message)
            response.headers["retry-after"] = str(exc.retry_after)
        else:
            response = render(request, "oidc_signed_in.html", name=signed.identity.name)
            set_session_cookie(response, signed.cookie, tls=tls)
        response.headers["cache-control"] = "no-store"
        _transaction_cookie(response, None, tls=tls)  # each transaction is used once, whatever came of it
        return response


def _vouched(record: RequestRecord) -> None:
    """The IdP authenticated this person; zguard refused them. Not a stranger's refusal to sample:
    every such refusal gets its event (zguard.audit.strangers)."""
    record.authenticated = True
