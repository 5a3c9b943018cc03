"""Authentication and authorization through the real apps, over a real principal store.

Every test drives `create_api_app` / `create_console_app` through `httpx.ASGITransport` with an
`AuthService` built by `zguard.serve.wiring.build_auth` over a migrated state database (a SQLite file;
the token lifecycle tests also run on PostgreSQL, marked `integration`). Changes an operator makes
(revoke, disable, role or password change) go through a *second* `PrincipalStore` on the same
database, as `zguard token revoke` in another process would. Where a test needs time to pass,
the `AuthService` is built with the same arguments as `build_auth` plus a fake `clock`/`now`.
Generation runs the real demo pipeline at 16x16, one step.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import limits.aio.storage.memory
import limits.aio.strategies
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import event
from sqlalchemy.engine import URL

import zguard.services.auth as auth_module
from tests.common.databases import BACKENDS, database_url_for
from tests.common.factories import LOOPBACK_PEER, api_client, console_client, make_settings, ready_runtime
from tests.functional.test_errors import GENERATIONS, SERVER_ERROR, assert_error, assert_retry_after
from zguard.app.api import create_api_app
from zguard.app.auth import UNSET, declared_access
from zguard.app.console import create_console_app
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.config.loader import load_settings
from zguard.engine.pipeline import DiffusersEngine
from zguard.errors import PermissionDenied
from zguard.security.passwords import DEFAULT_COST, cost_of, hash_password, verify_password
from zguard.security.rbac import BUILTIN_ROLES, Permission
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import Runtime, build_auth
from zguard.services.auth import BCRYPT_SLOTS, INVALID, AuthService, RequestInfo
from zguard.services.counters import CounterStorage
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio

KEY = bytes(range(32))  # the server's token key: fixed, so digests are reproducible in a test
GENERATE = {"prompt": "a red bicycle", "size": "16x16", "num_inference_steps": 1, "seed": 1}
AUTH_ERROR = "authentication_error"
PERMISSION_ERROR = "permission_error"
RATE_ERROR = "rate_limit_error"
MALFORMED = "the API key is malformed: zguard keys start with zg_ and end in a checksum; check it was copied whole"
USER, PASSWORD = "designer01", "correct horse battery staple"
WRONG = "Tr0ub4dor&3"
DOCS_PATHS = {"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"}

backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def basic(username: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}


def refused(resp: httpx.Response, code: str = "invalid_api_key", *, console: bool = False) -> str:
    """Assert a 401 in the error shape with the challenge; return its message."""
    message = assert_error(resp, 401, code, error_type=AUTH_ERROR, console=console)
    assert resp.headers["www-authenticate"].startswith('Bearer realm="zguard"')
    return message


def forbidden(resp: httpx.Response, permission: Permission, *, console: bool = False) -> None:
    message = assert_error(resp, 403, "permission_denied", error_type=PERMISSION_ERROR, console=console)
    assert str(permission) in message


def locked_out(resp: httpx.Response) -> int:
    assert_error(resp, 429, "too_many_failed_logins", error_type=RATE_ERROR)
    return assert_retry_after(resp)


class Clock:
    """A clock the test moves by hand: called, it is the auth service's monotonic clock; as
    `time()` it stands in for the `time` module the `limits` library's memory storage reads, so
    failed-login windows move with it (`deploy(clock=...)` installs it there)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """`datetime.now(UTC)` plus an offset the test moves (for token expiry)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Calls:
    """Wraps a function and records the arguments of each call."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.args: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> Any:
        self.args.append(args)
        return self.inner(*args)

    @property
    def count(self) -> int:
        return len(self.args)


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Every bcrypt verification the auth service runs."""
    calls = Calls(verify_password)
    monkeypatch.setattr(auth_module, "verify_password", calls)
    return calls


# --- the state database and deployments over it ------------------------------------------------


@dataclass
class StateDatabase:
    url: URL
    store: PrincipalStore
    other: PrincipalStore  # a second store on the same database: "another process"
    statements: list[str] = field(default_factory=list)  # SQL the first store's engine ran


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[StateDatabase]:
    with database_url_for(backend, tmp_path) as url:
        engine = create_store_engine(url)
        other_engine = create_store_engine(url)
        try:
            migrate.upgrade(engine)
            db = StateDatabase(url, PrincipalStore(engine), PrincipalStore(other_engine))

            @event.listens_for(engine, "before_cursor_execute")
            def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                db.statements.append(statement)

            yield db
        finally:
            engine.dispose()
            other_engine.dispose()


@dataclass
class Deployment:
    settings: Settings
    db: StateDatabase
    audit: MemoryAuditSink
    auth: AuthService
    runtime: Runtime

    @property
    def store(self) -> PrincipalStore:
        return self.db.store

    @property
    def other(self) -> PrincipalStore:
        return self.db.other

    def issue(self, principal: str, *, roles: list[str] | None = None, expires_at: datetime | None = None) -> str:
        """A new token for `principal`, stored by digest like `zguard token create` does."""
        token = new_token()
        self.store.add_token(
            principal,
            token_hash=token_digest(token.plaintext, KEY),
            prefix=token.display_prefix,
            roles=roles,
            expires_at=expires_at,
        )
        return token.plaintext

    def principal(self, name: str, *roles: str, kind: str = "service", password: str | None = None) -> str:
        """Create a principal; for a service account, return a token of it (else the name)."""
        password_hash = None if password is None else hash_password(password, cost=4)
        self.store.create_principal(
            name, "user" if kind == "user" else "service", roles=roles, password_hash=password_hash
        )
        return self.issue(name) if kind == "service" else name

    def api(self, peer: tuple[str, int] = LOOPBACK_PEER) -> httpx.AsyncClient:
        return api_client(self.settings, self.runtime, peer)

    def console(self, peer: tuple[str, int] = LOOPBACK_PEER) -> httpx.AsyncClient:
        return console_client(self.settings, self.runtime, peer)


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(
    tmp_path: Path, database: StateDatabase, demo_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Deploy]:
    """Build a deployment: `deploy(settings=..., api_auth={...}, clock=..., now=...)`."""
    runtimes: list[Runtime] = []

    def build(
        settings: Settings | None = None,
        *,
        api_auth: dict[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> Deployment:
        if settings is None:
            settings = make_settings(
                tmp_path / "state", api_auth={"enabled": True, **(api_auth or {})}, generation={"min_side": 16}
            )
        audit = MemoryAuditSink()
        if clock is None and now is None:
            auth = build_auth(settings, database.store, KEY, audit=audit)
        else:  # build_auth's construction, plus the fake clocks
            if isinstance(clock, Clock):
                monkeypatch.setattr(limits.aio.storage.memory, "time", clock)
                monkeypatch.setattr(limits.aio.strategies, "time", clock)
            section = settings.rate_limits
            auth = AuthService(
                settings.api_auth,
                settings.role_registry(),
                store=database.store,
                token_key=KEY,
                audit=audit,
                counters=CounterStorage(
                    section.storage.get_secret_value(),
                    strategy=section.strategy,
                    key_prefix=section.key_prefix,
                    clock=clock.time if isinstance(clock, Clock) else time.time,
                ),
                clock=clock or time.monotonic,
                now=now or (lambda: datetime.now(UTC)),
            )
        runtime = ready_runtime(settings, demo_engine, auth)
        runtimes.append(runtime)
        return Deployment(settings, database, audit, auth, runtime)

    yield build
    for runtime in runtimes:
        assert runtime.worker.stop(timeout=10)


def security_yaml(tmp_path: Path, password_hash: str, extra: str = "") -> Settings:
    """Settings from a file in the deployment guide's `config/security.yaml` format.

    `extra` adds lines under `api_auth` (zguard's own keys). The guide's `rate_limit` is kept,
    high enough not to be the subject of these tests.
    """
    path = tmp_path / "security.yaml"
    path.write_text(
        "api_auth:\n"
        "  enabled: true\n"
        "  users:\n"
        f'    - username: "{USER}"\n'
        f'      password: "{password_hash}"\n'
        f"{extra}"
        'rate_limit: "600/分钟"\n',
        encoding="utf-8",
    )
    environ = {"ZGUARD_STATE_DIR": str(tmp_path / "state"), "ZGUARD_GENERATION__MIN_SIDE": "16"}
    return load_settings(path, environ=environ)


@pytest.fixture
def user_hash() -> str:
    return hash_password(PASSWORD, cost=4)


# --- bearer tokens -----------------------------------------------------------------------------


async def test_no_credentials_is_401_with_a_challenge(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api, d.console() as console:
        for resp, on_console in (
            (await api.get("/v1/models"), False),
            (await api.post(GENERATIONS, json=GENERATE), False),
            (await api.get("/v1/models", headers={"authorization": "Bearer "}), False),
            (await console.get("/api/status"), True),
        ):
            message = refused(resp, "missing_credentials", console=on_console)
            assert "Bearer" in message
            assert resp.headers["www-authenticate"] == 'Bearer realm="zguard", Basic realm="zguard", charset="UTF-8"'
        # Public endpoints stay public.
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200


async def test_malformed_token_is_refused_without_touching_the_database(
    deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = deploy()
    token = d.principal("svc", "generator", "viewer")
    lookups = Calls(d.store.get_token_by_hash)
    monkeypatch.setattr(d.store, "get_token_by_hash", lookups)
    position = 20
    changed = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
    d.db.statements.clear()
    async with d.api() as api:
        for junk in (changed, token[:-1], token + "x", "sk-" + "a" * 48, token.upper(), "zg_"):
            resp = await api.get("/v1/models", headers=bearer(junk))
            assert refused(resp) == MALFORMED
        assert lookups.count == 0
        assert d.db.statements == [], "a malformed token must cost no database work at all"
        # The wrapper is in the path: a well-formed token is looked up once.
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200
        assert lookups.count == 1


async def test_unknown_well_formed_token_is_401(deploy: Deploy) -> None:
    d = deploy()
    d.principal("svc", "generator")
    async with d.api() as api:
        assert refused(await api.get("/v1/models", headers=bearer(new_token().plaintext))) == INVALID


async def test_forged_tokens_never_lock_out_a_valid_token_from_the_same_address(
    deploy: Deploy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """21 forged, checksum-valid tokens from one address (a NAT, a proxy): past the per-address
    limit (default 20/minute) unknown tokens are refused 429 without a database lookup, while a
    valid token from that address still works, even one this process has never seen before."""
    d = deploy()
    used = d.principal("svc", "generator")
    fresh = d.issue("svc")  # first presented only after the flood
    lookups = Calls(d.store.get_token_by_hash)
    monkeypatch.setattr(d.store, "get_token_by_hash", lookups)
    nat, other = ("127.0.0.20", 5000), ("127.0.0.21", 5000)
    async with d.api(peer=nat) as api, d.api(peer=other) as neighbour:
        assert (await api.get("/v1/models", headers=bearer(used))).status_code == 200
        for _ in range(20):
            assert refused(await api.get("/v1/models", headers=bearer(new_token().plaintext))) == INVALID
        assert lookups.count == 21
        retry = locked_out(await api.get("/v1/models", headers=bearer(new_token().plaintext)))
        assert 1 <= retry <= 61
        assert lookups.count == 21, "an unknown token over the limit must not cost a lookup"
        assert (await api.get("/v1/models", headers=bearer(used))).status_code == 200
        assert (await api.get("/v1/models", headers=bearer(fresh))).status_code == 200
        assert lookups.count == 22  # the fresh token's one lookup
        locked_out(await api.get("/v1/models", headers=bearer(new_token().plaintext)))
        # Another address is not affected at all.
        assert refused(await neighbour.get("/v1/models", headers=bearer(new_token().plaintext))) == INVALID


async def test_a_revoked_token_in_use_does_not_lock_out_its_neighbours(deploy: Deploy) -> None:
    """A business system still sending a revoked token keeps getting 401; everyone else behind its
    address keeps working with their valid tokens."""
    d = deploy()
    revoked = d.principal("old-batch", "generator")
    d.other.revoke_token(d.other.list_tokens("old-batch")[0].id)
    valid = d.principal("svc", "generator")
    async with d.api(peer=("127.0.0.30", 5000)) as api:
        for _ in range(25):
            assert refused(await api.get("/v1/models", headers=bearer(revoked))) == INVALID
        assert (await api.get("/v1/models", headers=bearer(valid))).status_code == 200
        locked_out(await api.get("/v1/models", headers=bearer(new_token().plaintext)))
    reasons = [e.detail.get("reason") for e in d.audit.of_type("auth.denied")]
    assert reasons.count("revoked") == 25


async def test_counter_storage_down_fails_basic_closed_and_bearer_open(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls, caplog: pytest.LogCaptureFixture
) -> None:
    """With `rate_limits.storage` unreachable a password login is refused 503 before bcrypt (no
    lockout could be enforced); a valid token still works (its counter only saves lookups)."""
    settings = security_yaml(tmp_path, user_hash, "rate_limits:\n  storage: redis://127.0.0.1:9/0\n")
    no_rates = settings.rate_limits.model_copy(update={"other_routes": None})
    settings = settings.model_copy(update={"rate_limit": None, "rate_limits": no_rates})  # rates would fail closed
    d = deploy(settings)
    token = d.principal("svc", "generator")
    async with d.api() as api:
        resp = await api.get("/v1/models", headers=basic(USER, PASSWORD))
        message = assert_error(resp, 503, "rate_limiter_unavailable", error_type=SERVER_ERROR)
        assert "retry later" in message
        assert_retry_after(resp)
        assert bcrypt_calls.count == 0
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200
        assert refused(await api.get("/v1/models", headers=bearer(new_token().plaintext))) == INVALID
    [event] = d.audit.of_type("rate_limit.unavailable")
    assert (event.outcome, event.code, event.principal, event.auth_method) == (
        "failed",
        "rate_limiter_unavailable",
        USER,
        "basic",
    )
    assert "fail open" in caplog.text


async def test_unsupported_scheme_is_401(deploy: Deploy) -> None:
    d = deploy()
    async with d.api() as api:
        message = refused(await api.get("/v1/models", headers={"authorization": "Digest username=x"}))
        assert "Bearer or Basic" in message


@backends
async def test_valid_token_is_accepted_on_both_listeners(deploy: Deploy) -> None:
    d = deploy()
    token = d.principal("svc", "generator")
    viewer = d.principal("watcher", "viewer")
    async with d.api() as api, d.console() as console:
        resp = await api.post(GENERATIONS, json=GENERATE, headers=bearer(token))
        assert resp.status_code == 200, resp.text
        assert resp.json()["size"] == "16x16"
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200
        assert (await console.get("/api/status", headers=bearer(viewer))).status_code == 200
        # The scheme is case-insensitive, as RFC 9110 says.
        assert (await api.get("/v1/models", headers={"authorization": f"bearer {token}"})).status_code == 200


@backends
async def test_expired_token_is_401(deploy: Deploy) -> None:
    now = WallClock()
    d = deploy(now=now)
    d.principal("svc", "generator")
    expired = d.issue("svc", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    expiring = d.issue("svc", expires_at=datetime.now(UTC) + timedelta(hours=1))
    async with d.api() as api:
        assert refused(await api.get("/v1/models", headers=bearer(expired))) == INVALID
        assert (await api.get("/v1/models", headers=bearer(expiring))).status_code == 200
        now.offset = timedelta(hours=1, seconds=1)  # the cached, once-valid token expires too
        assert refused(await api.get("/v1/models", headers=bearer(expiring))) == INVALID


@backends
async def test_revoked_token_is_refused_at_the_next_request(deploy: Deploy) -> None:
    d = deploy()
    token = d.principal("svc", "generator")
    kept = d.issue("svc")
    async with d.api() as api:
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200
        (record,) = [t for t in d.other.list_tokens("svc") if token.startswith(t.prefix)]
        d.other.revoke_token(record.id)  # from "another process"
        assert refused(await api.get("/v1/models", headers=bearer(token))) == INVALID
        assert (await api.get("/v1/models", headers=bearer(kept))).status_code == 200


@backends
async def test_disabled_principal_is_refused_at_the_next_request(deploy: Deploy) -> None:
    d = deploy()
    token = d.principal("svc", "generator")
    async with d.api() as api:
        assert (await api.post(GENERATIONS, json=GENERATE, headers=bearer(token))).status_code == 200
        d.other.disable_principal("svc")
        assert refused(await api.post(GENERATIONS, json=GENERATE, headers=bearer(token))) == INVALID
        d.other.enable_principal("svc")
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200


@backends
async def test_role_change_takes_effect_at_once(deploy: Deploy) -> None:
    d = deploy()
    token = d.principal("svc", "generator")
    async with d.api() as api:
        assert (await api.post(GENERATIONS, json=GENERATE, headers=bearer(token))).status_code == 200
        d.other.set_roles("svc", ["viewer"])
        forbidden(await api.post(GENERATIONS, json=GENERATE, headers=bearer(token)), Permission.IMAGES_GENERATE)
        assert (await api.get("/v1/models", headers=bearer(token))).status_code == 200


async def test_token_narrowed_to_viewer_cannot_generate(deploy: Deploy) -> None:
    d = deploy()
    full = d.principal("svc", "generator", "viewer")
    narrow = d.issue("svc", roles=["viewer"])
    widened = d.issue("svc", roles=["viewer", "admin"])  # a token never widens its principal's roles
    async with d.api() as api, d.console() as console:
        assert (await api.post(GENERATIONS, json=GENERATE, headers=bearer(full))).status_code == 200
        forbidden(await api.post(GENERATIONS, json=GENERATE, headers=bearer(narrow)), Permission.IMAGES_GENERATE)
        assert (await api.get("/v1/models", headers=bearer(narrow))).status_code == 200
        assert (await console.get("/api/status", headers=bearer(narrow))).status_code == 200
        forbidden(await api.post(GENERATIONS, json=GENERATE, headers=bearer(widened)), Permission.IMAGES_GENERATE)


async def test_every_refusal_looks_the_same(deploy: Deploy, tmp_path: Path, user_hash: str) -> None:
    d = deploy(security_yaml(tmp_path, user_hash))
    revoked = d.principal("svc", "generator")
    d.other.revoke_token(d.other.list_tokens("svc")[0].id)
    disabled = d.principal("gone", "generator")
    d.other.disable_principal("gone")
    expired = d.issue("svc", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    d.principal("alice", "generator", kind="user", password="alice's password")
    async with d.api() as api:
        attempts = {
            "unknown token": bearer(new_token().plaintext),
            "revoked token": bearer(revoked),
            "expired token": bearer(expired),
            "disabled principal": bearer(disabled),
            "wrong password": basic(USER, "wrong"),
            "unknown user": basic("nobody", PASSWORD),
            "database user, wrong password": basic("alice", "wrong"),
        }
        bodies = {what: (await api.get("/v1/models", headers=headers)) for what, headers in attempts.items()}
    for resp in bodies.values():
        assert refused(resp) == INVALID
    assert len({resp.text for resp in bodies.values()}) == 1, {k: v.text for k, v in bodies.items()}


# --- Basic credentials -------------------------------------------------------------------------


async def test_basic_with_a_security_yaml_user(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    settings = security_yaml(tmp_path, user_hash)
    assert settings.api_auth.users[0].roles == ["generator"]  # the guide's users call the image API
    d = deploy(settings)
    async with d.api() as api, d.console() as console:
        resp = await api.post(GENERATIONS, json=GENERATE, headers=basic(USER, PASSWORD))
        assert resp.status_code == 200, resp.text
        assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        # generator has no system:read
        forbidden(await console.get("/api/status", headers=basic(USER, PASSWORD)), Permission.SYSTEM_READ, console=True)
        assert refused(await api.get("/v1/models", headers=basic(USER, WRONG))) == INVALID
        message = refused(await api.get("/v1/models", headers={"authorization": "Basic not base64!"}))
        assert "base64" in message


async def test_basic_success_is_cached_until_basic_cache_s(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    clock = Clock()
    settings = security_yaml(tmp_path, user_hash, "  basic_cache_s: 30\n")
    d = deploy(settings, clock=clock)
    async with d.api() as api:
        assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert bcrypt_calls.count == 1
        for _ in range(3):
            clock.advance(9)
            assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert bcrypt_calls.count == 1, "a cached credential must not run bcrypt again"
        clock.advance(4)  # 31 s after the first verification
        assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert bcrypt_calls.count == 2
        # A different (wrong) password for the same user is never served from the cache.
        assert refused(await api.get("/v1/models", headers=basic(USER, PASSWORD + "!"))) == INVALID
        assert bcrypt_calls.count == 3


async def test_wrong_passwords_lock_the_user_out_only_at_that_address(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    """Five wrong passwords from one address (default 5/minute per user and address) refuse that
    user there, before bcrypt, for the window; the same user's password from another address
    still works. (Before, the count was the user's alone, so any stranger could lock them out.)"""
    clock = Clock()
    # No success cache: it would serve the right password from the cache before any limit.
    d = deploy(security_yaml(tmp_path, user_hash, "  basic_cache_s: 0\n"), clock=clock)
    attacker, office = ("127.0.0.8", 1234), ("127.0.0.9", 1234)
    async with d.api(peer=attacker) as api, d.api(peer=office) as elsewhere:
        for _ in range(5):
            assert refused(await api.get("/v1/models", headers=basic(USER, "guess"))) == INVALID
        assert bcrypt_calls.count == 5
        retry = locked_out(await api.get("/v1/models", headers=basic(USER, "guess")))
        assert 59 <= retry <= 61
        # Even the right password is refused from that address, without running bcrypt ...
        assert locked_out(await api.get("/v1/models", headers=basic(USER, PASSWORD))) <= retry
        assert bcrypt_calls.count == 5, "attempts over the limit must not run bcrypt"
        # ... but not from another one.
        assert (await elsewhere.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert bcrypt_calls.count == 6
        clock.advance(30)
        assert 29 <= locked_out(await api.get("/v1/models", headers=basic(USER, PASSWORD))) <= 31
        clock.advance(31)
        assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert bcrypt_calls.count == 7
    denied = [e for e in d.audit.of_type("auth.denied") if e.code == "too_many_failed_logins"]
    assert {(e.client, e.principal) for e in denied} == {("127.0.0.8", USER)}


async def test_the_users_global_budget_refuses_only_addresses_that_failed(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    """Guessing from many addresses spends the user's loose global budget; then the user is refused
    from every address that failed, while a clean address may still log in (and is closed by its
    own first failure)."""
    settings = security_yaml(tmp_path, user_hash, '  failed_logins_per_user: "3/hour"\n  basic_cache_s: 0\n')
    d = deploy(settings, clock=Clock())
    bots = [(f"127.0.1.{i}", 4000) for i in range(1, 4)]
    for bot in bots:
        async with d.api(peer=bot) as api:
            assert refused(await api.get("/v1/models", headers=basic(USER, "guess"))) == INVALID
    async with d.api(peer=bots[0]) as api:
        assert 3599 <= locked_out(await api.get("/v1/models", headers=basic(USER, PASSWORD))) <= 3601
    assert bcrypt_calls.count == 3
    async with d.api(peer=("127.0.2.1", 4000)) as clean:
        assert (await clean.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
    async with d.api(peer=("127.0.2.2", 4000)) as fresh:
        assert refused(await fresh.get("/v1/models", headers=basic(USER, "guess"))) == INVALID
        locked_out(await fresh.get("/v1/models", headers=basic(USER, PASSWORD)))
    assert bcrypt_calls.count == 5


async def test_concurrent_flood_of_wrong_passwords_stays_within_the_limit(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    d = deploy(security_yaml(tmp_path, user_hash))  # 5/minute per user
    async with d.api() as api:
        responses = await asyncio.gather(*(api.get("/v1/models", headers=basic(USER, f"guess {i}")) for i in range(40)))
    statuses = [resp.status_code for resp in responses]
    assert set(statuses) == {401, 429}
    # Requests that queued for a bcrypt slot are checked again once they get one.
    assert bcrypt_calls.count <= 5 + BCRYPT_SLOTS - 1
    assert statuses.count(401) == bcrypt_calls.count


async def test_per_address_failure_limit_spans_usernames(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    settings = security_yaml(tmp_path, user_hash, '  failed_logins_per_address: "3/minute"\n')
    d = deploy(settings, clock=Clock())
    attacker = ("127.0.0.5", 4000)
    async with d.api(peer=attacker) as api, d.api(peer=("127.0.0.6", 4000)) as neighbour:
        for name in ("root", "admin", "operator"):
            assert refused(await api.get("/v1/models", headers=basic(name, "guess"))) == INVALID
        assert bcrypt_calls.count == 3
        locked_out(await api.get("/v1/models", headers=basic("guest", "guess")))
        locked_out(await api.get("/v1/models", headers=basic(USER, PASSWORD)))
        assert bcrypt_calls.count == 3
        assert (await neighbour.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200


async def test_unknown_user_costs_one_bcrypt_like_a_known_user(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    d = deploy(security_yaml(tmp_path, user_hash))
    async with d.api() as api:
        assert refused(await api.get("/v1/models", headers=basic(USER, "wrong"))) == INVALID
        known = bcrypt_calls.count
        assert refused(await api.get("/v1/models", headers=basic("no-such-user", "wrong"))) == INVALID
        unknown = bcrypt_calls.count - known
    assert known == unknown == 1
    ((_, known_hash), (_, dummy_hash)) = bcrypt_calls.args
    assert known_hash == user_hash
    assert dummy_hash != user_hash
    # Never cheaper than what `hash_password` makes for database users, whatever the settings' cost.
    assert cost_of(dummy_hash) == max(DEFAULT_COST, cost_of(user_hash)) == 12


@backends
async def test_the_dummy_hash_costs_as_much_as_the_dearest_database_hash(
    deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls
) -> None:
    """A cost-4 settings user and a database user at `hash_password`'s cost: an unknown name is
    checked against a dummy at least as dear as the database user's hash, and a dearer password
    set later (by another process) raises it at the next unknown name."""
    d = deploy(security_yaml(tmp_path, user_hash))
    d.store.create_principal("alice", "user", roles=["generator"], password_hash=hash_password("alice's password"))
    async with d.api() as api:
        assert refused(await api.get("/v1/models", headers=basic("nobody", "guess"))) == INVALID
        assert cost_of(bcrypt_calls.args[-1][1]) == DEFAULT_COST
        d.other.set_password_hash("alice", hash_password("alice's new password", cost=DEFAULT_COST + 1))
        assert refused(await api.get("/v1/models", headers=basic("nobody", "guess"))) == INVALID
        assert cost_of(bcrypt_calls.args[-1][1]) == DEFAULT_COST + 1
    assert cost_of(user_hash) == 4
    assert d.store.max_password_cost() == DEFAULT_COST + 1


async def test_basic_can_be_turned_off(deploy: Deploy, tmp_path: Path, user_hash: str, bcrypt_calls: Calls) -> None:
    d = deploy(security_yaml(tmp_path, user_hash, "  basic_enabled: false\n"))
    async with d.api() as api:
        message = refused(await api.get("/v1/models", headers=basic(USER, PASSWORD)))
        assert "use Bearer" in message
        assert "Basic" not in refused(await api.get("/v1/models"), "missing_credentials")
    assert bcrypt_calls.count == 0


@backends
async def test_database_user_with_a_password_uses_basic(deploy: Deploy, bcrypt_calls: Calls) -> None:
    d = deploy()
    d.principal("alice", "generator", kind="user", password="alice's password")
    async with d.api() as api:
        resp = await api.post(GENERATIONS, json=GENERATE, headers=basic("alice", "alice's password"))
        assert resp.status_code == 200, resp.text
        assert refused(await api.get("/v1/models", headers=basic("alice", "wrong"))) == INVALID
        # Disabling her applies at the next request, cached credential or not.
        assert (await api.get("/v1/models", headers=basic("alice", "alice's password"))).status_code == 200
        d.other.disable_principal("alice")
        assert refused(await api.get("/v1/models", headers=basic("alice", "alice's password"))) == INVALID


@backends
async def test_password_change_drops_the_cached_credential(deploy: Deploy, bcrypt_calls: Calls) -> None:
    d = deploy()
    d.principal("alice", "generator", kind="user", password="old password")
    async with d.api() as api:
        for _ in range(2):
            assert (await api.get("/v1/models", headers=basic("alice", "old password"))).status_code == 200
        assert bcrypt_calls.count == 1
        d.other.set_password_hash("alice", hash_password("new password", cost=4))
        assert refused(await api.get("/v1/models", headers=basic("alice", "old password"))) == INVALID
        assert (await api.get("/v1/models", headers=basic("alice", "new password"))).status_code == 200
        assert bcrypt_calls.count == 3


# --- every route declares its access; default deny per role ------------------------------------


def both_apps(settings: Settings, runtime: Runtime) -> list[tuple[str, FastAPI]]:
    return [
        ("api", create_api_app(settings, runtime.services)),
        ("console", create_console_app(settings, runtime.services)),
    ]


async def test_every_route_declares_its_access(tmp_path: Path, demo_engine: DiffusersEngine) -> None:
    settings = make_settings(tmp_path / "state", api={"docs_enabled": True})
    runtime = ready_runtime(settings, demo_engine)
    try:
        undeclared: list[str] = []
        docs_seen: set[str] = set()
        for listener, app in both_apps(settings, runtime):
            assert app.routes
            for route in app.routes:
                path = getattr(route, "path", repr(route))
                if isinstance(route, APIRoute):
                    if declared_access(route) is UNSET:
                        undeclared.append(f"{listener} {sorted(route.methods or ())} {path}")
                elif listener == "api" and path in DOCS_PATHS:
                    docs_seen.add(path)
                else:
                    undeclared.append(f"{listener} {path}: not an APIRoute, so it cannot declare its access")
        assert undeclared == []
        assert docs_seen == DOCS_PATHS  # the docs routes were there, so the walk saw the whole app
        # The check itself catches a route added without a declaration.
        app = create_api_app(settings, runtime.services)

        @app.get("/forgotten")
        async def forgotten() -> None:
            return None

        added = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/forgotten")
        assert declared_access(added) is UNSET
    finally:
        runtime.worker.stop(timeout=10)


def protected_routes(settings: Settings, runtime: Runtime) -> list[tuple[str, str, str, Permission]]:
    """(listener, method, path, permission) of every route that needs a permission."""
    found = []
    for listener, app in both_apps(settings, runtime):
        for route in app.routes:
            if isinstance(route, APIRoute) and isinstance(permission := declared_access(route), Permission):
                path = re.sub(r"\{[^}]+\}", "1", route.path)
                found += [
                    (listener, method, path, permission) for method in sorted((route.methods or set()) - {"HEAD"})
                ]
    return found


async def call(client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "GET":
        return await client.get(path, headers=headers)
    body = GENERATE if path == GENERATIONS else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_protected_routes_refuse_requests_without_credentials(deploy: Deploy) -> None:
    d = deploy()
    routes = protected_routes(d.settings, d.runtime)
    async with d.api() as api, d.console() as console:
        for listener, method, path, _ in routes:
            resp = await call(api if listener == "api" else console, method, path, {})
            refused(resp, "missing_credentials", console=listener == "console")


NEEDS_A_CHAIN = {"/audit/verify", "/console/api/audit/verify"}  # verifying needs a hash-chained store


@pytest.mark.parametrize("role", sorted(BUILTIN_ROLES))
async def test_default_deny_per_role(deploy: Deploy, role: str) -> None:
    d = deploy()
    token = d.principal(f"only-{role}", role)
    granted = BUILTIN_ROLES[role].permissions
    routes = protected_routes(d.settings, d.runtime)
    assert {p for *_, p in routes} >= {Permission.IMAGES_GENERATE, Permission.MODELS_READ, Permission.SYSTEM_READ}
    async with d.api() as api, d.console() as console:
        for listener, method, path, permission in routes:
            resp = await call(api if listener == "api" else console, method, path, bearer(token))
            where = f"{role}: {listener} {method} {path} ({permission})"
            if permission in granted:
                assert resp.status_code not in (401, 403, 429), f"{where}: {resp.status_code} {resp.text}"
                if path in NEEDS_A_CHAIN and (method, path) != ("GET", "/audit/verify"):  # a memory sink keeps none
                    assert resp.status_code == 503, where
                    assert "audit_unavailable" in resp.text or 'id="verify-unavailable"' in resp.text, where
                    continue
                assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text}"
                if (method == "GET" and "/1" not in path) or path == GENERATIONS:  # a made-up id may be absent
                    assert resp.status_code == 200, f"{where}: {resp.status_code} {resp.text}"
            else:
                assert resp.status_code == 403, f"{where}: {resp.status_code} {resp.text}"
                forbidden(resp, permission, console=listener == "console")
    denied = [e for e in d.audit.of_type("access.denied") if e.principal == f"only-{role}"]
    assert len(denied) == sum(1 for *_, p in routes if p not in granted)


# --- audit ---------------------------------------------------------------------------------------


async def test_audit_records_decisions_and_never_secrets(
    deploy: Deploy, tmp_path: Path, user_hash: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = deploy(security_yaml(tmp_path, user_hash))
    viewer = d.principal("watcher", "viewer")
    revoked = d.issue("watcher")
    d.other.revoke_token(d.other.list_tokens("watcher")[1].id)
    unknown = new_token().plaintext
    typo = viewer[:-1] + ("0" if viewer[-1] != "0" else "1")
    async with d.api() as api, d.console(peer=("127.0.0.3", 999)) as console:
        assert (await api.get("/v1/models", headers=bearer(viewer))).status_code == 200
        assert (await console.get("/api/status", headers=bearer(viewer))).status_code == 200
        assert (await api.post(GENERATIONS, json=GENERATE, headers=bearer(viewer))).status_code == 403
        for token in (revoked, unknown, typo):
            assert (await api.get("/v1/models", headers=bearer(token))).status_code == 401
        assert (await api.get("/v1/models", headers=basic(USER, PASSWORD))).status_code == 200
        assert (await api.get("/v1/models", headers=basic(USER, WRONG))).status_code == 401
        assert (await api.get("/v1/models")).status_code == 401

    allowed = d.audit.of_type("access.allowed")
    assert {(e.principal, e.auth_method, e.listener, e.detail["permission"]) for e in allowed} == {
        ("watcher", "bearer", "api", "models:read"),
        ("watcher", "bearer", "console", "system:read"),
        (USER, "basic", "api", "models:read"),
    }
    (console_event,) = [e for e in allowed if e.listener == "console"]
    assert console_event.client == "127.0.0.3"
    assert console_event.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", console_event.request_id)
    assert console_event.detail["token"] == viewer[:11]  # the display prefix identifies the token
    (denied,) = d.audit.of_type("access.denied")
    assert (denied.principal, denied.code, denied.detail["permission"]) == (
        "watcher",
        "permission_denied",
        "images:generate",
    )
    reasons = [(e.code, e.auth_method, e.detail.get("reason")) for e in d.audit.of_type("auth.denied")]
    assert reasons == [
        ("invalid_api_key", "bearer", "revoked"),
        ("invalid_api_key", "bearer", "unknown"),
        ("invalid_api_key", "bearer", "malformed"),
        ("invalid_api_key", "basic", "wrong password"),
        ("missing_credentials", None, None),
    ]

    secrets = [PASSWORD, WRONG, user_hash]
    for token in (viewer, revoked, unknown, typo):
        secrets += [token, token_digest(token, KEY), token[11:]]
    recorded = repr(d.audit.events) + "\n".join(
        f"{r.getMessage()} {r.args!r} {getattr(r, 'exc_text', '')}" for r in caplog.records
    )
    for secret in secrets:
        assert secret not in recorded


# --- authentication off ------------------------------------------------------------------------


async def test_auth_disabled_is_the_local_generator_and_viewer(tmp_path: Path, demo_engine: DiffusersEngine) -> None:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    assert settings.api_auth.enabled is False
    audit = MemoryAuditSink()
    runtime = ready_runtime(settings, demo_engine, build_auth(settings, None, KEY, audit=audit))
    try:
        async with api_client(settings, runtime) as api, console_client(settings, runtime) as console:
            resp = await api.post(GENERATIONS, json=GENERATE)
            assert resp.status_code == 200, resp.text
            assert (await api.get("/v1/models", headers=bearer("garbage"))).status_code == 200
            assert (await console.get("/api/status")).status_code == 200
            assert (await console.get("/")).status_code == 200
        assert {e.principal for e in audit.of_type("access.allowed")} == {"local"}
        assert {e.auth_method for e in audit.of_type("access.allowed")} == {"none"}
        # Only generator and viewer: nothing administrative.
        identity = await runtime.services.auth.authenticate(None, RequestInfo(client="127.0.0.1"))
        assert identity.roles == {"generator", "viewer"}
        with pytest.raises(PermissionDenied):
            runtime.services.auth.authorize(identity, Permission.TOKENS_MANAGE, RequestInfo(client="x"))
    finally:
        runtime.worker.stop(timeout=10)
