"""The `zguard` command: the parser, and the one place a command's module is imported.

`zguard --help` imports no command group: the table below gives each command's one-line help,
and only the group of the command being run is imported to build its full parser. So asking for
help loads no database, bcrypt or crypto module (a test checks `sys.modules`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from zguard.cli.common import EXIT_FIX, EXIT_OK, Handler, config_parent
from zguard.errors import EXIT_PIPE_CLOSED, OperatorError, ZguardError

# command → (module in zguard.cli that registers it, one-line help); in the order `--help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the API and console listeners"),
    "config": ("serve", "inspect settings"),
    "model": ("model", "model tools"),
    "db": ("db", "state database tools"),
    "init": ("admin", "create the state store and the first admin, and print its API token once"),
    "user": ("admin", "manage users and service accounts"),
    "token": ("admin", "manage API tokens"),
    "role": ("admin", "inspect roles"),
    "audit": ("audit", "verify, read and maintain the audit trail"),
    "policy": ("policy", "test and reload the prompt policy"),
    "doctor": ("doctor", "check the host, storage, permissions and audit trail; explain a refused request"),
    "install": ("install", "create the service account, directories, settings file and systemd units (as root)"),
    "scan": ("scan", "security scan: vulnerable packages, model manifest, permissions, configuration"),
    "trace": ("provenance", "find the request that generated an image"),
    "provenance": ("provenance", "AIGC label tools"),
    "scim": ("scim", "SCIM provisioning tools"),
    "approvals": ("approvals", "model-use approvals: request, list, approve, reject, revoke"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The command named in `argv`: its first word that is not an option or --config's value."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: the chosen command's group in full, every other command as its help line."""
    common = config_parent()
    parser = argparse.ArgumentParser(
        prog="zguard",
        description="Hardened, auditable server for the Z-Image-Turbo text-to-image model.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv)
    if chosen is not None:
        importlib.import_module(f"zguard.cli.{COMMANDS[chosen][0]}").register(commands, common)
    for name, (_, help_text) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, parents=[common], help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:  # a group without its subcommand cannot get here: argparse requires one
        return EXIT_FIX
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
    except BrokenPipeError:
        # The reader went away (`zguard audit tail | head`): stop quietly, as a program killed by
        # SIGPIPE would, instead of a traceback; later writes at exit go to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except ZguardError as exc:  # one catch for every command: the message, the fix, the exit code
        print(f"zguard: {exc.message}", file=sys.stderr)
        if exc.fix and exc.fix not in exc.message:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, OperatorError) else EXIT_FIX
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
