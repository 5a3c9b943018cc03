"""The approvals repository: requests, decisions and grants (zguard.services.approvals decides).

Every method runs in its own transaction and returns frozen records. Decisions written here:

- `decide` serialises on the request's row: its first statement is an UPDATE of that row, which
  takes the row lock on PostgreSQL and the write lock on SQLite, so two approvers deciding at
  once run one after the other and the second sees the first's decision. Quorum reached, the
  grant is inserted in the same transaction; `approval_grants.request_id` is unique and
  `(request_id, decider)` in decisions too, so even a bug in the lock leaves one grant and one
  decision per approver (the IntegrityError is answered as `already_decided`).
- Every change to a grant (made, revoked, expired, exhausted) bumps `auth_state.version` in its
  transaction, so each process drops its cached grants at its next request.
- Expiry is by time: a pending request or an active grant past its `expires_at` is expired
  whatever its stored status; `expire_*` write that down once (returning whether this call did,
  so one audit event is emitted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from zguard.errors import AlreadyDecided, ApprovalNotFound, RequestDecided, RequestExpired
from zguard.store.grant_groups import member_group_ids
from zguard.store.models import ApprovalDecision, ApprovalGrant, ApprovalRequest
from zguard.store.principals import _bump_auth_version, _rowcount, _utc, utc_now


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    decider: str
    decision: str
    comment: str | None
    at: datetime
    max_size: int | None = None  # the scope this approver set (approve only)
    max_steps: int | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    id: int
    requester: str
    requester_id: int | None
    model_id: str
    model_digest: str
    purpose: str
    business_unit: str
    ticket: str | None
    data_classification: str
    quota_per_day: int
    quota_total: int
    validity_days: int
    quorum: int
    created_at: datetime
    expires_at: datetime
    status: str
    decisions: tuple[DecisionRecord, ...] = ()
    group_scim_id: str | None = None  # a request for a SCIM group (zguard.services.grant_groups)
    group_name: str | None = None


@dataclass(frozen=True, slots=True)
class GrantRecord:
    id: int
    request_id: int
    principal: str
    principal_id: int | None
    model_digest: str
    max_size: int | None
    max_steps: int | None
    quota_per_day: int
    quota_total: int
    used_total: int
    not_before: datetime
    expires_at: datetime
    status: str
    revoked_by: str | None
    reason: str | None
    last_used_at: datetime | None = None  # the last charge recorded; None: never used
    group_scim_id: str | None = None  # held by this SCIM group, covering its members
    group_name: str | None = None


@dataclass(frozen=True, slots=True)
class NewRequest:
    requester: str
    requester_id: int | None
    model_id: str
    model_digest: str
    purpose: str
    business_unit: str
    ticket: str | None
    data_classification: str
    quota_per_day: int
    quota_total: int
    validity_days: int
    quorum: int
    group_scim_id: str | None = None
    group_name: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    """What one decision did: the request after it, and the grant when it completed the quorum."""

    request: RequestRecord
    grant: GrantRecord | None
    approvals: int


class ApprovalStore:
    """Approval requests, decisions and grants in the state database. `clock` gives "now" (UTC)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    # --- requests --------------------------------------------------------------------------

    def create_request(self, new: NewRequest, *, ttl: timedelta) -> RequestRecord:
        now = self._clock()
        row = ApprovalRequest(
            requester=new.requester,
            requester_id=new.requester_id,
            model_id=new.model_id,
            model_digest=new.model_digest,
            purpose=new.purpose,
            business_unit=new.business_unit,
            ticket=new.ticket,
            data_classification=new.data_classification,
            quota_per_day=new.quota_per_day,
            quota_total=new.quota_total,
            validity_days=new.validity_days,
            quorum=new.quorum,
            group_scim_id=new.group_scim_id,
            group_name=new.group_name,
            created_at=now,
            expires_at=now + ttl,
            status="pending",
        )
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _request_record(row, [])

    def get_request(self, request_id: int) -> RequestRecord:
        with self._sessions() as session:
            row = session.get(ApprovalRequest, request_id)
            if row is None:
                raise ApprovalNotFound(f"no approval request {request_id}")
            return _request_record(row, _decisions(session, request_id))

    def list_requests(self, *, status: str | None = None, requester: str | None = None) -> list[RequestRecord]:
        query = select(ApprovalRequest).order_by(ApprovalRequest.id)
        if status is not None:
            query = query.where(ApprovalRequest.status == status)
        if requester is not None:
            query = query.where(ApprovalRequest.requester == requester)
        with self._sessions() as session:
            rows = session.scalars(query).all()
            return [_request_record(row, _decisions(session, row.id)) for row in rows]

    def expire_request(self, request_id: int) -> bool:
        """Mark a pending request past its time expired; True when this call did."""
        now = self._clock()
        with self._sessions.begin() as session:
            result = session.execute(
                update(ApprovalRequest)
                .where(
                    ApprovalRequest.id == request_id,
                    ApprovalRequest.status == "pending",
                    ApprovalRequest.expires_at <= now,
                )
                .values(status="expired")
            )
            return _rowcount(result) == 1

    # --- decisions -------------------------------------------------------------------------

    def decide(
        self,
        request_id: int,
        *,
        decider: str,
        decider_id: int | None,
        decision: str,
        comment: str | None,
        max_size: int | None = None,
        max_steps: int | None = None,
    ) -> DecisionOutcome:
        """Record one decision under the request's row lock; make the grant when the quorum is met.

        Raises ApprovalNotFound, RequestExpired, RequestDecided, AlreadyDecided.
        """
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                # The lock: a no-op UPDATE of the row (PostgreSQL row lock, SQLite write lock).
                locked = session.execute(
                    update(ApprovalRequest)
                    .where(ApprovalRequest.id == request_id)
                    .values(status=ApprovalRequest.status)
                    .execution_options(synchronize_session=False)
                )
                if _rowcount(locked) != 1:
                    raise ApprovalNotFound(f"no approval request {request_id}")
                row = session.get(ApprovalRequest, request_id, populate_existing=True)
                if row is None:  # pragma: no cover - locked above in this transaction
                    raise ApprovalNotFound(f"no approval request {request_id}")
                if row.status == "expired" or (row.status == "pending" and _utc(row.expires_at) <= now):
                    raise RequestExpired(
                        f"approval request {request_id} expired at {_utc(row.expires_at):%Y-%m-%d %H:%M} UTC"
                    )
                if row.status != "pending":
                    raise RequestDecided(f"approval request {request_id} is {row.status} already")
                earlier = _decisions(session, request_id)
                if any(d.decider.casefold() == decider.casefold() for d in earlier):
                    raise AlreadyDecided(f"{decider} has decided on approval request {request_id} already")
                session.add(
                    ApprovalDecision(
                        request_id=request_id,
                        decider_id=decider_id,
                        decider=decider,
                        decision=decision,
                        comment=comment,
                        at=now,
                        max_size=max_size,
                        max_steps=max_steps,
                    )
                )
                approvals = sum(1 for d in earlier if d.decision == "approve") + (decision == "approve")
                # The tightest scope any approver set wins (quorum 2: both limits hold).
                approving = [d for d in earlier if d.decision == "approve"]
                max_size = _tightest(max_size, *(d.max_size for d in approving))
                max_steps = _tightest(max_steps, *(d.max_steps for d in approving))
                grant: ApprovalGrant | None = None
                if decision == "reject":
                    row.status = "rejected"
                elif approvals >= row.quorum:
                    row.status = "approved"
                    grant = ApprovalGrant(
                        request_id=request_id,
                        principal_id=row.requester_id,
                        principal=row.requester,
                        model_digest=row.model_digest,
                        max_size=max_size,
                        max_steps=max_steps,
                        quota_per_day=row.quota_per_day,
                        quota_total=row.quota_total,
                        used_total=0,
                        not_before=now,
                        expires_at=now + timedelta(days=row.validity_days),
                        status="active",
                        group_scim_id=row.group_scim_id,
                        group_name=row.group_name,
                    )
                    session.add(grant)
                    _bump_auth_version(session)
                session.flush()
                decisions = [*earlier, DecisionRecord(decider, decision, comment, now, max_size, max_steps)]
                return DecisionOutcome(
                    _request_record(row, decisions), None if grant is None else _grant_record(grant), approvals
                )
        except IntegrityError as exc:  # the unique pairs, should the lock ever fail to serialise
            raise AlreadyDecided(f"{decider} has decided on approval request {request_id} already") from exc

    # --- grants ----------------------------------------------------------------------------

    def get_grant(self, grant_id: int) -> GrantRecord:
        with self._sessions() as session:
            row = session.get(ApprovalGrant, grant_id)
            if row is None:
                raise ApprovalNotFound(f"no grant {grant_id}")
            return _grant_record(row)

    def list_grants(self, *, principal: str | None = None, status: str | None = None) -> list[GrantRecord]:
        """Every grant, or those `principal` asked for or holds through its SCIM groups now."""
        query = select(ApprovalGrant).order_by(ApprovalGrant.id)
        if principal is not None:
            query = query.where(
                (func.lower(ApprovalGrant.principal) == principal.lower())
                | ApprovalGrant.group_scim_id.in_(member_group_ids(principal))
            )
        if status is not None:
            query = query.where(ApprovalGrant.status == status)
        with self._sessions() as session:
            return [_grant_record(row) for row in session.scalars(query).all()]

    def grants_for(self, principal: str, model_digest: str) -> list[GrantRecord]:
        """The grants covering the principal for the digest still marked active: its own first,
        then those its SCIM groups hold now (zguard.store.grant_groups), each newest first. A
        group's grant covers its requester as a member only, not by the name it was asked in."""
        own = (ApprovalGrant.group_scim_id.is_(None)) & (func.lower(ApprovalGrant.principal) == principal.lower())
        query = (
            select(ApprovalGrant)
            .where(
                own | ApprovalGrant.group_scim_id.in_(member_group_ids(principal)),
                ApprovalGrant.model_digest == model_digest,
                ApprovalGrant.status == "active",
            )
            .order_by(ApprovalGrant.group_scim_id.is_not(None), ApprovalGrant.id.desc())
        )
        with self._sessions() as session:
            return [_grant_record(row) for row in session.scalars(query).all()]

    def close_grant(self, grant_id: int, status: str, *, by: str | None = None, reason: str | None = None) -> bool:
        """Move an active grant to `status` (revoked, expired, exhausted); True when this call did."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(ApprovalGrant)
                .where(ApprovalGrant.id == grant_id, ApprovalGrant.status == "active")
                .values(status=status, revoked_by=by, reason=reason)
            )
            changed = _rowcount(result) == 1
            if changed:
                _bump_auth_version(session)
            return changed

    def record_use(self, grant_id: int, used_total: int, *, at: datetime | None = None) -> None:
        """Write back the count the rate-limit storage holds (never lowering it) and the time of
        the charge, in the one UPDATE that already ran per generation. An equal count still
        writes (a refund and a new charge land on the same count); `last_used_at` only moves
        forward, so two replicas writing back out of order keep the newest time."""
        when = at or self._clock()
        with self._sessions.begin() as session:
            session.execute(
                update(ApprovalGrant)
                .where(ApprovalGrant.id == grant_id, ApprovalGrant.used_total <= used_total)
                .values(
                    used_total=used_total,
                    last_used_at=case(
                        (ApprovalGrant.last_used_at.is_(None), when),
                        (ApprovalGrant.last_used_at < when, when),
                        else_=ApprovalGrant.last_used_at,
                    ),
                )
            )


def _decisions(session: Session, request_id: int) -> list[DecisionRecord]:
    rows = session.scalars(
        select(ApprovalDecision).where(ApprovalDecision.request_id == request_id).order_by(ApprovalDecision.id)
    ).all()
    return [DecisionRecord(r.decider, r.decision, r.comment, _utc(r.at), r.max_size, r.max_steps) for r in rows]


def _tightest(*limits: int | None) -> int | None:
    """The smallest limit set; None when nobody set one."""
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _request_record(row: ApprovalRequest, decisions: list[DecisionRecord]) -> RequestRecord:
    return RequestRecord(
        id=row.id,
        requester=row.requester,
        requester_id=row.requester_id,
        model_id=row.model_id,
        model_digest=row.model_digest,
        purpose=row.purpose,
        business_unit=row.business_unit,
        ticket=row.ticket,
        data_classification=row.data_classification,
        quota_per_day=row.quota_per_day,
        quota_total=row.quota_total,
        validity_days=row.validity_days,
        quorum=row.quorum,
        created_at=_utc(row.created_at),
        expires_at=_utc(row.expires_at),
        status=row.status,
        decisions=tuple(decisions),
        group_scim_id=row.group_scim_id,
        group_name=row.group_name,
    )


def _grant_record(row: ApprovalGrant) -> GrantRecord:
    return GrantRecord(
        id=row.id,
        request_id=row.request_id,
        principal=row.principal,
        principal_id=row.principal_id,
        model_digest=row.model_digest,
        max_size=row.max_size,
        max_steps=row.max_steps,
        quota_per_day=row.quota_per_day,
        quota_total=row.quota_total,
        used_total=row.used_total,
        not_before=_utc(row.not_before),
        expires_at=_utc(row.expires_at),
        status=row.status,
        revoked_by=row.revoked_by,
        reason=row.reason,
        last_used_at=_utc(row.last_used_at),
        group_scim_id=row.group_scim_id,
        group_name=row.group_name,
    )
