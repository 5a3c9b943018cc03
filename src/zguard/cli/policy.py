"""`zguard policy test TEXT` and `zguard policy reload`.

`test` judges a prompt with the configured lists, as the server would, and prints the verdict as
JSON; it exits 0 when the prompt would be served (flagged or not) and 1 when it would be blocked.
`reload` checks the lists here first, then sends SIGHUP to the server found through
`state_dir/zguard.pid`; the server swaps the new policy in, or keeps the old one when a list is
broken, and records `policy.reloaded` with each list's SHA-256 in the audit trail.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from zguard import state_paths
from zguard.cli.common import EXIT_FIX, EXIT_NO, EXIT_OK, Commands, Handler, group, settings_of
from zguard.cli.common import command as add_command
from zguard.errors import ConfigError
from zguard.serve.pidfile import running_server
from zguard.services.prompt_policy import PolicyHolder, PolicyLoadError, build_policy

EXIT_BLOCKED = EXIT_NO  # `test`: the policy would block the prompt
EXIT_NO_SERVER = EXIT_NO  # `reload`: no running server found for this state_dir


def _text(value: str) -> str:
    """`-` reads the text from stdin, so a prompt need not land in the shell's history."""
    return sys.stdin.read().rstrip("\n") if value == "-" else value


def cmd_policy_test(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    roles = args.role or []
    if unknown := sorted(set(roles) - set(settings.role_registry().roles)):
        raise ConfigError([f"--role: unknown role(s) {', '.join(unknown)}"])
    holder = PolicyHolder.from_settings(settings)
    negative = None if args.negative is None else _text(args.negative)
    verdict = holder.check(_text(args.text), negative, roles)
    reveal = args.reveal_terms or settings.policy.reveal_terms
    print(json.dumps(verdict.as_dict(reveal_terms=reveal), ensure_ascii=False, indent=2))
    return EXIT_BLOCKED if verdict.blocked else EXIT_OK


def cmd_policy_reload(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    problem = None
    try:
        policy, hashes = build_policy(settings.policy)
        print(f"policy: {policy.term_count} terms from {len(hashes)} list(s)")
    except PolicyLoadError as exc:
        problem, hashes = exc.message, exc.hashes
    for name, digest in hashes.items():
        print(f"  {name}  sha256 {digest}")
    pid = running_server(settings.state_dir)
    if pid is None:
        print(f"zguard: no running server found through {state_paths.pid_file(settings.state_dir)}", file=sys.stderr)
        return EXIT_FIX if problem else EXIT_NO_SERVER
    # Signalled even when a list is broken: the server then keeps its policy and audits the failed reload.
    os.kill(pid, signal.SIGHUP)
    if problem:
        print(f"zguard: {problem}; the server (pid {pid}) keeps its current policy", file=sys.stderr)
        return EXIT_FIX
    print(f"sent SIGHUP to the server (pid {pid}); it logs and audits the reload")
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add `policy test` and `policy reload` to the `zguard` parser; `common` carries --config."""
    sub = group(
        commands,
        common,
        "policy",
        "test and reload the prompt policy",
        "Test prompts against the prompt policy and reload its banned-term lists.",
    )

    def command(name: str, handler: Handler, help_text: str, description: str) -> argparse.ArgumentParser:
        return add_command(sub, common, name, handler, help_text=help_text, description=description)

    test = command(
        "test",
        cmd_policy_test,
        "print the verdict on TEXT as JSON",
        "Judge TEXT with the configured lists and detectors as the server would, and print the verdict as JSON "
        "with each finding's category, detector and span. Exit 0 when it would be served, 1 when blocked.",
    )
    test.add_argument("text", metavar="TEXT", help="the prompt; - reads it from stdin")
    test.add_argument("--negative", metavar="TEXT", help="a negative_prompt to judge with it; - reads stdin")
    test.add_argument(
        "--role",
        metavar="ROLE",
        action="append",
        help="judge as a principal holding ROLE (repeatable; per_role applies)",
    )
    test.add_argument(
        "--reveal-terms", action="store_true", help="show the matched list entries (policy.reveal_terms does too)"
    )
    command(
        "reload",
        cmd_policy_reload,
        "re-read the banned-term lists in the running server",
        "Check the configured lists, print their SHA-256, and send SIGHUP to the server running on this state_dir "
        "(found through state_dir/zguard.pid). A broken list is reported here and the server keeps its policy. "
        "Exit 0 when signalled, 1 when no server runs, 2 when a list is broken.",
    )
