"""LDAP sign-in (identity.ldap) through the real API and console apps, against a real slapd.

slapd (tests.common.slapd) runs once for the session on 127.0.0.1 with the test CA's certificate,
serving LDAPS and StartTLS, loaded with users and nested groups from LDIF; its `-d stats` log says
which binds reached it. The `AuthService` is built by `zguard.serve.wiring.build_auth` from
settings with `identity.ldap` on, as `zguard serve` builds it, on a real state database (SQLite).
OpenLDAP lacks AD's LDAP_MATCHING_RULE_IN_CHAIN, so `nested_groups_method: auto` finds nested
groups here by the recursive search (asserted: `nested: recursive`).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.factories import api_client, console_client, make_settings, ready_runtime
from tests.common.pki import Pki, make_pki
from tests.common.slapd import GROUPS_DN, SERVICE_DN, SERVICE_PASSWORD, SUFFIX, USER_PASSWORDS, USERS_DN, Slapd
from tests.functional.test_errors import assert_error
from zguard.audit import AuditEvent
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.config.identity_ldap import LdapSettings
from zguard.engine.pipeline import DiffusersEngine
from zguard.ops.ldap_check import ldap_finding
from zguard.security.passwords import hash_password
from zguard.serve.wiring import Runtime, build_auth
from zguard.services.auth import INVALID, AuthService
from zguard.services.ldap_auth import in_chain_filter
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))
ADMIN_PASSWORD = "break-glass admin 1"
LOCAL_PASSWORD = "local user password 2"
ROLE_MAP = {"zg-generators": "generator", f"CN=zg-auditors,OU=groups,{SUFFIX.upper()}": "auditor"}
FORM = {
    "accept": "text/html,application/xhtml+xml",
    "origin": "http://console.test",
    "content-type": "application/x-www-form-urlencoded",
}


@pytest.fixture(scope="session")
def ldap_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("ldap-pki"))


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory, ldap_pki: Pki) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"), ldap_pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def running(slapd: Slapd) -> Slapd:
    slapd.start()  # a test that stopped it restarts it here
    return slapd


def ldap_section(slapd: Slapd, pki: Pki, **overrides: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "url": slapd.ldaps_url,
        "ca_file": str(pki.ca),
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "user_base_dn": SUFFIX,
        "group_base_dn": GROUPS_DN,
        "nested_groups": True,
        "role_map": ROLE_MAP,
        "timeout_s": 2,
        **overrides,
    }


@dataclasses.dataclass
class Deployment:
    settings: Settings
    store: PrincipalStore
    audit: MemoryAuditSink
    runtime: Runtime
    slapd: Slapd

    def api(self) -> httpx.AsyncClient:
        return api_client(self.settings, self.runtime)

    def console(self) -> httpx.AsyncClient:
        return console_client(self.settings, self.runtime)

    def events(self, decision: str) -> list[AuditEvent]:
        """Request events in which `decision` (an event type) was folded, and lone events of it."""
        return [e for e in self.audit.events if e.type == decision or decision in str(e.detail.get("decisions") or "")]


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(tmp_path: Path, demo_engine: DiffusersEngine, running: Slapd, ldap_pki: Pki) -> Iterator[Deploy]:
    runtimes: list[Runtime] = []
    engines: list[Any] = []

    def build(*, api_auth: dict[str, Any] | None = None, **ldap: Any) -> Deployment:
        state = tmp_path / f"state{len(runtimes)}"
        state.mkdir()
        settings = make_settings(
            state,
            api_auth={
                "enabled": True,
                "users": [
                    {"username": "root-admin", "password": hash_password(ADMIN_PASSWORD, cost=4), "roles": ["admin"]}
                ],
                **(api_auth or {}),
            },
            generation={"min_side": 16},
            console={"totp_required_roles": []},
            identity={"ldap": ldap_section(running, ldap_pki, **ldap)},
        )
        engine = create_store_engine(f"sqlite:///{state / 'zguard.db'}")
        engines.append(engine)
        migrate.upgrade(engine)
        store = PrincipalStore(engine)
        store.create_principal("dana", "user", roles=["generator"], password_hash=hash_password(LOCAL_PASSWORD, cost=4))
        audit = MemoryAuditSink()
        runtime = ready_runtime(settings, demo_engine, build_auth(settings, store, KEY, audit=audit))
        runtimes.append(runtime)
        return Deployment(settings, store, audit, runtime, running)

    yield build
    for runtime in runtimes:
        runtime.worker.stop(timeout=10)
        auth = runtime.services.auth
        assert isinstance(auth, AuthService)
        auth.close()  # the directory's pooled TLS connections
    for engine in engines:
        engine.dispose()


def basic(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def refused(resp: httpx.Response) -> str:
    return assert_error(resp, 401, "invalid_api_key", error_type="authentication_error")


def denials(d: Deployment) -> list[tuple[Any, Any]]:
    return [(e.code, e.detail.get("reason")) for e in d.audit.events if e.code is not None]


# --- signed in --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ldaps", "starttls"])
async def test_basic_with_a_directory_password_calls_the_api_as_an_ldap_principal(
    deploy: Deploy, running: Slapd, transport: str
) -> None:
    d = deploy() if transport == "ldaps" else deploy(url=running.ldap_url, start_tls=True)
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert resp.status_code == 200, resp.text
    record = d.store.get_principal("alice")
    assert record is not None
    assert (record.source, record.kind, record.roles, record.password_hash) == ("ldap", "user", ("generator",), None)
    assert record.subject
    assert record.subject != f"uid=alice,{USERS_DN}"
    assert record.issuer == d.settings.identity.ldap.url
    allowed = [e for e in d.audit.events if e.outcome == "allowed"]
    assert [(e.principal, e.roles) for e in allowed] == [("alice", ("generator",))]
    assert allowed[0].detail["source"] == "ldap"
    assert allowed[0].detail["dn"] == f"uid=alice,{USERS_DN}"


async def test_the_console_form_signs_a_nested_group_member_in_with_the_mapped_role(deploy: Deploy) -> None:
    d = deploy()
    async with d.console() as client:
        resp = await client.post("/login", data={"username": "bob", "password": USER_PASSWORDS["bob"]}, headers=FORM)
        assert resp.status_code == 303, resp.text
        home = await client.get("/", headers={"accept": "text/html"})
        assert home.status_code == 200
        assert "bob" in home.text
    record = d.store.get_principal("bob")
    assert record is not None
    assert (record.source, record.roles) == ("ldap", ("auditor",))  # team-audit ∈ zg-auditors, by DN in role_map
    logins = [e for e in d.audit.events if e.type == "console.login"]
    assert [(e.principal, e.roles) for e in logins] == [("bob", ("auditor",))]
    directory = [e for e in d.audit.events if e.detail.get("nested") == "recursive"]
    assert directory
    assert directory[0].detail["groups"] == 2


async def test_basic_credentials_are_cached_so_a_second_request_binds_no_more(deploy: Deploy, running: Slapd) -> None:
    d = deploy()
    async with d.api() as api:
        first = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
        binds = running.binds("uid=alice,")
        second = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert (first.status_code, second.status_code) == (200, 200)
    assert running.binds("uid=alice,") == binds >= 1


# --- refused ----------------------------------------------------------------------------------


async def test_a_wrong_directory_password_is_refused_exactly_like_a_wrong_local_one(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        ldap_wrong = await api.get("/v1/models", headers=basic("alice", "not-her-password"))
        local_wrong = await api.get("/v1/models", headers=basic("dana", "not-her-password"))
        unknown = await api.get("/v1/models", headers=basic("nobody-at-all", "whatever"))
    assert refused(ldap_wrong) == refused(local_wrong) == refused(unknown) == INVALID
    assert ldap_wrong.json() == local_wrong.json() == unknown.json()
    assert d.store.get_principal("alice") is None
    assert ("invalid_api_key", "wrong_password") in denials(d)
    assert ("invalid_api_key", "no_entry") in denials(d)


@pytest.mark.parametrize("password", ["", " ", "\t \t"])
async def test_an_empty_or_blank_password_is_refused_before_any_bind_reaches_the_directory(
    deploy: Deploy, running: Slapd, password: str
) -> None:
    d = deploy()
    before = running.all_binds()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("alice", password))
    async with d.console() as client:
        form = await client.post("/login", data={"username": "alice", "password": password}, headers=FORM)
    assert refused(resp) == INVALID
    assert form.status_code in (400, 401)
    assert "alice" not in form.headers.get("set-cookie", "")
    assert running.all_binds() == before  # not even the service account: nothing was asked
    assert ("invalid_api_key", "empty_password") in denials(d)


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        ("*)(uid=*", "no_entry"),  # filter injection: one literal value, matches nobody
        ("*", "no_entry"),
        (f"alice,{USERS_DN}", "no_entry"),  # DN injection: a search value, never a DN
        ("alice)(|(uid=*", "no_entry"),
        ("twin", "several_entries"),  # uid=twin in two OUs: neither is bound
    ],
)
async def test_injected_or_ambiguous_names_bind_as_nobody(
    deploy: Deploy, running: Slapd, username: str, reason: str
) -> None:
    d = deploy()
    users_before = running.binds(USERS_DN) + running.binds("ou=contractors,")
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic(username, USER_PASSWORDS["alice"]))
    assert refused(resp) == INVALID
    assert running.binds(USERS_DN) + running.binds("ou=contractors,") == users_before  # no user was bound
    assert ("invalid_api_key", reason) in denials(d)
    assert d.store.get_principal("alice") is None
    searches = [line for line in running.text().splitlines() if "SRCH base=" in line and "filter=" in line]
    assert "(uid=*" not in searches[-1]  # what reached slapd: the value escaped, e.g. (uid=\2A\29\28uid=\2A)


async def test_groups_that_combine_separated_duties_are_refused_naming_them(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("carol", USER_PASSWORDS["carol"]))
    message = refused(resp)
    assert "zg-generators" in message
    assert ROLE_MAP_AUDITORS in message
    assert "separation of duties" in message
    conflict = [e for e in d.audit.events if e.detail.get("reason") == "sod_conflict"]
    assert conflict
    assert "zg-generators" in str(conflict[0].detail["groups"])
    assert d.store.get_principal("carol") is None
    async with d.console() as client:  # the login page names them too, after the right password only
        page = await client.post(
            "/login", data={"username": "carol", "password": USER_PASSWORDS["carol"]}, headers=FORM
        )
        wrong = await client.post("/login", data={"username": "carol", "password": "not-her-password"}, headers=FORM)
    assert page.status_code == 401
    assert "zg-generators" in page.text
    assert "separation of duties" in page.text
    assert "zg-generators" not in wrong.text
    assert "The username or password is wrong." in wrong.text


ROLE_MAP_AUDITORS = f"CN=zg-auditors,OU=groups,{SUFFIX.upper()}"


async def test_a_directory_whose_certificate_does_not_chain_to_ca_file_is_refused(
    deploy: Deploy, running: Slapd, ldap_pki: Pki
) -> None:
    d = deploy(ca_file=str(ldap_pki.other_ca))
    before = running.all_binds()
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert_error(resp, 503, "identity_provider_unavailable", error_type="server_error")
    assert running.all_binds() == before  # the service account's password never left
    unavailable = [e for e in d.audit.events if e.code == "identity_provider_unavailable"]
    assert unavailable
    assert "certificate" in str(unavailable[0].detail.get("ldap")).lower()


async def test_directory_down_is_503_while_local_break_glass_users_still_sign_in(
    deploy: Deploy, running: Slapd
) -> None:
    d = deploy()
    running.stop()
    try:
        async with d.api() as api:
            down = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
            admin = await api.get("/v1/models", headers=basic("root-admin", ADMIN_PASSWORD))
            local = await api.get("/v1/models", headers=basic("dana", LOCAL_PASSWORD))
        async with d.console() as client:
            form = await client.post(
                "/login", data={"username": "root-admin", "password": ADMIN_PASSWORD}, headers=FORM
            )
    finally:
        running.start()
    assert_error(down, 503, "identity_provider_unavailable", error_type="server_error")
    assert down.headers["retry-after"]
    assert (admin.status_code, local.status_code, form.status_code) == (200, 200, 303)
    assert [e.code for e in d.audit.events if e.code == "identity_provider_unavailable"]


async def test_directory_failures_count_in_the_failed_login_limits(deploy: Deploy, running: Slapd) -> None:
    d = deploy(api_auth={"failed_logins_per_user_address": "3/minute"})
    async with d.api() as api:
        for _ in range(3):
            refused(await api.get("/v1/models", headers=basic("alice", "guess")))
        binds = running.binds("uid=alice,")
        over = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert_error(over, 429, "too_many_failed_logins", error_type="rate_limit_error")
    assert running.binds("uid=alice,") == binds  # refused before the directory was asked


async def test_require_provisioned_refuses_a_directory_user_nobody_provisioned(deploy: Deploy) -> None:
    d = deploy(require_provisioned=True)
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert refused(resp) == INVALID
    assert ("invalid_api_key", "not_provisioned") in denials(d)
    assert d.store.get_principal("alice") is None


# --- zguard doctor ----------------------------------------------------------------------------


def test_doctor_passes_a_reachable_directory_and_fails_one_it_cannot_trust_or_bind(
    running: Slapd, ldap_pki: Pki
) -> None:
    good = LdapSettings.model_validate(ldap_section(running, ldap_pki))
    passed = ldap_finding(good)
    assert passed is not None
    assert passed.severity == "pass", passed
    untrusted = ldap_finding(good.model_copy(update={"ca_file": ldap_pki.other_ca}))
    assert untrusted is not None
    assert untrusted.severity == "fail"
    assert untrusted.fix
    assert "certificate" in untrusted.message.lower()
    wrong = ldap_finding(LdapSettings.model_validate(ldap_section(running, ldap_pki, bind_password="wrong")))
    assert wrong is not None
    assert wrong.severity == "fail"
    assert "cannot bind" in wrong.message
    assert ldap_finding(LdapSettings()) is None


async def test_in_chain_asks_the_server_with_ads_matching_rule(deploy: Deploy, running: Slapd) -> None:
    """OpenLDAP does not implement LDAP_MATCHING_RULE_IN_CHAIN, so bob gets no nested role here; what
    is checked is the one search a domain controller would answer, its DN escaped."""
    d = deploy(nested_groups_method="in_chain")
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("bob", USER_PASSWORDS["bob"]))
    assert resp.status_code == 403  # signed in, but no group the server resolved grants a role
    group_searches = [line for line in running.text().splitlines() if f'SRCH base="{GROUPS_DN}"' in line]
    assert 'filter="(?=undefined)"' in group_searches[-1]  # slapd's words for a matching rule it lacks
    assert in_chain_filter(f"uid=bob,{USERS_DN}") == f"(member:1.2.840.113556.1.4.1941:=uid=bob,{USERS_DN})"
    assert in_chain_filter("cn=a(b)*,dc=x") == "(member:1.2.840.113556.1.4.1941:=cn=a\\28b\\29\\2a,dc=x)"
    record = d.store.get_principal("bob")
    assert record is not None
    assert record.roles == ()


async def test_pooled_connections_a_restarted_directory_dropped_are_replaced(deploy: Deploy, running: Slapd) -> None:
    d = deploy()
    service_binds = running.binds(SERVICE_DN)
    async with d.api() as api:
        first = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
        running.stop()
        running.start()  # the pooled service connection is now dead
        second = await api.get("/v1/models", headers=basic("bob", USER_PASSWORDS["bob"]))
    assert (first.status_code, second.status_code) == (200, 200)
    assert running.binds(SERVICE_DN) == service_binds + 2  # the pool's one, then a fresh one after the restart
    assert [e.code for e in d.audit.events if e.code == "identity_provider_unavailable"] == []


async def test_the_service_password_can_come_from_a_file(deploy: Deploy, running: Slapd, tmp_path: Path) -> None:
    secret = tmp_path / "ldap-bind-password"
    secret.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")
    d = deploy(bind_password=None, bind_password_file=str(secret))
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic("alice", USER_PASSWORDS["alice"]))
    assert resp.status_code == 200, resp.text
    finding = ldap_finding(d.settings.identity.ldap)
    assert finding is not None
    assert finding.severity == "pass"
    missing = ldap_finding(d.settings.identity.ldap.model_copy(update={"bind_password_file": tmp_path / "absent"}))
    assert missing is not None
    assert missing.severity == "fail"
    assert "bind_password_file" in missing.message
