"""The admin commands of `zguard`: init, user, token, role. Parsing and printing only.

The work is done by `zguard.services.admin.AdminService`, which the console will call too.
Decisions:

- A new token goes to stdout alone, on the last line, so ``zguard token create ... | tail -1``
  captures it; every other word about it goes to stderr (or, for `init`, to earlier stdout lines).
- Passwords are read from the terminal (twice, without echo) or as one line of stdin when stdin is
  not a terminal; never from argv, where `ps` and shell history would keep them.
- A refused action (unknown name, bad role, schema not current, ...) is one line on stderr and exit
  2; an unreachable database is exit 3, like `zguard db`. No traceback for either.
- Audit events go through `zguard.cli.common.audit_sink_factory(settings, engine)`: committed to
  the audit trail in the same database before the command reports success.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from zguard import state_paths
from zguard.cli import common as cli_common
from zguard.cli.common import (
    EXIT_FIX,
    EXIT_OK,
    acting_detail,
    acting_user,
    run_on_database,
    schema_not_current,
    settings_of,
    setup_logging,
)
from zguard.config import Settings
from zguard.errors import ZguardError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.services.admin import Actor, AdminService
    from zguard.store.principals import PrincipalKind

PASSWORD_COST = 12  # bcrypt cost of new hashes (passwords.DEFAULT_COST); tests lower it


@dataclass(frozen=True)
class _Context:
    settings: Settings
    service: AdminService
    actor: Actor
    shown_url: str
    key_path: Path
    engine: Engine


def _run(args: argparse.Namespace, action: Callable[[_Context], int], *, upgrade: bool = False) -> int:
    """Open the store (migrating it first with `upgrade`, else requiring it at head) and run `action`."""
    from zguard.security.keys import KeyFileError
    from zguard.services.admin import Actor, AdminService, load_token_key
    from zguard.store import migrate
    from zguard.store.errors import SchemaNotCurrent
    from zguard.store.principals import PrincipalStore

    settings = settings_of(args)
    setup_logging("warning")
    key_path = state_paths.token_key_file(settings)

    def on_store(engine: Engine, shown: str) -> int:
        try:
            if upgrade:
                before, after = migrate.current_revision(engine), migrate.upgrade(engine)
                change = "already at" if before == after else f"upgraded from {before or 'empty'} to"
                print(f"state database {shown}: {change} revision {after} (head)")
            else:
                migrate.check_schema_current(engine)
            service = AdminService(
                PrincipalStore(engine),
                settings.role_registry(),
                token_key=lambda: load_token_key(key_path),
                audit=cli_common.audit_sink_factory(settings, engine),
                password_cost=PASSWORD_COST,
                password_min_length=settings.api_auth.password_min_length,
                token_expiry=timedelta(days=days) if (days := settings.api_auth.token_expiry_days) else None,
                reserved_names=[user.username for user in settings.api_auth.users],
            )
            actor = Actor(acting_user(), detail=acting_detail())
            return action(_Context(settings, service, actor, shown, key_path, engine))
        except SchemaNotCurrent as exc:
            print(f"zguard: state database {shown} {schema_not_current(exc)}", file=sys.stderr)
            return EXIT_FIX
        except KeyFileError as exc:
            print(f"zguard: token key: {exc.message}", file=sys.stderr)
            return EXIT_FIX
        except ZguardError as exc:  # admin refusals and store errors: messages written for the operator
            print(f"zguard: {exc.message}", file=sys.stderr)
            return EXIT_FIX

    return run_on_database(settings, on_store)


# --- formatting ------------------------------------------------------------------------------


def _when(moment: datetime | None, never: str = "-") -> str:
    return never if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _roles_text(roles: Sequence[str] | None) -> str:
    return "(owner's)" if roles is None else ",".join(roles) or "-"


def _duration(text: str) -> timedelta:
    from zguard.services.admin import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_new_password(username: str | None = None, min_length: int | None = None) -> str:
    """A password from the terminal (asked twice, not echoed) or one line of stdin; checked
    against the password policy (for `username`, at least `min_length` characters), not hashed."""
    from zguard.security.password_policy import DEFAULT_MIN_LENGTH
    from zguard.services.admin import InvalidInput, check_password

    stdin = sys.stdin
    try:
        if stdin is not None and stdin.isatty():
            password = getpass.getpass("New password: ")
            if getpass.getpass("Repeat the password: ") != password:
                raise InvalidInput("the two passwords differ; nothing was changed")
        else:
            line = stdin.readline() if stdin is not None else ""
            if not line:
                raise InvalidInput("no password on stdin: pipe it as one line, or run on a terminal to be asked")
            password = line.rstrip("\r\n")
    except (EOFError, KeyboardInterrupt):
        raise InvalidInput("no password given; nothing was changed") from None
    check_password(password, username=username, min_length=min_length or DEFAULT_MIN_LENGTH)
    return password


# --- commands --------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        key_existed = ctx.key_path.exists()
        issued = ctx.service.initialize(args.admin, actor=ctx.actor)
        name = issued.record.principal.name
        print(f"token key: {ctx.key_path} ({'existing' if key_existed else 'created, mode 0600'})")
        print(f"created user {name!r} with role admin; set its password with `zguard user passwd {name}`")
        print("admin manages users, tokens and policy but cannot generate images (separation of duties);")
        print("  for that: `zguard user add NAME --role generator`, then `zguard token create --user NAME`")
        expires = _when(issued.record.expires_at, "never")
        print(f"API token {issued.record.prefix}… for {name}, expires {expires}, shown only now; store it safely:")
        print(issued.plaintext)
        return EXIT_OK

    return _run(args, action, upgrade=True)


def cmd_user_add(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        kind: PrincipalKind = "service" if args.service else "user"
        record = ctx.service.add_principal(args.name, kind=kind, roles=args.roles, actor=ctx.actor)
        label = "service account" if kind == "service" else "user"
        print(f"created {label} {record.name!r} with roles {', '.join(record.roles)}")
        next_step = f"`zguard token create --user {record.name}`"
        if kind == "user":
            next_step = f"`zguard user passwd {record.name}` or " + next_step
        print(f"next: {next_step}", file=sys.stderr)
        return EXIT_OK

    return _run(args, action)


def cmd_user_list(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        rows = [
            [
                p.name,
                p.kind,
                ",".join(p.roles) or "-",
                "yes" if p.enabled else "no",
                "yes" if p.password_hash else "no",
                _when(p.created_at),
                _when(p.last_used_at, "never"),
                "database",
            ]
            for p in ctx.service.list_principals()
        ]
        # Settings-file users sign in too; they are listed so the namespace is seen whole.
        rows += [
            [u.username, "user", ",".join(u.roles) or "-", "yes", "yes", "-", "-", "settings"]
            for u in ctx.settings.api_auth.users
        ]
        rows.sort(key=lambda row: (row[0].casefold(), row[-1]))
        _table(["NAME", "KIND", "ROLES", "ENABLED", "PASSWORD", "CREATED", "LAST-USED", "SOURCE"], rows)
        return EXIT_OK

    return _run(args, action)


def cmd_user_enable(args: argparse.Namespace) -> int:
    enabled: bool = args.enabled

    def action(ctx: _Context) -> int:
        record = ctx.service.set_enabled(args.name, enabled, actor=ctx.actor)
        effect = "may sign in again" if enabled else "its password and tokens stop working at the next request"
        print(f"{'enabled' if enabled else 'disabled'} {record.name!r}: {effect}")
        return EXIT_OK

    return _run(args, action)


def cmd_user_roles(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        record = ctx.service.set_roles(args.name, args.roles, actor=ctx.actor)
        print(f"{record.name!r} now has roles {', '.join(record.roles)}")
        return EXIT_OK

    return _run(args, action)


def cmd_user_passwd(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        ctx.service.require_user(args.name)  # before asking for a password it could not take
        password = read_new_password(args.name, ctx.service.password_min_length)
        record = ctx.service.set_password(args.name, password, actor=ctx.actor)
        print(f"password of {record.name!r} changed")
        return EXIT_OK

    return _run(args, action)


def cmd_user_totp(args: argparse.Namespace) -> int:
    """Enrol (or, with --remove, remove) a user's console second factor, out of band."""
    import asyncio
    import contextlib

    from zguard.security.keys import derive_key
    from zguard.services.admin import DeclaredInSettings, load_token_key
    from zguard.services.totp import TOTP_KEY_PURPOSE, SecondFactor
    from zguard.store.sessions import TotpStore

    def action(ctx: _Context) -> int:
        with contextlib.suppress(DeclaredInSettings):  # settings-file users sign in to the console too
            ctx.service.require_user(args.name)
        key = derive_key(load_token_key(ctx.key_path), TOTP_KEY_PURPOSE)
        factor = SecondFactor(TotpStore(ctx.engine), key, ctx.settings.console.totp_required_roles)
        if args.remove:
            removed = asyncio.run(factor.remove(args.name))
            if removed:
                ctx.service.record("user.totp_removed", ctx.actor, {"target": args.name})
            print(f"second factor of {args.name!r} {'removed' if removed else 'was not set up'}")
            return EXIT_OK
        secret = SecondFactor.new_secret()
        print(f"key for {args.name!r}'s authenticator app: {secret}", file=sys.stderr)
        print(f"or as a link (for a QR code): {SecondFactor.provisioning_uri(args.name, secret)}", file=sys.stderr)
        print("enter the 6-digit code the app shows now: ", end="", file=sys.stderr, flush=True)
        code = sys.stdin.readline().strip()
        if not asyncio.run(factor.enrol(args.name, secret, code)):
            print("zguard: that code does not match the key; run the command again", file=sys.stderr)
            return EXIT_FIX
        ctx.service.record("user.totp_enrolled", ctx.actor, {"target": args.name})
        print(f"second factor of {args.name!r} set up; console sign-in now asks for its code")
        return EXIT_OK

    return _run(args, action)


def cmd_user_hash_password(args: argparse.Namespace) -> int:
    from zguard.security.passwords import hash_password

    # No settings are read: the hash is often made for a settings file that is not finished yet.
    try:
        password = read_new_password()
    except ZguardError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return EXIT_FIX
    print(hash_password(password, PASSWORD_COST))
    return EXIT_OK


def cmd_token_create(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        issued = ctx.service.create_token(
            args.user,
            roles=args.roles,
            expires_in=args.expires_in,
            never_expires=args.no_expiry,
            label=args.label,
            actor=ctx.actor,
        )
        token = issued.record
        print(
            f"token {token.id} ({token.prefix}…) for {token.principal.name!r}: roles {_roles_text(token.roles)}, "
            f"expires {_when(token.expires_at, 'never')}; shown only now, store it safely",
            file=sys.stderr,
        )
        print(issued.plaintext)
        return EXIT_OK

    return _run(args, action)


def cmd_token_list(args: argparse.Namespace) -> int:
    from zguard.services.admin import token_status

    def action(ctx: _Context) -> int:
        now = ctx.service.now()
        rows = [
            [
                str(t.id),
                t.prefix,
                t.principal.name,
                _roles_text(t.roles),
                token_status(t, now),
                _when(t.created_at),
                _when(t.expires_at, "never"),
                _when(t.revoked_at),
                _when(t.last_used_at, "never"),
                t.label or "-",
            ]
            for t in ctx.service.list_tokens(args.user)
        ]
        headers = ["ID", "PREFIX", "OWNER", "ROLES", "STATUS", "CREATED", "EXPIRES", "REVOKED", "LAST-USED", "LABEL"]
        _table(headers, rows)
        return EXIT_OK

    return _run(args, action)


def cmd_token_revoke(args: argparse.Namespace) -> int:
    def action(ctx: _Context) -> int:
        record, changed = ctx.service.revoke_token(args.id, actor=ctx.actor)
        what = f"token {record.id} ({record.prefix}…) of {record.principal.name!r}"
        if changed:
            print(f"revoked {what}; it stops working at the next request")
        else:
            print(f"{what} was already revoked at {_when(record.revoked_at)}")
        return EXIT_OK

    return _run(args, action)


def cmd_role_list(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    rows = [
        [role.name, "built-in" if role.builtin else "custom", ", ".join(sorted(role.permissions))]
        for role in sorted(settings.role_registry(), key=lambda r: (not r.builtin, r.name))
    ]
    _table(["ROLE", "ORIGIN", "PERMISSIONS"], rows)
    return EXIT_OK


# --- the parser ------------------------------------------------------------------------------


def _role_option(parser: argparse.ArgumentParser, *, required: bool, help_text: str) -> None:
    parser.add_argument(
        "--role", dest="roles", action="append", required=required, default=None, metavar="ROLE", help=help_text
    )


def register(commands: cli_common.Commands, common: argparse.ArgumentParser) -> None:
    """Add `init`, `user`, `token` and `role` to the `zguard` parser; `common` carries --config."""

    def group(name: str, help_text: str) -> cli_common.Commands:
        return cli_common.group(commands, common, name, help_text, help_text[0].upper() + help_text[1:] + ".")

    def command(
        where: cli_common.Commands, name: str, handler: cli_common.Handler, help_text: str, description: str
    ) -> argparse.ArgumentParser:
        return cli_common.command(where, common, name, handler, help_text=help_text, description=description)

    init = commands.add_parser(
        "init",
        parents=[common],
        help="create the state store and the first admin, and print its API token once",
        description="Create or migrate the state database, create the token key if absent, create the first admin "
        "(a user with role admin) and print an API token for it once, alone on the last line. Refuses when an "
        "admin already exists: it never creates a second one.",
    )
    init.add_argument("--admin", metavar="NAME", default="admin", help="name of the first admin (default: admin)")
    init.set_defaults(handler=cmd_init)

    users = group("user", "manage users and service accounts")
    add = command(
        users,
        "add",
        cmd_user_add,
        "add a user or service account",
        "Add a user (give it a password with `user passwd`) or, with --service, a service account, which authenticates with API tokens only.",
    )
    add.add_argument("name", metavar="NAME", help="login name")
    _role_option(add, required=True, help_text="role to grant; repeat for more (see `zguard role list`)")
    add.add_argument("--service", action="store_true", help="a service account: no password, API tokens only")
    command(
        users,
        "list",
        cmd_user_list,
        "list users and service accounts",
        "List every user and service account with its roles, state, creation and last use.",
    )
    for name, enabled, text in (
        ("disable", False, "disable a user or service account: its password and tokens stop working"),
        ("enable", True, "enable a disabled user or service account again"),
    ):
        parser = command(users, name, cmd_user_enable, text, text[0].upper() + text[1:] + ".")
        parser.add_argument("name", metavar="NAME", help="user or service account")
        parser.set_defaults(enabled=enabled)
    passwd = command(
        users,
        "passwd",
        cmd_user_passwd,
        "set a user's password",
        "Set a user's password: asked twice on the terminal, or read as one line from stdin when it is not a terminal. Never taken from the command line.",
    )
    passwd.add_argument("name", metavar="NAME", help="user")
    totp = command(
        users,
        "totp",
        cmd_user_totp,
        "set up a user's console second factor (TOTP)",
        "Set up a user's authenticator app for console sign-in: prints a new key (and its otpauth:// link) on stderr and reads a code made from it on stdin, so the key is stored only once the app has it. Needed for roles in console.totp_required_roles (admin by default), who cannot enrol from the console before they can sign in. --remove takes it away.",
    )
    totp.add_argument("name", metavar="NAME", help="user")
    totp.add_argument("--remove", action="store_true", help="remove the user's second factor instead")
    roles = command(
        users,
        "roles",
        cmd_user_roles,
        "replace a principal's roles",
        "Replace the roles of a user or service account with the ones given.",
    )
    roles.add_argument("name", metavar="NAME", help="user or service account")
    _role_option(roles, required=True, help_text="role it should hold; repeat for more")
    command(
        users,
        "hash-password",
        cmd_user_hash_password,
        "print the bcrypt hash of a password for api_auth.users",
        "Read a password from the terminal (asked twice) or as one line of stdin, and print its bcrypt hash for `api_auth.users[].password`. No settings are read. There is deliberately no option to pass the password on the command line.",
    )

    tokens = group("token", "manage API tokens")
    create = command(
        tokens,
        "create",
        cmd_token_create,
        "create an API token and print it once",
        "Create an API token for a user or service account. The token is printed once, alone on the last line of stdout; only its digest is stored.",
    )
    create.add_argument("--user", required=True, metavar="NAME", help="owner of the token")
    lifetime = create.add_mutually_exclusive_group()
    lifetime.add_argument(
        "--expires-in",
        type=_duration,
        metavar="DURATION",
        help="lifetime: 90m, 12h, 30d (default: api_auth.token_expiry_days, 90 days)",
    )
    lifetime.add_argument(
        "--no-expiry", action="store_true", help="a token that never expires (recorded; `zguard scan` flags it)"
    )
    _role_option(
        create,
        required=False,
        help_text="narrow the token to this role of its owner; repeat for more (default: all the owner's roles)",
    )
    create.add_argument("--label", metavar="TEXT", help="a note to recognise the token by, e.g. where it is used")
    listing = command(
        tokens,
        "list",
        cmd_token_list,
        "list API tokens",
        "List API tokens (never the tokens themselves): id, display prefix, owner, roles, status and times.",
    )
    listing.add_argument("--user", metavar="NAME", help="only this owner's tokens")
    revoke = command(
        tokens,
        "revoke",
        cmd_token_revoke,
        "revoke an API token",
        "Revoke an API token by id (see `zguard token list`); it stops working at the next request.",
    )
    revoke.add_argument("id", type=int, metavar="ID", help="token id")

    role = group("role", "inspect roles")
    command(
        role,
        "list",
        cmd_role_list,
        "list roles and their permissions",
        "List the built-in and configured custom roles with the permissions each grants.",
    )
