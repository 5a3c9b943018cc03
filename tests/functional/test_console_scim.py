"""Issue 19, item 4: SCIM 2.0 provisioning on the console listener.

Through the real console app (ASGI, in process, as the IdP's HTTP requests would reach it) on a
real state database: SQLite, and the local PostgreSQL for the lifecycle, leaver and role tests.
The request bodies are the shapes Entra ID and Okta send, from their published SCIM guides
(Entra's "Develop a SCIM endpoint" and its SCIM validator; Okta's "SCIM 2.0 protocol reference"):
Entra's PATCH with a `path` per attribute and `"value": "False"` as a string, its `Add`/`Remove`
of `members` with `$ref: null`; Okta's PATCH without a path (`{"value": {"active": false}}`),
its `members[value eq "..."]` removal, its PUT of the whole user with a password.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.databases import BACKENDS
from tests.common.factories import LOOPBACK_PEER, make_settings
from tests.common.servers import serve_in_thread
from tests.functional.test_auth import KEY, Deploy, Deployment, backend, database, deploy  # noqa: F401
from zguard.app.console import create_console_app
from zguard.security.rbac import RoleMappingConflict, map_roles
from zguard.services.auth import RequestInfo
from zguard.services.sessions import SessionService
from zguard.store.scim import ScimStore

pytestmark = pytest.mark.anyio
backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

SECRET = "scim-test-secret-0123456789abcdefghijklmnop"
OTHER_SECRET = "scim-rotated-secret-9876543210zyxwvutsrqpo"
SCIM_HEADERS = {"authorization": f"Bearer {SECRET}", "content-type": "application/scim+json"}
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
ROLE_MAP = {"zg-generators": "generator", "zg-auditors": "auditor", "zg-viewers": "viewer"}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclasses.dataclass
class Scim:
    d: Deployment
    client: httpx.AsyncClient

    async def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self.client.post(f"/scim/v2{path}", json=body, headers={**SCIM_HEADERS, **headers})

    async def get(self, path: str, **params: str) -> httpx.Response:
        return await self.client.get(f"/scim/v2{path}", params=params, headers=SCIM_HEADERS)

    async def patch(self, path: str, *operations: dict[str, Any]) -> httpx.Response:
        body = {"schemas": [PATCH], "Operations": list(operations)}
        return await self.client.patch(f"/scim/v2{path}", json=body, headers=SCIM_HEADERS)

    async def put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.put(f"/scim/v2{path}", json=body, headers=SCIM_HEADERS)

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(f"/scim/v2{path}", headers=SCIM_HEADERS)

    def events(self, kind: str) -> list[Any]:
        return [event for event in self.d.audit.events if event.type == kind]


def deployment(deploy: Deploy, tmp_path: Path, **scim: Any) -> Deployment:
    settings = make_settings(
        tmp_path / "state",
        api_auth={"enabled": True},
        generation={"min_side": 16},
        console={"totp_required_roles": []},
        identity={"scim": {"enabled": True, "token_sha256": [digest(SECRET), digest(OTHER_SECRET)], **scim}},
    )
    return deploy(settings)


@pytest.fixture
async def scim(deploy: Deploy, tmp_path: Path) -> Any:
    d = deployment(deploy, tmp_path, group_role_map=ROLE_MAP, failed_attempts_per_address="3/minute")
    async with d.console() as client:
        yield Scim(d, client)


def scim_error(resp: httpx.Response, status: int, scim_type: str | None = None) -> str:
    """Assert the SCIM error shape (RFC 7644 3.12); return its detail."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/scim+json"
    body = resp.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type
    assert set(body) <= {"schemas", "status", "scimType", "detail"}
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return str(body["detail"])


def entra_user(name: str, external_id: str = "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef") -> dict[str, Any]:
    return {
        "schemas": [USER, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": external_id,
        "userName": name,
        "active": True,
        "displayName": "Dana Li",
        "emails": [{"primary": True, "type": "work", "value": name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Dana Li", "familyName": "Li", "givenName": "Dana"},
        "roles": [],
    }


def okta_user(name: str, *, active: bool = True) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": name,
        "name": {"givenName": "Test", "familyName": "User"},
        "emails": [{"primary": True, "value": name, "type": "work"}],
        "displayName": "Test User",
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [],
        "password": "1mz050nq",
        "active": active,
    }


async def created(scim: Scim, body: dict[str, Any], path: str = "/Users") -> dict[str, Any]:
    resp = await scim.post(path, body)
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"] == "application/scim+json"
    resource: dict[str, Any] = resp.json()
    assert resp.headers["location"] == f"/scim/v2{path}/{resource['id']}"
    return resource


# --- the credential ---------------------------------------------------------------------------


async def test_only_the_scim_bearer_opens_scim_and_guessing_is_limited(scim: Scim) -> None:
    token = scim.d.principal("batch", "admin")  # a zguard API key of an admin: not SCIM's credential
    for headers in (
        {},
        {"authorization": "Bearer wrong-secret"},
        {"authorization": f"Bearer {token}"},
    ):
        resp = await scim.client.get("/scim/v2/Users", headers=headers)
        scim_error(resp, 401)
        assert resp.headers["www-authenticate"] == 'Bearer realm="zguard-scim"'
    scim_error(await scim.client.get("/scim/v2/Users", headers={"authorization": f"Basic {SECRET}"}), 429)
    denied = scim.events("http.request")
    assert [e.code for e in denied[-4:]] == ["scim_unauthorized"] * 3 + ["too_many_failed_logins"]
    assert all("scim.denied" in str(e.detail.get("decisions")) for e in denied[-4:])
    # Past 3 failures a minute the address is refused outright (429) ...
    resp = await scim.client.get("/scim/v2/Users", headers={"authorization": "Bearer another-guess"})
    scim_error(resp, 429)
    assert int(resp.headers["retry-after"]) >= 1
    # ... while the right secret, and the second one listed for rotation, still work.
    for secret in (SECRET, OTHER_SECRET):
        resp = await scim.client.get("/scim/v2/Users", headers={"authorization": f"Bearer {secret}"})
        assert resp.status_code == 200, resp.text
    # The SCIM secret opens nothing else: not the console's JSON API, not the API listener.
    resp = await scim.client.get("/console/api/session", headers={"authorization": f"Bearer {SECRET}"})
    assert resp.status_code == 401
    async with scim.d.api() as api:
        assert (await api.get("/v1/models", headers={"authorization": f"Bearer {SECRET}"})).status_code == 401


async def test_discovery_routes_answer_and_stay_out_of_the_openapi_document(scim: Scim) -> None:
    config = (await scim.get("/ServiceProviderConfig")).json()
    assert config["patch"] == {"supported": True}
    assert config["bulk"]["supported"] is False
    assert config["authenticationSchemes"][0]["type"] == "oauthbearertoken"
    types = (await scim.get("/ResourceTypes")).json()
    assert types["schemas"] == [LIST]
    assert [t["endpoint"] for t in types["Resources"]] == ["/Users", "/Groups"]
    schemas = (await scim.get("/Schemas")).json()
    assert [s["id"] for s in schemas["Resources"]] == [USER, GROUP]
    app = create_console_app(scim.d.settings, scim.d.runtime.services)
    scim_routes = [r for r in app.routes if getattr(r, "path", "").startswith("/scim/v2")]
    assert len(scim_routes) >= 15
    assert all(getattr(r, "include_in_schema", True) is False for r in scim_routes)
    assert "/scim" not in str(app.openapi())
    # Unknown endpoints and methods are SCIM 404s, after the credential check.
    scim_error(await scim.get("/Bulk"), 404)
    scim_error(await scim.client.delete("/scim/v2/Users", headers=SCIM_HEADERS), 404)
    scim_error(await scim.client.get("/scim/v2/Bulk"), 401)


# --- users ------------------------------------------------------------------------------------


@backends
async def test_entra_id_user_lifecycle(scim: Scim) -> None:
    name = "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1@bank.example"
    # Entra first looks the user up by its matching attribute, then creates it.
    empty = (await scim.get("/Users", filter=f'userName eq "{name}"')).json()
    assert empty == {"schemas": [LIST], "totalResults": 0, "startIndex": 1, "itemsPerPage": 0, "Resources": []}
    user = await created(scim, entra_user(name))
    assert user["userName"] == name
    assert user["active"] is True
    assert user["displayName"] == "Dana Li"
    assert user["externalId"] == "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
    assert "emails" not in user
    assert "name" not in user
    record = scim.d.store.get_principal(name)
    assert record is not None
    assert (record.source, record.issuer, record.subject) == ("scim", "scim", user["id"])
    assert record.roles == ()
    assert record.enabled
    assert (await scim.get(f"/Users/{user['id']}")).json() == user
    found = (await scim.get("/Users", filter=f'userName eq "{name.upper()}"')).json()  # caseExact false
    assert found["totalResults"] == 1
    assert found["Resources"][0]["id"] == user["id"]
    by_external = (await scim.get("/Users", filter='externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"')).json()
    assert by_external["totalResults"] == 1
    # Entra's attribute updates: attributes zguard keeps change, the others are accepted and ignored.
    resp = await scim.patch(
        f"/Users/{user['id']}",
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
        {"op": "Replace", "path": "displayName", "value": "Dana Li-Wong"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["displayName"] == "Dana Li-Wong"
    # Entra disables with the string "False" (and without the feature flag, always so).
    resp = await scim.patch(f"/Users/{user['id']}", {"op": "Replace", "path": "active", "value": "False"})
    assert resp.json()["active"] is False
    assert scim.d.store.get_principal(name).enabled is False  # type: ignore[union-attr]
    resp = await scim.patch(f"/Users/{user['id']}", {"op": "Replace", "path": "active", "value": True})
    assert resp.json()["active"] is True
    renamed = f"renamed-{name}"
    resp = await scim.patch(f"/Users/{user['id']}", {"op": "Replace", "path": "userName", "value": renamed})
    assert resp.json()["userName"] == renamed
    assert scim.d.store.get_principal(name) is None
    assert scim.d.store.get_principal(renamed) is not None
    assert (await scim.delete(f"/Users/{user['id']}")).status_code == 204
    assert scim.d.store.get_principal(renamed) is None
    scim_error(await scim.get(f"/Users/{user['id']}"), 404)
    scim_error(await scim.delete(f"/Users/{user['id']}"), 404)
    kinds = [e.type for e in scim.d.audit.events if e.type.startswith("scim.")]
    assert kinds == [
        "scim.user_created",
        "scim.user_updated",
        "scim.user_deactivated",
        "scim.user_reactivated",
        "scim.user_updated",
        "scim.user_deleted",
    ]
    assert {e.principal for e in scim.d.audit.events if e.type.startswith("scim.")} == {"scim:idp"}
    assert scim.events("scim.user_deleted")[0].detail["target"] == renamed  # the trail keeps the name


async def test_okta_user_lifecycle(scim: Scim) -> None:
    # Okta's "test connection": the first page of two.
    probe = (await scim.get("/Users", startIndex="1", count="2")).json()
    assert probe["totalResults"] == 0
    assert probe["Resources"] == []
    user = await created(scim, okta_user("test.user@okta.local"))
    assert scim.d.store.get_principal("test.user@okta.local").password_hash is None  # type: ignore[union-attr]
    # PUT of the whole user, as Okta's app integrations update.
    body = {**okta_user("test.user@okta.local"), "id": user["id"], "displayName": "Tess User"}
    resp = await scim.put(f"/Users/{user['id']}", body)
    assert resp.status_code == 200
    assert resp.json()["displayName"] == "Tess User"
    # Okta deactivates with a PATCH without a path.
    resp = await scim.patch(f"/Users/{user['id']}", {"op": "replace", "value": {"active": False}})
    assert resp.status_code == 200
    assert resp.json()["active"] is False
    assert [e.detail["target"] for e in scim.events("scim.user_deactivated")] == ["test.user@okta.local"]
    # And reactivates with a PUT carrying active: true.
    resp = await scim.put(f"/Users/{user['id']}", {**body, "active": True})
    assert resp.json()["active"] is True
    # Pagination: startIndex is 1-based, count is cut to max_page_size.
    for n in range(3):
        await created(scim, okta_user(f"user{n}@okta.local"))
    page = (await scim.get("/Users", startIndex="2", count="2")).json()
    assert page["totalResults"] == 4
    assert page["startIndex"] == 2
    assert page["itemsPerPage"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["user0@okta.local", "user1@okta.local"]
    assert (await scim.get("/Users", startIndex="0", count="-1")).json()["itemsPerPage"] == 0


async def test_scim_never_takes_over_or_touches_a_local_user(scim: Scim) -> None:
    scim.d.principal("dana", "generator", kind="user", password="correct horse battery staple")
    for name in ("dana", "DANA"):
        detail = scim_error(await scim.post("/Users", okta_user(name)), 409, "uniqueness")
        assert "dana" in detail.lower()
    local = scim.d.store.get_principal("dana")
    assert local is not None
    assert local.source == "local"
    assert local.enabled
    assert (await scim.get("/Users", filter='userName eq "dana"')).json()["totalResults"] == 0
    scim_error(await scim.patch(f"/Users/{local.id}", {"op": "replace", "value": {"active": False}}), 404)
    scim_error(await scim.delete(f"/Users/{local.id}"), 404)
    assert scim.d.store.get_principal("dana").enabled  # type: ignore[union-attr]
    # A rename onto the local name is refused the same way, and audited.
    user = await created(scim, okta_user("erin@bank.example"))
    resp = await scim.patch(f"/Users/{user['id']}", {"op": "replace", "path": "userName", "value": "Dana"})
    scim_error(resp, 409, "uniqueness")
    assert [e.detail["reason"] for e in scim.events("scim.refused")] == ["name taken"] * 3
    # Two SCIM users cannot share a name either.
    scim_error(await scim.post("/Users", okta_user("ERIN@bank.example")), 409, "uniqueness")


# --- the leaver --------------------------------------------------------------------------------


@backends
async def test_a_leaver_deactivated_by_the_idp_loses_sessions_and_tokens_at_the_next_request(scim: Scim) -> None:
    user = await created(scim, entra_user("leaver@bank.example"))
    group = await created(scim, {"schemas": [GROUP], "displayName": "zg-generators", "members": []}, "/Groups")
    resp = await scim.patch(
        f"/Groups/{group['id']}", {"op": "Add", "path": "members", "value": [{"$ref": None, "value": user["id"]}]}
    )
    assert resp.status_code == 200, resp.text
    assert scim.d.store.get_principal("leaver@bank.example").roles == ("generator",)  # type: ignore[union-attr]
    # The user signed in (as an OIDC or LDAP login would make the session) and holds an API token.
    sessions = scim.d.runtime.services.sessions
    assert isinstance(sessions, SessionService)
    signed_in = await sessions.login_verified(
        "leaver@bank.example", RequestInfo(client="127.0.0.1"), method="oidc", detail={}
    )
    cookie = {"cookie": f"zguard-session={signed_in.cookie}"}
    token = scim.d.issue("leaver@bank.example")
    async with scim.d.api() as api:
        assert (await scim.client.get("/console/api/session", headers=cookie)).status_code == 200
        # Neither the user's session nor its token opens /scim/v2 (a browser cannot be made to provision).
        scim_error(await scim.client.post("/scim/v2/Users", json=okta_user("x@bank.example"), headers=cookie), 401)
        scim_error(await scim.client.get("/scim/v2/Users", headers={"authorization": f"Bearer {token}"}), 401)
        assert (await api.get("/v1/models", headers={"authorization": f"Bearer {token}"})).status_code == 200
        # HR removes the person; Entra sends its PATCH.
        resp = await scim.patch(f"/Users/{user['id']}", {"op": "Replace", "path": "active", "value": "False"})
        assert resp.status_code == 200
        assert resp.json()["active"] is False
        resp = await scim.client.get("/console/api/session", headers=cookie)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "session_expired"
        resp = await api.get("/v1/models", headers={"authorization": f"Bearer {token}"})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
        # Deleted afterwards: the principal, its tokens and sessions are gone; the trail keeps the name.
        assert (await scim.delete(f"/Users/{user['id']}")).status_code == 204
        assert scim.d.store.get_principal("leaver@bank.example") is None
        assert scim.d.store.list_tokens() == []
        assert (await api.get("/v1/models", headers={"authorization": f"Bearer {token}"})).status_code == 401
    group_now = (await scim.get(f"/Groups/{group['id']}")).json()
    assert group_now["members"] == []
    assert [e.detail["target"] for e in scim.events("scim.user_deactivated")] == ["leaver@bank.example"]
    ended = [e for e in scim.d.audit.events if "console.session_ended" in str(e.detail.get("decisions"))]
    assert [e.principal for e in ended] == ["leaver@bank.example"]
    assert [e.detail.get("reason") for e in ended] == ["credentials_changed"]


# --- groups and roles --------------------------------------------------------------------------


@backends
async def test_group_memberships_move_roles_and_separated_duties_are_refused(scim: Scim) -> None:
    dana = await created(scim, entra_user("dana@bank.example", "ext-dana"))
    erin = await created(scim, okta_user("erin@bank.example"))
    # Entra's group shape, created empty; Okta's, created with a member.
    generators = await created(
        scim,
        {
            "schemas": [GROUP, "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "zg-generators",
            "meta": {"resourceType": "Group"},
        },
        "/Groups",
    )
    auditors = await created(
        scim, {"schemas": [GROUP], "displayName": "zg-auditors", "members": [{"value": erin["id"]}]}, "/Groups"
    )
    assert scim.d.store.get_principal("erin@bank.example").roles == ("auditor",)  # type: ignore[union-attr]
    resp = await scim.patch(
        f"/Groups/{generators['id']}",
        {"op": "Add", "path": "members", "value": [{"$ref": None, "value": dana["id"]}]},
    )
    assert [m["value"] for m in resp.json()["members"]] == [dana["id"]]
    assert scim.d.store.get_principal("dana@bank.example").roles == ("generator",)  # type: ignore[union-attr]
    assert (await scim.get(f"/Users/{dana['id']}")).json()["groups"][0]["display"] == "zg-generators"
    # Dana into the auditors too: generator + auditor are separated duties. Refused, nothing changed.
    before = scim.d.store.auth_version()
    resp = await scim.patch(
        f"/Groups/{auditors['id']}", {"op": "add", "path": "members", "value": [{"value": dana["id"]}]}
    )
    detail = scim_error(resp, 409)
    assert "zg-auditors" in detail
    assert "zg-generators" in detail
    assert scim.d.store.get_principal("dana@bank.example").roles == ("generator",)  # type: ignore[union-attr]
    members = (await scim.get(f"/Groups/{auditors['id']}")).json()["members"]
    assert [m["value"] for m in members] == [erin["id"]]
    assert scim.d.store.auth_version() == before
    refused = scim.events("scim.refused")
    assert len(refused) == 1
    assert refused[0].code == "scim_role_conflict"
    assert refused[0].detail["groups"] == "zg-auditors,zg-generators"
    # Okta's removal of one member by path; the roles follow.
    resp = await scim.patch(
        f"/Groups/{generators['id']}", {"op": "remove", "path": f'members[value eq "{dana["id"]}"]'}
    )
    assert resp.status_code == 200
    assert resp.json()["members"] == []
    assert scim.d.store.get_principal("dana@bank.example").roles == ()  # type: ignore[union-attr]
    # Entra's removal by value list, then Okta's rename without a path: the new name maps to viewer.
    await scim.patch(f"/Groups/{auditors['id']}", {"op": "Remove", "path": "members", "value": [{"value": erin["id"]}]})
    assert scim.d.store.get_principal("erin@bank.example").roles == ()  # type: ignore[union-attr]
    await scim.patch(f"/Groups/{auditors['id']}", {"op": "add", "path": "members", "value": [{"value": erin["id"]}]})
    resp = await scim.patch(
        f"/Groups/{auditors['id']}", {"op": "replace", "value": {"id": auditors["id"], "displayName": "zg-viewers"}}
    )
    assert resp.json()["displayName"] == "zg-viewers"
    assert scim.d.store.get_principal("erin@bank.example").roles == ("viewer",)  # type: ignore[union-attr]
    # Lookups Entra and Okta make, with Entra's excludedAttributes.
    found = (await scim.get("/Groups", filter='displayName eq "zg-viewers"', excludedAttributes="members")).json()
    assert found["totalResults"] == 1
    assert "members" not in found["Resources"][0]
    by_external = (await scim.get("/Groups", filter='externalId eq "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159"')).json()
    assert [g["id"] for g in by_external["Resources"]] == [generators["id"]]
    # PUT replaces the members (Okta), DELETE takes the roles away with the group.
    resp = await scim.put(
        f"/Groups/{auditors['id']}",
        {"schemas": [GROUP], "displayName": "zg-viewers", "members": [{"value": dana["id"]}]},
    )
    assert [m["value"] for m in resp.json()["members"]] == [dana["id"]]
    assert scim.d.store.get_principal("erin@bank.example").roles == ()  # type: ignore[union-attr]
    assert (await scim.delete(f"/Groups/{auditors['id']}")).status_code == 204
    assert scim.d.store.get_principal("dana@bank.example").roles == ()  # type: ignore[union-attr]
    scim_error(await scim.get(f"/Groups/{auditors['id']}"), 404)
    # A second group with a taken name is a uniqueness conflict.
    scim_error(await scim.post("/Groups", {"schemas": [GROUP], "displayName": "zg-generators"}), 409, "uniqueness")
    moved = [(e.detail["target"], e.detail["roles"]) for e in scim.events("scim.roles_changed")]
    assert moved[:2] == [("erin@bank.example", "auditor"), ("dana@bank.example", "generator")]


async def test_without_a_role_map_scim_leaves_roles_to_the_administrators(deploy: Deploy, tmp_path: Path) -> None:
    d = deployment(deploy, tmp_path)
    async with d.console() as client:
        scim = Scim(d, client)
        user = await created(scim, okta_user("frank@bank.example"))
        d.store.set_roles("frank@bank.example", ["viewer"])
        group = await created(scim, {"schemas": [GROUP], "displayName": "zg-generators"}, "/Groups")
        await scim.patch(f"/Groups/{group['id']}", {"op": "add", "path": "members", "value": [{"value": user["id"]}]})
        assert d.store.get_principal("frank@bank.example").roles == ("viewer",)  # type: ignore[union-attr]


# --- refusals ----------------------------------------------------------------------------------


async def test_every_refusal_is_a_scim_error_never_a_500(scim: Scim) -> None:
    user = await created(scim, okta_user("gail@bank.example"))
    uid = user["id"]
    url = "/scim/v2/Users"
    cases: list[tuple[httpx.Response, int, str | None]] = [
        (await scim.client.post(url, content=b"{not json", headers=SCIM_HEADERS), 400, "invalidSyntax"),
        (await scim.client.post(url, content=b"[1, 2]", headers=SCIM_HEADERS), 400, "invalidSyntax"),
        (await scim.client.post(url, content=b"{}", headers={**SCIM_HEADERS, "content-type": "text/plain"}), 415, None),
        (await scim.post("/Users", {"schemas": [USER], "active": True}), 400, "invalidValue"),
        (await scim.post("/Users", {**okta_user("x@bank.example"), "active": "maybe"}), 400, "invalidValue"),
        (await scim.post("/Users", {**okta_user("x\u0000y")}), 400, "invalidValue"),
        (await scim.post("/Users", okta_user("z" * 300)), 400, "invalidValue"),
        (await scim.get("/Users", filter='userName sw "g"'), 400, "invalidFilter"),
        (await scim.get("/Users", filter='title eq "boss"'), 400, "invalidFilter"),
        (await scim.get("/Users", filter='userName eq "g" or userName eq "h"'), 400, "invalidFilter"),
        (await scim.get("/Users", filter='userName eq "' + "g" * 600 + '"'), 400, "invalidFilter"),
        (await scim.get("/Groups", filter='userName eq "g"'), 400, "invalidFilter"),
        (await scim.get("/Users", count="many"), 400, "invalidValue"),
        (await scim.patch(f"/Users/{uid}", {"op": "move", "path": "active", "value": False}), 400, "invalidSyntax"),
        (await scim.patch(f"/Users/{uid}", {"op": "remove", "path": "active"}), 400, "mutability"),
        (await scim.patch(f"/Users/{uid}", {"op": "replace", "value": "active"}), 400, "noTarget"),
        (await scim.patch(f"/Users/{uid}", {"op": "replace", "path": "active", "value": "nope"}), 400, "invalidValue"),
        (
            await scim.client.patch(f"{url}/{uid}", json={"schemas": [PATCH]}, headers=SCIM_HEADERS),
            400,
            "invalidSyntax",
        ),
        (await scim.patch("/Users/nobody", {"op": "replace", "value": {"active": False}}), 404, None),
        (
            await scim.post("/Groups", {"schemas": [GROUP], "displayName": "g", "members": [{"value": "nobody"}]}),
            400,
            "invalidValue",
        ),
        (await scim.post("/Groups", {"schemas": [GROUP], "members": []}), 400, "invalidValue"),
        (await scim.patch("/Groups/nobody", {"op": "add", "path": "members", "value": [{"value": uid}]}), 404, None),
    ]
    for resp, status, scim_type in cases:
        scim_error(resp, status, scim_type)
    big = {**okta_user("h@bank.example"), "displayName": "h" * 20_000}
    resp = await scim.client.post(url, json=big, headers=SCIM_HEADERS)
    assert resp.status_code == 413
    # Nothing half-made, and every refusal is in the trail with its code.
    assert (await scim.get("/Users")).json()["totalResults"] == 1
    codes = {e.code for e in scim.events("http.request") if e.outcome == "denied"}
    assert {"scim_invalid_request", "scim_not_found", "unsupported_media_type", "request_too_large"} <= codes
    assert all(e.code != "internal_error" for e in scim.d.audit.events)


async def test_scim_is_not_served_when_off(deploy: Deploy, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "state", api_auth={"enabled": True}, generation={"min_side": 16})
    d = deploy(settings)
    assert d.runtime.services.scim is None
    app = create_console_app(settings, d.runtime.services)
    assert not [r for r in app.routes if getattr(r, "path", "").startswith("/scim")]
    transport = httpx.ASGITransport(app=app, client=LOOPBACK_PEER)
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        resp = await client.get("/scim/v2/Users", headers={"authorization": f"Bearer {SECRET}"})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"


async def test_over_a_real_loopback_socket(deploy: Deploy, tmp_path: Path) -> None:
    """The same requests through uvicorn, as the IdP's HTTP client sends them (framing, media types)."""
    d = deployment(deploy, tmp_path)
    with serve_in_thread(create_console_app(d.settings, d.runtime.services)) as base:
        async with httpx.AsyncClient(base_url=base, headers={"host": "127.0.0.1"}) as client:
            resp = await client.post("/scim/v2/Users", json=okta_user("ivy@bank.example"), headers=SCIM_HEADERS)
            assert resp.status_code == 201, resp.text
            assert resp.headers["content-type"] == "application/scim+json"
            patch = {"schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": False}}]}
            resp = await client.patch(f"/scim/v2/Users/{resp.json()['id']}", json=patch, headers=SCIM_HEADERS)
            assert resp.json()["active"] is False
            scim_error(await client.get("/scim/v2/Users", headers={"authorization": "Bearer nope"}), 401)
    assert d.store.get_principal("ivy@bank.example").enabled is False  # type: ignore[union-attr]


def race(
    store: ScimStore, group: str, user: str, *, roles_for: Any, barrier: threading.Barrier, outcomes: list[str]
) -> None:
    """Add `user` to `group` as soon as the other thread is ready too; record what happened."""
    barrier.wait()
    try:
        store.update_group(group, roles_for=roles_for, add=[user])
        outcomes.append("added")
    except RoleMappingConflict:
        outcomes.append("refused")
    except Exception as exc:  # noqa: BLE001 - a deadlock or any other failure: the test's assertion names it
        outcomes.append(type(exc).__name__)


@backends
def test_two_concurrent_group_changes_never_grant_separated_duties_together(deploy: Deploy, tmp_path: Path) -> None:
    """Two replicas add one user to the generators and to the auditors at the same moment: one of
    the changes wins, the other is refused; never both, and never a deadlock or a busy error."""
    d = deployment(deploy, tmp_path, group_role_map=ROLE_MAP)
    registry = d.settings.role_registry()

    def roles_for(names: Any) -> frozenset[str]:
        return map_roles(names, ROLE_MAP, registry)

    stores = (ScimStore(d.store.engine), ScimStore(d.other.engine))
    generators, _ = stores[0].create_group("g" * 32, "zg-generators", external_id=None, members=(), roles_for=roles_for)
    auditors, _ = stores[0].create_group("a" * 32, "zg-auditors", external_id=None, members=(), roles_for=roles_for)
    for round_ in range(12):
        user = stores[0].create_user(
            f"{round_:032x}", f"race{round_}", external_id=None, display_name=None, active=True, roles_for=roles_for
        )
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(
                target=race,
                args=(store, group, user.scim_id),
                kwargs={"roles_for": roles_for, "barrier": barrier, "outcomes": outcomes},
            )
            for store, group in ((stores[0], generators.scim_id), (stores[1], auditors.scim_id))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(outcomes) == ["added", "refused"], outcomes
        record = stores[0].get_user(user.scim_id)
        assert record is not None
        assert len(record.groups) == 1
        assert len(record.roles) == 1
