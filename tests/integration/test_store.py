"""The state store against real databases: a SQLite file and the local PostgreSQL server.

Every test runs on both backends; the PostgreSQL runs are marked `integration` and skip when the
server is unreachable (fail under CI=true). Each PostgreSQL run gets a schema of its own.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from tests.common.databases import BACKENDS, database_url_for
from zguard.cli.main import main
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.errors import PrincipalExists, PrincipalNotFound, SchemaNotCurrent, TokenExists, TokenNotFound
from zguard.store.models import Base
from zguard.store.principals import PrincipalStore

HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4
BCRYPT = "$2b$12$" + "C" * 53
T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[URL]:
    with database_url_for(backend, tmp_path) as url:
        yield url


@pytest.fixture
def empty_engine(db_url: URL) -> Iterator[Engine]:
    engine = create_store_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    migrate.upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def store(engine: Engine) -> PrincipalStore:
    return PrincipalStore(engine, clock=lambda: T0)


# --- migrations -----------------------------------------------------------------------------


@backends
def test_migrations_apply_from_empty_to_head(empty_engine: Engine) -> None:
    assert migrate.current_revision(empty_engine) is None
    assert migrate.upgrade(empty_engine) == migrate.head_revision()
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    migrate.check_schema_current(empty_engine)
    tables = set(inspect(empty_engine).get_table_names())
    assert {"principals", "principal_roles", "api_tokens", "alembic_version"} <= tables
    assert migrate.upgrade(empty_engine) == migrate.head_revision()  # running it again changes nothing


@backends
def test_migrations_downgrade_to_empty_and_back(engine: Engine) -> None:
    config = migrate.alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert migrate.current_revision(engine) is None
    assert not {"principals", "api_tokens"} & set(inspect(engine).get_table_names())
    assert migrate.upgrade(engine) == migrate.head_revision()


@backends
def test_migration_schema_matches_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []


@backends
def test_token_hash_has_a_unique_index(engine: Engine) -> None:
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("api_tokens")}
    assert indexes["ix_api_tokens_token_hash"]["column_names"] == ["token_hash"]
    assert indexes["ix_api_tokens_token_hash"]["unique"]


@backends
def test_schema_behind_is_refused_with_the_fix(empty_engine: Engine) -> None:
    with pytest.raises(SchemaNotCurrent) as info:
        migrate.check_schema_current(empty_engine)
    assert info.value.current is None
    assert info.value.head == migrate.head_revision()
    assert info.value.known
    assert "zguard db upgrade" in info.value.message
    assert info.value.code == "schema_not_current"


@backends
def test_schema_from_an_unknown_revision_is_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaNotCurrent) as info:
        migrate.check_schema_current(engine)
    assert info.value.current == "9999"
    assert not info.value.known
    assert "newer zguard" in info.value.message


# --- SQLite specifics -----------------------------------------------------------------------


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'state' / 'zguard.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        engine.dispose()


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    engine = create_store_engine(f"sqlite:///{state / 'zguard.db'}")
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:  # while connected, the -wal and -shm files exist too
            conn.execute(text("SELECT count(*) FROM principals"))
            for path in [state / "zguard.db", state / "zguard.db-wal", state / "zguard.db-shm"]:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        engine.dispose()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_sqlite_existing_file_is_tightened_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "zguard.db"
    path.touch()
    os.chmod(path, 0o644)
    create_store_engine(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql+pymysql://u@h/db"])
def test_engine_refuses_other_databases(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite|file"):
        create_store_engine(url)


# --- principals -----------------------------------------------------------------------------


@backends
def test_principal_round_trip(store: PrincipalStore) -> None:
    user = store.create_principal("alice", "user", roles=["designer", "auditor", "designer"], password_hash=BCRYPT)
    service = store.create_principal("erp", "service", roles=["api"])
    assert user.roles == ("auditor", "designer")
    assert user.enabled
    assert user.created_at == T0
    assert user.last_used_at is None
    assert BCRYPT not in repr(user)
    assert store.get_principal("alice") == user
    assert store.get_principal_by_id(service.id) == service
    assert store.get_principal("nobody") is None
    assert [p.name for p in store.list_principals()] == ["alice", "erp"]
    assert [p.name for p in store.list_principals("service")] == ["erp"]


@backends
def test_principal_names_are_unique(store: PrincipalStore, engine: Engine) -> None:
    store.create_principal("alice", "user")
    with pytest.raises(PrincipalExists) as info:
        store.create_principal("alice", "service")
    assert info.value.name == "alice"
    with pytest.raises(IntegrityError), engine.begin() as conn:  # the database enforces it too
        conn.execute(text("INSERT INTO principals (name, kind, created_at) VALUES ('alice', 'user', :t)"), {"t": T0})


@backends
def test_disable_enable_roles_and_password(store: PrincipalStore) -> None:
    store.create_principal("alice", "user", roles=["designer"])
    assert not store.disable_principal("alice").enabled
    assert store.enable_principal("alice").enabled
    assert store.set_roles("alice", ["auditor", "admin"]).roles == ("admin", "auditor")
    assert store.set_roles("alice", ["admin"]).roles == ("admin",)
    assert store.set_roles("alice", []).roles == ()
    assert store.set_password_hash("alice", BCRYPT).password_hash == BCRYPT
    assert store.set_password_hash("alice", None).password_hash is None
    with pytest.raises(PrincipalNotFound):
        store.disable_principal("bob")


@backends
def test_service_accounts_have_no_password(store: PrincipalStore, engine: Engine) -> None:
    with pytest.raises(ValueError, match="service accounts"):
        store.create_principal("erp", "service", password_hash=BCRYPT)
    store.create_principal("erp", "service")
    with pytest.raises(ValueError, match="service accounts"):
        store.set_password_hash("erp", BCRYPT)
    with pytest.raises(IntegrityError), engine.begin() as conn:  # and the database refuses it as well
        conn.execute(text("UPDATE principals SET password_hash = :h WHERE name = 'erp'"), {"h": BCRYPT})


@pytest.mark.parametrize(
    ("name", "kind", "password_hash", "roles"),
    [
        ("", "user", None, []),
        ("x" * 129, "user", None, []),
        ("tab\there", "user", None, []),
        ("alice", "robot", None, []),
        ("alice", "user", "plaintext", []),
        ("alice", "user", None, [""]),
    ],
)
def test_malformed_principals_are_refused(
    tmp_path: Path, name: str, kind: str, password_hash: str | None, roles: list[str]
) -> None:
    store = PrincipalStore(create_store_engine(f"sqlite:///{tmp_path / 'z.db'}"))
    with pytest.raises(ValueError, match=r"must|kind"):
        store.create_principal(name, kind, password_hash=password_hash, roles=roles)  # type: ignore[arg-type]


def test_roles_must_not_be_a_bare_string(tmp_path: Path) -> None:
    store = PrincipalStore(create_store_engine(f"sqlite:///{tmp_path / 'z.db'}"))
    with pytest.raises(TypeError):
        store.create_principal("alice", "user", roles="admin")


# --- tokens ---------------------------------------------------------------------------------


@backends
def test_token_lookup_by_hash(store: PrincipalStore) -> None:
    store.create_principal("erp", "service", roles=["api"])
    store.create_principal("crm", "service", roles=["api"])
    a = store.add_token("erp", token_hash=HASH_A, prefix="zg_aaaa", label="nightly batch")
    b = store.add_token("crm", token_hash=HASH_B, prefix="zg_0123", roles=["api"])
    found = store.get_token_by_hash(HASH_A)
    assert found == a
    assert found is not None
    assert found.principal.name == "erp"
    assert found.roles is None
    assert HASH_A not in repr(found)
    assert store.get_token_by_hash(HASH_B) == b
    assert b.roles == ("api",)
    assert store.get_token_by_hash("f" * 64) is None
    assert [t.id for t in store.list_tokens("erp")] == [a.id]
    assert [t.id for t in store.list_tokens()] == [a.id, b.id]


@backends
def test_token_hashes_are_unique(store: PrincipalStore) -> None:
    store.create_principal("erp", "service")
    store.add_token("erp", token_hash=HASH_A, prefix="zg_a")
    with pytest.raises(TokenExists):
        store.add_token("erp", token_hash=HASH_A, prefix="zg_b")
    with pytest.raises(PrincipalNotFound):
        store.add_token("nobody", token_hash=HASH_B, prefix="zg_b")


@pytest.mark.parametrize(
    ("token_hash", "prefix"), [("A" * 64, "zg"), ("a" * 63, "zg"), ("g" * 64, "zg"), (HASH_A, ""), (HASH_A, "x" * 17)]
)
def test_malformed_tokens_are_refused(tmp_path: Path, token_hash: str, prefix: str) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'z.db'}")
    migrate.upgrade(engine)
    store = PrincipalStore(engine)
    store.create_principal("erp", "service")
    with pytest.raises(ValueError, match="must"):
        store.add_token("erp", token_hash=token_hash, prefix=prefix)
    engine.dispose()


@backends
def test_max_password_cost_and_active_token_digests(store: PrincipalStore) -> None:
    """What the auth service reads for its dummy hash and for addresses over their token limit."""
    assert store.max_password_cost() is None
    assert store.active_token_digests() == frozenset()
    store.create_principal("alice", "user", password_hash="$2b$09$" + "C" * 53)
    store.create_principal("bob", "user", password_hash=BCRYPT)  # cost 12
    store.create_principal("carol", "user")  # no password: not counted
    assert store.max_password_cost() == 12
    store.set_password_hash("alice", "$2y$14$" + "C" * 53)
    assert store.max_password_cost() == 14
    store.create_principal("erp", "service")
    kept = store.add_token("erp", token_hash=HASH_A, prefix="zg_a")
    revoked = store.add_token("erp", token_hash=HASH_B, prefix="zg_b")
    store.revoke_token(revoked.id)
    assert store.active_token_digests() == {kept.token_hash}


@backends
def test_revoke_and_expiry_round_trip(store: PrincipalStore) -> None:
    store.create_principal("erp", "service")
    expires = datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=8)))
    token = store.add_token("erp", token_hash=HASH_A, prefix="zg_a", expires_at=expires)
    assert token.expires_at == expires
    assert token.expires_at is not None
    assert token.expires_at.tzinfo == UTC
    assert token.revoked_at is None
    revoked_at = T0 + timedelta(days=1)
    assert store.revoke_token(token.id, at=revoked_at).revoked_at == revoked_at
    assert store.revoke_token(token.id, at=revoked_at + timedelta(days=1)).revoked_at == revoked_at  # first one kept
    again = store.get_token_by_hash(HASH_A)
    assert again is not None
    assert again.revoked_at == revoked_at
    assert again.expires_at == expires
    assert store.list_tokens("erp", include_revoked=False) == []
    with pytest.raises(TokenNotFound):
        store.revoke_token(token.id + 100)
    with pytest.raises(ValueError, match="timezone"):
        store.add_token("erp", token_hash=HASH_B, prefix="zg_b", expires_at=datetime(2026, 1, 1))


@backends
def test_last_used_updates(store: PrincipalStore) -> None:
    principal = store.create_principal("erp", "service")
    token = store.add_token("erp", token_hash=HASH_A, prefix="zg_a")
    used = T0 + timedelta(minutes=5)
    store.touch_token(token.id, at=used)
    after = store.get_token(token.id)
    assert after is not None
    assert after.last_used_at == used
    assert after.principal.last_used_at == used
    later = used + timedelta(seconds=1)
    store.touch_principal(principal.id, at=later)
    assert store.get_principal("erp") == dataclasses.replace(principal, last_used_at=later)
    with pytest.raises(TokenNotFound):
        store.touch_token(token.id + 100)
    with pytest.raises(PrincipalNotFound):
        store.touch_principal(principal.id + 100)


@backends
def test_tokens_go_with_their_principal(store: PrincipalStore, engine: Engine) -> None:
    store.create_principal("erp", "service", roles=["api"])
    store.add_token("erp", token_hash=HASH_A, prefix="zg_a")
    with engine.begin() as conn:  # foreign keys are enforced (SQLite needs them switched on)
        conn.execute(text("DELETE FROM principals WHERE name = 'erp'"))
    assert store.get_token_by_hash(HASH_A) is None
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM principal_roles")).scalar() == 0


# --- the command line -----------------------------------------------------------------------


@backends
def test_cli_db_upgrade_and_current(
    db_url: URL, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # trust authentication ignores the password: it is here to show it is never printed
    url = db_url.set(password="s3cret-pw") if backend == "postgresql" else db_url
    config = tmp_path / "zguard.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\ndatabase:\n  url: '{url.render_as_string(hide_password=False)}'\n",
        encoding="utf-8",
    )
    config.chmod(0o600)  # it holds a secret (database.url): `config check` refuses it readable by others
    assert main(["db", "current", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "none (empty)" in out
    assert "zguard db upgrade" in err

    assert main(["db", "upgrade", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert f"upgraded from empty to revision {migrate.head_revision()} (head)" in out

    assert main(["--config", str(config), "db", "upgrade"]) == 0
    assert "already at revision" in capsys.readouterr().out

    assert main(["db", "current", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert f"revision {migrate.head_revision()} (head)" in out

    assert main(["config", "check", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert "url: '**********'" in out
    for printed in (out, err):
        assert "s3cret-pw" not in printed


def test_cli_db_reports_an_unreachable_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "zguard.yaml"
    config.write_text(
        "database:\n  url: 'postgresql+psycopg://zguard:s3cret-pw@127.0.0.1:1/zguard?connect_timeout=2'\n",
        encoding="utf-8",
    )
    assert main(["db", "upgrade", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "state database postgresql+psycopg://zguard:***@127.0.0.1:1/zguard" in err
    assert "s3cret-pw" not in err


@backends
def test_auth_version_grows_with_every_change_that_alters_authentication(store: PrincipalStore) -> None:
    start = store.auth_version()
    store.create_principal("ops", "user", roles=["generator"])
    token = store.add_token("ops", token_hash=HASH_A, prefix="zg_a")
    store.touch_token(token.id)
    assert store.auth_version() == start  # creating and using change no cached result
    versions = []
    for change in (
        lambda: store.disable_principal("ops"),
        lambda: store.enable_principal("ops"),
        lambda: store.set_roles("ops", ["viewer"]),
        lambda: store.set_password_hash("ops", "$2b$12$" + "a" * 53),
        lambda: store.revoke_token(token.id),
    ):
        change()
        versions.append(store.auth_version())
    assert versions == [start + 1, start + 2, start + 3, start + 4, start + 5]
    store.revoke_token(token.id)  # already revoked: nothing changes
    assert store.auth_version() == start + 5


@backends
def test_auth_version_survives_a_dropped_connection_and_sees_other_writers(
    store: PrincipalStore, engine: Engine
) -> None:
    other = PrincipalStore(engine)
    other.create_principal("ops", "user", roles=["generator"])
    before = store.auth_version()
    store._version_probe._connection.driver_connection.close()  # the server side went away
    other.disable_principal("ops")
    assert store.auth_version() == before + 1  # reconnected, and sees the other writer's commit
    other.enable_principal("ops")
    assert store.auth_version() == before + 2  # no transaction left open between reads


# --- external principals (OIDC, LDAP, SCIM) ---------------------------------------------------

ISS = "https://sso.bank.example/realms/bank"


@backends
def test_an_external_identity_is_one_principal_across_logins_and_renames(store: PrincipalStore) -> None:
    first = store.sync_external("oidc", ISS, "sub-1", "alice", ["generator"])
    assert (first.source, first.issuer, first.subject, first.kind, first.password_hash) == (
        "oidc",
        ISS,
        "sub-1",
        "user",
        None,
    )
    version = store.auth_version()
    same = store.sync_external("oidc", ISS, "sub-1", "alice", ["generator"])
    assert same.id == first.id
    assert store.auth_version() == version
    moved = store.sync_external("oidc", ISS, "sub-1", "alice.liu", ["auditor"])
    assert (moved.id, moved.name, moved.roles) == (first.id, "alice.liu", ("auditor",))
    assert store.auth_version() > version
    assert store.get_principal("alice") is None
    kept = store.sync_external("oidc", ISS, "sub-1", "alice.liu", None)  # roles assigned elsewhere stay
    assert kept.roles == ("auditor",)
    # The same subject at another issuer or source is someone else.
    assert store.sync_external("oidc", ISS + "/other", "sub-1", "alice2", []).id != first.id
    assert store.sync_external("ldap", ISS, "sub-1", "alice3", []).id != first.id


@backends
def test_an_external_identity_never_takes_over_a_local_name(store: PrincipalStore) -> None:
    local = store.create_principal("admin", "user", roles=["admin"], password_hash=BCRYPT)
    with pytest.raises(PrincipalExists):
        store.sync_external("oidc", ISS, "sub-x", "admin", ["admin"])
    store.sync_external("oidc", ISS, "sub-2", "bob", [])
    with pytest.raises(PrincipalExists):  # a rename onto a taken name
        store.sync_external("oidc", ISS, "sub-2", "admin", [])
    assert store.get_principal("admin") == local
    with pytest.raises(PrincipalNotFound):  # only provisioned users may sign in
        store.sync_external("oidc", ISS, "sub-3", "carol", [], create=False)
    assert store.get_principal("carol") is None


@backends
def test_a_scim_provisioned_user_is_the_one_who_signs_in(store: PrincipalStore) -> None:
    provisioned = store.create_principal(
        "dave", "user", roles=["designer"], source="scim", issuer="scim", subject="2819c223"
    )
    store.disable_principal("dave")
    login = store.sync_external("oidc", ISS, "sub-dave", "dave", None, create=False)
    assert (login.id, login.source, login.enabled, login.roles) == (provisioned.id, "scim", False, ("designer",))
    with pytest.raises(ValueError, match="external principal"):
        store.create_principal("eve", "user", source="scim", password_hash=BCRYPT, issuer="scim", subject="1")
    with pytest.raises(ValueError, match="external principal"):
        store.create_principal("eve", "user", issuer="scim", subject="1")
    with pytest.raises(ValueError, match="source"):
        store.sync_external("local", ISS, "s", "eve", [])
