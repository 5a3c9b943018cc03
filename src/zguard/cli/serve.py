"""`zguard serve` and `zguard config check`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING

import yaml

from zguard.cli.common import EXIT_OK, Commands, command, group, settings_of, setup_logging
from zguard.errors import ConfigError

if TYPE_CHECKING:
    from zguard.config import Settings
    from zguard.ops.host_checks import CheckResult, Host, SettingsFile


def with_replica_id(settings: Settings, replica_id: str | None) -> Settings:
    """`settings` with `serve.replica_id` set from `--replica-id` (validated like the setting)."""
    if replica_id is None:
        return settings
    from zguard.config.replicas import check_replica_id

    try:
        check_replica_id(replica_id)
    except ValueError as exc:
        raise ConfigError([f"--replica-id: {exc}"]) from None
    return settings.model_copy(update={"serve": settings.serve.model_copy(update={"replica_id": replica_id})})


def cmd_serve(args: argparse.Namespace) -> int:
    settings = with_replica_id(settings_of(args), getattr(args, "replica_id", None))
    setup_logging(settings.log_level)
    from zguard.ops.host_checks import SettingsFile
    from zguard.serve.lifecycle import serve

    # The host checks (zguard.ops.host_checks) run in serve(), the settings file among them.
    code = asyncio.run(serve(settings, source=SettingsFile.find(getattr(args, "config", None))))
    # The orderly shutdown is complete (listeners closed, worker joined). Skip interpreter
    # finalization: tearing down torch's native thread pools there took 1-2 s and, now and then
    # under load, aborted the process (SIGABRT) after a clean stop, which a supervisor would
    # report as a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def config_refusals(settings: Settings, source: SettingsFile | None, host: Host | None = None) -> list[CheckResult]:
    """What `serve` would refuse before it binds a socket, checked without changing anything:
    the listener rules, the host checks (zguard.ops.host_checks), the TLS files and the
    banned-term lists. Raises ConfigError naming every problem; returns the warnings.

    Who runs `serve` is the unit's `User=`, not a setting: running `config check` as root is
    a warning here (as root, what the service account can read and change is not what is seen)."""
    from zguard.ops.host_checks import HOST_FIX, CheckResult, Host, host_findings
    from zguard.ops.install import DEFAULT_USER
    from zguard.serve.listeners import check_safe, listener_tls
    from zguard.services.prompt_policy import PolicyHolder

    host = host or Host.current()
    findings = host_findings(settings, host, source)
    if host.who.uid == 0:
        findings = [f for f in findings if f.check != "not_root"]
        findings.insert(
            0,
            CheckResult(
                "not_root",
                "warn",
                "checked as root, which can read and change every file: what the service account can read and "
                "change was not checked (and `serve` refuses root unless integrity.allow_root: true)",
                f"run it as the service account: sudo -u {DEFAULT_USER} zguard config check",
            ),
        )
    host_problems = [f.line() for f in findings if f.severity == "fail"]
    problems = list(host_problems)
    for attempt in (
        lambda: check_safe(settings),
        lambda: listener_tls(settings.api, "api"),
        lambda: listener_tls(settings.console, "console"),
        lambda: PolicyHolder.from_settings(settings),
    ):
        try:
            attempt()
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems, fix=HOST_FIX if host_problems else None)
    return [f for f in findings if f.severity == "warn"]


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    from zguard.config.loader import masked_settings
    from zguard.ops.host_checks import SettingsFile

    warnings = config_refusals(settings, SettingsFile.find(getattr(args, "config", None)))
    yaml.safe_dump(masked_settings(settings), sys.stdout, allow_unicode=True, sort_keys=False)
    for finding in warnings:
        print(f"# warning: {finding.line()}", file=sys.stderr)
    print("# configuration OK", file=sys.stderr)
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `serve` and `config check`; `common` carries --config."""
    serve = command(
        commands,
        common,
        "serve",
        cmd_serve,
        help_text="run the API and console listeners",
        description="Serve the image API and the console in one process sharing one model.",
    )
    serve.add_argument(
        "--replica-id",
        metavar="ID",
        help="this replica's name (serve.replica_id; default: the host name and the API port)",
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
