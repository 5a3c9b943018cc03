"""Issue 18: the console's users pages and "my account" extras, through the real console app on a
real state database, with `AdminService` (the CLI's class) behind them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape

from tests.common.factories import LOOPBACK_PEER, make_settings
from tests.functional.test_auth import backend, bearer, database, deploy  # noqa: F401
from tests.functional.test_console_sessions import (  # noqa: F401
    PAGE,
    PASSWORD,
    SAME_ORIGIN,
    Console,
    console,
    csrf_of,
    sign_in,
    signed_in,
)
from zguard.app.console import create_console_app
from zguard.app.console.web import translate
from zguard.security.passwords import hash_password
from zguard.services.admin import Actor, RolesRefused
from zguard.services.sessions import SessionService

pytestmark = pytest.mark.anyio

NEW_PASSWORD = "violet kettle orbit 4417 lantern"
TOKEN = re.compile(r"zg_[A-Za-z0-9_\-]{20,}")
ORIGIN = {"origin": "http://console.test"}
XSS = "<script>alert(1)</script>"


def principal_id(c: Console, name: str) -> int:
    record = c.d.store.get_principal(name)
    assert record is not None
    return record.id


def admin_events(c: Console, kind: str) -> list[Any]:
    return [e for e in c.events(kind) if e.listener == "console"]


def api_headers(csrf: str) -> dict[str, str]:
    return {**ORIGIN, "x-csrf-token": csrf}


def sod_message(c: Console, name: str, roles: list[str]) -> str:
    """What `zguard user add NAME --role ...` prints for these roles: AdminService's own message."""
    admin = c.d.runtime.services.admin
    assert admin is not None
    with pytest.raises(RolesRefused) as refused:
        admin.add_principal(name, kind="user", roles=roles, actor=Actor("test"))
    return refused.value.message


def issued_token(page: httpx.Response) -> str:
    found = TOKEN.findall(page.text)
    assert len(found) == 1, page.text  # the plaintext is on the page exactly once
    return str(found[0])


# --- users and roles ---------------------------------------------------------------------------


async def test_an_admin_creates_a_user_who_can_then_sign_in(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        listing = await client.get("/users", headers=PAGE)
        assert listing.status_code == 200
        for name in ("dana", "ada", "batch"):
            assert f">{name}</a>" in listing.text
        assert 'for="name"' in listing.text
        assert 'for="roles"' in listing.text
        assert 'scope="col"' in listing.text
        created = await client.post(
            "/users",
            data={"csrf_token": csrf, "name": "erin", "kind": "user", "roles": "generator", "password": NEW_PASSWORD},
            headers=SAME_ORIGIN,
        )
        assert created.status_code == 303, created.text
        assert created.headers["location"] == f"/users/{principal_id(console, 'erin')}"
        detail = await client.get(created.headers["location"], headers=PAGE)
        assert detail.status_code == 200
        assert "erin" in detail.text
    record = console.d.store.get_principal("erin")
    assert record is not None
    assert record.roles == ("generator",)
    assert record.kind == "user"
    async with console.client() as erin:
        assert (await sign_in(erin, "erin", NEW_PASSWORD)).status_code == 303
        me = (await erin.get("/console/api/session")).json()
        assert me["name"] == "erin"
        assert me["roles"] == ["generator"]
    [event] = admin_events(console, "user.created")
    assert event.principal == "ada"
    assert event.roles == ("admin",)
    assert event.request_id
    assert event.client == "127.0.0.1"
    assert event.detail["target"] == "erin"
    assert [e.detail["target"] for e in admin_events(console, "user.password_changed")] == ["erin"]
    assert NEW_PASSWORD not in repr(console.d.audit.events)


async def test_a_weak_initial_password_creates_nobody(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        page = await client.post(
            "/users",
            data={"csrf_token": csrf, "name": "fay", "kind": "user", "roles": "viewer", "password": "password"},
            headers=SAME_ORIGIN,
        )
        assert page.status_code == 400
        assert 'role="alert"' in page.text
        assert 'id="password-error"' in page.text
        assert 'value="fay"' in page.text  # the form comes back filled in
        api = await client.post(
            "/console/api/users",
            json={"name": "fay", "kind": "user", "roles": ["viewer"], "password": "fay"},
            headers=api_headers(csrf),
        )
        assert api.status_code == 400
        assert api.json()["error"]["code"] == "invalid_input"
    assert console.d.store.get_principal("fay") is None
    assert admin_events(console, "user.created") == []


async def test_a_generator_is_refused_every_users_route_and_nothing_changes(console: Console) -> None:
    batch = principal_id(console, "batch")
    async with console.client() as client:
        csrf = await signed_in(client, "dana")
        home = await client.get("/", headers=PAGE)
        assert 'href="/users"' not in home.text  # not offered in the navigation either
        pages = [
            await client.get("/users", headers=PAGE),
            await client.get(f"/users/{batch}", headers=PAGE),
            await client.post(
                "/users", data={"csrf_token": csrf, "name": "mallory", "roles": "admin"}, headers=SAME_ORIGIN
            ),
            await client.post(
                f"/users/{batch}/roles", data={"csrf_token": csrf, "roles": "admin"}, headers=SAME_ORIGIN
            ),
            await client.post(
                f"/users/{batch}/enabled", data={"csrf_token": csrf, "enabled": "0"}, headers=SAME_ORIGIN
            ),
            await client.post(f"/users/{batch}/tokens", data={"csrf_token": csrf}, headers=SAME_ORIGIN),
        ]
        for resp in pages:
            assert resp.status_code == 403, resp.url
            assert "permission_denied" in resp.text
        apis = [
            await client.get("/console/api/users"),
            await client.post(
                "/console/api/users", json={"name": "mallory", "roles": ["admin"]}, headers=api_headers(csrf)
            ),
            await client.post(
                f"/console/api/users/{batch}/roles", json={"roles": ["admin"]}, headers=api_headers(csrf)
            ),
            await client.post(f"/console/api/users/{batch}/tokens", json={}, headers=api_headers(csrf)),
            await client.get(f"/console/api/users/{batch}/tokens"),
        ]
        for resp in apis:
            assert resp.status_code == 403, resp.url
            assert resp.json()["error"]["code"] == "permission_denied"
    assert console.d.store.get_principal("mallory") is None
    record = console.d.store.get_principal("batch")
    assert record is not None
    assert record.roles == ("generator",)
    assert record.enabled
    assert len(console.d.store.list_tokens("batch")) == 1
    assert not [e for e in console.d.audit.events if e.type.startswith(("user.", "token."))]
    denied = [e for e in console.d.audit.events if e.code == "permission_denied" and e.principal == "dana"]
    assert len(denied) >= len(pages) + len(apis)


async def test_separation_of_duties_is_refused_with_the_clis_message(console: Console) -> None:
    expected = sod_message(console, "gus", ["admin", "auditor"])
    assert "separation of duties" in expected
    dana = principal_id(console, "dana")
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        page = await client.post(
            "/users",
            data={
                "csrf_token": csrf,
                "name": "gus",
                "kind": "user",
                "roles": "admin, auditor",
                "password": NEW_PASSWORD,
            },
            headers=SAME_ORIGIN,
        )
        assert page.status_code == 400
        assert 'id="roles-error"' in page.text
        assert str(escape(expected)) in page.text
        assert "These roles cannot be given together or do not exist." in page.text
        change = await client.post(
            f"/users/{dana}/roles", data={"csrf_token": csrf, "roles": "generator auditor"}, headers=SAME_ORIGIN
        )
        assert change.status_code == 400
        assert str(escape(sod_message(console, "dana", ["generator", "auditor"]))) in change.text
        api = await client.post(
            f"/console/api/users/{dana}/roles", json={"roles": ["admin", "auditor"]}, headers=api_headers(csrf)
        )
        assert api.status_code == 400
        assert api.json()["error"] == {
            "message": sod_message(console, "dana", ["admin", "auditor"]),
            "type": "invalid_request_error",
            "param": None,
            "code": "roles_refused",
        }
        zh = await client.post(
            "/users",
            data={
                "csrf_token": csrf,
                "name": "gus",
                "kind": "user",
                "roles": "admin auditor",
                "password": NEW_PASSWORD,
            },
            headers={**SAME_ORIGIN, "accept-language": "zh-CN"},
        )
        assert translate("zh-CN", "These roles cannot be given together or do not exist.") in zh.text
    assert console.d.store.get_principal("gus") is None
    record = console.d.store.get_principal("dana")
    assert record is not None
    assert record.roles == ("generator",)


async def test_roles_change_and_the_json_api_lists_what_the_page_lists(console: Console) -> None:
    dana = principal_id(console, "dana")
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        changed = await client.post(
            f"/users/{dana}/roles", data={"csrf_token": csrf, "roles": "generator, viewer"}, headers=SAME_ORIGIN
        )
        assert changed.status_code == 303
        listed = (await client.get("/console/api/users")).json()
        by_name = {p["name"]: p for p in listed["data"]}
        assert by_name["dana"]["roles"] == ["generator", "viewer"]
        assert by_name["batch"]["kind"] == "service"
        assert by_name["ada"]["has_password"] is True
        assert "password_hash" not in repr(listed)
        assert listed["configured"] == []
        one = await client.get(f"/console/api/users/{dana}")
        assert one.json()["roles"] == ["generator", "viewer"]
        missing = await client.get("/console/api/users/999999")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "principal_not_found"
        assert (await client.get("/users/999999", headers=PAGE)).status_code == 404
    [event] = admin_events(console, "user.roles_changed")
    assert event.detail["previous_roles"] == "generator"
    assert event.detail["roles"] == "generator,viewer"


async def test_disabling_a_user_ends_their_open_session_at_the_next_request(console: Console) -> None:
    dana = principal_id(console, "dana")
    async with console.client() as admin, console.client() as user:
        csrf = await signed_in(admin, "ada")
        await signed_in(user, "dana")
        disabled = await admin.post(
            f"/users/{dana}/enabled", data={"csrf_token": csrf, "enabled": "0"}, headers=SAME_ORIGIN
        )
        assert disabled.status_code == 303
        page = await user.get("/", headers=PAGE)
        assert page.status_code == 303
        assert page.headers["location"] == "/login"
        assert (await sign_in(user, "dana")).status_code == 401
        enabled = await admin.post(
            f"/console/api/users/{dana}/enabled", json={"enabled": True}, headers=api_headers(csrf)
        )
        assert enabled.status_code == 200
        assert enabled.json()["enabled"] is True
        assert (await sign_in(user, "dana")).status_code == 303
        myself = principal_id(console, "ada")
        refused = await admin.post(
            f"/users/{myself}/enabled", data={"csrf_token": csrf, "enabled": "0"}, headers=SAME_ORIGIN
        )
        assert refused.status_code == 400
        assert 'id="enabled-error"' in refused.text
    assert [e.detail["reason"] for e in console.events("console.session_ended")] == ["credentials_changed"]
    assert [e.type for e in console.d.audit.events if e.type in ("user.disabled", "user.enabled")] == [
        "user.disabled",
        "user.enabled",
    ]
    record = console.d.store.get_principal("ada")
    assert record is not None
    assert record.enabled


async def test_an_admin_resets_a_password_and_the_old_one_stops_working(console: Console) -> None:
    dana, batch = principal_id(console, "dana"), principal_id(console, "batch")
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        reset = await client.post(
            f"/users/{dana}/password", data={"csrf_token": csrf, "password": NEW_PASSWORD}, headers=SAME_ORIGIN
        )
        assert reset.status_code == 303
        weak = await client.post(
            f"/console/api/users/{dana}/password", json={"password": "dana"}, headers=api_headers(csrf)
        )
        assert weak.json()["error"]["code"] == "invalid_input"
        service = await client.post(
            f"/console/api/users/{batch}/password", json={"password": NEW_PASSWORD}, headers=api_headers(csrf)
        )
        assert service.json()["error"]["code"] == "not_a_user"
    async with console.client() as user:
        assert (await sign_in(user, "dana", PASSWORD)).status_code == 401
        assert (await sign_in(user, "dana", NEW_PASSWORD)).status_code == 303


async def test_a_service_token_works_on_the_api_until_revoked_and_is_shown_once(console: Console) -> None:
    batch, dana = principal_id(console, "batch"), principal_id(console, "dana")
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        made = await client.post(
            f"/users/{batch}/tokens",
            data={"csrf_token": csrf, "label": "nightly", "expires_in": "1d", "roles": "generator"},
            headers=SAME_ORIGIN,
        )
        assert made.status_code == 200, made.text
        plaintext = issued_token(made)
        assert made.headers["cache-control"] == "no-store"
        assert "nightly" in made.text
        async with console.d.api() as api:
            assert (await api.get("/v1/models", headers=bearer(plaintext))).status_code == 200
        detail = await client.get(f"/users/{batch}", headers=PAGE)
        assert plaintext not in detail.text
        assert plaintext[:8] in detail.text  # the display prefix, not the token
        listed = (await client.get(f"/console/api/users/{batch}/tokens")).json()["data"]
        assert plaintext not in repr(listed)
        [new] = [t for t in listed if t["label"] == "nightly"]
        assert new["roles"] == ["generator"]
        assert new["status"] == "active"
        person = await client.post(f"/users/{dana}/tokens", data={"csrf_token": csrf}, headers=SAME_ORIGIN)
        assert person.status_code == 400  # people make their own tokens
        assert not TOKEN.search(person.text)
        revoked = await client.post(
            f"/users/{batch}/tokens/revoke", data={"csrf_token": csrf, "token": str(new["id"])}, headers=SAME_ORIGIN
        )
        assert revoked.status_code == 303
        async with console.d.api() as api:
            assert (await api.get("/v1/models", headers=bearer(plaintext))).status_code == 401
        other = await client.post(
            f"/users/{dana}/tokens/revoke", data={"csrf_token": csrf, "token": str(new["id"])}, headers=SAME_ORIGIN
        )
        assert other.status_code == 404  # a token is revoked under its own owner only
    assert plaintext not in repr(console.d.audit.events)
    [created] = admin_events(console, "token.created")
    assert created.principal == "ada"
    assert created.detail["target"] == "batch"
    assert [e.detail["token_id"] for e in admin_events(console, "token.revoked")] == [new["id"]]


async def test_the_service_token_json_api(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        made = await client.post(
            "/console/api/users",
            json={"name": "ci", "kind": "service", "roles": ["generator"]},
            headers=api_headers(csrf),
        )
        assert made.status_code == 201
        ci = made.json()["id"]
        issued = await client.post(
            f"/console/api/users/{ci}/tokens",
            json={"label": "deploy", "expires_in": "12h", "roles": ["generator"]},
            headers=api_headers(csrf),
        )
        assert issued.status_code == 201
        body = issued.json()
        plaintext = body["token"]
        assert TOKEN.fullmatch(plaintext)
        assert body["status"] == "active"
        assert body["expires_at"]
        wider = await client.post(
            f"/console/api/users/{ci}/tokens", json={"roles": ["admin"]}, headers=api_headers(csrf)
        )
        assert wider.json()["error"]["code"] == "roles_refused"
        bad = await client.post(
            f"/console/api/users/{ci}/tokens", json={"expires_in": "soon"}, headers=api_headers(csrf)
        )
        assert bad.json()["error"]["code"] == "invalid_input"
        listed = await client.get(f"/console/api/users/{ci}/tokens")
        assert plaintext not in listed.text
        async with console.d.api() as api:
            assert (await api.get("/v1/models", headers=bearer(plaintext))).status_code == 200
            gone = await client.delete(f"/console/api/users/{ci}/tokens/{body['id']}", headers=api_headers(csrf))
            assert gone.status_code == 200
            assert gone.json()["status"] == "revoked"
            assert (await api.get("/v1/models", headers=bearer(plaintext))).status_code == 401
        again = await client.delete(f"/console/api/users/{ci}/tokens/999999", headers=api_headers(csrf))
        assert again.json()["error"]["code"] == "token_not_found"


async def test_settings_file_users_are_listed_read_only(deploy: Any, tmp_path: Path) -> None:
    users = [{"username": "cfg", "password": hash_password(PASSWORD, cost=4), "roles": ["viewer"]}]
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True, "users": users},
        generation={"min_side": 16},
        console={"totp_required_roles": []},
    )
    d = deploy(settings)
    d.principal("ada", "admin", kind="user", password=PASSWORD)
    sessions = SessionService(
        d.settings.console, d.auth, d.store, d.auth.derived_key(b"console sessions"), audit=d.audit
    )
    app = create_console_app(d.settings, dataclasses.replace(d.runtime.services, sessions=sessions))
    transport = httpx.ASGITransport(app=app, client=LOOPBACK_PEER)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        await signed_in(client, "ada")
        listed = (await client.get("/console/api/users")).json()
        assert listed["configured"] == [{"name": "cfg", "roles": ["viewer"], "source": "settings"}]
        page = await client.get("/users", headers=PAGE)
        assert 'id="configured"' in page.text
        assert "<td>cfg</td>" in page.text
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        await signed_in(client, "cfg")
        mine = await client.get("/account/tokens", headers=PAGE)
        assert mine.status_code == 200
        assert "This user is declared in the settings file; change it there." in mine.text
        made = await client.post("/console/api/tokens", json={"expires_in": "1d"}, headers=api_headers(csrf_of(mine)))
        assert made.json()["error"]["code"] == "declared_in_settings"


async def test_without_a_state_database_the_pages_answer_503(console: Console) -> None:
    services = dataclasses.replace(console.d.runtime.services, sessions=console.sessions, admin=None)
    app = create_console_app(console.d.settings, services)
    transport = httpx.ASGITransport(app=app, client=LOOPBACK_PEER)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        await signed_in(client, "ada")
        page = await client.get("/users", headers=PAGE)
        assert page.status_code == 503
        assert "User administration needs the state database." in page.text
        api = await client.get("/console/api/users")
        assert api.status_code == 503


# --- my account ----------------------------------------------------------------------------------


async def test_i_change_my_password_with_the_current_one(console: Console) -> None:
    async with console.client() as client:
        await signed_in(client, "dana")
        form = await client.get("/account/password", headers=PAGE)
        assert form.status_code == 200
        for field in ("current_password", "new_password", "confirm_password"):
            assert f'for="{field}"' in form.text
        csrf = csrf_of(form)
        attempt = {"csrf_token": csrf, "current_password": "not it", "new_password": NEW_PASSWORD}
        wrong = await client.post(
            "/account/password", data={**attempt, "confirm_password": NEW_PASSWORD}, headers=SAME_ORIGIN
        )
        assert wrong.status_code == 401
        assert 'id="current_password-error"' in wrong.text
        assert "The current password is wrong." in wrong.text
        assert "API key" not in wrong.text  # no more than the sign-in form says
        attempt["current_password"] = PASSWORD
        differ = await client.post(
            "/account/password", data={**attempt, "confirm_password": "other"}, headers=SAME_ORIGIN
        )
        assert differ.status_code == 400
        assert "The two new passwords differ." in differ.text
        weak = await client.post(
            "/account/password",
            data={**attempt, "new_password": "dana", "confirm_password": "dana"},
            headers=SAME_ORIGIN,
        )
        assert weak.status_code == 400
        assert 'id="new_password-error"' in weak.text
        done = await client.post(
            "/account/password", data={**attempt, "confirm_password": NEW_PASSWORD}, headers=SAME_ORIGIN
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/login"
        assert (await client.get("/", headers=PAGE)).headers["location"] == "/login"  # this session ended too
        assert (await sign_in(client, "dana", PASSWORD)).status_code == 401
        assert (await sign_in(client, "dana", NEW_PASSWORD)).status_code == 303
    [denied] = [e for e in console.events("http.request") if e.code == "invalid_api_key"]
    assert (denied.principal, denied.auth_method, denied.detail["reason"]) == (
        "dana",
        "console",
        "wrong password",
    )  # the wrong current password was audited and counted like a failed sign-in
    [changed] = admin_events(console, "user.password_changed")
    assert changed.principal == "dana"


async def test_the_password_json_api_and_service_accounts(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client, "dana")
        wrong = await client.post(
            "/console/api/account/password",
            json={"current_password": "nope", "new_password": NEW_PASSWORD},
            headers=api_headers(csrf),
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        ok = await client.post(
            "/console/api/account/password",
            json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
            headers=api_headers(csrf),
        )
        assert ok.status_code == 200
        assert ok.json() == {"changed": True}
    token = console.d.issue("batch")
    async with console.client() as script:
        service = await script.post(
            "/console/api/account/password",
            json={"current_password": "x", "new_password": NEW_PASSWORD},
            headers=bearer(token),
        )
        assert service.json()["error"]["code"] == "not_a_user"


async def test_my_tokens_are_a_subset_of_my_roles_shown_once_and_revocable(console: Console) -> None:
    console.d.store.set_roles("dana", ["generator", "viewer"])
    batch_token = console.d.store.list_tokens("batch")[0]
    async with console.client() as client:
        await signed_in(client, "dana")
        listing = await client.get("/account/tokens", headers=PAGE)
        assert listing.status_code == 200
        csrf = csrf_of(listing)
        made = await client.post(
            "/account/tokens",
            data={"csrf_token": csrf, "label": "laptop", "expires_in": "30d", "roles": "generator"},
            headers=SAME_ORIGIN,
        )
        assert made.status_code == 200
        plaintext = issued_token(made)
        async with console.d.api() as api:
            models = await api.get("/v1/models", headers=bearer(plaintext))
            assert models.status_code == 200
        again = await client.get("/account/tokens", headers=PAGE)
        assert plaintext not in again.text
        assert "laptop" in again.text
        wider = await client.post("/account/tokens", data={"csrf_token": csrf, "roles": "admin"}, headers=SAME_ORIGIN)
        assert wider.status_code == 400
        assert 'id="token-error"' in wider.text
        assert not TOKEN.search(wider.text)
        forever = await client.post("/console/api/tokens", json={"never_expires": True}, headers=api_headers(csrf))
        assert forever.json()["error"]["code"] == "invalid_input"
        mine = (await client.get("/console/api/tokens")).json()["data"]
        assert [t["label"] for t in mine] == ["laptop"]
        assert plaintext not in repr(mine)
        # A token of mine cannot make more tokens: a stolen one cannot breed.
        async with console.client() as script:
            bred = await script.post("/console/api/tokens", json={"expires_in": "1d"}, headers=bearer(plaintext))
            assert bred.status_code == 400
            assert bred.json()["error"]["message"].startswith("a token cannot create tokens")
            own = await script.delete(f"/console/api/tokens/{mine[0]['id']}", headers=bearer(plaintext))
            assert own.json()["error"]["code"] == "invalid_input"  # not the token the script is calling with
        others = await client.post(
            "/account/tokens/revoke", data={"csrf_token": csrf, "token": str(batch_token.id)}, headers=SAME_ORIGIN
        )
        assert others.status_code == 404
        assert (
            await client.delete(f"/console/api/tokens/{batch_token.id}", headers=api_headers(csrf))
        ).status_code == 404
        revoked = await client.post(
            "/account/tokens/revoke", data={"csrf_token": csrf, "token": str(mine[0]["id"])}, headers=SAME_ORIGIN
        )
        assert revoked.status_code == 303
        async with console.d.api() as api:
            assert (await api.get("/v1/models", headers=bearer(plaintext))).status_code == 401
        json_made = await client.post("/console/api/tokens", json={"expires_in": "1h"}, headers=api_headers(csrf))
        assert json_made.status_code == 201
        made_id = json_made.json()["id"]
        assert json_made.json()["roles"] is None  # all of mine
        deleted = await client.delete(f"/console/api/tokens/{made_id}", headers=api_headers(csrf))
        assert deleted.json()["status"] == "revoked"
    record = console.d.store.get_token(batch_token.id)
    assert record is not None
    assert record.revoked_at is None
    assert plaintext not in repr(console.d.audit.events)
    assert [e.principal for e in admin_events(console, "token.created")] == ["dana", "dana"]


# --- CSRF, escaping, languages -----------------------------------------------------------------------


async def test_changes_without_the_sessions_csrf_token_are_refused(console: Console) -> None:
    dana = principal_id(console, "dana")
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        posts = {
            "/users": {"name": "mallory", "kind": "service", "roles": "generator"},
            f"/users/{dana}/enabled": {"enabled": "0"},
            f"/users/{dana}/roles": {"roles": "viewer"},
            "/account/tokens": {"expires_in": "1d"},
            "/account/password": {"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        }
        for path, data in posts.items():
            for token in ({}, {"csrf_token": "0" * 64}):
                resp = await client.post(path, data={**data, **token}, headers=SAME_ORIGIN)
                assert resp.status_code == 403, path
                assert "csrf_failed" in resp.text
            foreign = await client.post(
                path, data={**data, "csrf_token": csrf}, headers={**SAME_ORIGIN, "origin": "https://evil.example"}
            )
            assert foreign.status_code == 403, path
        api = await client.post(
            "/console/api/users", json={"name": "mallory", "roles": ["generator"], "kind": "service"}, headers=ORIGIN
        )
        assert api.status_code == 403
        assert api.json()["error"]["code"] == "csrf_failed"
        delete = await client.delete("/console/api/tokens/1", headers=ORIGIN)
        assert delete.json()["error"]["code"] == "csrf_failed"
    assert console.d.store.get_principal("mallory") is None
    record = console.d.store.get_principal("dana")
    assert record is not None
    assert record.enabled
    assert record.roles == ("generator",)
    assert console.d.store.list_tokens("ada") == []


async def test_typed_markup_is_shown_escaped_on_every_page(console: Console) -> None:
    async with console.client() as client:
        csrf = await signed_in(client, "ada")
        made = await client.post(
            "/console/api/users",
            json={"name": XSS, "kind": "service", "roles": ["generator"]},
            headers=api_headers(csrf),
        )
        assert made.status_code == 201
        evil = made.json()["id"]
        token = await client.post(
            f"/users/{evil}/tokens", data={"csrf_token": csrf, "label": XSS, "expires_in": "1d"}, headers=SAME_ORIGIN
        )
        bad_roles = await client.post(
            f"/users/{evil}/roles", data={"csrf_token": csrf, "roles": XSS}, headers=SAME_ORIGIN
        )
        assert bad_roles.status_code == 400
        refilled = await client.post(
            "/users",
            data={"csrf_token": csrf, "name": XSS + '"><img src=x>', "kind": "user", "roles": XSS, "password": "x"},
            headers=SAME_ORIGIN,
        )
        assert refilled.status_code == 400
        bad_expiry = await client.post(
            f"/users/{evil}/tokens", data={"csrf_token": csrf, "expires_in": "<b>"}, headers=SAME_ORIGIN
        )
        assert bad_expiry.status_code == 400
        pages = [
            token,
            bad_roles,
            refilled,
            bad_expiry,
            await client.get("/users", headers=PAGE),
            await client.get(f"/users/{evil}", headers=PAGE),
        ]
    for page in pages:
        assert "<script>alert(1)" not in page.text, page.url
        assert "<img src=x>" not in page.text
        assert "<b>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, page.url
        assert "<script" not in page.text
        assert "style=" not in page.text


async def test_the_pages_speak_chinese(console: Console) -> None:
    zh = {**PAGE, "accept-language": "zh-CN"}
    batch = principal_id(console, "batch")
    async with console.client() as client:
        await signed_in(client, "ada")
        listing = await client.get("/users", headers=zh)
        detail = await client.get(f"/users/{batch}", headers=zh)
        tokens = await client.get("/account/tokens", headers=zh)
        password = await client.get("/account/password", headers=zh)
        english = await client.get("/users", headers={**PAGE, "accept-language": "en"})
    assert translate("zh-CN", "Users and service accounts") in listing.text
    assert translate("zh-CN", "Create a user or service account") in listing.text
    assert translate("zh-CN", "Create a token") in detail.text
    assert translate("zh-CN", "My API tokens") in tokens.text
    assert translate("zh-CN", "Change my password") in password.text
    assert "Users and service accounts" in english.text
    assert "Users and service accounts" not in listing.text


async def test_an_admin_unlocks_a_user_a_guesser_locked_out(console: Console) -> None:
    """Five wrong passwords from one address lock dana out there; the admin's unlock (naming that
    address) lets her in at once, is audited, and needs users:manage and the CSRF token."""
    dana = console.d.store.get_principal("dana")
    assert dana is not None
    async with console.client(peer=("127.0.0.5", 1000)) as shared, console.client() as admin:
        for _ in range(5):
            assert (await sign_in(shared, "dana", "not her password")).status_code == 401
        assert (await sign_in(shared, "dana")).status_code == 429  # locked at that address
        csrf = await signed_in(admin, "ada")
        forged = await admin.post(f"/users/{dana.id}/unlock", data={"address": "127.0.0.5"}, headers=SAME_ORIGIN)
        bad = await admin.post(
            f"/users/{dana.id}/unlock", data={"csrf_token": csrf, "address": "not an address"}, headers=SAME_ORIGIN
        )
        done = await admin.post(
            f"/users/{dana.id}/unlock", data={"csrf_token": csrf, "address": "127.0.0.5"}, headers=SAME_ORIGIN
        )
        assert (await sign_in(shared, "dana")).status_code == 303
        api = await admin.post(
            f"/console/api/users/{dana.id}/unlock",
            json={"address": "127.0.0.5"},
            headers={"origin": "http://console.test", "x-csrf-token": csrf},
        )
    assert forged.status_code == 403
    assert bad.status_code == 400
    assert done.status_code == 303
    assert api.json() == {"unlocked": "dana", "address": "127.0.0.5"}
    unlocked = [e for e in console.d.audit.events if e.type == "user.unlocked"]
    assert [(e.principal, e.detail["target"], e.detail["address"]) for e in unlocked] == [
        ("ada", "dana", "127.0.0.5"),
        ("ada", "dana", "127.0.0.5"),
    ]
    async with console.client() as designer:
        await signed_in(designer, "dana")
        refused = await designer.post(
            f"/console/api/users/{dana.id}/unlock", json={}, headers={"origin": "http://console.test"}
        )
    assert refused.status_code == 403
