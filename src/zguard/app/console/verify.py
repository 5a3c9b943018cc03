"""The console's "verify now": `zguard audit verify`'s check of the whole chain, run by the server.

/audit/verify (`audit:read`): POST starts a verification, GET shows it — running (rows checked of
the rows the head held when it started, as a `<progress>`), done (intact, or the first problem as
the CLI names it), failed (the store could not be read). The JSON twin is `/console/api/audit/verify`.

Decisions:
- One check, not a second one: `verify_store`, what `zguard audit verify` and `zguard doctor` run,
  on the store this server writes (the trail `services.audit_health` reports on), with the public
  half of the key the server signs checkpoints with: `state_dir/audit-signing.pem`, the file the
  CLI reads by default. A store opened without a signer (tests only) is verified without
  signatures, and the report says `signatures_checked: false`.
- Bounded cost: at most one verification at a time per console app (one per process), in its own
  thread, off the event loop; a start while one runs joins it (`"started": false`, and the page
  says so). Only the last finished result is kept, in memory: a restart forgets it, the trail
  keeps its `audit.verified` event.
- Audited: the start is the request's own event, renamed `audit.verify` (detail: `started`, the
  head it covers, the rows); the result is an `audit.verified` event when the job ends — outcome
  `done` when intact, else `failed` with code `audit_chain_broken` (the first problem's kind and
  seq in detail) or `audit_unavailable` (the store could not be read) — with the counts. The
  result is recorded after the start's event (it waits, bounded, for the starting response to
  go) and before it is shown, so a shown result is in the trail, after its start.
- Fail closed: without a readable hash-chained store (no database, or the in-memory sink) the
  page says so (503) and the API answers `audit_unavailable`; nothing starts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import FastAPI
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, request_info, requires
from zguard.app.console.common import Page
from zguard.app.console.web import see_other
from zguard.app.context import Services
from zguard.app.middleware.audit_requests import request_record
from zguard.audit import AuditEvent, AuditSink, DetailValue
from zguard.audit.store import AuditStore, Head
from zguard.audit.verify import verify_store
from zguard.errors import AuditUnavailable
from zguard.security.rbac import Permission
from zguard.services.auth import Identity, RequestInfo

log = logging.getLogger("zguard.audit")

PAGE = "/audit/verify"
API_VERIFY = "/console/api/audit/verify"
CHAIN_BROKEN = "audit_chain_broken"  # the `audit.verified` event's code when the chain is not intact
ANNOUNCED_WAIT_S = 5.0  # how long a result waits for its start's event (committed as the response starts)
JobState = Literal["running", "done", "failed"]


@dataclass
class VerifyJob:
    """One verification: who started it, how far it got, and its report once done."""

    by: str
    head_seq: int
    total: int  # the rows from the chain's base to the head it started at
    state: JobState = "running"
    checked: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    report: dict[str, Any] | None = None
    # Set once the starting request's response has gone, so its `audit.verify` event is in the
    # trail: the result's event waits for it and follows it in the chain.
    announced: threading.Event = field(default_factory=threading.Event, repr=False)

    def progressed(self, checked: int) -> None:
        self.checked = checked

    @property
    def ok(self) -> bool | None:
        return None if self.report is None else bool(self.report["ok"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "checked": self.checked,
            "total": self.total,
            "ok": self.ok,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "by": self.by,
            "report": self.report,
        }


IDLE: dict[str, Any] = {
    "state": "idle",
    "checked": 0,
    "total": None,
    "ok": None,
    "started_at": None,
    "finished_at": None,
    "by": None,
    "report": None,
}


class Verifications:
    """At most one running verification, and the last finished one."""

    def __init__(self, audit: AuditSink) -> None:
        self._audit = audit
        self._lock = threading.Lock()
        self.running: VerifyJob | None = None
        self.last: VerifyJob | None = None

    def current(self) -> VerifyJob | None:
        return self.running or self.last

    def start(self, store: AuditStore, head: Head, identity: Identity, info: RequestInfo) -> tuple[VerifyJob, bool]:
        """The running job and False, or a new job on `head`, started, and True."""
        with self._lock:
            if self.running is not None:
                return self.running, False
            job = self.running = VerifyJob(identity.name, head.seq, head.seq - head.base_seq)
        threading.Thread(
            target=self._run, args=(job, store, head, identity, info), name="zguard-audit-verify", daemon=True
        ).start()
        return job, True

    def _run(self, job: VerifyJob, store: AuditStore, head: Head, identity: Identity, info: RequestInfo) -> None:
        began = time.monotonic()
        own = store.signer.public_key if store.signer is not None else None
        public_key = store.trusted_keys or own  # several writers: every listed replica's key
        detail: dict[str, DetailValue] = {"head_seq": head.seq, "total": job.total}
        outcome: Literal["done", "failed"]
        code: str | None
        try:
            report = verify_store(store, public_key, head=head, progress=job.progressed)
        except Exception:  # a finding for the auditor (failed), never a dead job that runs forever
            log.exception("audit verification could not read the store")
            state: JobState = "failed"
            outcome, code = "failed", AuditUnavailable.code
            refused = AuditUnavailable("the audit store could not be read; the server log has the error")
            shown: dict[str, Any] = {"ok": False, "error": {"code": refused.code, "message": refused.message}}
            detail.update(ok=False, checked=job.checked)
        else:
            state = "done"
            problem = report.problem
            outcome, code = ("done", None) if problem is None else ("failed", CHAIN_BROKEN)
            unsigned = max(0, head.seq - max(head.checkpoint_seq, head.base_seq))
            shown = {
                **report.as_dict(),
                "base_seq": head.base_seq,
                "head_seq": head.seq,
                "unsigned": unsigned,
                "signatures_checked": public_key is not None,
            }
            job.checked = report.events
            detail.update(
                ok=report.ok,
                checked=report.events,
                checkpoints=report.checkpoints,
                problem_kind=None if problem is None else problem.kind,
                problem_seq=None if problem is None else problem.seq,
            )
        detail["duration_ms"] = int((time.monotonic() - began) * 1000)
        try:
            job.announced.wait(ANNOUNCED_WAIT_S)  # bounded: a response that never went does not hold the job
            self._record(job, identity, info, outcome, code, detail)
        finally:  # whatever recording did, the job ends: a stuck one would refuse every later start
            with self._lock:
                job.report, job.finished_at, job.state = shown, datetime.now(UTC), state
                self.running, self.last = None, job

    def _record(  # noqa: PLR0917 - the event's parts
        self,
        job: VerifyJob,
        identity: Identity,
        info: RequestInfo,
        outcome: Literal["done", "failed"],
        code: str | None,
        detail: dict[str, DetailValue],
    ) -> None:
        event = AuditEvent(
            type="audit.verified",
            outcome=outcome,
            code=code,
            request_id=info.request_id,  # the request that started it
            listener=info.listener,
            client=info.client,
            principal=job.by,
            roles=tuple(sorted(identity.roles)),
            auth_method=identity.method,
            detail=detail,
        )
        try:
            self._audit.emit(event)
        except AuditUnavailable:  # the store fails; its health shows it, the result still shows
            log.warning("the audit verification's result could not be recorded in the audit trail")


def _store(services: Services) -> AuditStore | None:
    """The hash-chained store this server writes, when it keeps a readable one."""
    trail = services.audit_health.trail
    return trail.store if services.audit_reader is not None and trail is not None else None


def add_verify_routes(app: FastAPI, services: Services, page: Page) -> None:
    """Register "verify now": the page, its form, and the JSON twin."""
    jobs = Verifications(services.audit)

    async def start(request: Request, identity: Identity) -> tuple[VerifyJob, bool]:
        """Start (or join) a verification; AuditUnavailable without a readable store."""
        record = request_record(request.scope)
        if record is not None:
            record.type = "audit.verify"
        store = _store(services)
        if store is None:
            raise AuditUnavailable("this server keeps no hash-chained audit store to verify")
        running = jobs.running
        if running is not None:
            job, started = running, False
        else:
            try:
                head = await asyncio.to_thread(store.head)
            except Exception:  # the client gets the stable error; the log has the detail
                log.exception("audit verification could not read the chain's head")
                raise AuditUnavailable("the audit store cannot be read; retry later") from None
            job, started = jobs.start(store, head, identity, request_info(request))
        if record is not None:
            record.detail.update(started=started, head_seq=job.head_seq, total=job.total)
        return job, started

    @app.get(PAGE, dependencies=[requires(Permission.AUDIT_READ)], include_in_schema=False)
    async def verify_page(request: Request, identity: CurrentIdentity) -> Response:
        available = _store(services) is not None
        job = jobs.current()
        return page(
            request,
            "audit_verify.html",
            identity,
            # 503 as /audit without a readable trail; a readable one without a chain (the memory
            # sink) is a page that says there is nothing to verify, as /audit is a page.
            status=200 if available or services.audit_reader is not None else 503,
            available=available,
            job=job,
            joined=request.query_params.get("joined") == "1" and job is not None and job.state == "running",
        )

    @app.post(PAGE, dependencies=[requires(Permission.AUDIT_READ)], include_in_schema=False)
    async def verify_form(request: Request, identity: CurrentIdentity) -> Response:
        try:
            job, started = await start(request, identity)
        except AuditUnavailable as error:
            record = request_record(request.scope)
            if record is not None:
                record.set_outcome("failed", error.code)
            return page(request, "audit_verify.html", identity, status=503, available=False, job=None, joined=False)
        response = see_other(PAGE if started else f"{PAGE}?joined=1")
        if started:
            response.background = BackgroundTask(job.announced.set)
        return response

    @app.get(API_VERIFY, dependencies=[requires(Permission.AUDIT_READ)])
    async def verify_state_api() -> JSONResponse:
        """The running verification, else the last finished one since the server started:
        `state` (`idle`, `running`, `done`, `failed`), `checked` and `total` rows, `ok`, when it
        started and finished, `by` whom, and on completion the `report` `zguard audit verify --json`
        prints (the first problem's `kind`, `seq` and `message` when the chain is not intact).
        503 `audit_unavailable` without a readable hash-chained store."""
        if _store(services) is None:
            raise AuditUnavailable("this server keeps no hash-chained audit store to verify")
        job = jobs.current()
        return JSONResponse(IDLE if job is None else job.as_dict())

    @app.post(API_VERIFY, dependencies=[requires(Permission.AUDIT_READ)], status_code=202)
    async def verify_start_api(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """Start verifying the whole chain, as `zguard audit verify` does, in the background: 202
        with the job (the `GET` shape) and `started`. At most one runs at a time: while one runs,
        this joins it (`"started": false`) instead of starting another. The start is audited as
        `audit.verify`, the result as `audit.verified`. 503 `audit_unavailable` without a readable
        hash-chained store."""
        job, started = await start(request, identity)
        background = BackgroundTask(job.announced.set) if started else None
        return JSONResponse({**job.as_dict(), "started": started}, status_code=202, background=background)
