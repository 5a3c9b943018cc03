"""`zguard doctor`: every host, storage and audit check, with the fix for each.

    zguard doctor                    PASS / WARN / FAIL lines, a `fix:` under each that is not PASS
    zguard doctor --json             {"status": ..., "exit": ..., "findings": [...]} for machines
    zguard doctor --explain ID       which check refused request ID (from the audit trail) and the fix

Exit status by the worst finding: 0 all pass, 1 a warning, 2 a failure. `--explain`: 0 when the
request was found (refused or not), 2 when the audit trail has no event for it or cannot be read.
The checks themselves are zguard.ops.doctor's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from zguard.cli.common import EXIT_FIX, EXIT_OK, Commands, command, settings_of
from zguard.config import Settings
from zguard.ops.doctor import EXIT_BY_SEVERITY, explain_event, report, run_checks
from zguard.ops.host_checks import SEVERITY_ORDER, CheckResult, SettingsFile, worst

EXIT_NOT_FOUND = EXIT_FIX  # --explain: no event for the id, or the trail cannot be read


def print_findings(findings: Sequence[CheckResult]) -> None:
    for finding in sorted(findings, key=lambda f: -SEVERITY_ORDER[f.severity]):
        print(f"{finding.severity.upper():4}  {finding.check}: {finding.message}")
        if finding.fix and finding.severity != "pass":
            print(f"      fix: {finding.fix}")
    status = worst(findings)
    counts = {s: sum(f.severity == s for f in findings) for s in ("pass", "warn", "fail")}
    print(f"\n{counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failure(s): {status.upper()}")


def explain(settings: Settings, request_id: str, *, as_json: bool) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from zguard.audit.store import AuditStore
    from zguard.store.database import create_store_engine, database_url

    engine = create_store_engine(database_url(settings))
    try:
        events = AuditStore(engine).search(request_id=request_id, limit=100)
    except SQLAlchemyError as exc:  # an unreadable trail is reported, not raised
        print(f"zguard: cannot read the audit trail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    finally:
        engine.dispose()
    if not events:
        print(
            f"zguard: no audit event for request {request_id} (check the id, or zguard audit search)", file=sys.stderr
        )
        return EXIT_NOT_FOUND
    bodies = [json.loads(event.body) for event in events]
    refused = [b for b in bodies if b.get("code")] or bodies
    body = refused[-1]
    what, fix = explain_event(body, settings)
    if as_json:
        out = {"request_id": request_id, "code": body.get("code"), "outcome": body.get("outcome")}
        print(json.dumps({**out, "explanation": what, "fix": fix, "events": bodies}, indent=2, ensure_ascii=False))
        return EXIT_OK
    status = (body.get("http") or {}).get("status")
    print(
        f"request {request_id}: {body.get('type')} {body.get('outcome')} at {body.get('time')}, "
        f"HTTP {status}, code {body.get('code') or '-'}"
    )
    print(f"  {what}")
    if fix:
        print(f"  fix: {fix}")
    return EXIT_OK


# --- the command ------------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if args.explain:
        return explain(settings, args.explain, as_json=args.json)
    findings = run_checks(settings, source=SettingsFile.find(getattr(args, "config", None)))
    if args.json:
        print(json.dumps(report(findings), indent=2, ensure_ascii=False))
    else:
        print_findings(findings)
    return EXIT_BY_SEVERITY[worst(findings)]


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    doctor = command(
        commands,
        common,
        "doctor",
        cmd_doctor,
        help_text="check the host, storage, permissions and audit trail; explain a refused request",
        description="Run every check and print PASS / WARN / FAIL with the fix for each. "
        "Exit 0 when all pass, 1 on a warning, 2 on a failure. "
        "--explain REQUEST_ID says which check refused a request (from the audit trail) and how to fix it.",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON for machines")
    doctor.add_argument("--explain", metavar="REQUEST_ID", help="explain why the request with this id was refused")
