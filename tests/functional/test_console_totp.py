"""Issue 18, item 2: the console's TOTP second factor (RFC 6238), required for admins by default.

Real state database, real pyotp codes at the sessions' hand-moved clock; a second store on the
same database stands in for another process (a code is spent everywhere)."""

from __future__ import annotations

import re

import httpx
import pyotp
import pytest
from sqlalchemy import text

from tests.functional.test_auth import Deploy, backend, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import PAGE, PASSWORD, SAME_ORIGIN, Console, Now, csrf_of, sign_in
from zguard.services.sessions import SessionService

pytestmark = pytest.mark.anyio


@pytest.fixture
def admins_need_totp(deploy: Deploy) -> Console:
    d = deploy()  # the default settings: console.totp_required_roles = ["admin"]
    d.principal("dana", "generator", kind="user", password=PASSWORD)
    d.principal("ada", "admin", kind="user", password=PASSWORD)
    now = Now()
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit, clock=now
    )
    return Console(d, sessions, now)


def code(secret: str, console: Console, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(console.now.value.timestamp() + 30 * steps)


async def enrol(client: httpx.AsyncClient, console: Console) -> str:
    """Set up an authenticator from My account; the secret."""
    page = await client.get("/account", headers=PAGE)
    found = re.search(r'name="secret" value="([A-Z2-7]{32})"', page.text)
    assert found, page.text
    secret = found.group(1)
    data = {"csrf_token": csrf_of(page), "secret": secret, "code": code(secret, console)}
    done = await client.post("/account/totp", data=data, headers=SAME_ORIGIN)
    assert done.status_code == 303, done.text
    return secret


async def test_an_admin_without_a_second_factor_cannot_sign_in(admins_need_totp: Console) -> None:
    async with admins_need_totp.client() as client:
        admin = await sign_in(client, "ada")
        generator = await sign_in(client, "dana")
    assert admin.status_code == 403
    assert "second factor" in admin.text
    assert "set-cookie" not in admin.headers
    assert generator.status_code == 303  # optional for the other roles
    [refused] = [e for e in admins_need_totp.events("console.login") if e.outcome == "denied"]
    assert refused.code == "second_factor_not_enrolled"


async def test_enrolment_needs_a_code_from_the_secret_and_stores_it_sealed(admins_need_totp: Console) -> None:
    console = admins_need_totp
    async with console.client() as client:
        assert (await sign_in(client, "dana")).status_code == 303
        page = await client.get("/account", headers=PAGE)
        secret = re.search(r'name="secret" value="([A-Z2-7]{32})"', page.text).group(1)  # type: ignore[union-attr]
        wrong = await client.post(
            "/account/totp", data={"csrf_token": csrf_of(page), "secret": secret, "code": "000000"}, headers=SAME_ORIGIN
        )
        assert wrong.status_code == 400
        assert 'role="alert"' in wrong.text
        assert not await console.sessions.factor.enrolled("dana")
        await enrol(client, console)
    assert await console.sessions.factor.enrolled("dana")
    with console.d.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM totp_secrets")).all()
    assert len(rows) == 1
    assert all(secret not in str(value) for value in rows[0])  # sealed, not stored in the clear
    assert [e.principal for e in console.events("console.totp_enrolled")] == ["dana"]


async def test_sign_in_then_asks_for_the_code_and_each_code_works_once(admins_need_totp: Console) -> None:
    console = admins_need_totp
    async with console.client() as client:
        await sign_in(client, "dana")
        secret = await enrol(client, console)
    console.now.advance(30)
    async with console.client() as client:
        missing = await sign_in(client, "dana")
        assert missing.status_code == 401
        assert "6-digit code" in missing.text
        right = code(secret, console)
        ok = await client.post(
            "/login", data={"username": "dana", "password": PASSWORD, "code": right}, headers=SAME_ORIGIN
        )
        assert ok.status_code == 303
    replica = console.second_process()
    async with console.client(sessions=replica) as elsewhere:  # the same code, seen over a shoulder, elsewhere
        replay = await elsewhere.post(
            "/login", data={"username": "dana", "password": PASSWORD, "code": right}, headers=SAME_ORIGIN
        )
        assert replay.status_code == 401
        assert "set-cookie" not in replay.headers
        console.now.advance(30)
        nxt = await elsewhere.post(
            "/login",
            data={"username": "dana", "password": PASSWORD, "code": code(secret, console)},
            headers=SAME_ORIGIN,
        )
        assert nxt.status_code == 303


async def test_wrong_codes_count_as_failed_logins(admins_need_totp: Console) -> None:
    console = admins_need_totp
    async with console.client() as client:
        await sign_in(client, "dana")
        secret = await enrol(client, console)
    async with console.client(peer=("127.0.0.9", 1000)) as guesser:
        statuses = []
        for guess in range(6):
            resp = await guesser.post(
                "/login", data={"username": "dana", "password": PASSWORD, "code": f"{guess:06d}"}, headers=SAME_ORIGIN
            )
            statuses.append(resp.status_code)
        console.now.advance(30)
        right = await guesser.post(
            "/login",
            data={"username": "dana", "password": PASSWORD, "code": code(secret, console)},
            headers=SAME_ORIGIN,
        )
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429  # the per user+address limit, as for wrong passwords
    assert right.status_code == 429


async def test_an_enrolled_admin_signs_in_and_cannot_remove_the_factor(admins_need_totp: Console) -> None:
    console = admins_need_totp
    secret = console.sessions.factor.new_secret()
    assert await console.sessions.factor.enrol(
        "ada", secret, code(secret, console)
    )  # what an operator does out of band
    console.now.advance(30)
    async with console.client() as client:
        ok = await client.post(
            "/login", data={"username": "ada", "password": PASSWORD, "code": code(secret, console)}, headers=SAME_ORIGIN
        )
        assert ok.status_code == 303
        page = await client.get("/account", headers=PAGE)
        assert 'id="totp-remove"' not in page.text
        console.now.advance(30)
        refused = await client.post(
            "/account/totp/remove",
            data={"csrf_token": csrf_of(page), "code": code(secret, console)},
            headers=SAME_ORIGIN,
        )
        assert refused.status_code == 409  # a state of the account, not a missing permission
    assert await console.sessions.factor.enrolled("ada")


async def test_a_user_removes_their_own_factor_with_a_current_code(admins_need_totp: Console) -> None:
    console = admins_need_totp
    async with console.client() as client:
        await sign_in(client, "dana")
        secret = await enrol(client, console)
        page = await client.get("/account", headers=PAGE)
        assert 'id="totp-remove"' in page.text
        assert page.text.count('id="totp-enrol"') == 1
        assert re.search(r"<title>[^<]*</title>", page.text)  # the page's title is text, no section pasted in
        console.now.advance(30)
        stale = await client.post(
            "/account/totp/remove", data={"csrf_token": csrf_of(page), "code": "123456"}, headers=SAME_ORIGIN
        )
        assert stale.status_code == 400
        done = await client.post(
            "/account/totp/remove",
            data={"csrf_token": csrf_of(page), "code": code(secret, console)},
            headers=SAME_ORIGIN,
        )
        assert done.status_code == 303
    assert not await console.sessions.factor.enrolled("dana")
