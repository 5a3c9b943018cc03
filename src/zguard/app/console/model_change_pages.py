"""The console's model-change approval: the second admin's sign-off (issue 20, item 2).

    GET  /approvals/model-changes                         change requests, pending first     policy:manage
    POST /approvals/model-changes/{seq}/approve           approve as the signed-in admin     policy:manage
    GET  /console/api/approvals/model-changes             the same, as JSON
    POST /console/api/approvals/model-changes/{seq}/approve

Decisions written here:
- The records are the audit trail's `model.change_requested` / `model.change_approved` events
  (zguard.audit.model_changes), read as `zguard model changes` reads them; a request is pending
  until an approval that counts names it. `{seq}` is the request event's sequence number.
- Who approves: the routes need `policy:manage` (only the `admin` role holds it among the built-in
  roles: what the server serves is the admins' duty), and the service then requires what the CLI
  requires of `--as NAME`: an enabled stored principal holding `admin`, acting with a credential
  whose roles keep it (zguard.services.model_changes.approve_signed_in). The console's sign-in is
  the proof the CLI asks a pasted API token for. Four eyes are the CLI's: never the admin who
  pinned it (`model_change_self_approval`), once per request (`model_change_already_approved`);
  the approval is the same `model.change_approved` event, signed into the hash chain, with the
  console's client address and request id where the CLI records the OS account.
- No fresh TOTP here. Admins sign in with a second factor (`console.totp_required_roles` is
  `["admin"]` by default), sessions end after `console.session_idle_s` (15 min) idle, and every
  change needs the session's CSRF token and origin: the same bar as the console's other admin
  actions (roles, tokens, unlocks), none of which asks again. What a stolen session could do is
  bounded by four eyes: it approves only a change another admin pinned, and the approval is on
  the chain with who and from where. A deployment that turns the second factor off for admins
  lowers this bar for every admin action alike.
- Before approving, the directory the request names must still hold that manifest (its digest,
  its signature with `model.manifest_public_key`, every file present at its pinned size); the
  full hash is `serve`'s load. Every refusal is a `model.change_refused` event.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, request_info, requires
from zguard.app.console.administration import call
from zguard.app.console.common import N_, RowId, may
from zguard.app.console.web import negotiate, render, see_other, translate
from zguard.app.context import Services
from zguard.audit.chain import iso_ms
from zguard.audit.model_changes import ChangeRecord, counts
from zguard.errors import ServiceUnavailable, ZguardError
from zguard.security.rbac import Permission
from zguard.services.auth import Identity
from zguard.services.governance import Governance
from zguard.services.model_changes import ModelChanges, Operator
from zguard.services.sessions import NoSessions, SessionService

PAGE = "/approvals/model-changes"
API = "/console/api/approvals/model-changes"
ADMIN = [requires(Permission.POLICY_MANAGE)]
LABELS = {"pending": N_("Awaiting a second admin"), "approved": N_("Approved")}
SUMMARIES = {
    "model_change_self_approval": N_("You pinned this model: another admin approves it."),
    "model_change_already_approved": N_("This change has its approval already."),
    "model_change_refused": N_("The model change cannot be approved."),
    "not_found": N_("No such model change request."),
}


def operator_of(identity: Identity, request: Request) -> Operator:
    """Where the approval came from, recorded where the CLI records the OS account."""
    info = request_info(request)
    return Operator(
        f"console:{identity.name[:64]}",
        {"listener": "console", "client": info.client, "request_id": info.request_id or "", "auth": identity.method},
    )


def change_rows(records: list[ChangeRecord]) -> list[dict[str, Any]]:
    """Each change request, newest first, with the approval that counts (if any)."""
    requests = {r.seq: r for r in records if r.is_request}
    approvals = {r.request_seq: r for r in records if not r.is_request and counts(r, requests)}
    rows = []
    for r in reversed(list(requests.values())):
        approval = approvals.get(r.seq)
        rows.append(
            {
                "seq": r.seq,
                "time": iso_ms(r.time_ms),
                "digest": r.digest,
                "model_path": r.model_path,
                "requester": r.principal,
                "os_account": r.os_account,
                "status": "approved" if approval is not None else "pending",
                "approver": None if approval is None else approval.principal,
                "approval_seq": None if approval is None else approval.seq,
                "approved_at": None if approval is None else iso_ms(approval.time_ms),
                "intact": r.intact,
            }
        )
    return sorted(rows, key=lambda row: (row["status"] != "pending", -row["seq"]))


class ModelChangePages:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.live: SessionService | NoSessions = services.sessions or NoSessions()

    def governance(self) -> tuple[Governance, ModelChanges]:
        governance = self.services.governance
        changes = None if governance is None else governance.model_changes
        if governance is None or changes is None:
            raise ServiceUnavailable(
                "model-change approval needs the state database and its audit trail", retry_after=60
            )
        return governance, changes

    async def rows(self) -> list[dict[str, Any]]:
        _, changes = self.governance()
        return change_rows(await call(changes.records))

    async def approve(self, identity: Identity, request: Request, seq: int) -> dict[str, Any]:
        governance, _ = self.governance()
        approval, change = await call(governance.approve_model_change, identity, seq, operator_of(identity, request))
        return {
            "request": change.seq,
            "digest": approval.digest,
            "model_path": approval.model_path,
            "requester": change.principal,
            "approver": approval.principal,
            "approval_seq": approval.seq,
            "approved_at": iso_ms(approval.time_ms),
        }

    async def page(
        self, request: Request, identity: Identity, *, status: int = 200, failed: dict[str, Any] | None = None
    ) -> Response:
        try:
            rows = await self.rows()
        except ServiceUnavailable as exc:
            message = translate(negotiate(request), N_("Model-change approval needs the state database."))
            return self._render(request, "error.html", identity, status=exc.status, code=exc.code, message=message)
        return self._render(request, "model_changes.html", identity, status=status, failed=failed, changes=rows)

    def _render(self, request: Request, template: str, identity: Identity, status: int, **context: Any) -> Response:
        csrf = self.live.csrf_token(identity) if identity.session_hash else ""
        allowed = {p.value: may(self.services, identity, p) for p in Permission}
        return render(
            request, template, status=status, identity=identity, csrf=csrf, may=allowed, labels=LABELS, **context
        )


def add_model_change_routes(app: FastAPI, services: Services) -> None:
    """The page and the JSON API above, on the console app."""
    it = ModelChangePages(services)

    @app.get(API, dependencies=ADMIN, summary="Model change requests and their approvals")
    async def api_changes() -> JSONResponse:
        return JSONResponse({"data": await it.rows()})

    @app.post(f"{API}/{{seq}}/approve", dependencies=ADMIN, summary="Approve a model change as a second admin")
    async def api_approve(request: Request, identity: CurrentIdentity, seq: RowId) -> JSONResponse:
        return JSONResponse(await it.approve(identity, request, seq))

    @app.get(PAGE, dependencies=ADMIN, include_in_schema=False)
    async def model_changes_page(request: Request, identity: CurrentIdentity) -> Response:
        return await it.page(request, identity)

    @app.post(f"{PAGE}/{{seq}}/approve", dependencies=ADMIN, include_in_schema=False)
    async def model_change_approve(request: Request, identity: CurrentIdentity, seq: RowId) -> Response:
        try:
            await it.approve(identity, request, seq)
        except ServiceUnavailable:
            return await it.page(request, identity)
        except ZguardError as exc:
            summary = translate(negotiate(request), SUMMARIES.get(exc.code, SUMMARIES["model_change_refused"]))
            failed = {"code": exc.code, "summary": summary, "detail": exc.message}
            return await it.page(request, identity, status=exc.status, failed=failed)
        return see_other(PAGE)
