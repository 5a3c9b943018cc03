"""The `zguard` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from zguard.cli.admin import add_admin_commands, run_on_database
from zguard.cli.audit import add_audit_commands
from zguard.cli.doctor import add_doctor_command
from zguard.cli.install import add_install_command
from zguard.cli.model import add_model_pin_commands
from zguard.cli.policy import add_policy_commands
from zguard.cli.provenance import add_provenance_commands
from zguard.config import Settings
from zguard.config.loader import load_settings, masked_settings
from zguard.errors import ConfigError
from zguard.ops.scan import add_scan_command

if TYPE_CHECKING:
    from sqlalchemy import Engine

EXIT_OK = 0
EXIT_NOT_CURRENT = 1  # `db current`: the database is not at the revision this zguard needs
EXIT_CONFIG = 2

Handler = Callable[[argparse.Namespace], int]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)
    from zguard.ops.host_checks import refuse_readable_settings_file
    from zguard.serve.lifecycle import serve

    refuse_readable_settings_file(getattr(args, "config", None))  # the rest of the host checks: serve()

    code = asyncio.run(serve(settings))
    # The orderly shutdown is complete (listeners closed, worker joined). Skip interpreter
    # finalization: tearing down torch's native thread pools there took 1-2 s and, now and then
    # under load, aborted the process (SIGABRT) after a clean stop, which a supervisor would
    # report as a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from zguard.serve.listeners import check_safe

    check_safe(settings)
    yaml.safe_dump(masked_settings(settings), sys.stdout, allow_unicode=True, sort_keys=False)
    print("# configuration OK", file=sys.stderr)
    return EXIT_OK


def cmd_model_demo(args: argparse.Namespace) -> int:
    _setup_logging("warning")
    from zguard.engine.demo import write_demo_model

    try:
        path = write_demo_model(Path(args.dir))
    except FileExistsError:
        print(f"zguard: {args.dir} exists and is not empty; choose an empty or new directory", file=sys.stderr)
        return EXIT_CONFIG
    print(f"demo model written to {path} (random weights: images are noise), pinned in its manifest")
    return EXIT_OK


def _run_on_database(args: argparse.Namespace, action: Callable[[Engine, str], int]) -> int:
    """Open the configured state database, run `action(engine, shown_url)`, report failures without a traceback."""
    settings = _settings(args)
    _setup_logging("warning")
    return run_on_database(settings, action)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from zguard.store import migrate

    def action(engine: Engine, shown: str) -> int:
        before = migrate.current_revision(engine)
        after = migrate.upgrade(engine)
        change = "already at" if before == after else f"upgraded from {before or 'empty'} to"
        print(f"state database {shown}: {change} revision {after} (head)")
        return EXIT_OK

    return _run_on_database(args, action)


def cmd_db_current(args: argparse.Namespace) -> int:
    from zguard.store import migrate

    def action(engine: Engine, shown: str) -> int:
        current, head = migrate.current_revision(engine), migrate.head_revision()
        if current == head:
            print(f"state database {shown}: revision {current} (head)")
            return EXIT_OK
        print(f"state database {shown}: revision {current or 'none (empty)'}; this zguard needs {head}")
        print("run `zguard db upgrade`", file=sys.stderr)
        return EXIT_NOT_CURRENT

    return _run_on_database(args, action)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,  # so a subcommand's absent --config does not mask the top-level one
        help="settings file (default: $ZGUARD_CONFIG, else config/zguard.yaml if present)",
    )
    parser = argparse.ArgumentParser(
        prog="zguard",
        description="Hardened, auditable server for the Z-Image-Turbo text-to-image model.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the API and console listeners",
        description="Serve the image API and the console in one process sharing one model.",
    )
    serve.set_defaults(handler=cmd_serve)

    config = commands.add_parser("config", parents=[common], help="inspect settings", description="Inspect settings.")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = config_commands.add_parser(
        "check",
        parents=[common],
        help="validate and print the effective settings",
        description="Validate the settings and print them, secrets masked.",
    )
    check.set_defaults(handler=cmd_config_check)

    model = commands.add_parser("model", parents=[common], help="model tools", description="Model tools.")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    demo = model_commands.add_parser(
        "demo",
        parents=[common],
        help="build the tiny random-weight demo model",
        description="Write the tiny random-weight demo pipeline (safetensors, byte-identical every build) to DIR.",
    )
    demo.add_argument("dir", metavar="DIR", help="new or empty directory to write the model to")
    demo.set_defaults(handler=cmd_model_demo)
    add_model_pin_commands(model_commands, common)

    db = commands.add_parser(
        "db",
        parents=[common],
        help="state database tools",
        description="Create, migrate and inspect the state database.",
    )
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_upgrade = db_commands.add_parser(
        "upgrade",
        parents=[common],
        help="create the state database or migrate it to this version's schema",
        description="Create the state database (database.url, default state_dir/zguard.db) or migrate it to the schema this zguard needs. Safe to run again.",
    )
    db_upgrade.set_defaults(handler=cmd_db_upgrade)
    db_current = db_commands.add_parser(
        "current",
        parents=[common],
        help="show the state database's schema revision",
        description="Print the state database's schema revision; exit 1 when it is not the one this zguard needs.",
    )
    db_current.set_defaults(handler=cmd_db_current)
    add_admin_commands(commands, common)
    add_audit_commands(commands, common)
    add_policy_commands(commands, common)
    add_doctor_command(commands, common)
    add_install_command(commands, common)
    add_scan_command(commands, common)
    add_provenance_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
