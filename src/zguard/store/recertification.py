"""The re-certification repository: campaigns and their items (zguard.services.recertification decides).

Every method runs in its own transaction and returns frozen records. Decisions written here:

- `open_campaign` lists, in its transaction, every grant marked active and not past its
  `expires_at`, with the approvers of its request (those asked to re-certify it). `quarter` is
  unique, so two operators opening the same quarter at once make one campaign (the second is
  told `campaign_exists`).
- `decide` writes an item's decision only while the item is undecided and its campaign open
  (one guarded UPDATE), so a confirmation racing the close either lands before it or is refused.
- `close` marks the campaign closed once (a guarded UPDATE: True for the one call that did) and
  then the undecided items; the service revokes the grants (zguard.store.approvals.close_grant,
  which bumps `auth_state.version`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from zguard.errors import ApprovalNotFound, CampaignExists
from zguard.store.models import (
    ApprovalDecision,
    ApprovalGrant,
    RecertificationCampaign,
    RecertificationItem,
)
from zguard.store.principals import _rowcount, _utc, utc_now


@dataclass(frozen=True, slots=True)
class ItemRecord:
    grant_id: int
    principal: str
    approvers: tuple[str, ...]
    decision: str | None
    decider: str | None
    decided_at: datetime | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    id: int
    quarter: str
    opened_by: str
    opened_at: datetime
    deadline: datetime
    status: str
    closed_by: str | None
    closed_at: datetime | None
    items: tuple[ItemRecord, ...] = ()

    def item(self, grant_id: int) -> ItemRecord | None:
        return next((i for i in self.items if i.grant_id == grant_id), None)


@dataclass(frozen=True, slots=True)
class GrantUse:
    """An active grant as the scan reports it: its quota, what was used, and since when it runs."""

    grant_id: int
    principal: str
    model_digest: str
    quota_per_day: int
    quota_total: int
    used_total: int
    not_before: datetime
    expires_at: datetime
    last_used_at: datetime | None = None  # the last charge recorded; None: never used
    group_name: str | None = None  # held by this SCIM group for its members


class RecertificationStore:
    """Campaigns and items in the state database. `clock` gives "now" (UTC)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def open_campaign(self, quarter: str, *, opened_by: str, deadline: datetime) -> CampaignRecord:
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                campaign = RecertificationCampaign(
                    quarter=quarter, opened_by=opened_by, opened_at=now, deadline=deadline, status="open"
                )
                session.add(campaign)
                session.flush()
                grants = session.scalars(
                    select(ApprovalGrant)
                    .where(ApprovalGrant.status == "active", ApprovalGrant.expires_at > now)
                    .order_by(ApprovalGrant.id)
                ).all()
                for grant in grants:
                    approvers = session.scalars(
                        select(ApprovalDecision.decider)
                        .where(ApprovalDecision.request_id == grant.request_id, ApprovalDecision.decision == "approve")
                        .order_by(ApprovalDecision.id)
                    ).all()
                    session.add(
                        RecertificationItem(
                            campaign_id=campaign.id,
                            grant_id=grant.id,
                            principal=grant.principal,
                            approvers=",".join(approvers)[:512],
                        )
                    )
                campaign_id = campaign.id
        except IntegrityError as exc:
            raise CampaignExists(f"a re-certification campaign for {quarter} exists already") from exc
        return self.get(campaign_id)

    def get(self, campaign_id: int) -> CampaignRecord:
        with self._sessions() as session:
            row = session.get(RecertificationCampaign, campaign_id)
            if row is None:
                raise ApprovalNotFound(f"no re-certification campaign {campaign_id}")
            items = session.scalars(
                select(RecertificationItem)
                .where(RecertificationItem.campaign_id == campaign_id)
                .order_by(RecertificationItem.grant_id)
            ).all()
            return CampaignRecord(
                id=row.id,
                quarter=row.quarter,
                opened_by=row.opened_by,
                opened_at=_utc(row.opened_at),
                deadline=_utc(row.deadline),
                status=row.status,
                closed_by=row.closed_by,
                closed_at=None if row.closed_at is None else _utc(row.closed_at),
                items=tuple(
                    ItemRecord(
                        grant_id=i.grant_id,
                        principal=i.principal,
                        approvers=tuple(a for a in i.approvers.split(",") if a),
                        decision=i.decision,
                        decider=i.decider,
                        decided_at=None if i.decided_at is None else _utc(i.decided_at),
                        comment=i.comment,
                    )
                    for i in items
                ),
            )

    def list_campaigns(self) -> list[CampaignRecord]:
        with self._sessions() as session:
            ids = session.scalars(select(RecertificationCampaign.id).order_by(RecertificationCampaign.id)).all()
        return [self.get(i) for i in ids]

    def due_ids(self, now: datetime) -> list[int]:
        """Campaigns the deadline check must act on: open past `now`'s deadline, or closed with an
        item still undecided (a close interrupted before its revocations)."""
        undecided = select(RecertificationItem.campaign_id).where(RecertificationItem.decision.is_(None))
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(RecertificationCampaign.id)
                    .where(
                        ((RecertificationCampaign.status == "open") & (RecertificationCampaign.deadline <= now))
                        | (
                            (RecertificationCampaign.status == "closed")
                            & RecertificationCampaign.id.in_(undecided.scalar_subquery())
                        )
                    )
                    .order_by(RecertificationCampaign.id)
                ).all()
            )

    def has_quarter(self, quarter: str) -> bool:
        with self._sessions() as session:
            found = session.scalar(select(RecertificationCampaign.id).where(RecertificationCampaign.quarter == quarter))
            return found is not None

    def decide(
        self, campaign_id: int, grant_id: int, *, decision: str, decider: str, comment: str | None = None
    ) -> bool:
        """Write an undecided item's decision while its campaign is open; True when this call did."""
        now = self._clock()
        with self._sessions.begin() as session:
            still_open = select(RecertificationCampaign.id).where(
                RecertificationCampaign.id == campaign_id, RecertificationCampaign.status == "open"
            )
            result = session.execute(
                update(RecertificationItem)
                .where(
                    RecertificationItem.campaign_id == campaign_id,
                    RecertificationItem.grant_id == grant_id,
                    RecertificationItem.decision.is_(None),
                    RecertificationItem.campaign_id.in_(still_open.scalar_subquery()),
                )
                .values(decision=decision, decider=decider, decided_at=now, comment=comment)
            )
            return _rowcount(result) == 1

    def close(self, campaign_id: int, *, closed_by: str) -> bool:
        """Mark an open campaign closed; True for the one call that did."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(RecertificationCampaign)
                .where(RecertificationCampaign.id == campaign_id, RecertificationCampaign.status == "open")
                .values(status="closed", closed_by=closed_by, closed_at=self._clock())
            )
            return _rowcount(result) == 1

    def settle(self, campaign_id: int, grant_id: int, *, decision: str, decider: str, comment: str) -> None:
        """At the close: write the outcome of an item nobody decided (`lapsed` or `ended`)."""
        with self._sessions.begin() as session:
            session.execute(
                update(RecertificationItem)
                .where(
                    RecertificationItem.campaign_id == campaign_id,
                    RecertificationItem.grant_id == grant_id,
                    RecertificationItem.decision.is_(None),
                )
                .values(decision=decision, decider=decider, decided_at=self._clock(), comment=comment)
            )


def active_grant_use(engine: Engine, now: datetime) -> list[GrantUse]:
    """Every grant marked active and not past `expires_at`, for `zguard scan` (zguard.ops.scan,
    which may not import the services): read-only, nothing is expired or written here."""
    query = (
        select(ApprovalGrant)
        .where(ApprovalGrant.status == "active", ApprovalGrant.expires_at > now)
        .order_by(ApprovalGrant.id)
    )
    with sessionmaker(engine)() as session:
        return [
            GrantUse(
                grant_id=g.id,
                principal=g.principal,
                model_digest=g.model_digest,
                quota_per_day=g.quota_per_day,
                quota_total=g.quota_total,
                used_total=g.used_total,
                not_before=_utc(g.not_before),
                expires_at=_utc(g.expires_at),
                last_used_at=_utc(g.last_used_at),
                group_name=g.group_name,
            )
            for g in session.scalars(query).all()
        ]
