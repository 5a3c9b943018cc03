"""What the grant reports count by, said once: `zguard scan`'s permission review
(zguard.ops.grant_review) and the console's grant report (zguard.services.grant_report)."""

from __future__ import annotations

from datetime import datetime, timedelta

UNUSED_DAYS = 30  # a grant not charged for this long is listed as unused
EXPIRING_DAYS = 14  # an active grant ending within this is listed as expiring


def idle_since(last_used_at: datetime | None, not_before: datetime) -> datetime:
    """Since when a grant is unused: its last charge, or its start when never charged."""
    return last_used_at or not_before


def is_unused(last_used_at: datetime | None, not_before: datetime, now: datetime) -> bool:
    return idle_since(last_used_at, not_before) <= now - timedelta(days=UNUSED_DAYS)


def is_expiring(expires_at: datetime, now: datetime) -> bool:
    return now < expires_at <= now + timedelta(days=EXPIRING_DAYS)
