"""Issue 19, item 1: console sign-in through the bank's IdP with OpenID Connect.

The IdP is a real OpenID provider on loopback (`oidc-provider-mock`, tests.common.oidc_provider),
started once for the module; the console is the real console app (ASGI, in process) wired by
`build_runtime` from settings with `identity.oidc` on, over a real state database (SQLite). The
test plays the browser: it follows the redirect to the provider, signs in there with its form,
and brings the provider's redirect back to the console's callback. Every refusal is asserted
on the page (status, code, reason) AND in the audit trail (`console.login` denied, reason).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.common.factories import LOOPBACK_PEER, free_port, make_settings
from tests.common.oidc_provider import MockProvider
from tests.functional.test_auth import KEY, Deploy, Deployment, backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import PASSWORD
from zguard.app.console import create_console_app
from zguard.audit import AuditEvent
from zguard.services.oidc import Transaction, TransactionSeal

pytestmark = pytest.mark.anyio

PAGE = {"accept": "text/html,application/xhtml+xml"}
CONSOLE = "http://127.0.0.1:7860"  # the console as the browser reaches it (loopback: plain HTTP allowed)
CALLBACK = f"{CONSOLE}/login/oidc/callback"
CLIENT_ID = "zguard-console"
SAME_ORIGIN = {**PAGE, "origin": CONSOLE, "content-type": "application/x-www-form-urlencoded"}
ROLE_MAP = {"zg-designers": "generator", "zg-auditors": "auditor", "zg-admins": "admin", "zg-viewers": "viewer"}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    with MockProvider(tmp_path_factory.mktemp("oidc") / "provider.log") as idp:
        yield idp


def oidc_settings(issuer: str, **overrides: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": "console-secret-0123456789",
        "redirect_uri": CALLBACK,
        "post_logout_redirect_uri": f"{CONSOLE}/login",
        "role_map": ROLE_MAP,
        "required_acr": {"admin": ["mfa"]},
        "label": "Bank SSO",
        **overrides,
    }


@dataclasses.dataclass
class Console:
    d: Deployment
    idp: MockProvider

    def client(self) -> httpx.AsyncClient:
        app = create_console_app(self.d.settings, self.d.runtime.services)
        transport = httpx.ASGITransport(app=app, client=LOOPBACK_PEER)
        return httpx.AsyncClient(transport=transport, base_url=CONSOLE)

    def logins(self) -> list[AuditEvent]:
        return [e for e in self.d.audit.events if e.type == "console.login"]

    def last_login(self) -> AuditEvent:
        return self.logins()[-1]


Build = Callable[..., "Console"]


@pytest.fixture
def build(deploy: Deploy, tmp_path: Path, provider: MockProvider) -> Build:
    def make(**overrides: Any) -> Console:
        settings = make_settings(
            tmp_path / "state",
            api_auth={"enabled": True},
            generation={"min_side": 16},
            console={"totp_required_roles": []},
            identity={"oidc": oidc_settings(overrides.pop("issuer", provider.issuer), **overrides)},
        )
        return Console(deploy(settings), provider)

    return make


@pytest.fixture
def console(build: Build) -> Console:
    return build()


async def begin(client: httpx.AsyncClient) -> str:
    """GET /login/oidc: the authorization URL it redirects to (the transaction cookie kept by the client)."""
    resp = await client.get("/login/oidc", headers=PAGE)
    assert resp.status_code == 303, resp.text
    return resp.headers["location"]


async def callback(client: httpx.AsyncClient, location: str) -> httpx.Response:
    assert location.startswith(CALLBACK + "?"), location
    return await client.get(location.removeprefix(CONSOLE), headers=PAGE)


async def sign_in(console: Console, client: httpx.AsyncClient, sub: str) -> httpx.Response:
    return await callback(client, console.idp.authorize(await begin(client), sub))


def assert_refused(resp: httpx.Response, status: int, code: str, reason: str, console: Console) -> AuditEvent:
    assert resp.status_code == status, resp.text
    assert f"<code>{code}</code>" in resp.text
    assert f'<code id="oidc-reason">{reason}</code>' in resp.text
    assert 'role="alert"' in resp.text
    assert not any("zguard-session" in h for h in resp.headers.get_list("set-cookie"))
    event = console.last_login()
    assert (event.outcome, event.code, event.detail.get("reason"), event.detail.get("via")) == (
        "denied" if status < 500 else "failed",
        code,
        reason,
        "oidc",
    )
    return event


# --- the whole flow ---------------------------------------------------------------------------


async def test_sign_in_through_the_idp_creates_the_principal_and_a_session(console: Console) -> None:
    console.idp.user("u-1001", preferred_username="mei", groups=["zg-designers", "unrelated"], amr=["pwd"])
    async with console.client() as client:
        form = await client.get("/login", headers=PAGE)
        assert 'href="/login/oidc"' in form.text
        assert "Sign in with Bank SSO" in form.text

        start = await client.get("/login/oidc", headers=PAGE)
        assert start.status_code == 303
        url = start.headers["location"]
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(console.idp.metadata()["authorization_endpoint"] + "?")
        assert query["response_type"] == ["code"]
        assert query["client_id"] == [CLIENT_ID]
        assert query["redirect_uri"] == [CALLBACK]
        assert query["scope"] == ["openid profile email"]
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["code_challenge"][0]) == 43
        assert len(query["state"][0]) >= 43
        assert len(query["nonce"][0]) >= 43
        cookie = SimpleCookie(start.headers["set-cookie"])["zguard-oidc-login"]
        assert cookie["httponly"]
        assert cookie["samesite"] == "lax"
        assert cookie["path"] == "/login/oidc"
        assert query["state"][0] not in cookie.value
        assert query["nonce"][0] not in cookie.value

        done = await callback(client, console.idp.authorize(url, "u-1001"))
        assert done.status_code == 200, done.text
        assert '<meta http-equiv="refresh" content="0;url=/">' in done.text
        set_cookies = {SimpleCookie(h).popitem()[1].key: SimpleCookie(h) for h in done.headers.get_list("set-cookie")}
        session = set_cookies["zguard-session"]["zguard-session"]
        assert session["httponly"]
        assert session["samesite"] == "strict"
        assert set_cookies["zguard-oidc-login"]["zguard-oidc-login"]["max-age"] == "0"  # the transaction is over

        who = await client.get("/console/api/session")
        assert who.status_code == 200, who.text
        assert (who.json()["name"], who.json()["roles"], who.json()["auth_method"]) == ("mei", ["generator"], "session")

    record = console.d.store.get_principal("mei")
    assert record is not None
    assert (record.source, record.issuer, record.subject, record.roles) == (
        "oidc",
        console.idp.issuer,
        "u-1001",
        ("generator",),
    )
    event = console.last_login()
    assert (event.outcome, event.principal, event.detail["via"], event.detail["subject"]) == (
        "allowed",
        "mei",
        "oidc",
        "u-1001",
    )
    assert event.detail["amr"] == "pwd"


async def test_roles_follow_the_groups_at_every_login_and_logout_ends_the_idp_session(console: Console) -> None:
    console.idp.user("u-1002", preferred_username="lin", groups=["zg-viewers"])
    async with console.client() as client:
        assert (await sign_in(console, client, "u-1002")).status_code == 200
        assert (await client.get("/console/api/session")).json()["roles"] == ["viewer"]
    console.idp.user("u-1002", preferred_username="lin", groups=["zg-designers"])  # moved at the IdP
    async with console.client() as client:
        assert (await sign_in(console, client, "u-1002")).status_code == 200
        assert (await client.get("/console/api/session")).json()["roles"] == ["generator"]
        home = await client.get("/", headers=PAGE)
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', home.text)
        assert csrf is not None
        out = await client.post("/logout", data={"csrf_token": csrf.group(1)}, headers=SAME_ORIGIN)
        assert out.status_code == 200, out.text
        target = re.search(r'href="([^"]+)" id="end-session"', out.text)
        assert target is not None, out.text
        end = target.group(1).replace("&amp;", "&")
        assert end.startswith(console.idp.metadata()["end_session_endpoint"] + "?")
        query = parse_qs(urlsplit(end).query)
        assert query["client_id"] == [CLIENT_ID]
        assert query["post_logout_redirect_uri"] == [f"{CONSOLE}/login"]
        assert query["id_token_hint"][0].count(".") == 2  # the session's id_token
        assert (await client.get("/console/api/session")).status_code == 401  # the session is over here
        assert console.idp.http.get(end.removeprefix(console.idp.issuer)).status_code == 200  # the IdP's page
    assert console.d.store.get_principal("lin").roles == ("generator",)  # type: ignore[union-attr]
    assert "id_token" not in repr([e.detail for e in console.d.audit.events])


# --- refusals: the protocol -------------------------------------------------------------------


async def test_a_mismatched_state_is_refused(console: Console) -> None:
    console.idp.user("u-2001", preferred_username="kai", groups=["zg-viewers"])
    async with console.client() as client:
        back = console.idp.authorize(await begin(client), "u-2001")
        forged = re.sub(r"state=[^&]+", "state=" + "A" * 43, back)
        assert_refused(await callback(client, forged), 401, "sign_in_failed", "bad_state", console)
    assert console.d.store.get_principal("kai") is None


async def test_a_callback_without_the_browsers_transaction_is_refused(console: Console) -> None:
    console.idp.user("u-2002", preferred_username="ren", groups=["zg-viewers"])
    async with console.client() as victim, console.client() as attacker:
        back = console.idp.authorize(await begin(attacker), "u-2002")  # login CSRF: the attacker's code
        assert_refused(await callback(victim, back), 401, "sign_in_failed", "no_transaction", console)
        victim.cookies.set("zguard-oidc-login", "A" * 80, domain="127.0.0.1", path="/login/oidc")
        assert_refused(await callback(victim, back), 401, "sign_in_failed", "bad_transaction", console)


async def test_a_transaction_older_than_the_login_timeout_is_refused(console: Console) -> None:
    seal = TransactionSeal(console.d.auth.derived_key(b"oidc login transactions"))  # as serve.wiring derives it
    old = Transaction.new(time.time() - console.d.settings.identity.oidc.login_timeout_s - 1)
    async with console.client() as client:
        client.cookies.set("zguard-oidc-login", seal.seal(old), domain="127.0.0.1", path="/login/oidc")
        late = f"{CALLBACK}?{urlencode({'code': 'x', 'state': old.state})}"
        assert_refused(await callback(client, late), 401, "sign_in_failed", "transaction_expired", console)


async def test_a_replayed_callback_and_a_replayed_code_are_refused(console: Console) -> None:
    console.idp.user("u-2003", preferred_username="yu", groups=["zg-viewers"])
    async with console.client() as client:
        url = await begin(client)
        transaction = client.cookies["zguard-oidc-login"]
        back = console.idp.authorize(url, "u-2003")
        assert (await callback(client, back)).status_code == 200
        client.cookies.set("zguard-oidc-login", transaction, domain="127.0.0.1", path="/login/oidc")
        assert_refused(await callback(client, back), 401, "sign_in_failed", "replayed", console)
        # the same code under a fresh transaction of this browser: the IdP refuses it the second time
        fresh = parse_qs(urlsplit(await begin(client)).query)["state"][0]
        code = parse_qs(urlsplit(back).query)["code"][0]
        again = f"{CALLBACK}?{urlencode({'code': code, 'state': fresh})}"
        event = assert_refused(await callback(client, again), 401, "sign_in_failed", "code_rejected", console)
        assert event.detail["idp_error"] == "invalid_grant"


async def test_an_error_from_the_idp_and_another_issuers_answer_are_refused(console: Console) -> None:
    async with console.client() as client:
        state = parse_qs(urlsplit(await begin(client)).query)["state"][0]
        denied = f"{CALLBACK}?{urlencode({'error': 'access_denied', 'state': state})}"
        event = assert_refused(await callback(client, denied), 401, "sign_in_failed", "idp_error", console)
        assert event.detail["idp_error"] == "access_denied"
        state = parse_qs(urlsplit(await begin(client)).query)["state"][0]
        mixed = f"{CALLBACK}?{urlencode({'code': 'x', 'state': state, 'iss': 'https://evil.example'})}"
        assert_refused(await callback(client, mixed), 401, "sign_in_failed", "wrong_issuer", console)


# --- refusals: zguard's rules -----------------------------------------------------------------


async def test_groups_that_combine_separated_duties_are_refused_naming_them(console: Console) -> None:
    console.idp.user("u-3001", preferred_username="bo", groups=["zg-auditors", "zg-designers", "staff"])
    async with console.client() as client:
        resp = await sign_in(console, client, "u-3001")
    event = assert_refused(resp, 403, "sign_in_refused", "sod_conflict", console)
    assert "zg-auditors, zg-designers" in resp.text
    assert "separation of duties" in resp.text
    assert (event.principal, event.detail["groups"]) == ("bo", "zg-auditors, zg-designers")
    assert console.d.store.get_principal("bo") is None


async def test_a_disabled_principal_is_refused(console: Console) -> None:
    console.idp.user("u-3002", preferred_username="ana", groups=["zg-viewers"])
    async with console.client() as client:
        assert (await sign_in(console, client, "u-3002")).status_code == 200
    console.d.store.disable_principal("ana")
    async with console.client() as client:
        resp = await sign_in(console, client, "u-3002")
        assert_refused(resp, 403, "sign_in_refused", "disabled", console)
        assert "disabled" in resp.text
        assert (await client.get("/console/api/session")).status_code == 401


async def test_an_admin_without_the_required_acr_is_refused_and_with_it_signs_in(console: Console) -> None:
    console.idp.user("u-3003", preferred_username="root-ish", groups=["zg-admins"], acr="pwd")
    async with console.client() as client:
        resp = await sign_in(console, client, "u-3003")
    event = assert_refused(resp, 403, "sign_in_refused", "acr_not_met", console)
    assert event.detail["role"] == "admin"
    assert "multi-factor" in resp.text
    console.idp.user("u-3003", preferred_username="root-ish", groups=["zg-admins"], acr="mfa")
    async with console.client() as client:
        assert (await sign_in(console, client, "u-3003")).status_code == 200
        assert (await client.get("/console/api/session")).json()["roles"] == ["admin"]


async def test_a_local_users_name_is_not_taken_over(console: Console) -> None:
    console.d.principal("dana", "admin", kind="user", password=PASSWORD)
    console.idp.user("u-3004", preferred_username="dana", groups=["zg-viewers"])
    async with console.client() as client:
        assert_refused(await sign_in(console, client, "u-3004"), 403, "sign_in_refused", "name_taken", console)
    assert console.d.store.get_principal("dana").source == "local"  # type: ignore[union-attr]


async def test_only_provisioned_people_sign_in_when_required(build: Build) -> None:
    console = build(require_provisioned=True)
    console.idp.user("u-3005", preferred_username="new-hire", groups=["zg-viewers"])
    async with console.client() as client:
        resp = await sign_in(console, client, "u-3005")
    assert_refused(resp, 403, "sign_in_refused", "not_provisioned", console)
    assert console.d.store.get_principal("new-hire") is None


# --- the IdP away -----------------------------------------------------------------------------


async def test_an_unreachable_idp_is_503_and_the_break_glass_admin_still_signs_in(build: Build) -> None:
    console = build(issuer=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    console.d.principal("breakglass", "admin", kind="user", password=PASSWORD)
    async with console.client() as client:
        resp = await client.get("/login/oidc", headers=PAGE)
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) > 0
        assert "<code>identity_provider_unavailable</code>" in resp.text
        event = console.last_login()
        assert (event.outcome, event.code, event.detail["reason"]) == (
            "failed",
            "identity_provider_unavailable",
            "identity_provider_unavailable",
        )
        login = await client.post("/login", data={"username": "breakglass", "password": PASSWORD}, headers=SAME_ORIGIN)
        assert login.status_code == 303, login.text
        assert (await client.get("/console/api/session")).json()["name"] == "breakglass"


async def test_the_routes_are_absent_when_oidc_is_off(deploy: Deploy, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True})
    d = deploy(settings)
    app = create_console_app(d.settings, d.runtime.services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=LOOPBACK_PEER), base_url=CONSOLE) as c:
        resp = await c.get("/login/oidc", headers=PAGE)
        assert (resp.status_code, resp.headers.get("location")) == (303, "/login")  # an unknown page: sign in first
        assert "/login/oidc" not in (await c.get("/login", headers=PAGE)).text
