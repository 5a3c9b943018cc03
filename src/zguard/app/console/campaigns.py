"""The console's re-certification campaigns: pages and their JSON API twin (issue 20, item 3).

    GET  /approvals/campaigns                                   campaigns; open one (form)
    POST /approvals/campaigns                                   open a quarter's campaign
    GET  /approvals/campaigns/{id}                              its grants, decisions; confirm, revoke, close
    POST /approvals/campaigns/{id}/grants/{grant}/confirm       confirm (comment optional)
    POST /approvals/campaigns/{id}/grants/{grant}/revoke        revoke (reason required)
    POST /approvals/campaigns/{id}/close                        close: every undecided grant revoked
    GET  /approvals/campaigns/{id}/export?format=csv|json       the signed evidence: a zip of FILE and FILE.sig
    and the same under /console/api/approvals/campaigns (JSON; the export as text + base64 signature)

Decisions written here:
- Every route needs `approvals:decide`, the permission `RecertificationService` asks of whoever
  opens, decides or closes (the CLI's `approvals recertify|confirm|campaign`); the service makes
  every other decision (never one's own grant, once per grant, none on a closed campaign, the
  deadline) and writes the audit events. Nothing here adds a rule.
- Reading a campaign past its deadline closes it (the service's `get`): a page view is one of
  the reads that revoke what nobody confirmed, as `zguard approvals campaign ID` is.
- The page's export is one download holding the document and its signature (`campaign-1.csv`
  and `campaign-1.csv.sig` in a zip): each export is made anew (the JSON one carries its
  `exported_at`), so a separate signature download could belong to another document. Check it
  with `zguard approvals verify-export` or openssl, as docs/governance.md shows.
- A refusal renders the page again with its status, a translated summary, the service's
  message and the code (zguard.app.console.approval_pages' way); never a 500.
"""

from __future__ import annotations

import base64
import io
import zipfile
from datetime import date
from typing import Any, Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.administration import call
from zguard.app.console.approval_pages import SUMMARIES as APPROVAL_SUMMARIES
from zguard.app.console.approvals import caller_of
from zguard.app.console.common import N_, RowId, form, may
from zguard.app.console.web import negotiate, render, see_other, translate
from zguard.app.context import Services
from zguard.errors import InvalidValue, ServiceUnavailable, ZguardError
from zguard.security.rbac import Permission
from zguard.services.auth import Identity
from zguard.services.governance import Governance, SignedExport
from zguard.services.recertification import Format, deadline_of
from zguard.services.sessions import NoSessions, SessionService
from zguard.store.models import APPROVAL_TEXT_MAX
from zguard.store.recertification import CampaignRecord

PAGES = "/approvals/campaigns"
API = "/console/api/approvals/campaigns"
DECIDE = [requires(Permission.APPROVALS_DECIDE)]
QUARTER_MAX = 20
DECISIONS = ("confirmed", "revoked", "lapsed", "ended")
LABELS = {
    "open": N_("Open"),
    "closed": N_("Closed"),
    "confirmed": N_("Confirmed"),
    "revoked": N_("Revoked"),
    "lapsed": N_("Lapsed (not re-certified)"),
    "ended": N_("Ended"),
    "pending": N_("Pending"),
    "active": N_("Active"),
    "expired": N_("Expired"),
    "exhausted": N_("Exhausted"),
}
SUMMARIES = {
    **APPROVAL_SUMMARIES,
    "campaign_exists": N_("There is a campaign for this quarter already."),
    "campaign_closed": N_("This campaign is closed: it takes no more decisions."),
    "own_grant_recertification": N_("This grant is your own: another approver re-certifies it."),
    "permission_denied": N_("Your roles do not allow this."),
}
REFUSED = N_("The re-certification service refused this.")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewCampaign(_Body):
    quarter: str = Field(min_length=6, max_length=QUARTER_MAX, description="YEARQn, e.g. 2026Q4")
    deadline: str | None = Field(
        default=None,
        min_length=10,
        max_length=10,
        description="last day to decide, YYYY-MM-DD (UTC); default: the quarter's end",
    )


class Confirmation(_Body):
    comment: str | None = Field(default=None, max_length=APPROVAL_TEXT_MAX)


class Revocation(_Body):
    reason: str = Field(min_length=1, max_length=APPROVAL_TEXT_MAX)


def _deadline(text: str | None) -> date | None:
    if text is None or not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidValue(f"deadline {text[:10]!r} is not a date (YYYY-MM-DD)", param="deadline") from None


def campaign_json(campaign: CampaignRecord, *, items: bool = True) -> dict[str, Any]:
    counts = {d: sum(1 for i in campaign.items if i.decision == d) for d in DECISIONS}
    body: dict[str, Any] = {
        "id": campaign.id,
        "quarter": campaign.quarter,
        "status": campaign.status,
        "opened_by": campaign.opened_by,
        "opened_at": campaign.opened_at.isoformat(),
        "deadline": campaign.deadline.isoformat(),
        "closed_by": campaign.closed_by,
        "closed_at": None if campaign.closed_at is None else campaign.closed_at.isoformat(),
        "grants": len(campaign.items),
        "pending": sum(1 for i in campaign.items if i.decision is None),
        **counts,
    }
    if items:
        body["items"] = [
            {
                "grant": i.grant_id,
                "principal": i.principal,
                "asked": list(i.approvers),
                "decision": i.decision or "pending",
                "decider": i.decider,
                "decided_at": None if i.decided_at is None else i.decided_at.isoformat(),
                "comment": i.comment,
            }
            for i in campaign.items
        ]
    return body


def zipped(export: SignedExport) -> bytes:
    """The document and its signature as FILE and FILE.sig in one zip (stored, fixed times)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in ((export.filename, export.data), (f"{export.filename}.sig", export.signature)):
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


class Campaigns:
    """What the pages and the JSON API share: the service calls and the pages' renderers."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.live: SessionService | NoSessions = services.sessions or NoSessions()

    def governance(self) -> Governance:
        if self.services.governance is None:
            raise ServiceUnavailable("re-certification needs the state database", retry_after=60)
        return self.services.governance

    # --- actions, for both ------------------------------------------------------------------

    async def open(self, identity: Identity, request: Request, quarter: str, deadline: str | None) -> CampaignRecord:
        day = _deadline(deadline)
        campaigns = self.governance().campaigns
        return await call(
            campaigns.open,
            caller_of(identity, request),
            quarter[:QUARTER_MAX],
            None if day is None else deadline_of(day),
        )

    async def export(self, identity: Identity, request: Request, campaign_id: int, fmt: Format) -> SignedExport:
        governance = self.governance()
        data = await call(governance.campaigns.export, caller_of(identity, request), campaign_id, fmt)
        return await call(governance.signed, data, f"campaign-{campaign_id}.{fmt}")

    # --- pages ------------------------------------------------------------------------------

    def page(self, request: Request, template: str, identity: Identity, status: int = 200, **context: Any) -> Response:
        csrf = self.live.csrf_token(identity) if identity.session_hash else ""
        allowed = {p.value: may(self.services, identity, p) for p in Permission}
        return render(
            request, template, status=status, identity=identity, csrf=csrf, may=allowed, labels=LABELS, **context
        )

    def refusal(self, request: Request, error: ZguardError) -> dict[str, Any]:
        summary = translate(negotiate(request), SUMMARIES.get(error.code, REFUSED))
        return {"code": error.code, "summary": summary, "detail": error.message}

    async def listing(
        self, request: Request, identity: Identity, *, status: int = 200, failed: dict[str, Any] | None = None,
        values: dict[str, str] | None = None,
    ) -> Response:  # fmt: skip
        campaigns = await call(self.governance().campaigns.list_campaigns)
        return self.page(
            request,
            "approvals_campaigns.html",
            identity,
            status=status,
            failed=failed,
            campaigns=[campaign_json(c, items=False) | {"record": c} for c in reversed(campaigns)],
            values=values or {},
        )

    async def detail(
        self, request: Request, identity: Identity, campaign_id: int, *, status: int = 200,
        failed: dict[str, Any] | None = None,
    ) -> Response:  # fmt: skip
        governance = self.governance()
        campaign = await call(governance.campaigns.get, campaign_id, caller_of(identity, request))
        grants = {i.grant_id: await call(governance.grants.get_grant, i.grant_id) for i in campaign.items}
        return self.page(
            request,
            "approvals_campaign.html",
            identity,
            status=status,
            failed=failed,
            campaign=campaign,
            summary=campaign_json(campaign, items=False),
            grants=grants,
        )

    async def shown(self, request: Request, identity: Identity, campaign_id: int | None = None) -> Response:
        try:
            if campaign_id is None:
                return await self.listing(request, identity)
            return await self.detail(request, identity, campaign_id)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:  # approval_not_found: no such campaign
            return self.page(
                request,
                "error.html",
                identity,
                status=exc.status,
                code=exc.code,
                message=self.refusal(request, exc)["summary"],
            )

    def unavailable(self, request: Request, identity: Identity, exc: ZguardError) -> Response:
        message = translate(negotiate(request), N_("Approvals need the state database."))
        return self.page(request, "error.html", identity, status=exc.status, code=exc.code, message=message)

    async def acted(
        self, request: Request, identity: Identity, campaign_id: int | None, action: Any, back: str
    ) -> Response:
        """Run `action` (a coroutine function); 303 to `back`, or the page again with the refusal."""
        fields = await form(request)
        try:
            await action(fields)
        except ServiceUnavailable as exc:
            return self.unavailable(request, identity, exc)
        except ZguardError as exc:
            failed = self.refusal(request, exc)
            try:
                if campaign_id is None:
                    kept = {k: fields.get(k, "")[:QUARTER_MAX] for k in ("quarter", "deadline")}
                    return await self.listing(request, identity, status=exc.status, failed=failed, values=kept)
                return await self.detail(request, identity, campaign_id, status=exc.status, failed=failed)
            except ZguardError as again:  # the campaign itself is missing
                return self.page(
                    request, "error.html", identity, status=exc.status, code=again.code, message=failed["summary"]
                )
        return see_other(back)


def add_campaign_routes(app: FastAPI, services: Services) -> None:
    """The pages and the JSON API above, on the console app."""
    it = Campaigns(services)

    # --- JSON API ---------------------------------------------------------------------------

    @app.get(API, dependencies=DECIDE, summary="Re-certification campaigns")
    async def api_campaigns() -> JSONResponse:
        campaigns = await call(it.governance().campaigns.list_campaigns)
        return JSONResponse({"data": [campaign_json(c, items=False) for c in campaigns]})

    @app.post(API, dependencies=DECIDE, status_code=201, summary="Open a quarter's re-certification campaign")
    async def api_open(request: Request, identity: CurrentIdentity, body: NewCampaign) -> JSONResponse:
        campaign = await it.open(identity, request, body.quarter, body.deadline)
        return JSONResponse(campaign_json(campaign), status_code=201)

    @app.get(f"{API}/{{campaign_id}}", dependencies=DECIDE, summary="A campaign: every grant and its decision")
    async def api_campaign(request: Request, identity: CurrentIdentity, campaign_id: RowId) -> JSONResponse:
        campaign = await call(it.governance().campaigns.get, campaign_id, caller_of(identity, request))
        return JSONResponse(campaign_json(campaign))

    @app.post(f"{API}/{{campaign_id}}/grants/{{grant_id}}/confirm", dependencies=DECIDE, summary="Re-certify a grant")
    async def api_confirm(
        request: Request, identity: CurrentIdentity, campaign_id: RowId, grant_id: RowId, body: Confirmation
    ) -> JSONResponse:
        campaigns = it.governance().campaigns
        campaign = await call(campaigns.confirm, caller_of(identity, request), campaign_id, grant_id, body.comment)
        return JSONResponse(campaign_json(campaign))

    @app.post(
        f"{API}/{{campaign_id}}/grants/{{grant_id}}/revoke", dependencies=DECIDE, summary="Revoke a grant in a campaign"
    )
    async def api_revoke(
        request: Request, identity: CurrentIdentity, campaign_id: RowId, grant_id: RowId, body: Revocation
    ) -> JSONResponse:
        campaigns = it.governance().campaigns
        await call(campaigns.revoke, caller_of(identity, request), campaign_id, grant_id, body.reason)
        return JSONResponse(campaign_json(await call(campaigns.get, campaign_id)))

    @app.post(
        f"{API}/{{campaign_id}}/close", dependencies=DECIDE, summary="Close a campaign (undecided grants revoked)"
    )
    async def api_close(request: Request, identity: CurrentIdentity, campaign_id: RowId) -> JSONResponse:
        closed = await call(it.governance().campaigns.close, caller_of(identity, request), campaign_id)
        return JSONResponse(campaign_json(closed))

    @app.get(f"{API}/{{campaign_id}}/export", dependencies=DECIDE, summary="A campaign's signed evidence")
    async def api_export(
        request: Request,
        identity: CurrentIdentity,
        campaign_id: RowId,
        format: Literal["csv", "json"] = Query(default="csv"),
    ) -> JSONResponse:
        export = await it.export(identity, request, campaign_id, format)
        return JSONResponse(
            {
                "filename": export.filename,
                "content": export.data.decode(),
                "signature": base64.b64encode(export.signature).decode(),
                "signature_algorithm": "Ed25519",
                "key_id": export.key_id,
            }
        )

    # --- pages ------------------------------------------------------------------------------

    @app.get(PAGES, dependencies=DECIDE, include_in_schema=False)
    async def campaigns_page(request: Request, identity: CurrentIdentity) -> Response:
        return await it.shown(request, identity)

    @app.post(PAGES, dependencies=DECIDE, include_in_schema=False)
    async def campaigns_open(request: Request, identity: CurrentIdentity) -> Response:
        opened: list[CampaignRecord] = []

        async def action(fields: dict[str, str]) -> None:
            opened.append(await it.open(identity, request, fields.get("quarter", ""), fields.get("deadline")))

        response = await it.acted(request, identity, None, action, PAGES)
        return see_other(f"{PAGES}/{opened[0].id}") if opened else response

    @app.get(f"{PAGES}/{{campaign_id}}", dependencies=DECIDE, include_in_schema=False)
    async def campaign_page(request: Request, identity: CurrentIdentity, campaign_id: RowId) -> Response:
        return await it.shown(request, identity, campaign_id)

    @app.post(f"{PAGES}/{{campaign_id}}/grants/{{grant_id}}/confirm", dependencies=DECIDE, include_in_schema=False)
    async def campaign_confirm(
        request: Request, identity: CurrentIdentity, campaign_id: RowId, grant_id: RowId
    ) -> Response:
        async def action(fields: dict[str, str]) -> None:
            comment = fields.get("comment", "")[: APPROVAL_TEXT_MAX + 1]
            campaigns = it.governance().campaigns
            await call(campaigns.confirm, caller_of(identity, request), campaign_id, grant_id, comment or None)

        return await it.acted(request, identity, campaign_id, action, f"{PAGES}/{campaign_id}")

    @app.post(f"{PAGES}/{{campaign_id}}/grants/{{grant_id}}/revoke", dependencies=DECIDE, include_in_schema=False)
    async def campaign_revoke(
        request: Request, identity: CurrentIdentity, campaign_id: RowId, grant_id: RowId
    ) -> Response:
        async def action(fields: dict[str, str]) -> None:
            reason = fields.get("reason", "")[: APPROVAL_TEXT_MAX + 1]
            await call(it.governance().campaigns.revoke, caller_of(identity, request), campaign_id, grant_id, reason)

        return await it.acted(request, identity, campaign_id, action, f"{PAGES}/{campaign_id}")

    @app.post(f"{PAGES}/{{campaign_id}}/close", dependencies=DECIDE, include_in_schema=False)
    async def campaign_close(request: Request, identity: CurrentIdentity, campaign_id: RowId) -> Response:
        async def action(_fields: dict[str, str]) -> None:
            await call(it.governance().campaigns.close, caller_of(identity, request), campaign_id)

        return await it.acted(request, identity, campaign_id, action, f"{PAGES}/{campaign_id}")

    @app.get(f"{PAGES}/{{campaign_id}}/export", dependencies=DECIDE, include_in_schema=False)
    async def campaign_export(
        request: Request,
        identity: CurrentIdentity,
        campaign_id: RowId,
        format: Literal["csv", "json"] = Query(default="csv"),
    ) -> Response:
        try:
            export = await it.export(identity, request, campaign_id, format)
        except ServiceUnavailable as exc:
            return it.unavailable(request, identity, exc)
        except ZguardError as exc:
            message = it.refusal(request, exc)["summary"]
            return it.page(request, "error.html", identity, status=exc.status, code=exc.code, message=message)
        return Response(
            zipped(export),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{export.filename}.zip"'},
        )
