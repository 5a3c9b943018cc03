"""The `zguard install` command: flags to a InstallLayout, the plan printed or carried out.

Exit status: 0 done (or, with --dry-run, planned); 2 not root, a bad path, or a step that failed
(named, with the reason; what ran before it stays done, and running install again finishes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zguard.cli.common import EXIT_FIX, EXIT_OK, Commands, command
from zguard.ops.install import (
    DEFAULT_APP_DIR,
    DEFAULT_CONFIG_DIR,
    DEFAULT_GROUP,
    DEFAULT_MODEL_DIR,
    DEFAULT_STATE_DIR,
    DEFAULT_UNIT_DIR,
    DEFAULT_USER,
    Installer,
    InstallError,
    InstallLayout,
    host_gpus,
)

SYSTEMD_RUNNING = Path("/run/systemd/system")


def layout_from(args: argparse.Namespace) -> InstallLayout:
    paths = {
        "--app-dir": args.app_dir,
        "--config-dir": args.config_dir,
        "--state-dir": args.state_dir,
        "--model-dir": args.model_dir,
        "--unit-dir": args.unit_dir,
    }
    relative = [f"{flag} {value}" for flag, value in paths.items() if not Path(value).is_absolute()]
    if args.zguard_bin is not None and not Path(args.zguard_bin).is_absolute():
        relative.append(f"--zguard-bin {args.zguard_bin}")
    if relative:
        raise InstallError(f"paths must be absolute (as on the target system): {', '.join(relative)}")
    return InstallLayout(
        app_dir=Path(args.app_dir),
        config_dir=Path(args.config_dir),
        state_dir=Path(args.state_dir),
        model_dir=Path(args.model_dir),
        unit_dir=Path(args.unit_dir),
        user=args.user,
        group=args.group,
        zguard_bin=Path(args.zguard_bin) if args.zguard_bin else None,
        gpus=host_gpus() if args.gpus is None else args.gpus,
        scan_args=args.scan_args,
    )


def install(args: argparse.Namespace) -> int:
    layout = layout_from(args)
    root = Path(args.root) if args.root else Path("/")
    if not root.is_dir():
        raise InstallError(f"--root {root}: not a directory")
    if not args.dry_run and os.geteuid() != 0:
        raise InstallError("install needs root (accounts, owners); see the plan with --dry-run")
    installer = Installer(layout, root, enable=args.enable)
    where = f" into {root}" if installer.staged else ""
    print(f"zguard install{where}{' (dry run: nothing changes)' if args.dry_run else ''}")
    changed = units_changed = 0
    steps = installer.steps()
    for step in steps:
        change = step.pending()
        if change is not None and not args.dry_run:
            step.apply()
        if change is not None:
            changed += 1
            units_changed += step.what.startswith(f"file {layout.unit_dir}/")
        verb = "plan" if args.dry_run else "done"
        print(f"  {verb if change else 'ok':4}  {step.what}: {change or 'in place'}")
    if units_changed and not args.dry_run and not installer.staged and SYSTEMD_RUNNING.is_dir():
        installer.run(["systemctl", "daemon-reload"])
    print(f"{len(steps)} step(s), {changed} {'to change' if args.dry_run else 'changed'}")
    if not args.enable:
        print(
            f"nothing enabled or started; next: put the model in {layout.model_dir}, zguard model pin, "
            "then zguard install --enable (docs/deployment.md)"
        )
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    try:
        return install(args)
    except InstallError as exc:
        print(f"zguard install: {exc.message}", file=sys.stderr)
        return EXIT_FIX


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    parser = command(
        commands,
        common,
        "install",
        cmd_install,
        help_text="create the service account, directories, settings file and systemd units (as root)",
        description="Set up a host for zguard: group ai-service, user ai-runner (no shell, no home), the "
        "application, settings, state and model directories with their owners and modes, and the systemd "
        "units. Idempotent: a second run changes nothing. Nothing is enabled or started without --enable.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--root", metavar="DIR", help="install into this staging root instead of /")
    parser.add_argument("--enable", action="store_true", help="systemctl enable --now zguard.service zguard-scan.timer")
    parser.add_argument("--app-dir", default=str(DEFAULT_APP_DIR), help="application directory (%(default)s)")
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR), help="settings directory (%(default)s)")
    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="state directory (%(default)s)")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="model directory (%(default)s)")
    parser.add_argument("--unit-dir", default=str(DEFAULT_UNIT_DIR), help="systemd unit directory (%(default)s)")
    parser.add_argument("--user", default=DEFAULT_USER, help="service account (%(default)s)")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="service group (%(default)s)")
    parser.add_argument(
        "--zguard-bin", metavar="PATH", help="the zguard executable the units run (default: APP_DIR/venv/bin/zguard)"
    )
    parser.add_argument(
        "--gpus", type=int, metavar="N", help="GPUs to allow: /dev/nvidia0..N-1 (default: those on this host)"
    )
    parser.add_argument(
        "--scan-args",
        metavar="ARGS",
        help="arguments of the monthly zguard scan (default: --vuln-db CONFIG_DIR/osv-pypi.zip --fail-on high)",
    )
