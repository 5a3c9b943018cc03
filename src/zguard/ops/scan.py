"""The monthly security scan, offline (`zguard scan`, zguard.cli.scan).

Five checks: (a) installed Python packages against an OSV database the operator supplies
(zguard.ops.osv); (b) the model directory re-verified against its manifest; (c) a permission
review of the state database, the approval grants' use included (zguard.ops.grant_review);
(d) configuration hygiene (zguard.ops.review); (e) the host integrity list `serve` refuses to
start on (zguard.ops.host_checks), each finding that is not PASS with the same message and
fix: a FAIL is `high` (so the monthly unit fails on it), a WARN `low`.

Fail closed: no database, a package that cannot be compared, a model or state database that
cannot be read each become a finding and the status `incomplete`; only a scan that checked
everything and found nothing says `clean`. Every scan is recorded as `scan.completed` in the
audit trail (by the command); if it cannot be, the scan exits 3.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from zguard import state_paths
from zguard.config import Settings
from zguard.integrity.manifest import verify
from zguard.ops import osv
from zguard.ops.grant_review import UsedToday, grant_findings
from zguard.ops.host_checks import Host, SettingsFile, host_findings
from zguard.ops.review import SEVERITIES, ScanFinding, config_hygiene, permission_review
from zguard.security.keys import KeyFileError, load_public_key
from zguard.store import migrate
from zguard.store.principals import PrincipalStore

MAX_LISTED_PROBLEMS = 5
HOST_SEVERITY = {"fail": "high", "warn": "low"}


@dataclass
class ScanReport:
    findings: list[ScanFinding] = field(default_factory=list)
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
            ScanFinding("dependencies", "vuln_db_not_checked", "high", "--vuln-db",
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
            ScanFinding("dependencies", "vuln_db_not_checked", "high", str(vuln_db),
                    "the vulnerability database holds no PyPI advisories: nothing was checked",
                    "supply the PyPI export of osv.dev")
        )  # fmt: skip
    for package, why in sorted(checked.unchecked.items()):
        report.findings.append(
            ScanFinding("dependencies", "package_unchecked", "medium", package, f"not checked: {why}",
                    "check this package by hand")
        )  # fmt: skip
    for match in checked.matches:
        fixed = ", ".join(match.advisory.fixed)
        report.findings.append(
            ScanFinding("dependencies", "vulnerable_package", match.advisory.severity,
                    f"{match.package} {match.version}", f"{match.advisory.id}: {match.advisory.summary}".rstrip(": "),
                    f"upgrade to {fixed} or later" if fixed else "no fixed version: remove or mitigate",
                    {"advisory": match.advisory.id})
        )  # fmt: skip


def scan_model(settings: Settings, report: ScanReport) -> None:

    model_dir = settings.model.path or state_paths.demo_model_dir(settings)
    report.model = {"path": str(model_dir), "verified": False}
    try:
        present = model_dir.is_dir()
    except OSError:  # not reachable by this account: the host findings say why and how to fix it
        present = False
    if not present:
        report.findings.append(
            ScanFinding("model", "manifest_not_checked", "medium", str(model_dir), "model directory not found",
                    "set model.path (the demo model is built on the first `zguard serve`)")
        )  # fmt: skip
        return
    try:
        key = load_public_key(settings.model.manifest_public_key) if settings.model.manifest_public_key else None
    except (OSError, KeyFileError) as exc:
        report.findings.append(
            ScanFinding("model", "manifest_key_unreadable", "critical", "model.manifest_public_key",
                    f"the manifest key cannot be read ({type(exc).__name__})", "fix model.manifest_public_key")
        )  # fmt: skip
        return
    result = verify(model_dir, key)
    report.model.update(verified=result.ok, bytes_hashed=result.bytes_hashed)
    if not result.ok:
        listed = "; ".join(str(p) for p in result.problems[:MAX_LISTED_PROBLEMS])
        more = len(result.problems) - MAX_LISTED_PROBLEMS
        report.findings.append(
            ScanFinding("model", "manifest_mismatch", "critical", str(model_dir),
                    listed + (f"; and {more} more" if more > 0 else ""), result.problems[0].fix)
        )  # fmt: skip


def scan_permissions(
    settings: Settings, engine: Engine, report: ScanReport, now: datetime, used_today: UsedToday | None = None
) -> None:

    try:
        if migrate.current_revision(engine) is None:
            raise LookupError
        store = PrincipalStore(engine)
        principals, tokens = store.list_principals(), store.list_tokens(include_revoked=False)
    except (SQLAlchemyError, LookupError):
        report.findings.append(
            ScanFinding("permissions", "permissions_not_checked", "medium", "database",
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
    report.findings += grant_findings(engine, now, used_today)


def scan_host(settings: Settings, report: ScanReport, host: Host | None, source: SettingsFile | None) -> None:
    for finding in host_findings(settings, host, source):
        if finding.severity != "pass":
            subject = str(finding.detail.get("path", finding.check))
            report.findings.append(
                ScanFinding("host", finding.check, HOST_SEVERITY[finding.severity], subject, finding.message,
                            finding.fix or "")
            )  # fmt: skip


def run_scan(
    settings: Settings,
    engine: Engine,
    *,
    vuln_db: Path | None,
    packages: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
    host: Host | None = None,
    source: SettingsFile | None = None,
    used_today: UsedToday | None = None,
) -> ScanReport:
    """`host`: who and which /proc and /sys the host checks read; `source`: the settings file read;
    `used_today`: the grants' use today from the counter storage (zguard.ops.grant_review)."""
    report = ScanReport()
    scan_dependencies(vuln_db, osv.installed() if packages is None else packages, report)
    scan_model(settings, report)
    scan_permissions(settings, engine, report, now or datetime.now(UTC), used_today)
    report.findings += config_hygiene(settings)
    scan_host(settings, report, host, source)
    report.findings.sort(key=lambda f: (-SEVERITIES.index(f.severity), f.check, f.subject))
    return report
