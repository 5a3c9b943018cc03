"""The grant report of `zguard scan` (issue 20 item 5): active grants' use against their quota,
today and in total, and grants nobody used for 30 days, as findings (zguard.ops.scan calls it).

Read through the store (zguard.store.recertification.active_grant_use): `ops` may not import the
services, and a scan changes nothing, so a grant past its time is left for the server to mark
expired and simply not listed. Use in total is `approval_grants.used_total`, the count the
server writes back after each generation, with `last_used_at` (the time of that charge).

- Today's use is the counter storage's, which only the services can read: the caller passes
  `used_today` (grant id → images today, None when unreadable; `zguard scan` reads Redis when
  `rate_limits.storage` names it). Without it, a grant last used before today's UTC midnight
  (or never) used 0 today, and any other is reported as "not known here".
- "Unused for 30 days": the last use (or the grant's start, when never used) is 30 or more days
  ago.

A state database the approval tables cannot be read from is `grants_not_checked` (the scan is
then `incomplete`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from zguard.ops.review import ScanFinding
from zguard.store.grant_use import idle_since, is_unused
from zguard.store.recertification import GrantUse, active_grant_use

UsedToday = Callable[[Sequence[int]], Mapping[int, int | None]]
"""Images charged to each grant today (UTC), from the counter storage; None: it cannot be read."""


def used_today_of(grant: GrantUse, now: datetime, counted: Mapping[int, int | None]) -> int | None:
    """Today's use: the counters' when read; else 0 if the last use was before today (UTC),
    else None (used today, by how much only the counters know)."""
    held = counted.get(grant.grant_id)
    if held is not None:
        return held
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    if grant.last_used_at is None or grant.last_used_at < midnight:
        return 0
    return None


def grant_findings(engine: Engine, now: datetime, used_today: UsedToday | None = None) -> list[ScanFinding]:
    try:
        grants = active_grant_use(engine, now)
    except SQLAlchemyError:
        return [
            ScanFinding("grants", "grants_not_checked", "medium", "database",
                        "the approval grants cannot be read", "run `zguard db upgrade`")
        ]  # fmt: skip
    findings: list[ScanFinding] = []
    counted = {} if used_today is None or not grants else used_today([g.grant_id for g in grants])
    for g in grants:
        holder = f"group {g.group_name}" if g.group_name else g.principal
        subject = f"grant {g.grant_id} ({holder})"
        share = 100 * g.used_total // g.quota_total if g.quota_total else 100
        today = used_today_of(g, now, counted)
        today_text = "used today, the count not readable here" if today is None else f"{today} today"
        detail = {"grant": str(g.grant_id), "principal": g.principal, "used_total": str(g.used_total),
                  "quota_total": str(g.quota_total), "quota_per_day": str(g.quota_per_day),
                  "used_today": "" if today is None else str(today),
                  "last_used_at": "" if g.last_used_at is None else g.last_used_at.isoformat(),
                  "model_digest": g.model_digest, "expires_at": g.expires_at.isoformat()}  # fmt: skip
        if g.group_name:
            detail["group"] = g.group_name
        findings.append(
            ScanFinding("grants", "grant_active", "info", subject,
                        f"{g.used_total} of {g.quota_total} images used ({share}%), {g.quota_per_day} a day "
                        f"({today_text}), until {g.expires_at:%Y-%m-%d} UTC",
                        "re-certify it each quarter: `zguard approvals recertify --quarter YEARQn`", detail)
        )  # fmt: skip
        if is_unused(g.last_used_at, g.not_before, now):
            idle = (now - idle_since(g.last_used_at, g.not_before)).days
            message = f"last used {idle} days ago" if g.last_used_at else f"granted {idle} days ago and never used"
            findings.append(
                ScanFinding("grants", "grant_unused", "low", subject, message,
                            f"revoke it: `zguard approvals revoke {g.grant_id} --as APPROVER --reason unused`",
                            detail)
            )  # fmt: skip
    return findings
