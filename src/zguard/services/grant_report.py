"""The grant report (issue 20 item 5): every active grant's use against its quota, today and in
total, those expiring within 14 days and those unused for 30 (zguard.store.grant_use).

The console shows it (`/approvals/report`, JSON twin `/console/api/approvals/report`, both
`approvals:decide`, as every grant's history is); `zguard scan` lists the same from the store
(zguard.ops.grant_review), with today's use read here (`counter_reader`) because `ops` may not
import the services.

Today's use is the rate-limit storage's count, where generations are charged; when that storage
cannot be read the report says so (`used_today` null) rather than showing 0. Reading the report
expires grants past their time (the service's list does, with its audit event), so it lists only
what a generation could still use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from zguard.audit import DetailValue
from zguard.config import RateLimitSettings
from zguard.services.approvals import ApprovalService, grant_day_key
from zguard.services.counters import CounterStorage
from zguard.store.approvals import GrantRecord
from zguard.store.grant_use import EXPIRING_DAYS, UNUSED_DAYS, is_expiring, is_unused


@dataclass(frozen=True, slots=True)
class GrantLine:
    """One active grant in the report."""

    grant: GrantRecord
    used_today: int | None  # None: the counter storage could not be read
    expiring: bool
    unused: bool

    @property
    def holder(self) -> str:
        return f"group {self.grant.group_name}" if self.grant.group_name else self.grant.principal

    def to_json(self) -> dict[str, DetailValue]:
        g = self.grant
        return {
            "grant": g.id,
            "principal": g.principal,
            "group": g.group_name,
            "model_digest": g.model_digest,
            "quota_per_day": g.quota_per_day,
            "used_today": self.used_today,
            "quota_total": g.quota_total,
            "used_total": g.used_total,
            "max_size": g.max_size,
            "max_steps": g.max_steps,
            "not_before": g.not_before.isoformat(),
            "expires_at": g.expires_at.isoformat(),
            "last_used_at": None if g.last_used_at is None else g.last_used_at.isoformat(),
            "expiring": self.expiring,
            "unused": self.unused,
        }


@dataclass(frozen=True, slots=True)
class GrantReport:
    at: datetime
    lines: tuple[GrantLine, ...]

    @property
    def expiring(self) -> list[GrantLine]:
        return [line for line in self.lines if line.expiring]

    @property
    def unused(self) -> list[GrantLine]:
        return [line for line in self.lines if line.unused]

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "expiring_days": EXPIRING_DAYS,
            "unused_days": UNUSED_DAYS,
            "active": [line.to_json() for line in self.lines],
            "expiring": [line.grant.id for line in self.expiring],
            "unused": [line.grant.id for line in self.unused],
        }


async def grant_report(service: ApprovalService, *, now: datetime | None = None) -> GrantReport:
    """The report now, from the service's store and its counters."""
    grants = await asyncio.to_thread(service.list_grants, status="active")
    at = now or service.store.now()
    lines = [
        GrantLine(
            grant=g,
            used_today=await service.used_today(g.id, now=at),
            expiring=is_expiring(g.expires_at, at),
            unused=is_unused(g.last_used_at, g.not_before, at),
        )
        for g in grants
    ]
    return GrantReport(at, tuple(lines))


def counter_reader(settings: RateLimitSettings, now: datetime) -> Callable[[Sequence[int]], dict[int, int | None]]:
    """Today's use of grants read from the shared counter storage, for `zguard scan`
    (zguard.ops.grant_review.UsedToday). Memory storage is the server's own process, which a
    command cannot see: every grant is then None, as it is when Redis cannot be read."""

    def read_all(grant_ids: Sequence[int]) -> dict[int, int | None]:
        counters = CounterStorage.from_settings(settings)
        if not counters.shared:
            return dict.fromkeys(grant_ids)

        async def read() -> dict[int, int | None]:
            found: dict[int, int | None] = {}
            try:
                for grant_id in grant_ids:
                    try:
                        held = await counters.storage.get(grant_day_key(counters.prefix, grant_id, now))
                        found[grant_id] = max(0, int(held or 0))
                    except counters.errors:
                        found[grant_id] = None
            finally:
                await _close(counters)
            return found

        return asyncio.run(read())

    return read_all


async def _close(counters: CounterStorage) -> None:
    # `limits` offers no close; its redis-py client's, before the loop ends (as the tests do).
    bridge = getattr(counters.storage, "bridge", None)
    client = getattr(getattr(bridge, "storage", None), "aclose", None)
    if client is not None:
        await client()
