"""Model-use approvals: requests, four-eyes decisions, and expiring, quota-bound grants.

The CLI (`zguard approvals ...`), the console's JSON API and the generation path call this.
Decisions written here:

- A request names the served model by its id or its manifest digest; anything else is
  `unknown_model`. The grant is bound to the manifest digest when the model has one (its id
  otherwise, e.g. the demo model), so pinning a different model ends every grant's reach.
- Validity and quota are checked against the `approvals` caps and refused with their own codes,
  never trimmed. Requesting needs `images:generate` (the grant is for generating).
- Deciding needs `approvals:decide`, and `rbac.may_decide_approval` refuses the requester
  (names compared case- and width-insensitively, and the same principal id besides); a
  rejection needs a comment; each approver decides once; a decided or expired request takes no
  decision. The store serialises decisions on the request's row, so concurrent approvals make
  exactly one grant (zguard.store.approvals).
- Every transition is one audit event: `approval.requested`, `approval.decided`,
  `approval.granted`, `approval.rejected`, `approval.revoked`, `approval.expired` (requests and
  grants), `approval.exhausted`; every refusal one `approval.refused` with its code. An audit
  failure reaches the caller (fail closed): the operator learns the record may be missing.
- Enforcement (`approvals.required`): the caller's active grant for the served key is cached per
  `auth_state.version` (every grant change bumps it), so the check costs a dictionary look-up
  and the version probe; the images are charged atomically on the rate-limit storage (per UTC
  day and in total, shared by replicas on Redis), and refunded when the generation fails. A
  storage failure refuses the generation (`rate_limiter_unavailable`: fail closed). The storage
  count is written back to `approval_grants.used_total` after each generation, and seeds the
  storage count when a process first loads the grant (memory storage after a restart).
- Scope (zguard.services.grant_scope): approvers may set max_size / max_steps, the tightest
  wins; a generation over them is `grant_scope_exceeded`, nothing charged. Groups
  (zguard.services.grant_groups): a SCIM group's grant covers its members, one shared quota.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.config.approvals import ApprovalSettings
from zguard.engine import GenerationJob, ImageEngine
from zguard.errors import (
    ApprovalError,
    ApprovalRequired,
    CommentRequired,
    ConfigError,
    GrantExhausted,
    GrantNotActive,
    GrantQuotaExceeded,
    InvalidValue,
    PermissionDenied,
    QuotaOverMaximum,
    RateLimiterUnavailable,
    SelfApproval,
    UnknownModel,
    ValidityOverMaximum,
    ZguardError,
)
from zguard.security.rbac import Permission, Principal, RoleRegistry, authorize, may_decide_approval
from zguard.services.counters import UNAVAILABLE_RETRY_AFTER_S, CounterStorage
from zguard.services.grant_groups import group_for_request, refuse_member_decider
from zguard.services.grant_scope import Scope, check_within, checked_scope
from zguard.store.approvals import ApprovalStore, DecisionOutcome, GrantRecord, NewRequest, RequestRecord
from zguard.store.models import APPROVAL_FIELD_MAX, APPROVAL_TEXT_MAX
from zguard.store.principals import PrincipalStore

REQUEST_HINT = (
    "`zguard approvals request --as YOU --model MODEL --purpose ... --business-unit ... --classification ... "
    "--per-day N --total N --days N` or POST /console/api/approvals (docs/governance.md)"
)
_DAY = 86_400
GRANT_CACHE_MAX = 10_000

Decision = Literal["approve", "reject"]


@dataclass(frozen=True)
class Caller:
    """Who acts: a principal (its name, store id if any and roles), and where from, for the events."""

    name: str
    roles: frozenset[str]
    principal_id: int | None = None
    client: str | None = None
    request_id: str | None = None
    listener: str | None = None
    detail: Mapping[str, DetailValue] = field(default_factory=dict)  # e.g. the OS user of a CLI caller


@dataclass(frozen=True)
class RequestForm:
    """What a requester asks for."""

    model: str
    purpose: str
    business_unit: str
    data_classification: str
    quota_per_day: int
    quota_total: int
    validity_days: int
    ticket: str | None = None
    group: str | None = None  # a SCIM group's displayName: the grant covers its members


@dataclass(frozen=True, slots=True)
class GrantUsage:
    """One charge against a grant: what is left after it, for the response headers."""

    grant_id: int
    images: int
    remaining_today: int
    remaining_total: int
    day_key: str
    total_key: str
    total_after: int

    def headers(self) -> dict[str, str]:
        return {
            "X-Zguard-Grant": str(self.grant_id),
            "X-Zguard-Grant-Remaining-Today": str(self.remaining_today),
            "X-Zguard-Grant-Remaining-Total": str(self.remaining_total),
        }


@dataclass(frozen=True, slots=True)
class _Cached:
    grant: GrantRecord | None
    key: str


class ApprovalService:
    """Requests, decisions, grants and their enforcement; every change audited."""

    def __init__(
        self,
        settings: ApprovalSettings,
        store: ApprovalStore,
        registry: RoleRegistry,
        *,
        audit: AuditSink,
        counters: CounterStorage,
        served: Callable[[], tuple[str, str | None]],
        version: Callable[[], int],
    ) -> None:
        """`served` gives the served model's (id, manifest digest); `version` `auth_state.version`."""
        self.settings = settings
        self.store = store
        self._registry = registry
        self._audit = audit
        self._counters = counters
        self._served = served
        self._version = version
        self._cache: dict[str, _Cached] = {}
        self._cache_version: int | None = None

    @property
    def required(self) -> bool:
        return self.settings.required

    def served_key(self) -> str:
        """What grants are bound to: the manifest digest, or the model id without one."""
        model_id, digest = self._served()
        return digest or model_id

    # --- requests --------------------------------------------------------------------------

    def request(self, caller: Caller, form: RequestForm) -> RequestRecord:
        try:
            self._require(caller, Permission.IMAGES_GENERATE)
            model_id, digest = self._served()
            if form.model not in {model_id, digest}:
                raise UnknownModel(
                    f"model {form.model[:80]!r} is not the served model; name it by its id {model_id!r}"
                    + (f" or its manifest digest {digest}" if digest else "")
                )
            if not 1 <= form.validity_days <= self.settings.max_validity_days:
                raise ValidityOverMaximum(
                    f"validity of {form.validity_days} days; 1 to approvals.max_validity_days "
                    f"({self.settings.max_validity_days}) allowed"
                )
            if not 1 <= form.quota_per_day <= self.settings.max_images_per_day:
                raise QuotaOverMaximum(
                    f"{form.quota_per_day} images a day; 1 to approvals.max_images_per_day "
                    f"({self.settings.max_images_per_day}) allowed"
                )
            if not form.quota_per_day <= form.quota_total <= self.settings.max_images_total:
                raise QuotaOverMaximum(
                    f"{form.quota_total} images in all; from the daily quota ({form.quota_per_day}) to "
                    f"approvals.max_images_total ({self.settings.max_images_total}) allowed"
                )
            group = None if form.group is None else group_for_request(self.store.engine, caller.name, form.group)
            new = NewRequest(
                requester=caller.name,
                requester_id=caller.principal_id,
                model_id=model_id,
                model_digest=digest or model_id,
                purpose=_text(form.purpose, "purpose", APPROVAL_TEXT_MAX),
                business_unit=_text(form.business_unit, "business_unit", APPROVAL_FIELD_MAX),
                ticket=None if form.ticket is None else _text(form.ticket, "ticket", APPROVAL_FIELD_MAX),
                data_classification=_text(form.data_classification, "data_classification", APPROVAL_FIELD_MAX),
                quota_per_day=form.quota_per_day,
                quota_total=form.quota_total,
                validity_days=form.validity_days,
                quorum=self.settings.quorum_for(model_id, digest),
                group_scim_id=None if group is None else group.scim_id,
                group_name=None if group is None else group.name,
            )
        except ZguardError as refused:
            self._refused(caller, "request", refused, {})
            raise
        record = self.store.create_request(new, ttl=timedelta(days=self.settings.request_ttl_days))
        self._emit("approval.requested", caller, _request_detail(record))
        return record

    def get_request(self, request_id: int, caller: Caller | None = None) -> RequestRecord:
        record = self.store.get_request(request_id)
        return self._expired_on_read(record, caller)

    def list_requests(self, *, status: str | None = None, requester: str | None = None) -> list[RequestRecord]:
        records = [self._expired_on_read(r, None) for r in self.store.list_requests(requester=requester)]
        return [r for r in records if status is None or r.status == status]

    # --- decisions -------------------------------------------------------------------------

    def decide(
        self,
        caller: Caller,
        request_id: int,
        decision: Decision,
        comment: str | None = None,
        scope: Scope | None = None,
    ) -> DecisionOutcome:
        """`scope`: the approver's max_size / max_steps (zguard.services.grant_scope; approvals only)."""
        where: dict[str, DetailValue] = {"request": request_id, "decision": decision}
        try:
            self._require(caller, Permission.APPROVALS_DECIDE)
            scope = checked_scope(*astuple(scope or Scope())) if decision == "approve" else Scope()
            where |= {"max_size": scope.max_size, "max_steps": scope.max_steps}
            if comment is not None:
                comment = _text(comment, "comment", APPROVAL_TEXT_MAX) if comment.strip() else None
            if decision == "reject" and comment is None:
                raise CommentRequired("a rejection needs a comment saying why (--comment)")
            request = self.get_request(request_id, caller)
            allowed = may_decide_approval(Principal(caller.name, caller.roles), request.requester, self._registry)
            same_account = caller.principal_id is not None and caller.principal_id == request.requester_id
            if not allowed or same_account:
                if not authorize(caller.roles, Permission.APPROVALS_DECIDE, self._registry):
                    raise PermissionDenied(
                        "deciding needs approvals:decide", permission=str(Permission.APPROVALS_DECIDE)
                    )
                raise SelfApproval(f"{caller.name} asked for approval request {request_id}; another approver decides")
            refuse_member_decider(self.store.engine, caller.name, request)
            outcome = self.store.decide(
                request_id,
                decider=caller.name,
                decider_id=caller.principal_id,
                decision=decision,
                comment=comment,
                max_size=scope.max_size,
                max_steps=scope.max_steps,
            )
        except ZguardError as refused:
            self._refused(caller, "decide", refused, where)
            raise
        request = outcome.request
        self._emit(
            "approval.decided",
            caller,
            {
                **where,
                "comment": comment,
                "approvals": outcome.approvals,
                "quorum": request.quorum,
                "requester": request.requester,
            },
        )
        if decision == "reject":
            self._emit(
                "approval.rejected", caller, {"request": request_id, "requester": request.requester, "comment": comment}
            )
        if outcome.grant is not None:
            self._emit(
                "approval.granted",
                caller,
                {
                    **_grant_detail(outcome.grant),
                    "approvers": ",".join(d.decider for d in request.decisions if d.decision == "approve"),
                },
            )
        return outcome

    # --- grants ----------------------------------------------------------------------------

    def list_grants(self, *, principal: str | None = None, status: str | None = None) -> list[GrantRecord]:
        grants = [self._grant_on_read(g) for g in self.store.list_grants(principal=principal)]
        return [g for g in grants if status is None or g.status == status]

    def revoke(self, caller: Caller, grant_id: int, reason: str) -> GrantRecord:
        where: dict[str, DetailValue] = {"grant": grant_id}
        try:
            self._require(caller, Permission.APPROVALS_DECIDE)
            if not reason.strip():
                raise CommentRequired("a revocation needs its reason (--reason)")
            reason = _text(reason, "reason", APPROVAL_TEXT_MAX)
            grant = self._grant_on_read(self.store.get_grant(grant_id))
            if grant.status != "active" or not self.store.close_grant(
                grant_id, "revoked", by=caller.name, reason=reason
            ):
                raise GrantNotActive(f"grant {grant_id} is {grant.status}, not active")
        except ZguardError as refused:
            self._refused(caller, "revoke", refused, where)
            raise
        revoked = self.store.get_grant(grant_id)
        self._emit("approval.revoked", caller, {**_grant_detail(revoked), "reason": reason})
        return revoked

    # --- enforcement -----------------------------------------------------------------------

    async def charge(
        self, name: str, images: int, *, now: datetime | None = None, job: GenerationJob | None = None
    ) -> GrantUsage:
        """Charge `images` against `name`'s active grant for the served model, atomically.

        Raises ApprovalRequired (no grant, or it expired), GrantScopeExceeded (`job`'s size or
        steps over the grant's scope, zguard.services.grant_scope), GrantExhausted (total used up),
        GrantQuotaExceeded (today's used up; Retry-After to the next UTC day), or
        RateLimiterUnavailable (the storage failed: fail closed). Nothing is charged on a refusal.
        """
        cached = await self._active_grant(name)
        grant = cached.grant
        if grant is None:
            raise ApprovalRequired(
                f"using this model needs an approval: ask with {REQUEST_HINT}; an approver decides",
                detail=f"no active grant for {cached.key}",
            )
        now = now or self.store.now()
        if now >= grant.expires_at:
            await asyncio.to_thread(self._close, grant, "expired")
            raise ApprovalRequired(
                f"your grant {grant.id} expired at {grant.expires_at:%Y-%m-%d %H:%M} UTC; ask again with {REQUEST_HINT}"
            )
        if job is not None:
            check_within(grant, width=job.width, height=job.height, steps=job.steps)
        total_key = f"{self._counters.prefix}/grant/{grant.id}/total"
        day_key = self._day_key(grant.id, now)
        storage = self._counters.storage
        total_expiry = max(_DAY, int((grant.expires_at - now).total_seconds()) + _DAY)
        try:
            total = await storage.incr(total_key, total_expiry, images)
            if total > grant.quota_total:
                await storage.incr(total_key, total_expiry, -images)
                left = max(0, grant.quota_total - (total - images))
                if left == 0:
                    await asyncio.to_thread(self._close, grant, "exhausted")
                raise GrantExhausted(
                    f"your grant {grant.id} has {left} of its {grant.quota_total} images left and this asks for "
                    f"{images}; ask for a new approval with {REQUEST_HINT}"
                )
            today = await storage.incr(day_key, 2 * _DAY, images)
            if today > grant.quota_per_day:
                await storage.incr(day_key, 2 * _DAY, -images)
                await storage.incr(total_key, total_expiry, -images)
                midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
                raise GrantQuotaExceeded(
                    f"your grant {grant.id} allows {grant.quota_per_day} images a day (UTC); "
                    f"{max(0, grant.quota_per_day - (today - images))} left today and this asks for {images}",
                    retry_after=int((midnight - now).total_seconds()) + 1,
                )
        except self._counters.errors as exc:
            raise RateLimiterUnavailable(
                "the quota counters cannot be reached; retry shortly",
                retry_after=UNAVAILABLE_RETRY_AFTER_S,
                detail=self._counters.reason(exc),
            ) from exc
        return GrantUsage(
            grant.id,
            images,
            remaining_today=grant.quota_per_day - today,
            remaining_total=grant.quota_total - total,
            day_key=day_key,
            total_key=total_key,
            total_after=total,
        )

    def _day_key(self, grant_id: int, now: datetime) -> str:
        return grant_day_key(self._counters.prefix, grant_id, now)

    async def used_today(self, grant_id: int, *, now: datetime | None = None) -> int | None:
        """Images charged to grant `grant_id` today (UTC), as `charge` counts them on the shared
        counter storage; None when the storage cannot be read (the page then says nothing)."""
        try:
            held = await self._counters.storage.get(self._day_key(grant_id, now or self.store.now()))
        except self._counters.errors:
            return None
        return max(0, int(held or 0))

    async def refund(self, usage: GrantUsage) -> None:
        """Give back a charge whose generation failed (best effort: a storage error keeps the charge)."""
        try:
            await self._counters.storage.incr(usage.day_key, 2 * _DAY, -usage.images)
            await self._counters.storage.incr(usage.total_key, _DAY, -usage.images)
        except self._counters.errors:
            return

    async def record_use(self, usage: GrantUsage) -> None:
        """Write the storage's count back to the grant's row (for reports and memory restarts)."""
        await asyncio.to_thread(self.store.record_use, usage.grant_id, usage.total_after)

    async def _active_grant(self, name: str) -> _Cached:
        version = self._version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        folded = unicodedata.normalize("NFKC", name).casefold()
        cached = self._cache.get(folded)
        key = self.served_key()
        if cached is None or cached.key != key:
            grant = await asyncio.to_thread(self._load_grant, name, key)
            if len(self._cache) >= GRANT_CACHE_MAX:
                self._cache.clear()
            cached = self._cache[folded] = _Cached(grant, key)
            if grant is not None and grant.used_total:
                await self._seed(grant)
        return cached

    def _load_grant(self, name: str, key: str) -> GrantRecord | None:
        for grant in self.store.grants_for(name, key):
            current = self._grant_on_read(grant)
            if current.status == "active":
                return current
        return None

    async def _seed(self, grant: GrantRecord) -> None:
        key = f"{self._counters.prefix}/grant/{grant.id}/total"
        try:
            held = await self._counters.storage.get(key)
            if held < grant.used_total:
                await self._counters.storage.incr(
                    key, _DAY * (self.settings.max_validity_days + 1), grant.used_total - held
                )
        except self._counters.errors:
            return  # the charge that follows meets the same failure and refuses

    # --- expiry on read ----------------------------------------------------------------------

    def _expired_on_read(self, record: RequestRecord, caller: Caller | None) -> RequestRecord:
        if record.status == "pending" and record.expires_at <= self.store.now():
            if self.store.expire_request(record.id):
                self._audit.emit(
                    AuditEvent(
                        type="approval.expired",
                        outcome="done",
                        principal=None if caller is None else caller.name,
                        detail={
                            "request": record.id,
                            "requester": record.requester,
                            "expired_at": record.expires_at.isoformat(),
                        },
                    )
                )
            return self.store.get_request(record.id)
        return record

    def _grant_on_read(self, grant: GrantRecord) -> GrantRecord:
        if grant.status == "active" and grant.expires_at <= self.store.now():
            self._close(grant, "expired")
            return self.store.get_grant(grant.id)
        return grant

    def _close(self, grant: GrantRecord, status: Literal["expired", "exhausted"]) -> None:
        if self.store.close_grant(grant.id, status):
            self._audit.emit(
                AuditEvent(
                    type=f"approval.{status}",
                    outcome="done",
                    principal=grant.principal,
                    detail=_grant_detail(grant),
                )
            )

    # --- checks and events -------------------------------------------------------------------

    def _require(self, caller: Caller, permission: Permission) -> None:
        if not authorize(caller.roles, permission, self._registry):
            raise PermissionDenied(
                f"this needs the permission {permission}, which none of your roles grants",
                permission=str(permission),
            )

    def _refused(self, caller: Caller, action: str, refused: ZguardError, where: Mapping[str, DetailValue]) -> None:
        self._audit.emit(refusal_event(caller, action, refused, where))

    def _emit(self, kind: str, caller: Caller, detail: Mapping[str, DetailValue]) -> None:
        self._audit.emit(caller_event(kind, caller, detail))


def grant_day_key(prefix: str, grant_id: int, now: datetime) -> str:
    """The counter of a grant's images on `now`'s UTC day (zguard.services.grant_report reads it too)."""
    return f"{prefix}/grant/{grant_id}/day/{now.astimezone(UTC):%Y%m%d}"


def caller_event(kind: str, caller: Caller, detail: Mapping[str, DetailValue]) -> AuditEvent:
    """A step of the approvals (or of a re-certification campaign) done by `caller`."""
    return AuditEvent(
        type=kind,
        outcome="done",
        request_id=caller.request_id,
        listener=caller.listener,
        client=caller.client,
        principal=caller.name,
        roles=tuple(sorted(caller.roles)),
        detail={**caller.detail, **detail},
    )


def refusal_event(caller: Caller, action: str, refused: ZguardError, where: Mapping[str, DetailValue]) -> AuditEvent:
    """`approval.refused`: what `caller` tried (`action`, `where`) and the code it was refused with."""
    detail = {**where, "action": action, "reason": refused.message[:300]}
    return replace(caller_event("approval.refused", caller, detail), outcome="denied", code=refused.code)


def _text(value: str, name: str, limit: int) -> str:
    text = value.strip()
    if not text or len(text) > limit or any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InvalidValue(f"{name} must be 1 to {limit} characters without control characters", param=name)
    return text


def _request_detail(record: RequestRecord) -> dict[str, DetailValue]:
    return {
        "request": record.id,
        "requester": record.requester,
        "model": record.model_id,
        "model_digest": record.model_digest,
        "purpose": record.purpose,
        "business_unit": record.business_unit,
        "ticket": record.ticket,
        "data_classification": record.data_classification,
        "quota_per_day": record.quota_per_day,
        "quota_total": record.quota_total,
        "validity_days": record.validity_days,
        "quorum": record.quorum,
        "expires_at": record.expires_at.isoformat(),
        "group": record.group_name,
    }


def _grant_detail(grant: GrantRecord) -> dict[str, DetailValue]:
    return {
        "grant": grant.id,
        "request": grant.request_id,
        "principal": grant.principal,
        "model_digest": grant.model_digest,
        "quota_per_day": grant.quota_per_day,
        "quota_total": grant.quota_total,
        "not_before": grant.not_before.isoformat(),
        "expires_at": grant.expires_at.isoformat(),
        "group": grant.group_name,
        "max_size": grant.max_size,
        "max_steps": grant.max_steps,
    }


def request_json(record: RequestRecord) -> dict[str, DetailValue | list[dict[str, DetailValue]]]:
    """A request as the console API and `zguard approvals list --json` show it: its audit detail
    (with `id` for `request`), its status, creation time and decisions."""
    detail = _request_detail(record)
    return {
        "id": detail.pop("request"),
        "status": record.status,
        **detail,
        "created_at": record.created_at.isoformat(),
        "decisions": [
            {"decider": d.decider, "decision": d.decision, "comment": d.comment, "at": d.at.isoformat()}
            for d in record.decisions
        ],
    }


def grant_json(grant: GrantRecord) -> dict[str, DetailValue | list[dict[str, DetailValue]]]:
    detail = _grant_detail(grant)
    return {
        "id": detail.pop("grant"),
        "status": grant.status,
        **detail,
        "used_total": grant.used_total,
        "last_used_at": None if grant.last_used_at is None else grant.last_used_at.isoformat(),
        "revoked_by": grant.revoked_by,
        "reason": grant.reason,
    }


__all__ = ["ApprovalError", "ApprovalService", "Caller", "GrantUsage", "RequestForm", "grant_json", "request_json"]


def approval_service(
    settings: ApprovalSettings,
    registry: RoleRegistry,
    principals: PrincipalStore | None,
    engine: ImageEngine,
    *,
    audit: AuditSink,
    counters: CounterStorage,
) -> ApprovalService | None:
    """The service on the server's state database, grants bound to `engine`'s model; None without
    a database, unless `approvals.required` (ConfigError: nothing could ever be approved)."""
    if principals is None:
        if settings.required:
            raise ConfigError(["approvals.required needs the state database (state_dir or database.url)"])
        return None
    return ApprovalService(
        settings,
        ApprovalStore(principals.engine),
        registry,
        audit=audit,
        counters=counters,
        served=lambda: (engine.info.id, engine.info.manifest),
        version=principals.auth_version,
    )
