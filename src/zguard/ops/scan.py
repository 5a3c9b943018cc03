"""`zguard scan`: the monthly security scan, offline.

    zguard scan --vuln-db osv-pypi.zip            a table for people
    zguard scan --vuln-db DIR --json              {"status", "counts", "findings", ...} for machines
    zguard scan --fail-on medium                  exit 1 when any finding is medium or worse

Four checks: (a) installed Python packages against an OSV database the operator supplies
(zguard.ops.osv); (b) the model directory re-verified against its manifest; (c) a permission
review of the state database; (d) configuration hygiene (zguard.ops.review).

Fail closed: no database, a package that cannot be compared, a model or state database that
cannot be read each become a finding and the status `incomplete`; only a scan that checked
everything and found nothing says `clean`. Every scan is recorded as `scan.completed` in the
audit trail; if it cannot be, the scan exits 3.

Exit status: 0 no finding at or above `--fail-on` (default high); 1 at least one;
2 the settings or `--vuln-db` cannot be used; 3 the audit event could not be recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from zguard import state_paths
from zguard.audit import AuditEvent
from zguard.cli import admin as admin_cli
from zguard.config import Settings
from zguard.config.loader import load_settings
from zguard.integrity.manifest import verify
from zguard.ops import osv
from zguard.ops.review import SEVERITIES, Finding, at_or_above, config_hygiene, permission_review
from zguard.security.keys import KeyFileError, load_public_key
from zguard.store import migrate
from zguard.store.database import create_store_engine, database_url
from zguard.store.principals import PrincipalStore

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_AUDIT = 3
DEFAULT_FAIL_ON = "high"
MAX_LISTED_PROBLEMS = 5


@dataclass
class ScanReport:
    findings: list[Finding] = field(default_factory=list)
    principals: list[dict[str, Any]] = field(default_factory=list)
    admins: int | None = None
    dependencies: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def incomplete(self) -> bool:
        return any(f.code.endswith("not_checked") or f.code == "package_unchecked" for f in self.findings)

    @property
    def status(self) -> str:
        if self.incomplete:
            return "incomplete"
        return "findings" if self.findings else "clean"

    def counts(self) -> dict[str, int]:
        counted = Counter(f.severity for f in self.findings)
        return {severity: counted.get(severity, 0) for severity in SEVERITIES}

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "counts": self.counts(),
            "dependencies": self.dependencies,
            "model": self.model,
            "admins": self.admins,
            "principals": self.principals,
            "findings": [asdict(f) for f in self.findings],
        }


def scan_dependencies(vuln_db: Path | None, packages: list[tuple[str, str]], report: ScanReport) -> None:
    """Raises osv.VulnDbError when the database given cannot be read at all."""
    report.dependencies = {"installed": len(set(packages)), "database": str(vuln_db) if vuln_db else None}
    if vuln_db is None:
        report.findings.append(
            Finding("dependencies", "vuln_db_not_checked", "high", "--vuln-db",
                    f"{len(set(packages))} installed packages NOT checked: no vulnerability database given",
                    "download the OSV PyPI export (https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip) "
                    "on a connected machine, copy it over and pass --vuln-db FILE")
        )  # fmt: skip
        return
    database, advisories = osv.load_database(vuln_db)
    checked = osv.check(packages, database)
    report.dependencies.update(advisories=advisories, checked=checked.checked, unchecked=len(checked.unchecked))
    if advisories == 0:
        report.findings.append(
            Finding("dependencies", "vuln_db_not_checked", "high", str(vuln_db),
                    "the vulnerability database holds no PyPI advisories: nothing was checked",
                    "supply the PyPI export of osv.dev")
        )  # fmt: skip
    for package, why in sorted(checked.unchecked.items()):
        report.findings.append(
            Finding("dependencies", "package_unchecked", "medium", package, f"not checked: {why}",
                    "check this package by hand")
        )  # fmt: skip
    for match in checked.matches:
        fixed = ", ".join(match.advisory.fixed)
        report.findings.append(
            Finding("dependencies", "vulnerable_package", match.advisory.severity,
                    f"{match.package} {match.version}", f"{match.advisory.id}: {match.advisory.summary}".rstrip(": "),
                    f"upgrade to {fixed} or later" if fixed else "no fixed version: remove or mitigate",
                    {"advisory": match.advisory.id})
        )  # fmt: skip


def scan_model(settings: Settings, report: ScanReport) -> None:

    model_dir = settings.model.path or state_paths.demo_model_dir(settings)
    report.model = {"path": str(model_dir), "verified": False}
    if not model_dir.is_dir():
        report.findings.append(
            Finding("model", "manifest_not_checked", "medium", str(model_dir), "model directory not found",
                    "set model.path (the demo model is built on the first `zguard serve`)")
        )  # fmt: skip
        return
    try:
        key = load_public_key(settings.model.manifest_public_key) if settings.model.manifest_public_key else None
    except (OSError, KeyFileError) as exc:
        report.findings.append(
            Finding("model", "manifest_key_unreadable", "critical", "model.manifest_public_key",
                    f"the manifest key cannot be read ({type(exc).__name__})", "fix model.manifest_public_key")
        )  # fmt: skip
        return
    result = verify(model_dir, key)
    report.model.update(verified=result.ok, bytes_hashed=result.bytes_hashed)
    if not result.ok:
        listed = "; ".join(str(p) for p in result.problems[:MAX_LISTED_PROBLEMS])
        more = len(result.problems) - MAX_LISTED_PROBLEMS
        report.findings.append(
            Finding("model", "manifest_mismatch", "critical", str(model_dir),
                    listed + (f"; and {more} more" if more > 0 else ""), result.problems[0].fix)
        )  # fmt: skip


def scan_permissions(settings: Settings, engine: Engine, report: ScanReport, now: datetime) -> None:

    try:
        if migrate.current_revision(engine) is None:
            raise LookupError
        store = PrincipalStore(engine)
        principals, tokens = store.list_principals(), store.list_tokens(include_revoked=False)
    except (SQLAlchemyError, LookupError):
        report.findings.append(
            Finding("permissions", "permissions_not_checked", "medium", "database",
                    "the state database cannot be read, or is not initialised", "run `zguard init`")
        )  # fmt: skip
        return
    # Users declared in the settings file are principals too (their roles pass check_assignment
    # when the settings load, so only the listing and the admin count concern them here).
    configured = [(u.username, sorted(u.roles)) for u in settings.api_auth.users]
    report.principals = [
        {"name": p.name, "kind": p.kind, "roles": list(p.roles), "enabled": p.enabled} for p in principals
    ] + [{"name": name, "kind": "config", "roles": roles, "enabled": True} for name, roles in configured]
    configured_admins = [name for name, roles in configured if "admin" in roles]
    report.admins = sum(1 for p in principals if p.enabled and "admin" in p.roles) + len(configured_admins)
    report.findings += permission_review(principals, tokens, settings.role_registry(), now, configured_admins)


def run_scan(
    settings: Settings,
    engine: Engine,
    *,
    vuln_db: Path | None,
    packages: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
) -> ScanReport:
    report = ScanReport()
    scan_dependencies(vuln_db, osv.installed() if packages is None else packages, report)
    scan_model(settings, report)
    scan_permissions(settings, engine, report, now or datetime.now(UTC))
    report.findings += config_hygiene(settings)
    report.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.check, f.subject))
    return report


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

    settings = load_settings(getattr(args, "config", None))
    engine = create_store_engine(database_url(settings))
    vuln_db = Path(args.vuln_db) if args.vuln_db else None
    try:
        report = run_scan(settings, engine, vuln_db=vuln_db)
    except osv.VulnDbError as exc:
        print(f"zguard: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    failing = [f for f in report.findings if at_or_above(f.severity, args.fail_on)]
    code = EXIT_FINDINGS if failing else EXIT_CLEAN
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    event = AuditEvent(
        type="scan.completed",
        outcome="done",
        principal=admin_cli.acting_user(),
        detail={"status": report.status, "fail_on": args.fail_on, "exit": code, "vuln_db": vuln_db is not None,
                **{f"findings_{s}": n for s, n in report.counts().items()}},
    )  # fmt: skip
    try:
        admin_cli.audit_sink_factory(settings, engine).emit(event)
    except Exception as exc:  # noqa: BLE001 - fail closed: any failure to record means no scan happened
        print(f"zguard: the scan could not be recorded in the audit trail ({type(exc).__name__}); "
              "run `zguard init` or check database.url", file=sys.stderr)  # fmt: skip
        return EXIT_AUDIT
    return code


def add_scan_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:  # fmt: skip
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
