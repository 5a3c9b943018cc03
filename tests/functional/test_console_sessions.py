"""Issue 18, item 2 and 3: console sign-in, server-side sessions, CSRF, browser hardening.

Through the real console app (ASGI, in process) on a real state database (SQLite; the session
table is plain SQL, and PostgreSQL runs the same store in tests/integration). A second store on
the same database stands in for another process or replica.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.common.factories import LOOPBACK_PEER, make_settings
from tests.functional.test_auth import KEY, Deploy, Deployment, backend, bearer, database, deploy  # noqa: F401
from zguard.app.console import create_console_app
from zguard.app.console.web import translate
from zguard.errors import InvalidApiKey
from zguard.security.passwords import hash_password
from zguard.services.auth import RequestInfo
from zguard.services.sessions import SessionService, token_hash
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"
PAGE = {"accept": "text/html,application/xhtml+xml"}
SAME_ORIGIN = {**PAGE, "origin": "http://console.test", "content-type": "application/x-www-form-urlencoded"}
COOKIE = "zguard-session"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Now:
    """The sessions' wall clock, moved by hand."""

    def __init__(self) -> None:
        self.value = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)


@dataclasses.dataclass
class Console:
    d: Deployment
    sessions: SessionService
    now: Now

    def client(
        self, peer: tuple[str, int] = LOOPBACK_PEER, sessions: SessionService | None = None
    ) -> httpx.AsyncClient:
        services = dataclasses.replace(self.d.runtime.services, sessions=sessions or self.sessions)
        app = create_console_app(self.d.settings, services)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=peer), base_url="http://console.test")

    def second_process(self) -> SessionService:
        """Sessions served by another process: its own store and cache on the same database."""
        other = PrincipalStore(self.d.other.engine)
        return SessionService(
            self.d.settings.console,
            self.d.auth,
            other,
            self.d.auth.derived_key(b"console sessions"),
            audit=self.d.audit,
            clock=self.now,
        )

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.d.audit.events if e.type == kind]


@pytest.fixture
def console(deploy: Deploy, tmp_path: Path) -> Console:
    """Users dana (generator) and ada (admin), a service account; TOTP optional for every role here
    (the tests of the second factor build their own deployment with the default, admin required)."""
    settings = make_settings(
        tmp_path / "state", api_auth={"enabled": True}, generation={"min_side": 16}, console={"totp_required_roles": []}
    )
    d = deploy(settings)
    d.principal("dana", "generator", kind="user", password=PASSWORD)
    d.principal("ada", "admin", kind="user", password=PASSWORD)
    d.principal("batch", "generator")  # a service account: a token, no password
    now = Now()
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit, clock=now
    )
    return Console(d, sessions, now)


async def sign_in(
    client: httpx.AsyncClient, username: str = "dana", password: str = PASSWORD, **headers: str
) -> httpx.Response:
    return await client.post(
        "/login", data={"username": username, "password": password}, headers={**SAME_ORIGIN, **headers}
    )


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page.text)
    assert found, page.text
    return found.group(1)


async def signed_in(client: httpx.AsyncClient, username: str = "dana") -> str:
    """Sign in; the page's CSRF token."""
    resp = await sign_in(client, username)
    assert resp.status_code == 303, resp.text
    home = await client.get("/", headers=PAGE)
    assert home.status_code == 200, home.text
    return csrf_of(home)


# --- sign-in ---------------------------------------------------------------------------------


async def test_sign_in_sets_a_hardened_session_cookie_and_opens_the_console(console: Console) -> None:
    async with console.client() as client:
        form = await client.get("/login", headers=PAGE)
        assert form.status_code == 200
        assert 'id="login"' in form.text
        assert 'for="username"' in form.text
        assert 'for="password"' in form.text
        resp = await sign_in(client)
        assert resp.status_code == 303
        assert resp.headers["location"] == "/"
        cookie = SimpleCookie(resp.headers["set-cookie"])[COOKIE]
        assert cookie["httponly"]
        assert cookie["samesite"] == "strict"
        assert cookie["path"] == "/"
        assert not cookie["secure"]
        assert not cookie["domain"]
        assert not cookie["max-age"]
        assert len(cookie.value) >= 43  # 32 random bytes, base64url: 256 bits
        home = await client.get("/", headers=PAGE)
        assert home.status_code == 200
        assert "dana" in home.text
        assert 'id="logout"' in home.text
    [login] = console.events("console.login")
    assert login.principal == "dana"
    assert login.outcome == "allowed"


async def test_only_the_hash_of_the_cookie_is_stored_and_each_sign_in_gets_a_new_one(console: Console) -> None:
    async with console.client() as client:
        first = SimpleCookie((await sign_in(client)).headers["set-cookie"])[COOKIE].value
        second = SimpleCookie((await sign_in(client)).headers["set-cookie"])[COOKIE].value
    assert first != second
    with console.d.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM console_sessions")).all()
    dump = repr(rows)
    assert len(rows) == 2
    assert first not in dump
    assert second not in dump
    assert token_hash(first) in dump
    assert token_hash(second) in dump


async def test_wrong_password_unknown_user_and_service_account_get_the_same_refusal(console: Console) -> None:
    async with console.client() as client:
        pages = [
            await sign_in(client, "dana", "wrong password!"),
            await sign_in(client, "nobody"),
            await sign_in(client, "batch"),
        ]
    for page in pages:
        assert page.status_code == 401
        assert 'role="alert"' in page.text
        assert "The username or password is wrong." in page.text
        assert "set-cookie" not in page.headers
    denied = [e for e in console.events("console.login") if e.outcome == "denied"]
    assert [(e.auth_method, e.code) for e in denied] == [("console", "invalid_api_key")] * 3
    assert [e.principal for e in denied] == ["dana", "nobody", "batch"]


async def test_failed_sign_ins_share_basics_limits_per_user_and_address(console: Console) -> None:
    async with console.client(peer=("127.0.0.7", 4000)) as guesser, console.client(peer=("127.0.0.8", 4000)) as owner:
        for _ in range(5):
            assert (await sign_in(guesser, "dana", "not the password")).status_code == 401
        locked = await sign_in(guesser, "dana")  # even the right password: this pair is over its limit
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text
        assert (await sign_in(owner, "dana")).status_code == 303  # the user from elsewhere is not locked out


async def test_sign_in_from_another_origin_is_refused(console: Console) -> None:
    async with console.client() as client:
        foreign = await sign_in(client, origin="https://evil.example")
        fetch = await sign_in(client, **{"sec-fetch-site": "cross-site"})
        bare = await client.post("/login", data={"username": "dana", "password": PASSWORD}, headers=PAGE)
    for resp in (foreign, fetch, bare):
        assert resp.status_code == 403
        assert "csrf_failed" in resp.text
        assert "set-cookie" not in resp.headers


async def test_typed_markup_is_shown_escaped(console: Console) -> None:
    async with console.client() as client:
        page = await sign_in(client, '<script>alert(1)</script>"><img src=x>', "x")
    assert page.status_code == 401
    assert "<script>alert(1)" not in page.text
    assert "<img src=x>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x&gt;" in page.text


# --- sessions end ------------------------------------------------------------------------------


async def test_sign_out_ends_the_session_everywhere_it_is_used(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client)
        cookie = client.cookies[COOKIE]
        out = await client.post("/logout", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        assert out.status_code == 303
        assert out.headers["location"] == "/login"
        assert COOKIE not in client.cookies
    async with console.client() as replay:
        replay.cookies.set(COOKIE, cookie)
        page = await replay.get("/", headers=PAGE)
        assert page.status_code == 303
        assert page.headers["location"] == "/login"
        api = await replay.get("/console/api/session")
        assert api.status_code == 401
        assert api.json()["error"]["code"] == "session_expired"
    assert [e.type for e in console.d.audit.events if e.type.startswith("console.")][:2] == [
        "console.login",
        "console.logout",
    ]


async def test_idle_and_absolute_timeouts_end_sessions_and_are_audited(console: Console) -> None:
    idle, most = console.d.settings.console.session_idle_s, console.d.settings.console.session_max_s
    async with console.client() as client:
        await signed_in(client)
        console.now.advance(idle - 60)
        assert (await client.get("/console/api/session")).status_code == 200  # activity resets the idle clock
        console.now.advance(idle - 60)
        assert (await client.get("/console/api/session")).status_code == 200
        console.now.advance(idle + 1)
        resp = await client.get("/console/api/session")
        assert resp.json()["error"]["code"] == "session_expired"
        await signed_in(client)
        for _ in range(most // (idle - 60) + 2):
            console.now.advance(idle - 60)
            if (await client.get("/console/api/session")).status_code != 200:
                break
        assert (await client.get("/console/api/session")).status_code == 401
    ended = [e.detail["reason"] for e in console.events("console.session_ended")]
    assert ended == ["idle_timeout", "max_age"]


@pytest.mark.parametrize("change", ["disable", "password", "roles"])
async def test_a_change_to_the_user_in_another_process_ends_their_session_at_the_next_click(
    console: Console, change: str
) -> None:
    other = console.d.other
    async with console.client() as client:
        await signed_in(client)
        assert (await client.get("/", headers=PAGE)).status_code == 200
        if change == "disable":
            other.disable_principal("dana")
        elif change == "password":
            other.set_password_hash("dana", hash_password("another long passphrase", cost=4))
        else:
            other.set_roles("dana", ["viewer"])
        page = await client.get("/", headers=PAGE)
        assert page.status_code == 303
        assert page.headers["location"] == "/login"
    assert [e.detail["reason"] for e in console.events("console.session_ended")] == ["credentials_changed"]


async def test_sign_out_everywhere_and_revocation_by_another_replica(console: Console) -> None:
    async with console.client() as laptop, console.client() as phone:
        csrf = await signed_in(laptop)
        await signed_in(phone)
        listed = (await laptop.get("/console/api/sessions")).json()["data"]
        assert len(listed) == 2
        assert sum(s["current"] for s in listed) == 1
        resp = await laptop.post("/account/sessions/revoke-all", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        assert resp.status_code == 303
        assert (await phone.get("/console/api/session")).status_code == 401
        assert (await laptop.get("/console/api/session")).status_code == 401
    replica = console.second_process()
    async with console.client() as client, console.client(sessions=replica) as elsewhere:
        await signed_in(client)
        elsewhere.cookies.set(COOKIE, client.cookies[COOKIE])
        me = (await elsewhere.get("/console/api/session")).json()
        assert me["name"] == "dana"
        revoked = await client.delete(
            f"/console/api/sessions/{me['session']}",
            headers={"x-csrf-token": me["csrf_token"], "origin": "http://console.test"},
        )
        assert revoked.status_code == 200
        assert (await elsewhere.get("/console/api/session")).status_code == 401  # the replica's cache did not keep it
    assert console.events("console.sessions_revoked")[0].detail["sessions"] == 2


# --- CSRF and headers ----------------------------------------------------------------------------


async def test_changes_need_the_sessions_token_and_the_consoles_origin(console: Console) -> None:
    async with console.client() as client, console.client() as other_user:
        csrf = await signed_in(client)
        others = await signed_in(other_user, "ada")
        attempts = {
            "no token": ({}, SAME_ORIGIN),
            "wrong token": ({"csrf_token": "0" * 64}, SAME_ORIGIN),
            "another session's token": ({"csrf_token": others}, SAME_ORIGIN),
            "foreign origin": ({"csrf_token": csrf}, {**SAME_ORIGIN, "origin": "https://evil.example"}),
            "cross-site fetch": ({"csrf_token": csrf}, {**SAME_ORIGIN, "sec-fetch-site": "cross-site"}),
        }
        for name, (data, headers) in attempts.items():
            resp = await client.post("/account/sessions/revoke-all", data=data, headers=headers)
            assert resp.status_code == 403, name
            assert "csrf_failed" in resp.text, name
        api = await client.post("/console/api/logout", headers={"origin": "http://console.test"})
        assert api.status_code == 403
        assert api.json()["error"]["code"] == "csrf_failed"
        assert (await client.get("/console/api/session")).status_code == 200  # none of it signed out
        ok = await client.post("/console/api/logout", headers={"origin": "http://console.test", "x-csrf-token": csrf})
        assert ok.status_code == 200
    refused = [e for e in console.d.audit.events if e.code == "csrf_failed"]
    assert len(refused) >= 6


async def test_tokens_and_basic_need_no_csrf_token(console: Console) -> None:
    """No ambient credential, no CSRF: scripts keep working with a bearer token."""
    token = console.d.principal("robot-admin", "admin")
    async with console.client() as client:
        resp = await client.post("/console/api/sessions/revoke-all", headers=bearer(token))
    assert resp.status_code == 200
    assert resp.json() == {"revoked": 0}


async def test_every_page_carries_the_browser_hardening_headers(console: Console) -> None:
    async with console.client() as client:
        pages = [await client.get("/login", headers=PAGE)]
        await signed_in(client)
        pages += [await client.get(path, headers=PAGE) for path in ("/", "/account")]
        pages.append(await client.get("/static/console.css"))
        pages.append(await client.get("/console/api/session"))
    for resp in pages:
        assert resp.status_code == 200, resp.url
        assert resp.headers["content-security-policy"] == CSP
        assert resp.headers["cache-control"] == "no-store" or resp.url.path.startswith("/static/")
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in resp.headers  # plain HTTP: HSTS only when the console serves TLS
    assert "<style" not in "".join(r.text for r in pages)
    assert "<script" not in "".join(r.text for r in pages)


# --- languages -------------------------------------------------------------------------------------


async def test_the_page_language_follows_accept_language_and_the_remembered_switch(console: Console) -> None:
    async with console.client() as client:
        zh = await client.get("/login", headers={**PAGE, "accept-language": "zh-CN,zh;q=0.9,en;q=0.5"})
        assert '<html lang="zh-CN">' in zh.text
        assert translate("zh-CN", "Sign in to zguard") in zh.text
        en = await client.get("/login", headers={**PAGE, "accept-language": "en-GB"})
        assert '<html lang="en">' in en.text
        assert "Sign in to zguard" in en.text
        switched = await client.post("/language", data={"lang": "zh-CN", "back": "/login"}, headers=SAME_ORIGIN)
        assert switched.status_code == 303
        assert switched.headers["location"] == "/login"
        remembered = await client.get("/login", headers={**PAGE, "accept-language": "en"})
        assert '<html lang="zh-CN">' in remembered.text
        wrong = await sign_in(client, "dana", "nope")
        assert translate("zh-CN", "The username or password is wrong.") in wrong.text
        away = await client.post("/language", data={"lang": "en", "back": "//evil.example/x"}, headers=SAME_ORIGIN)
        assert away.headers["location"] == "/"  # never off the console


async def test_the_session_service_refuses_logins_as_basic_does(console: Console) -> None:
    """The service itself, not only the form: no session for a wrong password."""
    info = RequestInfo(client="127.0.0.1", listener="console")
    with pytest.raises(InvalidApiKey):
        await console.sessions.login("dana", "wrong", info)
    signed = await console.sessions.login("dana", PASSWORD, info)
    assert (await console.sessions.authenticate(signed.cookie, info)).name == "dana"


async def test_the_consoles_only_script_is_its_own_file_and_nothing_else_is_served(console: Console) -> None:
    async with console.client() as client:
        script = await client.get("/static/trace.js")
        other = await client.get("/static/../pages.py")
        unknown = await client.get("/static/evil.js")
    assert script.status_code == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "textContent" in script.text  # the answer is shown as text, never parsed as markup
    assert "innerHTML" not in script.text
    assert other.status_code in (401, 404)  # normalised to /pages.py: no route, so a stranger learns nothing
    assert unknown.status_code == 404
