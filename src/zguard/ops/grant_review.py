"""The grant report of `zguard scan` (issue 20 item 5): active grants' use against their quota,
and grants nobody used for 30 days, as findings (zguard.ops.scan calls it).

Read through the store (zguard.store.recertification.active_grant_use): `ops` may not import the
services, and a scan changes nothing, so a grant past its time is left for the server to mark
expired and simply not listed. Use is `approval_grants.used_total`, the count the server writes
back after each generation. "Unused for 30 days" means nothing charged since it was granted 30 or
more days ago: the grant row keeps a count, not the time of the last use (the audit trail's
`generation` events hold that), so a grant used once long ago is reported by its count only.
A state database the approval tables cannot be read from is `grants_not_checked` (the scan is
then `incomplete`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from zguard.ops.review import ScanFinding
from zguard.store.recertification import active_grant_use

UNUSED_DAYS = 30


def grant_findings(engine: Engine, now: datetime) -> list[ScanFinding]:
    try:
        grants = active_grant_use(engine, now)
    except SQLAlchemyError:
        return [
            ScanFinding("grants", "grants_not_checked", "medium", "database",
                        "the approval grants cannot be read", "run `zguard db upgrade`")
        ]  # fmt: skip
    findings: list[ScanFinding] = []
    for g in grants:
        subject = f"grant {g.grant_id} ({g.principal})"
        share = 100 * g.used_total // g.quota_total if g.quota_total else 100
        detail = {"grant": str(g.grant_id), "principal": g.principal, "used_total": str(g.used_total),
                  "quota_total": str(g.quota_total), "quota_per_day": str(g.quota_per_day),
                  "model_digest": g.model_digest, "expires_at": g.expires_at.isoformat()}  # fmt: skip
        findings.append(
            ScanFinding("grants", "grant_active", "info", subject,
                        f"{g.used_total} of {g.quota_total} images used ({share}%), {g.quota_per_day} a day, "
                        f"until {g.expires_at:%Y-%m-%d} UTC",
                        "re-certify it each quarter: `zguard approvals recertify --quarter YEARQn`", detail)
        )  # fmt: skip
        if g.used_total == 0 and g.not_before <= now - timedelta(days=UNUSED_DAYS):
            idle = (now - g.not_before).days
            findings.append(
                ScanFinding("grants", "grant_unused", "low", subject,
                            f"granted {idle} days ago and never used",
                            f"revoke it: `zguard approvals revoke {g.grant_id} --as APPROVER --reason unused`",
                            detail)
            )  # fmt: skip
    return findings
