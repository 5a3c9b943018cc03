"""What every `zguard` command shares: the parser builders, settings, the state database, the
acting user and where CLI audit events go. The exit codes are `zguard.errors`' one table.

This module imports no database, bcrypt or crypto module: `zguard --help` must stay fast, so
each helper imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.audit import AuditSink
    from zguard.config import Settings
    from zguard.services.approvals import Caller
    from zguard.store.errors import SchemaNotCurrent

from zguard.errors import EXIT_FIX, EXIT_NO, EXIT_OK, EXIT_UNAVAILABLE, InvalidValue

# The exit codes are re-exported: a command imports them with the rest of its plumbing from here.
__all__ = [
    "EXIT_FIX",
    "EXIT_NO",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "NOT_INITIALIZED_HINT",
    "Commands",
    "Handler",
    "acting_detail",
    "acting_user",
    "audit_sink_factory",
    "command",
    "config_parent",
    "group",
    "run_on_database",
    "schema_not_current",
    "settings_of",
    "setup_logging",
]

NOT_INITIALIZED_HINT = "run `zguard init` (or `zguard db upgrade`)"

Handler = Callable[[argparse.Namespace], int]
# Where subcommands go; argparse has no public name for it, and it cannot be subscripted at run time.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def config_parent() -> argparse.ArgumentParser:
    """The parent parser giving every (sub)command `--config`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,  # so a subcommand's absent --config does not mask the top-level one
        help="settings file (default: $ZGUARD_CONFIG, else config/zguard.yaml if present)",
    )
    return common


def group(commands: Commands, common: argparse.ArgumentParser, name: str, help_text: str, description: str) -> Commands:
    """A command with subcommands (`zguard NAME COMMAND`); returns where to add them."""
    parser = commands.add_parser(name, parents=[common], help=help_text, description=description)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def command(
    where: Commands,
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    *,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A runnable (sub)command; its arguments are added to the returned parser."""
    parser = where.add_parser(name, parents=[common], help=help_text, description=description or help_text)
    parser.set_defaults(handler=handler)
    return parser


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings the user pointed at: --config, else $ZGUARD_CONFIG, else config/zguard.yaml."""
    from zguard.config.loader import load_settings

    return load_settings(getattr(args, "config", None))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    from zguard.serve.log_limits import limit_repeated_logs

    limit_repeated_logs()  # a flood of one message (EMFILE, malformed requests) cannot fill the disk


def _os_account() -> tuple[int, str | None]:
    """The real uid and its name in the password database (None when it has no entry)."""
    uid = os.getuid()
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, None


def acting_user() -> str:
    """``cli:<account>``: who ran the command, from the process's real uid and the password
    database — never from LOGNAME or USER, which whoever runs the command can set."""
    uid, name = _os_account()
    return f"cli:{name}" if name else f"cli:uid={uid}"


def acting_detail() -> dict[str, str | int]:
    """What an admin event records beside `acting_user()`: the uid, and the login name the
    environment declares (LOGNAME, USER, or sudo's SUDO_USER) when it differs from the account."""
    uid, name = _os_account()
    detail: dict[str, str | int] = {"os_uid": uid}
    try:
        declared = os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError):
        declared = None
    if declared and declared != name:
        detail["declared_user"] = declared[:64]
    return detail


def acting_caller(settings: Settings, engine: Engine, name: str) -> Caller:
    """`--as NAME` of the approvals commands: the settings file's user or the enabled stored
    principal of that name, with its roles and the OS account beside it (acting_detail)."""
    from zguard.services.approvals import Caller
    from zguard.store.principals import PrincipalStore

    detail = acting_detail()
    for user in settings.api_auth.users:
        if user.username == name:
            return Caller(name, frozenset(user.roles), detail=detail)
    record = PrincipalStore(engine).get_principal(name)
    if record is None or not record.enabled:
        raise InvalidValue(f"no enabled principal named {name!r} (`zguard user list`)", param="--as")
    return Caller(record.name, frozenset(record.roles), principal_id=record.id, detail=detail)


def _trail_sink(settings: Settings, engine: Engine) -> AuditSink:
    from zguard.audit.setup import StoreSink, open_audit_store

    return StoreSink(open_audit_store(settings, engine))


audit_sink_factory: Callable[[Settings, Engine], AuditSink] = _trail_sink
"""Where commands report their audit events (committed to the trail in the same database
before the command reports success); tests replace it to capture them."""


def schema_not_current(exc: SchemaNotCurrent) -> str:
    """The end of "state database URL ...": where it is, what this zguard needs and what to run."""
    where = "empty" if exc.current is None else f"at revision {exc.current}"
    return f"is {where}, this zguard needs {exc.head}; {NOT_INITIALIZED_HINT}" if exc.known else exc.message


def run_on_database(settings: Settings, action: Callable[[Engine, str], int]) -> int:
    """Open the state database of `settings` and run `action(engine, url with the password hidden)`;
    a database failure is one line on stderr and EXIT_UNAVAILABLE, never a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    from zguard.store.database import create_store_engine, database_url

    url = database_url(settings)
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_store_engine(url)
    except PermissionError as exc:
        return _not_this_account(settings, shown, exc)
    try:
        return action(engine, shown)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        if isinstance(orig, PermissionError):
            return _not_this_account(settings, shown, orig)
        reason = str(orig or exc.__class__.__name__).strip().splitlines()[0]
        print(f"zguard: state database {shown}: {reason}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except PermissionError as exc:
        return _not_this_account(settings, shown, exc)
    finally:
        engine.dispose()


def _not_this_account(settings: Settings, shown: str, exc: PermissionError) -> int:
    """The state belongs to another account (usually: run as yourself, not as the service account)."""
    where = exc.filename or settings.state_dir
    owner = _owner_of(settings.state_dir)
    print(
        f"zguard: state database {shown}: permission denied on {where}; the state belongs to "
        f"{owner or 'another account'}\n  fix: run the command as that account, e.g. sudo -u {owner or 'zguard'} zguard ...",
        file=sys.stderr,
    )
    return EXIT_FIX


def _owner_of(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return None
