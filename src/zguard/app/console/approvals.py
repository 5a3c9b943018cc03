"""The console's JSON API for model-use approvals, under /console/api/approvals.

Requesting and reading one's own requests and grants needs `images:generate` (the grant is
for generating); the inbox, decisions and revocations need `approvals:decide`. The service
(zguard.services.approvals) makes every other decision (four eyes, quorum, caps, expiry) and
emits the audit events, with the signed-in person as the caller. Pages are a later step; these
are the routes a page or a bank's workflow tool calls.

    POST /console/api/approvals                               ask (201)
    GET  /console/api/approvals/mine                          my requests and grants
    GET  /console/api/approvals?status=pending                the approvers' inbox
    POST /console/api/approvals/{request_id}/approve          {"comment", "max_size", "max_steps"} optional
    POST /console/api/approvals/{request_id}/reject           {"comment": ...} required
    GET  /console/api/approvals/grants                        every grant
    POST /console/api/approvals/grants/{grant_id}/revoke      {"reason": ...}
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from zguard.app.auth import CurrentIdentity, request_info, requires
from zguard.app.console.administration import call
from zguard.app.console.common import RowId
from zguard.app.context import Services
from zguard.errors import ServiceUnavailable
from zguard.security.rbac import Permission
from zguard.services.approvals import ApprovalService, Caller, RequestForm, grant_json, request_json
from zguard.services.auth import Identity
from zguard.services.grant_groups import GROUP_NAME_MAX
from zguard.services.grant_scope import SCOPE_MAX, Scope
from zguard.store.models import APPROVAL_FIELD_MAX, APPROVAL_TEXT_MAX, MODEL_ID_MAX

API = "/console/api/approvals"
ASK = [requires(Permission.IMAGES_GENERATE)]
DECIDE = [requires(Permission.APPROVALS_DECIDE)]
QUOTA_MAX = 100_000_000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewApprovalRequest(_Body):
    model: str = Field(min_length=1, max_length=MODEL_ID_MAX, description="the served model's id or manifest digest")
    purpose: str = Field(min_length=1, max_length=APPROVAL_TEXT_MAX)
    business_unit: str = Field(min_length=1, max_length=APPROVAL_FIELD_MAX)
    data_classification: str = Field(min_length=1, max_length=APPROVAL_FIELD_MAX)
    ticket: str | None = Field(default=None, min_length=1, max_length=APPROVAL_FIELD_MAX)
    quota_per_day: int = Field(ge=1, le=QUOTA_MAX, description="images per UTC day")
    quota_total: int = Field(ge=1, le=QUOTA_MAX, description="images in all")
    validity_days: int = Field(ge=1, le=3660)
    group: str | None = Field(
        default=None,
        min_length=1,
        max_length=GROUP_NAME_MAX,
        description="a SCIM group you belong to: its members share the grant",
    )


class DecisionBody(_Body):
    comment: str | None = Field(default=None, max_length=APPROVAL_TEXT_MAX)
    max_size: int | None = Field(
        default=None, ge=1, le=SCOPE_MAX, description="approve: the longest image side allowed"
    )
    max_steps: int | None = Field(default=None, ge=1, le=SCOPE_MAX, description="approve: the most steps allowed")


class RevocationBody(_Body):
    reason: str = Field(min_length=1, max_length=APPROVAL_TEXT_MAX)


def caller_of(identity: Identity, request: Request) -> Caller:
    info = request_info(request)
    return Caller(
        identity.name,
        identity.roles,
        principal_id=identity.principal_id,
        client=info.client,
        request_id=info.request_id,
        listener="console",
    )


def add_approval_routes(app: FastAPI, services: Services) -> None:
    """The routes above, on the console app."""

    def service() -> ApprovalService:
        if services.approvals is None:
            raise ServiceUnavailable("approvals need the state database", retry_after=60)
        return services.approvals

    @app.post(API, dependencies=ASK, status_code=201, summary="Ask to use the served model")
    async def ask(request: Request, identity: CurrentIdentity, body: NewApprovalRequest) -> JSONResponse:
        form = RequestForm(**body.model_dump())
        record = await call(service().request, caller_of(identity, request), form)
        return JSONResponse(request_json(record), status_code=201)

    @app.get(f"{API}/mine", dependencies=ASK, summary="My approval requests and grants")
    async def mine(identity: CurrentIdentity) -> JSONResponse:
        approvals = service()
        requests = await call(approvals.list_requests, requester=identity.name)
        grants = await call(approvals.list_grants, principal=identity.name)
        return JSONResponse(
            {"requests": [request_json(r) for r in requests], "grants": [grant_json(g) for g in grants]}
        )

    @app.get(API, dependencies=DECIDE, summary="Approval requests (the approvers' inbox)")
    async def inbox(
        status: Literal["pending", "approved", "rejected", "expired"] | None = Query(default=None),
    ) -> JSONResponse:
        records = await call(service().list_requests, status=status)
        return JSONResponse({"data": [request_json(r) for r in records]})

    @app.post(f"{API}/{{request_id}}/approve", dependencies=DECIDE, summary="Approve a request")
    async def approve(
        request: Request, identity: CurrentIdentity, request_id: RowId, body: DecisionBody
    ) -> JSONResponse:
        scope = Scope(body.max_size, body.max_steps)
        outcome = await call(service().decide, caller_of(identity, request), request_id, "approve", body.comment, scope)
        grant = None if outcome.grant is None else grant_json(outcome.grant)
        return JSONResponse({"request": request_json(outcome.request), "grant": grant})

    @app.post(f"{API}/{{request_id}}/reject", dependencies=DECIDE, summary="Reject a request, saying why")
    async def reject(
        request: Request, identity: CurrentIdentity, request_id: RowId, body: DecisionBody
    ) -> JSONResponse:
        outcome = await call(service().decide, caller_of(identity, request), request_id, "reject", body.comment)
        return JSONResponse({"request": request_json(outcome.request), "grant": None})

    @app.get(f"{API}/grants", dependencies=DECIDE, summary="Every grant")
    async def grants(
        status: Literal["active", "revoked", "expired", "exhausted"] | None = Query(default=None),
    ) -> JSONResponse:
        records = await call(service().list_grants, status=status)
        return JSONResponse({"data": [grant_json(g) for g in records]})

    @app.post(f"{API}/grants/{{grant_id}}/revoke", dependencies=DECIDE, summary="Revoke a grant, with its reason")
    async def revoke(
        request: Request, identity: CurrentIdentity, grant_id: RowId, body: RevocationBody
    ) -> JSONResponse:
        revoked = await call(service().revoke, caller_of(identity, request), grant_id, body.reason)
        return JSONResponse(grant_json(revoked))
