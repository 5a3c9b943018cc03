"""The admin commands, run in-process through `zguard.cli.main.main`: init, user, token, role.

Every test runs on a SQLite file in tmp_path; the main path (init, user add, token create,
revoke) also on PostgreSQL, in a schema of its own (skipped when the server is unreachable,
failing under CI=true). Audit events are captured by swapping in a `MemoryAuditSink`; bcrypt
runs at its lowest cost.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.common.cli import ZguardCli
from tests.common.databases import BACKENDS, database_url_for
from zguard.audit.memory import MemoryAuditSink
from zguard.cli import admin as admin_cli
from zguard.cli import common as cli_common
from zguard.cli.main import main
from zguard.config.loader import load_settings
from zguard.security.passwords import verify_password
from zguard.security.tokens import looks_like_token, token_digest
from zguard.store.database import create_store_engine, database_url
from zguard.store.principals import PrincipalStore, TokenRecord

NOT_INITIALIZED = "run `zguard init` (or `zguard db upgrade`)"
PASSWORD = "correct horse battery staple"

backends = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


class TerminalInput(io.StringIO):
    """Stands in for an interactive stdin: `isatty` says yes, and nothing may be read from it."""

    def isatty(self) -> bool:
        return True


class Zguard(ZguardCli):
    """Runs `zguard ...` against one settings file and reads back what it did."""

    def __init__(self, config: Path, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink) -> None:
        super().__init__(config, capsys)
        self.sink = sink

    @property
    def key(self) -> bytes:
        return (self.settings.state_dir / "token.key").read_bytes()

    def stored_token(self, token: str) -> TokenRecord:
        engine = create_store_engine(database_url(self.settings))
        try:
            record = PrincipalStore(engine).get_token_by_hash(token_digest(token, self.key))
        finally:
            engine.dispose()
        assert record is not None
        return record

    @contextmanager
    def store(self) -> Iterator[PrincipalStore]:
        engine = create_store_engine(database_url(self.settings))
        try:
            yield PrincipalStore(engine)
        finally:
            engine.dispose()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[URL]:
    with database_url_for(backend, tmp_path) as url:
        yield url


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> MemoryAuditSink:
    memory = MemoryAuditSink()
    monkeypatch.setattr(cli_common, "audit_sink_factory", lambda settings, engine: memory)
    monkeypatch.setattr(admin_cli, "PASSWORD_COST", 4)  # bcrypt's lowest: the tests check behaviour, not cost
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    return memory


def write_config(tmp_path: Path, url: URL | None = None, extra: str = "") -> Path:
    config = tmp_path / "zguard.yaml"
    text = f"state_dir: {tmp_path / 'state'}\n"
    if url is not None and url.drivername != "sqlite":
        text += f"database:\n  url: '{url.render_as_string(hide_password=False)}'\n"
    config.write_text(text + extra, encoding="utf-8")
    return config


@pytest.fixture
def zguard(tmp_path: Path, db_url: URL, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink) -> Zguard:
    return Zguard(write_config(tmp_path, db_url), capsys, sink)


@pytest.fixture
def ready(zguard: Zguard) -> Zguard:
    """After `zguard init`, with its events cleared."""
    zguard.ok("init")
    zguard.sink.events.clear()
    return zguard


def last_line(out: str) -> str:
    return out.rstrip("\n").splitlines()[-1]


def assert_no_secrets(sink: MemoryAuditSink, *secrets: str) -> None:
    dumped = json.dumps([asdict(event) for event in sink.events], default=str)
    for secret in secrets:
        assert secret not in dumped
    assert "$2b$" not in dumped  # no password hash either


# --- the main path, on both backends ----------------------------------------------------------


@backends
def test_init_add_create_and_revoke(zguard: Zguard) -> None:
    out = zguard.ok("init")
    admin_token = last_line(out)
    assert looks_like_token(admin_token)
    assert "revision" in out
    assert "cannot generate images" in out
    admin = zguard.stored_token(admin_token)
    assert admin.principal.name == "admin"
    assert admin.principal.roles == ("admin",)
    assert admin.principal.kind == "user"
    assert admin.revoked_at is None
    assert admin.roles is None  # all of the admin's roles
    assert (zguard.settings.state_dir / "token.key").stat().st_mode & 0o777 == 0o600

    zguard.ok("user", "add", "alice", "--role", "generator", "--role", "viewer")
    code, out, err = zguard(
        "token", "create", "--user", "alice", "--role", "generator", "--expires-in", "30d", "--label", "ci"
    )
    assert code == 0, err
    token = last_line(out)
    assert out.strip().splitlines() == [token]  # stdout is the token alone; the words go to stderr
    assert token not in err
    assert "alice" in err
    record = zguard.stored_token(token)
    assert record.principal.name == "alice"
    assert record.roles == ("generator",)
    assert record.label == "ci"
    assert record.revoked_at is None
    assert record.expires_at is not None
    assert record.expires_at - record.created_at == pytest.approx(timedelta(days=30), abs=timedelta(seconds=5))

    listing = zguard.ok("token", "list")
    assert record.prefix in listing
    assert record.token_hash not in listing
    assert token not in listing

    revoked = zguard.ok("token", "revoke", str(record.id))
    assert f"revoked token {record.id}" in revoked
    assert zguard.stored_token(token).revoked_at is not None
    alice_rows = [line for line in zguard.ok("token", "list", "--user", "alice").splitlines() if "alice" in line]
    assert len(alice_rows) == 1
    assert "revoked" in alice_rows[0].split()
    assert "already revoked" in zguard.ok("token", "revoke", str(record.id))

    types = [event.type for event in zguard.sink.events]
    assert types == [
        "user.created",
        "token.created",
        "store.initialized",
        "user.created",
        "token.created",
        "token.revoked",
    ]  # the second revoke changed nothing and reported nothing
    for event in zguard.sink.events:
        assert event.outcome == "done"
        assert event.principal is not None
        assert event.principal.startswith("cli:")
    created = zguard.sink.events[4]
    assert created.detail["target"] == "alice"
    assert created.detail["token"] == record.prefix
    assert created.detail["roles"] == "generator"
    assert_no_secrets(zguard.sink, token, admin_token, record.token_hash, admin.token_hash)


def test_admin_events_name_the_real_account_not_what_the_environment_says(
    zguard: Zguard, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pwd

    account = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("LOGNAME", "the-auditor")  # anyone can set these; they used to be the principal
    monkeypatch.setenv("USER", "the-auditor")
    monkeypatch.delenv("SUDO_USER", raising=False)
    zguard.ok("init", "--admin", "root-admin")
    event = zguard.sink.events[-1]
    assert event.principal == f"cli:{account}"
    assert event.detail["os_uid"] == os.getuid()
    assert event.detail["declared_user"] == "the-auditor"


# --- init ------------------------------------------------------------------------------------


def test_init_never_creates_a_second_admin(zguard: Zguard) -> None:
    first = last_line(zguard.ok("init"))
    for argv in (["init"], ["init", "--admin", "root"]):
        err = zguard.refused(*argv)
        assert "already initialized" in err
        assert "zguard token create --user admin" in err
    users = zguard.ok("user", "list")
    assert "root" not in users
    assert zguard.stored_token(first).revoked_at is None  # the first token still works


def test_init_beside_non_admin_principals_and_a_taken_name(zguard: Zguard) -> None:
    zguard.ok("db", "upgrade")
    with zguard.store() as store:
        store.create_principal("demo", "service", roles=["generator"])  # what `serve` makes on the demo model
    err = zguard.refused("init", "--admin", "demo")
    assert "'demo' already exists" in err
    token = last_line(zguard.ok("init", "--admin", "boss"))
    assert zguard.stored_token(token).principal.name == "boss"


def test_init_refuses_a_configured_user_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink
) -> None:
    hashed = "$2b$04$" + "C" * 53
    extra = f"api_auth:\n  users:\n    - username: admin\n      password: '{hashed}'\n      roles: [viewer]\n"
    zguard = Zguard(write_config(tmp_path, extra=extra), capsys, sink)
    assert "api_auth.users" in zguard.refused("init")
    assert "api_auth.users" in zguard.refused("user", "add", "admin", "--role", "viewer")
    zguard.ok("init", "--admin", "root")


def test_one_namespace_of_principals_without_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink
) -> None:
    # a settings-file `demo` (auditor) beside a stored `demo` (generator); `Bob` beside `bob`
    hashed = "$2b$04$" + "C" * 53
    extra = f"api_auth:\n  users:\n    - username: designer01\n      password: '{hashed}'\n      roles: [auditor]\n"
    zguard = Zguard(write_config(tmp_path, extra=extra), capsys, sink)
    zguard.ok("init", "--admin", "root")
    assert "api_auth.users" in zguard.refused("user", "add", "Designer01", "--role", "generator")
    zguard.ok("user", "add", "bob", "--role", "generator")
    err = zguard.refused("user", "add", "Bob", "--role", "generator")
    assert "differs from the existing principal 'bob' only in case" in err
    assert "already exists" in zguard.refused("user", "add", "bob", "--role", "generator")

    rows = {line.split()[0]: line.split() for line in zguard.ok("user", "list").splitlines()[1:]}
    assert rows["designer01"][2] == "auditor"
    assert rows["designer01"][-1] == "settings"
    assert rows["bob"][-1] == "database"
    err = zguard.refused("user", "disable", "designer01")
    assert "declared in the settings file (api_auth.users)" in err  # was: no principal 'designer01'


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "list"],
        ["user", "add", "alice", "--role", "viewer"],
        ["user", "disable", "alice"],
        ["user", "roles", "alice", "--role", "viewer"],
        ["user", "passwd", "alice"],
        ["token", "create", "--user", "alice"],
        ["token", "list"],
        ["token", "revoke", "1"],
    ],
)
def test_commands_before_init_point_to_init(argv: list[str], zguard: Zguard) -> None:
    err = zguard.refused(*argv)
    assert NOT_INITIALIZED in err
    assert not (zguard.settings.state_dir / "token.key").exists()


def test_role_list_and_hash_password_need_no_store(zguard: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "generator" in zguard.ok("role", "list")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert verify_password(PASSWORD, last_line(zguard.ok("user", "hash-password")))


# --- users -----------------------------------------------------------------------------------


def test_user_list_enable_disable_and_roles(ready: Zguard) -> None:
    ready.ok("user", "add", "alice", "--role", "generator")
    ready.ok("user", "add", "ci-bot", "--role", "generator", "--role", "viewer", "--service")
    rows = {line.split()[0]: line.split() for line in ready.ok("user", "list").splitlines()[1:]}
    assert rows["admin"][:5] == ["admin", "user", "admin", "yes", "no"]
    assert rows["ci-bot"][:5] == ["ci-bot", "service", "generator,viewer", "yes", "no"]
    assert rows["alice"][-2] == "never"

    ready.ok("user", "disable", "alice")
    assert ready.ok("user", "list").splitlines()[2].split()[3] == "no"  # rows sorted by name: admin, alice, ci-bot
    assert "disabled" in ready.refused("token", "create", "--user", "alice")
    ready.ok("user", "enable", "alice")
    ready.ok("user", "roles", "alice", "--role", "viewer", "--role", "approver")
    with ready.store() as store:
        alice = store.get_principal("alice")
        assert alice is not None
        assert alice.enabled
        assert alice.roles == ("approver", "viewer")

    assert [e.type for e in ready.sink.events] == [
        "user.created",
        "user.created",
        "user.disabled",
        "user.enabled",
        "user.roles_changed",
    ]
    changed = ready.sink.events[-1].detail
    assert changed == {
        "target": "alice",
        "roles": "approver,viewer",
        "previous_roles": "generator",
        "os_uid": os.getuid(),
    }
    assert ready.sink.events[1].detail["kind"] == "service"


@pytest.mark.parametrize(
    ("roles", "words"),
    [
        (["nope"], ["unknown role 'nope'", "known: admin, approver, auditor, generator, viewer"]),
        (["admin", "generator"], ["separation of duties", "images:generate with users:manage"]),
        (["auditor", "generator"], ["separation of duties", "whoever generates images must not review"]),
        (["admin", "approver"], ["separation of duties", "approvals:decide with users:manage"]),
    ],
)
def test_roles_must_exist_and_keep_duties_apart(roles: list[str], words: list[str], ready: Zguard) -> None:
    options = [arg for role in roles for arg in ("--role", role)]
    err = ready.refused("user", "add", "mallory", *options)
    for word in [*words, "'mallory'"]:
        assert word in err
    ready.ok("user", "add", "bob", "--role", "viewer")
    err = ready.refused("user", "roles", "bob", *options)
    for word in words:
        assert word in err
    users = ready.ok("user", "list")
    assert "mallory" not in users
    assert [e.type for e in ready.sink.events] == ["user.created"]  # refusals change nothing and emit nothing


def test_custom_roles_are_known(tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink) -> None:
    extra = "roles:\n  - name: designer\n    inherits: [generator]\n  - name: reviewer\n    permissions: [audit:read]\n"
    zguard = Zguard(write_config(tmp_path, extra=extra), capsys, sink)
    roles = {line.split()[0]: line for line in zguard.ok("role", "list").splitlines()[1:]}
    assert "custom" in roles["designer"]
    assert "images:generate" in roles["designer"]
    assert "built-in" in roles["admin"]
    assert "users:manage" in roles["admin"]
    zguard.ok("init")
    zguard.ok("user", "add", "dora", "--role", "designer")
    assert "separation of duties" in zguard.refused("user", "roles", "dora", "--role", "designer", "--role", "reviewer")


def test_store_errors_are_one_line(ready: Zguard) -> None:
    ready.ok("user", "add", "alice", "--role", "viewer")
    assert "already exists" in ready.refused("user", "add", "alice", "--role", "viewer")
    assert "no principal 'ghost'" in ready.refused("user", "disable", "ghost")
    assert "no principal 'ghost'" in ready.refused("user", "roles", "ghost", "--role", "viewer")
    assert "no principal 'ghost'" in ready.refused("token", "create", "--user", "ghost")
    assert "no principal 'ghost'" in ready.refused("token", "list", "--user", "ghost")
    assert "no API token with id 99" in ready.refused("token", "revoke", "99")
    assert "characters" in ready.refused("user", "add", "bad\tname", "--role", "viewer")


# --- passwords -------------------------------------------------------------------------------


def test_passwd_reads_one_line_of_stdin(ready: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    ready.ok("user", "add", "alice", "--role", "generator")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\nignored second line\n"))
    ready.ok("user", "passwd", "alice")
    with ready.store() as store:
        alice = store.get_principal("alice")
        assert alice is not None
        assert alice.password_hash is not None
        assert verify_password(PASSWORD, alice.password_hash)
    assert ready.sink.events[-1].type == "user.password_changed"
    assert ready.sink.events[-1].detail == {"target": "alice", "os_uid": os.getuid()}
    assert_no_secrets(ready.sink, PASSWORD)
    assert "yes" in ready.ok("user", "list").splitlines()[2].split()[4]


def test_passwd_on_a_terminal_asks_twice(ready: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    ready.ok("user", "add", "alice", "--role", "generator")
    monkeypatch.setattr("sys.stdin", TerminalInput())
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "something else"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    ready.ok("user", "passwd", "alice")
    assert len(prompts) == 2
    assert "differ" in ready.refused("user", "passwd", "alice")
    with ready.store() as store:
        alice = store.get_principal("alice")
        assert alice is not None
        assert alice.password_hash is not None
        assert verify_password(PASSWORD, alice.password_hash)
    assert [e.type for e in ready.sink.events].count("user.password_changed") == 1


@pytest.mark.parametrize(
    ("stdin", "words"),
    [
        ("", "no password on stdin"),
        ("\n", "empty"),
        ("é" * 37 + "\n", "longer than 72 bytes"),
        ("x\n", "shorter than 12 characters"),  # a one-character password was accepted
        ("Password123!\n", "most common passwords"),
        ("alice-in-wonderland\n", "contains the username"),
        ("abcabcabcabcabc\n", "short pattern repeated"),
    ],
)
def test_passwd_refuses_unusable_passwords(
    stdin: str, words: str, ready: Zguard, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready.ok("user", "add", "alice", "--role", "generator")
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert words in ready.refused("user", "passwd", "alice")
    assert "user.password_changed" not in [e.type for e in ready.sink.events]


def test_service_accounts_get_no_password(ready: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    ready.ok("user", "add", "ci-bot", "--role", "generator", "--service")
    stdin = io.StringIO(PASSWORD + "\n")
    monkeypatch.setattr("sys.stdin", stdin)
    assert "service account" in ready.refused("user", "passwd", "ci-bot")
    assert stdin.tell() == 0  # refused before asking


def test_hash_password_from_stdin_and_terminal(zguard: Zguard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    out = zguard.ok("user", "hash-password")
    assert out.count("\n") == 1
    assert verify_password(PASSWORD, out.strip())
    assert PASSWORD not in out

    monkeypatch.setattr("sys.stdin", TerminalInput())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "a long pw on a tty")
    assert verify_password("a long pw on a tty", zguard.ok("user", "hash-password").strip())
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert "empty" in zguard.refused("user", "hash-password")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert "shorter than 12 characters" in zguard.refused("user", "hash-password")


def test_hash_password_takes_nothing_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["user", "hash-password", PASSWORD], ["user", "hash-password", "--password", PASSWORD]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


# --- tokens ----------------------------------------------------------------------------------


def test_token_roles_only_narrow_the_owners(ready: Zguard) -> None:
    ready.ok("user", "add", "alice", "--role", "generator", "--role", "viewer")
    err = ready.refused("token", "create", "--user", "alice", "--role", "admin")
    assert "does not hold the role(s) admin" in err
    assert "generator, viewer" in err
    token = last_line(ready.ok("token", "create", "--user", "alice", "--role", "viewer", "--role", "generator"))
    assert ready.stored_token(token).roles == ("generator", "viewer")
    everything = last_line(ready.ok("token", "create", "--user", "alice"))
    assert ready.stored_token(everything).roles is None
    assert [e.type for e in ready.sink.events] == ["user.created", "token.created", "token.created"]


def test_tokens_expire_by_default_and_never_only_when_asked(ready: Zguard) -> None:
    # tokens never expired unless asked; init's admin token was flagged by `zguard scan` at once
    ready.ok("user", "add", "alice", "--role", "generator")
    made = datetime.now(UTC)
    default = ready.stored_token(last_line(ready.ok("token", "create", "--user", "alice"))).expires_at
    assert default is not None
    assert timedelta(days=89, hours=23) < default - made < timedelta(days=90, minutes=1)
    forever = last_line(ready.ok("token", "create", "--user", "alice", "--no-expiry"))
    assert ready.stored_token(forever).expires_at is None
    assert ready.sink.events[-1].detail["expires_at"] is None
    argv = ["token", "create", "--user", "alice", "--no-expiry", "--expires-in", "1d", "--config", str(ready.config)]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "not allowed with argument" in ready.capsys.readouterr().err


def test_init_says_when_its_token_expires(zguard: Zguard) -> None:
    out = zguard.ok("init")
    expected = (datetime.now(UTC) + timedelta(days=90)).strftime("%Y-%m-%d")
    assert f"expires {expected}" in out


@pytest.mark.parametrize("expires", ["30", "5y", "0d", "-3h", "1.5d", "99999d"])
def test_token_lifetimes_are_checked(expires: str, ready: Zguard) -> None:
    with pytest.raises(SystemExit) as info:
        main(["token", "create", "--user", "admin", "--expires-in", expires, "--config", str(ready.config)])
    assert info.value.code == 2
    assert "--expires-in" in ready.capsys.readouterr().err


def test_token_list_shows_status_and_never_secrets(ready: Zguard) -> None:
    ready.ok("user", "add", "alice", "--role", "generator")
    token = last_line(ready.ok("token", "create", "--user", "alice", "--expires-in", "90m", "--label", "laptop"))
    record = ready.stored_token(token)
    ready.ok("user", "disable", "alice")
    header, *rows = ready.ok("token", "list").splitlines()
    assert header.split() == [
        "ID", "PREFIX", "OWNER", "ROLES", "STATUS", "CREATED", "EXPIRES", "REVOKED", "LAST-USED", "LABEL"
    ]  # fmt: skip
    by_owner = {row.split()[2]: row for row in rows}
    assert "(owner's)" in by_owner["admin"]
    assert "active" in by_owner["admin"]
    assert "owner disabled" in by_owner["alice"]
    assert "laptop" in by_owner["alice"]
    listing = "\n".join(rows)
    assert token not in listing
    assert record.token_hash not in listing


def test_token_key_file_setting_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sink: MemoryAuditSink
) -> None:
    key_file = tmp_path / "keys" / "api-token.key"
    zguard = Zguard(write_config(tmp_path, extra=f"api_auth:\n  token_key_file: {key_file}\n"), capsys, sink)
    token = last_line(zguard.ok("init"))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (zguard.settings.state_dir / "token.key").exists()
    with zguard.store() as store:
        assert store.get_token_by_hash(token_digest(token, key_file.read_bytes())) is not None


def test_a_readable_token_key_is_refused(ready: Zguard) -> None:
    (ready.settings.state_dir / "token.key").chmod(0o644)
    assert "chmod 600" in ready.refused("token", "create", "--user", "admin")


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["init"],
        ["user"],
        ["user", "add"],
        ["user", "list"],
        ["user", "disable"],
        ["user", "enable"],
        ["user", "passwd"],
        ["user", "roles"],
        ["user", "hash-password"],
        ["token"],
        ["token", "create"],
        ["token", "list"],
        ["token", "revoke"],
        ["role"],
        ["role", "list"],
    ],
)
def test_help_on_every_admin_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: zguard {' '.join(argv)}" in out
    assert "--config FILE" in out


def test_admin_events_are_committed_to_the_audit_trail_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from zguard.audit.setup import open_audit_store
    from zguard.audit.verify import verify_store

    config = str(write_config(tmp_path))
    assert main(["init", "--config", config]) == 0
    token = last_line(capsys.readouterr().out)
    settings = load_settings(config)
    engine = create_store_engine(database_url(settings))
    try:
        store = open_audit_store(settings, engine)
        events = [json.loads(e.body) for e in store.iter_events()]
        assert [e["type"] for e in events] == ["user.created", "token.created", "store.initialized"]
        assert all(e["principal"].startswith("cli:") for e in events)
        assert verify_store(store, store.signer.public_key if store.signer else None).ok
    finally:
        engine.dispose()
    database = settings.state_dir / "zguard.db"
    raw = b"".join(p.read_bytes() for p in database.parent.glob("zguard.db*"))
    assert token.encode() not in raw


@pytest.mark.parametrize(
    "argv", [["user", "list"], ["token", "list"], ["db", "current"], ["audit", "status"], ["scan"]]
)
def test_the_wrong_os_account_gets_the_fix_not_a_traceback(
    ready: Zguard, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    # as another OS user than the state's owner, every database command ended in a PermissionError
    from zguard.store import database

    def denied(path: Path) -> None:  # what a non-owner meets (root, running the tests, reads everything)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(database, "_create_private_file", denied)
    code, out, err = ready(*argv)
    assert code == 2, (out, err)
    assert "permission denied on" in err
    assert "fix: run the command as that account, e.g. sudo -u" in err


def test_user_totp_enrols_with_a_code_from_the_printed_key_and_removes(
    ready: Zguard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator sets up an admin's authenticator out of band (admins cannot sign in to the
    console without one, so cannot enrol there first)."""
    import pyotp

    from zguard.services.totp import SecondFactor

    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    monkeypatch.setattr(SecondFactor, "new_secret", staticmethod(lambda: secret))
    monkeypatch.setattr("sys.stdin", io.StringIO("000000\n"))
    code, _out, err = ready("user", "totp", "admin")
    assert code == 2
    assert secret in err  # the key is shown, on stderr, so it stays out of captured stdout
    assert "does not match" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(pyotp.TOTP(secret).now() + "\n"))
    assert "set up" in ready.ok("user", "totp", "admin")
    assert ready.sink.events[-1].type == "user.totp_enrolled"
    assert ready.sink.events[-1].detail["target"] == "admin"
    assert_no_secrets(ready.sink, secret)
    with ready.store() as store:
        from sqlalchemy import text

        with store.engine.connect() as connection:
            [(principal, sealed)] = connection.execute(text("SELECT principal, sealed FROM totp_secrets")).all()
    assert principal == "admin"
    assert secret not in sealed
    assert "removed" in ready.ok("user", "totp", "admin", "--remove")
    assert ready.sink.events[-1].type == "user.totp_removed"
