"""`zguard scan`: the monthly security scan, offline (the checks: zguard.ops.scan).

    zguard scan --vuln-db osv-pypi.zip            a table for people
    zguard scan --vuln-db DIR --json              {"status", "counts", "findings", ...} for machines
    zguard scan --fail-on medium                  exit 1 when any finding is medium or worse

Every scan is recorded as `scan.completed` in the audit trail; if it cannot be, the scan exits 3.

Exit status: 0 no finding at or above `--fail-on` (default high); 1 at least one;
2 the settings or `--vuln-db` cannot be used; 3 the audit event could not be recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from zguard.audit import AuditEvent
from zguard.cli import common as cli_common
from zguard.cli.common import EXIT_FIX, EXIT_NO, EXIT_OK, EXIT_UNAVAILABLE, Commands, acting_user, settings_of
from zguard.ops.review import SEVERITIES, at_or_above

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from zguard.config import Settings
    from zguard.ops.scan import ScanReport

DEFAULT_FAIL_ON = "high"


def render_table(report: ScanReport) -> str:
    deps = report.dependencies
    lines = [
        f"zguard scan: {report.status.upper()}",
        "  dependencies: "
        + (
            f"{deps.get('checked', 0)} of {deps['installed']} packages checked against "
            f"{deps.get('advisories', 0)} PyPI advisories in {deps['database']}"
            if deps.get("database")
            else f"{deps['installed']} packages NOT checked (no --vuln-db)"
        ),
        f"  model: {report.model.get('path')} " + ("verified" if report.model.get("verified") else "NOT verified"),
        f"  principals: {len(report.principals)}, enabled admins: "
        + ("?" if report.admins is None else str(report.admins)),
    ]
    lines += [f"    {p['name']:<24} {p['kind']:<8} {'enabled ' if p['enabled'] else 'DISABLED'} "
              f"{','.join(p['roles']) or '-'}" for p in report.principals]  # fmt: skip
    counts = report.counts()
    lines.append("  findings: " + ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES)))
    if report.findings:
        lines.append("")
        lines.append(f"{'SEVERITY':<9} {'CHECK':<12} {'CODE':<32} {'SUBJECT':<36} MESSAGE")
        for f in report.findings:
            lines.append(f"{f.severity.upper():<9} {f.check:<12} {f.code:<32} {f.subject:<36} {f.message}")
            if f.fix:
                lines.append(f"{'':<9} fix: {f.fix}")
    return "\n".join(lines)


def cmd_scan(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    # The state database opened as every database command opens it: another account's state is
    # a refusal with its fix (cli_common.run_on_database), never a PermissionError traceback.
    return cli_common.run_on_database(settings, lambda engine, _shown: _scan(args, settings, engine))


def _scan(args: argparse.Namespace, settings: Settings, engine: Engine) -> int:
    vuln_db = Path(args.vuln_db) if args.vuln_db else None
    from zguard.ops import osv
    from zguard.ops.host_checks import SettingsFile
    from zguard.ops.scan import run_scan
    from zguard.services.grant_report import counter_reader

    # Today's grant use is on the counter storage, which ops may not reach: read here (Redis).
    now = datetime.now(UTC)
    used_today = counter_reader(settings.rate_limits, now)
    try:
        report = run_scan(
            settings,
            engine,
            vuln_db=vuln_db,
            now=now,
            source=SettingsFile.find(getattr(args, "config", None)),
            used_today=used_today,
        )
    except osv.VulnDbError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return EXIT_FIX
    failing = [f for f in report.findings if at_or_above(f.severity, args.fail_on)]
    code = EXIT_NO if failing else EXIT_OK
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    event = AuditEvent(
        type="scan.completed",
        outcome="done",
        principal=acting_user(),
        detail={"status": report.status, "fail_on": args.fail_on, "exit": code, "vuln_db": vuln_db is not None,
                **{f"findings_{s}": n for s, n in report.counts().items()}},
    )  # fmt: skip
    try:
        cli_common.audit_sink_factory(settings, engine).emit(event)
    except Exception as exc:  # noqa: BLE001 - fail closed: any failure to record means no scan happened
        print(f"zguard: the scan could not be recorded in the audit trail ({type(exc).__name__}); "
              "run `zguard init` or check database.url", file=sys.stderr)  # fmt: skip
        return EXIT_UNAVAILABLE
    return code


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    scan = commands.add_parser(
        "scan",
        parents=[common],
        help="security scan: vulnerable packages, model manifest, permissions, configuration",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="exit status: 0 nothing at or above --fail-on, 1 findings at or above it, "
        "2 unusable settings or --vuln-db, 3 the scan could not be audited",
    )
    scan.add_argument("--vuln-db", metavar="PATH", help="OSV database: a directory of JSON files or a zip export")
    scan.add_argument("--json", action="store_true", help="print the report as JSON")
    scan.add_argument(
        "--fail-on", choices=SEVERITIES[1:], default=DEFAULT_FAIL_ON, help="exit 1 on findings this severe or worse"
    )
    scan.set_defaults(handler=cmd_scan)
