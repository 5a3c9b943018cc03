"""The console's pages for model-use approvals: ask, the approvers' inbox, grant history.

    GET  /approvals                              ask (form) and my requests and grants   images:generate
    POST /approvals                              ask                                     images:generate
    GET  /approvals/inbox?status=&model=&requester=   requests, pending first              approvals:decide
    POST /approvals/inbox/{request_id}/approve   approve (comment, max_size, max_steps optional) approvals:decide
    POST /approvals/inbox/{request_id}/reject    reject (comment required)               approvals:decide
    GET  /approvals/grants?status=               every grant, its usage                  approvals:decide
    POST /approvals/grants/{grant_id}/revoke     revoke, with its reason                 approvals:decide

Decisions written here:
- A page is the JSON API's decision rendered (zguard.app.console.approvals): the same
  `ApprovalService` methods with the same `Caller`, so the same checks (four eyes, quorum, caps,
  expiry) and the same audit events (`approval.*`, `approval.refused` with its code).
- A refusal (self-approval, already decided, expired, a missing comment, over a cap) renders the
  page again with its HTTP status, a translated summary and the service's own message, in a
  `role="alert"` box: never a 500, never a bare error page. The typed form values are kept.
- The form's caps (validity days, quotas) are the `approvals` settings' caps, shown as the
  inputs' bounds; the service checks them again (a browser's bounds are advice).
- "Remaining" on a grant is its total quota less `used_total`, the count written back after each
  generation; what is left today is read from the rate-limit storage, where generations are
  charged (`ApprovalService.used_today`), and left out when that storage cannot be read.
- Without a state database (`services.approvals` is None) the pages answer 503 as a page.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.administration import call
from zguard.app.console.approvals import caller_of
from zguard.app.console.common import N_, RowId, form, may
from zguard.app.console.web import negotiate, render, see_other, translate
from zguard.app.context import Services
from zguard.errors import InvalidValue, ServiceUnavailable, ZguardError
from zguard.security.rbac import Permission
from zguard.services.approvals import ApprovalService, Decision, RequestForm
from zguard.services.auth import Identity
from zguard.services.grant_groups import GROUP_NAME_MAX
from zguard.services.grant_scope import Scope
from zguard.services.sessions import NoSessions, SessionService
from zguard.store.models import APPROVAL_FIELD_MAX, APPROVAL_TEXT_MAX, MODEL_ID_MAX

ASK = [requires(Permission.IMAGES_GENERATE)]
DECIDE = [requires(Permission.APPROVALS_DECIDE)]
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
REQUEST_STATUSES = ("pending", "approved", "rejected", "expired")
GRANT_STATUSES = ("active", "expired", "revoked", "exhausted")
FILTER_MAX = 128
FORM_FIELDS = (
    "purpose",
    "business_unit",
    "ticket",
    "group",
    "data_classification",
    "quota_per_day",
    "quota_total",
    "validity_days",
)
LABELS = {
    "pending": N_("Pending"),
    "approved": N_("Approved"),
    "rejected": N_("Rejected"),
    "expired": N_("Expired"),
    "active": N_("Active"),
    "revoked": N_("Revoked"),
    "exhausted": N_("Exhausted"),
    "approve": N_("approved"),
    "reject": N_("rejected"),
    "public": N_("Public"),
    "internal": N_("Internal"),
    "confidential": N_("Confidential"),
    "restricted": N_("Restricted"),
}

SUMMARIES = {
    "self_approval": N_("You asked for this approval: another approver decides."),
    "already_decided": N_("You have decided on this request already."),
    "request_decided": N_("This request is decided already."),
    "request_expired": N_("This request expired before it was decided."),
    "comment_required": N_("Say why in the comment."),
    "grant_not_active": N_("This grant is no longer active."),
    "approval_not_found": N_("No such request or grant."),
    "unknown_model": N_("This is not the served model."),
    "validity_over_maximum": N_("The validity is longer than allowed."),
    "quota_over_maximum": N_("The quota is larger than allowed."),
    "invalid_value": N_("This value cannot be used."),
    "group_member_approval": N_("You are a member of the group that asked: an approver outside it decides."),
    "not_group_member": N_("Only a member of the group asks for it."),
    "unknown_group": N_("There is no such group."),
}
REFUSED = N_("The approval service refused this.")


class Refusal:
    """A refused action, as the page shows it: a translated summary and the service's message."""

    def __init__(self, request: Request, error: ZguardError) -> None:
        self.code = error.code
        self.status = error.status
        self.summary = translate(negotiate(request), SUMMARIES.get(error.code, REFUSED))
        self.detail = error.message


def _number(value: str, name: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 12:
        raise InvalidValue(f"{name} must be a whole number", param=name)
    return int(text)


def _limit(value: str, name: str) -> int | None:
    """An optional scope limit of the decide form: blank is none (zguard.services.grant_scope)."""
    return _number(value, name) if value.strip() else None


def _request_form(fields: dict[str, str]) -> RequestForm:
    ticket = fields.get("ticket", "")[:APPROVAL_FIELD_MAX].strip()
    group = fields.get("group", "")[:GROUP_NAME_MAX].strip()
    return RequestForm(
        model=fields.get("model", "")[:MODEL_ID_MAX],
        purpose=fields.get("purpose", "")[: APPROVAL_TEXT_MAX + 1],
        business_unit=fields.get("business_unit", "")[: APPROVAL_FIELD_MAX + 1],
        data_classification=fields.get("data_classification", "")[: APPROVAL_FIELD_MAX + 1],
        ticket=ticket or None,
        group=group or None,
        quota_per_day=_number(fields.get("quota_per_day", ""), "quota_per_day"),
        quota_total=_number(fields.get("quota_total", ""), "quota_total"),
        validity_days=_number(fields.get("validity_days", ""), "validity_days"),
    )


class _Pages:
    """The pages' renderers and the actions they share."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.live: SessionService | NoSessions = services.sessions or NoSessions()

    def page(self, request: Request, template: str, identity: Identity, status: int = 200, **context: Any) -> Response:
        csrf = self.live.csrf_token(identity) if identity.session_hash else ""
        allowed = {p.value: may(self.services, identity, p) for p in Permission}
        return render(
            request, template, status=status, identity=identity, csrf=csrf, may=allowed, labels=LABELS, **context
        )

    def service(self) -> ApprovalService:
        if self.services.approvals is None:
            raise ServiceUnavailable("approvals need the state database", retry_after=60)
        return self.services.approvals

    def unavailable(self, request: Request, identity: Identity, exc: ZguardError) -> Response:
        message = translate(negotiate(request), N_("Approvals need the state database."))
        return self.page(request, "error.html", identity, status=exc.status, code=exc.code, message=message)

    async def mine(
        self,
        request: Request,
        identity: Identity,
        *,
        status: int = 200,
        failed: Refusal | None = None,
        values: dict[str, str] | None = None,
    ) -> Response:
        approvals = self.service()
        requests = await call(approvals.list_requests, requester=identity.name)
        grants = await call(approvals.list_grants, principal=identity.name)
        today = {g.id: await approvals.used_today(g.id) for g in grants if g.status == "active"}
        info = self.services.engine.info
        defaults = {"model": info.id, "data_classification": "internal", "validity_days": "30"}
        return self.page(
            request,
            "approvals.html",
            identity,
            status=status,
            failed=failed,
            requests=requests,
            grants=grants,
            today=today,
            caps=approvals.settings,
            model_id=info.id,
            digest=info.manifest,
            classifications=CLASSIFICATIONS,
            values={**defaults, **(values or {})},
        )

    async def inbox(
        self, request: Request, identity: Identity, *, status: int = 200, failed: Refusal | None = None
    ) -> Response:
        wanted = request.query_params.get("status", "pending")
        status_filter = wanted if wanted in REQUEST_STATUSES else None
        model = request.query_params.get("model", "")[:FILTER_MAX].strip()
        requester = request.query_params.get("requester", "")[:FILTER_MAX].strip()
        records = await call(self.service().list_requests, status=status_filter, requester=requester or None)
        if model:
            records = [r for r in records if model in (r.model_id, r.model_digest)]
        filters = {"status": status_filter or "", "model": model, "requester": requester}
        return self.page(
            request,
            "approvals_inbox.html",
            identity,
            status=status,
            failed=failed,
            requests=records,
            statuses=REQUEST_STATUSES,
            filters=filters,
        )

    async def grants(
        self, request: Request, identity: Identity, *, status: int = 200, failed: Refusal | None = None
    ) -> Response:
        wanted = request.query_params.get("status", "")
        status_filter = wanted if wanted in GRANT_STATUSES else None
        records = await call(self.service().list_grants, status=status_filter)
        return self.page(
            request,
            "approvals_grants.html",
            identity,
            status=status,
            failed=failed,
            grants=records,
            statuses=GRANT_STATUSES,
            filters={"status": status_filter or ""},
        )

    async def ask(self, request: Request, identity: Identity) -> Response:
        fields = await form(request)
        kept = {k: v[:APPROVAL_TEXT_MAX] for k, v in fields.items() if k in FORM_FIELDS}
        try:
            approvals = self.service()
            await call(approvals.request, caller_of(identity, request), _request_form(fields))
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:
            return await self.mine(request, identity, status=exc.status, failed=Refusal(request, exc), values=kept)
        return see_other("/approvals")

    async def decide(self, request: Request, identity: Identity, request_id: int, decision: Decision) -> Response:
        fields = await form(request)
        comment = fields.get("comment", "")[: APPROVAL_TEXT_MAX + 1]
        try:
            approvals = self.service()
            scope = Scope(*(_limit(fields.get(name, ""), name) for name in ("max_size", "max_steps")))
            await call(approvals.decide, caller_of(identity, request), request_id, decision, comment or None, scope)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:
            return await self.inbox(request, identity, status=exc.status, failed=Refusal(request, exc))
        return see_other("/approvals/inbox")

    async def revoke(self, request: Request, identity: Identity, grant_id: int) -> Response:
        reason = (await form(request)).get("reason", "")[: APPROVAL_TEXT_MAX + 1]
        try:
            approvals = self.service()
            await call(approvals.revoke, caller_of(identity, request), grant_id, reason)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:
            return await self.grants(request, identity, status=exc.status, failed=Refusal(request, exc))
        return see_other("/approvals/grants")

    async def shown(self, request: Request, identity: Identity, which: str) -> Response:
        try:
            if which == "mine":
                return await self.mine(request, identity)
            if which == "inbox":
                return await self.inbox(request, identity)
            return await self.grants(request, identity)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)


def add_approval_pages(app: FastAPI, services: Services) -> None:
    """Register the pages above on the console app."""
    pages = _Pages(services)

    @app.get("/approvals", dependencies=ASK, include_in_schema=False)
    async def approvals_mine(request: Request, identity: CurrentIdentity) -> Response:
        return await pages.shown(request, identity, "mine")

    @app.post("/approvals", dependencies=ASK, include_in_schema=False)
    async def approvals_ask(request: Request, identity: CurrentIdentity) -> Response:
        return await pages.ask(request, identity)

    @app.get("/approvals/inbox", dependencies=DECIDE, include_in_schema=False)
    async def approvals_inbox(request: Request, identity: CurrentIdentity) -> Response:
        return await pages.shown(request, identity, "inbox")

    @app.post("/approvals/inbox/{request_id}/approve", dependencies=DECIDE, include_in_schema=False)
    async def approvals_approve(request: Request, identity: CurrentIdentity, request_id: RowId) -> Response:
        return await pages.decide(request, identity, request_id, "approve")

    @app.post("/approvals/inbox/{request_id}/reject", dependencies=DECIDE, include_in_schema=False)
    async def approvals_reject(request: Request, identity: CurrentIdentity, request_id: RowId) -> Response:
        return await pages.decide(request, identity, request_id, "reject")

    @app.get("/approvals/grants", dependencies=DECIDE, include_in_schema=False)
    async def approvals_grants(request: Request, identity: CurrentIdentity) -> Response:
        return await pages.shown(request, identity, "grants")

    @app.post("/approvals/grants/{grant_id}/revoke", dependencies=DECIDE, include_in_schema=False)
    async def approvals_revoke(request: Request, identity: CurrentIdentity, grant_id: RowId) -> Response:
        return await pages.revoke(request, identity, grant_id)
