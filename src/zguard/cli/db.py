"""`zguard db upgrade` and `zguard db current`: the state database's schema."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from zguard.cli.common import EXIT_NO, EXIT_OK, Commands, command, group, run_on_database, settings_of, setup_logging

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _on_database(args: argparse.Namespace, action: Callable[[Engine, str], int]) -> int:
    settings = settings_of(args)
    setup_logging("warning")
    return run_on_database(settings, action)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from zguard.store import migrate

    def action(engine: Engine, shown: str) -> int:
        before = migrate.current_revision(engine)
        after = migrate.upgrade(engine)
        change = "already at" if before == after else f"upgraded from {before or 'empty'} to"
        print(f"state database {shown}: {change} revision {after} (head)")
        return EXIT_OK

    return _on_database(args, action)


def cmd_db_current(args: argparse.Namespace) -> int:
    from zguard.store import migrate

    def action(engine: Engine, shown: str) -> int:
        current, head = migrate.current_revision(engine), migrate.head_revision()
        if current == head:
            print(f"state database {shown}: revision {current} (head)")
            return EXIT_OK
        print(f"state database {shown}: revision {current or 'none (empty)'}; this zguard needs {head}")
        print("run `zguard db upgrade`", file=sys.stderr)
        return EXIT_NO

    return _on_database(args, action)


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `db upgrade` and `db current`; `common` carries --config."""
    db_commands = group(
        commands, common, "db", "state database tools", "Create, migrate and inspect the state database."
    )
    command(
        db_commands,
        common,
        "upgrade",
        cmd_db_upgrade,
        help_text="create the state database or migrate it to this version's schema",
        description="Create the state database (database.url, default state_dir/zguard.db) or migrate it to the schema this zguard needs. Safe to run again.",
    )
    command(
        db_commands,
        common,
        "current",
        cmd_db_current,
        help_text="show the state database's schema revision",
        description="Print the state database's schema revision; exit 1 when it is not the one this zguard needs.",
    )
