"""The console's grant report (issue 20 item 5): active grants, their use today and in total
against the quota, those expiring within 14 days and those unused for 30.

    GET /approvals/report                    the page          approvals:decide
    GET /console/api/approvals/report        its JSON twin     approvals:decide

Decisions written here:
- `approvals:decide`, as the grant history: the report shows every grant, which is what an
  approver sees today. Auditors (`audit:read`) read the same facts from the trail and from
  `zguard scan`; giving them this page too would need a second permission on one route.
- The report is zguard.services.grant_report's: the page renders it, the JSON twin returns it;
  today's use is null (the page says "unknown") when the counter storage cannot be read.
- Without a state database (`services.approvals` is None) both answer 503 (the page as a page).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.common import N_, may
from zguard.app.console.web import negotiate, render, translate
from zguard.app.context import Services
from zguard.errors import ServiceUnavailable
from zguard.security.rbac import Permission
from zguard.services.approvals import ApprovalService
from zguard.services.grant_report import grant_report
from zguard.services.sessions import NoSessions
from zguard.store.grant_use import EXPIRING_DAYS, UNUSED_DAYS

PAGE = "/approvals/report"
API = "/console/api/approvals/report"
DECIDE = [requires(Permission.APPROVALS_DECIDE)]
UNAVAILABLE = N_("Approvals need the state database.")


def add_grant_report_routes(app: FastAPI, services: Services) -> None:
    """The page and its JSON twin, on the console app."""

    def service() -> ApprovalService:
        if services.approvals is None:
            raise ServiceUnavailable("approvals need the state database", retry_after=60)
        return services.approvals

    @app.get(API, dependencies=DECIDE, summary="The grant report: use against quota, expiring, unused")
    async def report_json() -> JSONResponse:
        return JSONResponse((await grant_report(service())).to_json())

    @app.get(PAGE, dependencies=DECIDE, include_in_schema=False)
    async def report_page(request: Request, identity: CurrentIdentity) -> Response:
        live = services.sessions or NoSessions()
        csrf = live.csrf_token(identity) if identity.session_hash else ""
        allowed = {p.value: may(services, identity, p) for p in Permission}
        common: dict[str, Any] = {"identity": identity, "csrf": csrf, "may": allowed}
        try:
            report = await grant_report(service())
        except ServiceUnavailable as exc:
            message = translate(negotiate(request), UNAVAILABLE)
            return render(request, "error.html", status=exc.status, code=exc.code, message=message, **common)
        return render(
            request,
            "approvals_report.html",
            report=report,
            expiring_days=EXPIRING_DAYS,
            unused_days=UNUSED_DAYS,
            **common,
        )
