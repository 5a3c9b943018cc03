"""`zguard serve` and `zguard config check`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import yaml

from zguard.cli.common import EXIT_OK, Commands, command, group, settings_of, setup_logging


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    setup_logging(settings.log_level)
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
    settings = settings_of(args)
    from zguard.config.loader import masked_settings
    from zguard.serve.listeners import check_safe

    check_safe(settings)
    yaml.safe_dump(masked_settings(settings), sys.stdout, allow_unicode=True, sort_keys=False)
    print("# configuration OK", file=sys.stderr)
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `serve` and `config check`; `common` carries --config."""
    command(
        commands,
        common,
        "serve",
        cmd_serve,
        help_text="run the API and console listeners",
        description="Serve the image API and the console in one process sharing one model.",
    )
    config_commands = group(commands, common, "config", "inspect settings", "Inspect settings.")
    command(
        config_commands,
        common,
        "check",
        cmd_config_check,
        help_text="validate and print the effective settings",
        description="Validate the settings and print them, secrets masked.",
    )
