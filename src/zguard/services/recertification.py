"""Access re-certification: each quarter, every active grant confirmed by an approver or revoked.

`zguard approvals recertify --quarter 2026Q4` opens a campaign (zguard.cli.recertification).
Decisions written here:

- A campaign lists every grant active when it opens, with the approvers of its request (those
  asked to re-certify it). One campaign per quarter (`campaign_exists`); opening, confirming and
  closing need `approvals:decide`, as deciding on a request does.
- Anyone holding `approvals:decide` may confirm or revoke a listed grant, never its own principal
  (`own_grant_recertification`; names compared as for four eyes, `rbac.may_decide_approval`, and
  the same principal id besides): the original approvers are asked, but one of them may have
  left, and the decision is recorded with its decider either way. Each grant is decided once
  (`already_decided`); a closed campaign takes no decision (`campaign_closed`).
- The close revokes every grant nobody decided, reason "not re-certified" (`approval.revoked`,
  which ends its use at once: the grant cache follows `auth_state.version`). It happens on
  `--close ID`, or on the first read after the deadline (any command that reads the campaign),
  so a missed deadline never leaves a grant running on its old approval. A grant that expired,
  ran out or was revoked outside the campaign is recorded as such, not revoked twice.
- `run_due` acts without anybody reading (serve's thread every
  `approvals.recertification_check_interval_s`, zguard.serve.recertification; or `zguard approvals
  recertify --due` from cron): it closes every open campaign past its deadline, closer "zguard
  (deadline passed)" as on a read, and finishes interrupted closes. With
  `recertification_schedule: quarterly` it then opens the current quarter's campaign when none
  exists, opener "zguard (schedule)" (`detail.trigger`: "schedule"; opens on demand say
  "manual"), deadline `recertification_days` after the opening, capped at the quarter's end: a
  schedule turned on (or a server down) past the quarter's first day still opens that quarter,
  with what is left of it. Safe with several replicas and cron at once, without a lease: the
  quarter is unique in the store (the loser of a race opens nothing and records nothing), the
  close is one guarded UPDATE, and each revocation a guarded one (`close_grant`), so nothing is
  opened or revoked twice.
- Every step is one audit event: `approval.campaign_opened`, `approval.confirmed`,
  `approval.revoked` (with `campaign`), `approval.campaign_closed`, `approval.campaign_exported`;
  every refusal one `approval.refused` with its code and `action`.
- The evidence (`--export csv|json`) lists every grant, its decision, decider and time. It is
  signed with the audit checkpoint key (Ed25519, zguard.security.keys): the signature is the 64
  raw bytes over the exact file, written beside it as FILE.sig, so `zguard approvals
  verify-export FILE` or `openssl pkeyutl -verify -pubin -inkey audit.pub -rawin -in FILE
  -sigfile FILE.sig` checks it with the key's public half (`zguard audit public-key`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.audit.formats import csv_cell
from zguard.errors import (
    AlreadyDecided,
    ApprovalNotFound,
    CampaignClosed,
    CampaignExists,
    CommentRequired,
    GrantNotActive,
    InvalidValue,
    OwnGrantRecertification,
    PermissionDenied,
    ZguardError,
)
from zguard.security.rbac import Permission, Principal, RoleRegistry, authorize, may_decide_approval
from zguard.services.approvals import Caller, caller_event, refusal_event
from zguard.store.approvals import ApprovalStore, GrantRecord
from zguard.store.grant_groups import is_member
from zguard.store.models import APPROVAL_TEXT_MAX
from zguard.store.recertification import CampaignRecord, ItemRecord, RecertificationStore

NOT_RECERTIFIED = "not re-certified"
DEADLINE_CLOSER = "zguard (deadline passed)"
SCHEDULE_OPENER = "zguard (schedule)"
Schedule = Literal["off", "quarterly"]
QUARTER = re.compile(r"^(\d{4})Q([1-4])$")
EXPORT_FIELDS = (
    "campaign",
    "quarter",
    "deadline",
    "campaign_status",
    "grant",
    "principal",
    "model_digest",
    "asked",
    "decision",
    "decider",
    "decided_at",
    "comment",
    "grant_status",
)
Format = Literal["csv", "json"]


def quarter_end(quarter: str) -> datetime:
    """The first instant after `quarter` ("2026Q4" → 2027-01-01 00:00 UTC); InvalidValue otherwise."""
    match = QUARTER.match(quarter)
    if match is None:
        raise InvalidValue(f"quarter {quarter[:20]!r} is not YEARQn, e.g. 2026Q4", param="--quarter")
    year, q = int(match[1]), int(match[2])
    return datetime(year + (q == 4), 1 if q == 4 else 3 * q + 1, 1, tzinfo=UTC)


def quarter_of(moment: datetime) -> str:
    """The quarter `moment` falls in (UTC), as campaigns name it: 2026-12-04 → "2026Q4"."""
    utc = moment.astimezone(UTC)
    return f"{utc.year}Q{(utc.month - 1) // 3 + 1}"


def scheduled_deadline(opened_at: datetime, days: int) -> datetime:
    """A scheduled campaign's deadline: `days` after its opening, never past its quarter's end."""
    return min(opened_at + timedelta(days=days), quarter_end(quarter_of(opened_at)))


@dataclass(frozen=True, slots=True)
class DueReport:
    """What one `run_due` did: the campaigns it closed (as they are now) and the one it opened."""

    closed: tuple[CampaignRecord, ...] = ()
    opened: CampaignRecord | None = None


def deadline_of(day: date) -> datetime:
    """A deadline given as a day covers all of it (UTC): the campaign closes at the next midnight."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


class RecertificationService:
    """Campaigns: open, confirm, revoke, close (on demand or at the deadline), export; all audited."""

    def __init__(
        self,
        store: RecertificationStore,
        grants: ApprovalStore,
        registry: RoleRegistry,
        *,
        audit: AuditSink,
        schedule: Schedule = "off",
        schedule_days: int = 21,
    ) -> None:
        self.store = store
        self._grants = grants
        self._registry = registry
        self._audit = audit
        self.schedule = schedule
        self._schedule_days = schedule_days

    # --- campaigns -------------------------------------------------------------------------

    def open(self, caller: Caller, quarter: str, deadline: datetime | None = None) -> CampaignRecord:
        where: dict[str, DetailValue] = {"quarter": quarter[:20]}
        try:
            self._require(caller)
            end = quarter_end(quarter)
            deadline = deadline or end
            if deadline <= self.store.now():
                raise InvalidValue(f"the deadline {deadline:%Y-%m-%d %H:%M} UTC has passed", param="--deadline")
            campaign = self.store.open_campaign(quarter, opened_by=caller.name, deadline=deadline)
        except ZguardError as refused:
            self._refused(caller, "recertify", refused, where)
            raise
        self._emit("approval.campaign_opened", caller, _opened_detail(campaign, "manual"))
        return campaign

    def run_due(self, detail: Mapping[str, DetailValue] | None = None) -> DueReport:
        """Close every open campaign past its deadline (revoking what nobody confirmed), finish
        interrupted closes, and open the scheduled campaign when due; what this call did.
        Idempotent: run it as often, and from as many replicas, as you like. `detail` goes into
        the close and open events (a command's OS account, as its other events have it)."""
        system = None if detail is None else Caller(DEADLINE_CLOSER, frozenset(), detail=detail)
        closed = []
        now = self.store.now()
        for campaign_id in self.store.due_ids(now):
            campaign = self.store.get(campaign_id)
            if campaign.status == "open":
                if campaign.deadline <= now and self._close(campaign, system, by_deadline=True):
                    closed.append(self.store.get(campaign_id))
            elif any(i.decision is None for i in campaign.items):  # a close interrupted: finish it
                self._settle(campaign, campaign.closed_by or DEADLINE_CLOSER)
        return DueReport(closed=tuple(closed), opened=self._open_scheduled(detail or {}))

    def _open_scheduled(self, detail: Mapping[str, DetailValue]) -> CampaignRecord | None:
        now = self.store.now()
        quarter = quarter_of(now)
        if self.schedule != "quarterly" or self.store.has_quarter(quarter):
            return None
        try:
            campaign = self.store.open_campaign(
                quarter, opened_by=SCHEDULE_OPENER, deadline=scheduled_deadline(now, self._schedule_days)
            )
        except CampaignExists:  # another replica (or an operator) opened it a moment ago
            return None
        self._audit.emit(
            AuditEvent(
                type="approval.campaign_opened",
                outcome="done",
                principal=SCHEDULE_OPENER,
                detail={**detail, **_opened_detail(campaign, "schedule")},
            )
        )
        return campaign

    def get(self, campaign_id: int, caller: Caller | None = None) -> CampaignRecord:
        """The campaign, closed first when its deadline has passed (the unconfirmed grants revoked)."""
        campaign = self.store.get(campaign_id)
        if campaign.status == "open" and campaign.deadline <= self.store.now():
            self._close(campaign, caller, by_deadline=True)
            campaign = self.store.get(campaign_id)
        elif campaign.status == "closed" and any(i.decision is None for i in campaign.items):
            self._settle(campaign, campaign.closed_by or DEADLINE_CLOSER)
            campaign = self.store.get(campaign_id)
        return campaign

    def list_campaigns(self) -> list[CampaignRecord]:
        return [self.get(c.id) for c in self.store.list_campaigns()]

    def close(self, caller: Caller, campaign_id: int) -> CampaignRecord:
        try:
            self._require(caller)
            campaign = self.get(campaign_id, caller)
            if campaign.status != "open":
                raise CampaignClosed(f"campaign {campaign_id} ({campaign.quarter}) is closed already")
            if not self._close(campaign, caller, by_deadline=False):
                raise CampaignClosed(f"campaign {campaign_id} ({campaign.quarter}) is closed already")
        except ZguardError as refused:
            self._refused(caller, "close", refused, {"campaign": campaign_id})
            raise
        return self.store.get(campaign_id)

    # --- decisions -------------------------------------------------------------------------

    def confirm(self, caller: Caller, campaign_id: int, grant_id: int, comment: str | None = None) -> CampaignRecord:
        where: dict[str, DetailValue] = {"campaign": campaign_id, "grant": grant_id}
        try:
            comment = self._comment(comment)
            item, grant = self._decidable(caller, campaign_id, grant_id)
            if grant.status != "active" or grant.expires_at <= self.store.now():
                raise GrantNotActive(f"grant {grant_id} is {grant.status}, not active: nothing to confirm")
            self._write(campaign_id, grant_id, "confirmed", caller, comment)
        except ZguardError as refused:
            self._refused(caller, "confirm", refused, where)
            raise
        self._emit(
            "approval.confirmed",
            caller,
            {
                **where,
                "principal": item.principal,
                "model_digest": grant.model_digest,
                "asked": ",".join(item.approvers),
                "comment": comment,
            },
        )
        return self.store.get(campaign_id)

    def revoke(self, caller: Caller, campaign_id: int, grant_id: int, reason: str) -> GrantRecord:
        """`zguard approvals revoke GRANT --campaign ID`: the campaign's decision, then the revocation."""
        where: dict[str, DetailValue] = {"campaign": campaign_id, "grant": grant_id}
        try:
            if not reason.strip():
                raise CommentRequired("a revocation needs its reason (--reason)")
            reason = self._comment(reason) or reason
            _item, grant = self._decidable(caller, campaign_id, grant_id)
            if grant.status != "active" or not self._grants.close_grant(
                grant_id, "revoked", by=caller.name, reason=reason
            ):
                raise GrantNotActive(f"grant {grant_id} is {grant.status}, not active")
            self.store.decide(campaign_id, grant_id, decision="revoked", decider=caller.name, comment=reason)
        except ZguardError as refused:
            self._refused(caller, "revoke", refused, where)
            raise
        revoked = self._grants.get_grant(grant_id)
        self._emit("approval.revoked", caller, {**where, **_grant_detail(revoked), "reason": reason})
        return revoked

    # --- evidence --------------------------------------------------------------------------

    def export(self, caller: Caller | None, campaign_id: int, fmt: Format) -> bytes:
        """The evidence document (UTF-8): every grant of the campaign, its decision, decider and time."""
        campaign = self.get(campaign_id, caller)
        rows = [self._row(campaign, item) for item in campaign.items]
        if fmt == "json":
            document = {
                "campaign": campaign.id,
                "quarter": campaign.quarter,
                "opened_by": campaign.opened_by,
                "opened_at": campaign.opened_at.isoformat(),
                "deadline": campaign.deadline.isoformat(),
                "status": campaign.status,
                "closed_by": campaign.closed_by,
                "closed_at": None if campaign.closed_at is None else campaign.closed_at.isoformat(),
                "exported_at": self.store.now().isoformat(),
                "grants": rows,
            }
            data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
        else:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: csv_cell(v) for k, v in row.items()})  # the audit export's defusing
            data = out.getvalue().encode()
        self._audit.emit(
            AuditEvent(
                type="approval.campaign_exported",
                outcome="done",
                principal=None if caller is None else caller.name,
                detail={
                    **({} if caller is None else caller.detail),
                    "campaign": campaign.id,
                    "format": fmt,
                    "grants": len(rows),
                },
            )
        )
        return data

    def _row(self, campaign: CampaignRecord, item: ItemRecord) -> dict[str, str | int | None]:
        grant = self._grants.get_grant(item.grant_id)
        decision, decider, at, comment = item.decision, item.decider, item.decided_at, item.comment
        if decision is None and grant.status == "revoked":  # revoked outside the campaign
            decision, decider, comment = "revoked", grant.revoked_by, grant.reason
        return {
            "campaign": campaign.id,
            "quarter": campaign.quarter,
            "deadline": campaign.deadline.isoformat(),
            "campaign_status": campaign.status,
            "grant": item.grant_id,
            "principal": item.principal,
            "model_digest": grant.model_digest,
            "asked": ",".join(item.approvers),
            "decision": decision or "pending",
            "decider": decider,
            "decided_at": None if at is None else at.isoformat(),
            "comment": comment,
            "grant_status": grant.status,
        }

    # --- internals -------------------------------------------------------------------------

    def _decidable(self, caller: Caller, campaign_id: int, grant_id: int) -> tuple[ItemRecord, GrantRecord]:
        self._require(caller)
        campaign = self.get(campaign_id, caller)
        if campaign.status != "open":
            raise CampaignClosed(
                f"campaign {campaign_id} ({campaign.quarter}) closed at "
                f"{(campaign.closed_at or campaign.deadline):%Y-%m-%d %H:%M} UTC"
            )
        item = campaign.item(grant_id)
        if item is None:
            raise ApprovalNotFound(f"grant {grant_id} is not in campaign {campaign_id}")
        grant = self._grants.get_grant(grant_id)
        allowed = may_decide_approval(Principal(caller.name, caller.roles), item.principal, self._registry)
        if not allowed or (caller.principal_id is not None and caller.principal_id == grant.principal_id):
            raise OwnGrantRecertification(f"grant {grant_id} is {caller.name}'s own; another approver decides")
        if grant.group_scim_id is not None and is_member(self._grants.engine, caller.name, grant.group_scim_id):
            # A group's grant is every member's own (zguard.services.grant_groups).
            raise OwnGrantRecertification(
                f"grant {grant_id} is held by {caller.name}'s group; another approver decides"
            )
        if item.decision is not None:
            raise AlreadyDecided(f"grant {grant_id} was {item.decision} by {item.decider} in campaign {campaign_id}")
        return item, grant

    def _write(self, campaign_id: int, grant_id: int, decision: str, caller: Caller, comment: str | None) -> None:
        if not self.store.decide(campaign_id, grant_id, decision=decision, decider=caller.name, comment=comment):
            campaign = self.store.get(campaign_id)
            if campaign.status != "open":
                raise CampaignClosed(f"campaign {campaign_id} closed meanwhile")
            raise AlreadyDecided(f"grant {grant_id} was decided meanwhile in campaign {campaign_id}")

    def _close(self, campaign: CampaignRecord, caller: Caller | None, *, by_deadline: bool) -> bool:
        closer = DEADLINE_CLOSER if by_deadline or caller is None else caller.name
        if not self.store.close(campaign.id, closed_by=closer):
            return False  # another process closed it
        counts = self._settle(campaign, closer)
        self._audit.emit(
            AuditEvent(
                type="approval.campaign_closed",
                outcome="done",
                principal=closer,
                roles=() if caller is None else tuple(sorted(caller.roles)),
                detail={
                    **({} if caller is None else caller.detail),
                    "campaign": campaign.id,
                    "quarter": campaign.quarter,
                    "deadline": campaign.deadline.isoformat(),
                    "by_deadline": by_deadline,
                    **counts,
                },
            )
        )
        return True

    def _settle(self, campaign: CampaignRecord, closer: str) -> dict[str, int]:
        """Revoke the grants nobody decided and record each item's outcome; the counts by outcome.

        Also run on a read of a closed campaign with undecided items (a close interrupted after
        marking the campaign), so no grant outlives its campaign on its old approval."""
        counts = {"confirmed": 0, "revoked": 0, "lapsed": 0, "ended": 0}
        for item in campaign.items:
            if item.decision is not None:
                counts[item.decision] = counts.get(item.decision, 0) + 1
                continue
            grant = self._grants.get_grant(item.grant_id)
            if grant.status == "active" and self._grants.close_grant(
                grant.id, "revoked", by=closer, reason=NOT_RECERTIFIED
            ):
                self.store.settle(campaign.id, grant.id, decision="lapsed", decider=closer, comment=NOT_RECERTIFIED)
                counts["lapsed"] += 1
                self._audit.emit(
                    AuditEvent(
                        type="approval.revoked",
                        outcome="done",
                        principal=closer,
                        detail={
                            "campaign": campaign.id,
                            **_grant_detail(self._grants.get_grant(grant.id)),
                            "reason": NOT_RECERTIFIED,
                        },
                    )
                )
                continue
            current = self._grants.get_grant(grant.id)  # as it is now, another process may have closed it
            if current.status == "revoked":
                lapsed = current.reason == NOT_RECERTIFIED
                self.store.settle(
                    campaign.id, grant.id, decision="lapsed" if lapsed else "revoked",
                    decider=current.revoked_by or closer, comment=current.reason or "revoked",
                )  # fmt: skip
                counts["lapsed" if lapsed else "revoked"] += 1
            else:
                self.store.settle(campaign.id, grant.id, decision="ended", decider=closer, comment=current.status)
                counts["ended"] += 1
        return counts

    def _comment(self, comment: str | None) -> str | None:
        if comment is None or not comment.strip():
            return None
        text = comment.strip()
        if len(text) > APPROVAL_TEXT_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise InvalidValue(f"comment must be 1 to {APPROVAL_TEXT_MAX} characters without control characters")
        return text

    def _require(self, caller: Caller) -> None:
        if not authorize(caller.roles, Permission.APPROVALS_DECIDE, self._registry):
            raise PermissionDenied(
                f"re-certification needs the permission {Permission.APPROVALS_DECIDE}, which none of your roles grants",
                permission=str(Permission.APPROVALS_DECIDE),
            )

    def _refused(self, caller: Caller, action: str, refused: ZguardError, where: Mapping[str, DetailValue]) -> None:
        self._audit.emit(refusal_event(caller, action, refused, where))

    def _emit(self, kind: str, caller: Caller, detail: Mapping[str, DetailValue]) -> None:
        self._audit.emit(caller_event(kind, caller, detail))


def _opened_detail(campaign: CampaignRecord, trigger: str) -> dict[str, DetailValue]:
    return {
        "campaign": campaign.id,
        "quarter": campaign.quarter,
        "deadline": campaign.deadline.isoformat(),
        "grants": ",".join(str(i.grant_id) for i in campaign.items),
        "asked": ",".join(sorted({a for i in campaign.items for a in i.approvers})),
        "trigger": trigger,
    }


def _grant_detail(grant: GrantRecord) -> dict[str, DetailValue]:
    return {
        "grant": grant.id,
        "request": grant.request_id,
        "principal": grant.principal,
        "model_digest": grant.model_digest,
        "expires_at": grant.expires_at.isoformat(),
    }


# --- signatures ---------------------------------------------------------------------------


def sign_export(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The 64-byte Ed25519 signature over the exact file (PureEdDSA: `openssl pkeyutl -rawin`)."""
    return key.sign(data)


def verify_export(data: bytes, signature: bytes, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
