"""`AuditRequests`: every request either listener answers is recorded, or counted in a summary.

It sits just inside `RequestContext` (so the request id exists) and outside the network ACL (so
requests refused for their address are recorded too). Each layer that decides something adds
to the request's `RequestRecord`; when the response is about to start, this middleware holds
it back, commits the event (group commit: concurrent requests share a transaction) and only
then lets the response go. If the event cannot be committed the client gets 503
`audit_unavailable` instead.

Decisions:
- Nothing is answered unrecorded: each request is one committed event, *or*, for a stranger's
  refusal past the sampling of `zguard.audit.strangers` (a 4xx for a request nobody
  authenticated: 401, 403 `ip_not_allowed`, 404, 405, 429 `too_many_failed_logins`, ...;
  `audit.unauthenticated_events_per_minute` per address), a count in that address's
  `audit.suppressed` event for the minute. Those refusals are answered at once, without waiting
  for a commit (that is what makes a flood cheap to absorb; the request is refused either way,
  so there is nothing to fail closed), and the summaries are written in the background when
  the minute ends, and at shutdown.
- An exception that escapes the app before any response is recorded as status 500 with code
  `internal_error`, committed before `RequestContext` answers the client with that same error,
  and counted in `/metrics` as `status="500"`. Only a request the client abandoned (or that
  was cancelled) before any response is recorded as `no_response` with no status.

The error code of a refusal is read from the error body the app produced (one small JSON
message), so every refusal — from our layers, FastAPI's 404/405 or a 500 — records its code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zguard.app.errors import error_response
from zguard.audit import AuditEvent, AuditSink, Outcome, RequestRecord
from zguard.audit.strangers import StrangerRefusals
from zguard.errors import AuditUnavailable, ZguardError
from zguard.services.metrics import RequestMetrics

log = logging.getLogger("zguard.audit")
STATE_KEY = "audit"
PATH_MAX = 256
_ERROR_BODY_MAX = 16_384
INTERNAL_ERROR = "internal_error"
FLUSH_SLACK_S = 0.5  # past the minute's end, so the counts of that minute are complete


def request_record(scope: Scope) -> RequestRecord | None:
    record = scope.get("state", {}).get(STATE_KEY)
    return record if isinstance(record, RequestRecord) else None


def _outcome_for(status: int) -> Outcome:
    if status >= 500:
        return "failed"
    if status >= 400:
        return "denied"
    return "allowed"


def _error_code(body: bytes) -> str | None:
    if len(body) > _ERROR_BODY_MAX:
        return None
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def stranger_refusal(record: RequestRecord, status: int) -> bool:
    """A refusal (4xx) of a request nobody authenticated, which anyone can send as many of as
    they like: `AccessControl` marks the record once authentication accepts the caller, and
    authorization reports `access.*` for every authenticated request, whatever it decides."""
    if not 400 <= status < 500 or record.authenticated:
        return False
    return not any(d.startswith("access.") for d in record.decisions)


class AuditRequests:
    def __init__(
        self,
        app: ASGIApp,
        *,
        listener: str,
        audit: AuditSink,
        metrics: RequestMetrics | None = None,
        strangers: StrangerRefusals | None = None,
    ) -> None:
        self.app = app
        self.listener = listener
        self.audit = audit
        self.metrics = metrics or RequestMetrics()
        self.strangers = strangers or StrangerRefusals()
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        arrived = time.time()
        record = RequestRecord()
        state = scope.setdefault("state", {})
        state[STATE_KEY] = record
        held: Message | None = None
        committed = False
        refused = False

        async def commit(status: int, code: str | None) -> bool:
            """Commit the request's event; False (and a 503 sent) when it cannot be."""
            nonlocal committed
            committed = True
            event = self._event(scope, record, status, code, arrived=arrived, started=started)
            if stranger_refusal(record, status) and not self._sampled(event):
                return True  # counted for the address's `audit.suppressed` summary: answered at once
            return await self._commit(event, send)

        async def send_after_commit(message: Message) -> None:
            nonlocal held, refused
            if refused:
                return  # a 503 audit_unavailable went out instead of this response
            kind = message["type"]
            if kind == "http.response.start":
                if message["status"] >= 400:
                    held = message  # wait for the error body: it names the code
                    return
                if not await commit(message["status"], None):
                    refused = True
                    return
            elif kind == "http.response.body" and held is not None:
                start, held = held, None
                # The body names the code only for refusals no decision point recorded (404, 405, 500, ...).
                code = (
                    None
                    if record.code is not None or message.get("more_body")
                    else _error_code(message.get("body", b""))
                )
                if not await commit(start["status"], code):
                    refused = True
                    return
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_after_commit)
        except Exception:
            if committed:
                raise  # the response had started: the event says what was sent
            # RequestContext answers 500 internal_error; the event says so, and is committed first.
            record.set_outcome("failed", INTERNAL_ERROR)
            if await commit(500, INTERNAL_ERROR):
                raise
            log.exception("request %s failed, and its audit event could not be written", state.get("request_id"))
        finally:
            if not committed:  # the client left (or the request was cancelled) before any response
                record.set_outcome("failed", record.code or "no_response")
                try:
                    await self.audit.record(self._event(scope, record, None, None, arrived=arrived, started=started))
                except Exception:
                    log.exception("audit store write failed for request %s", state.get("request_id"))

    async def _commit(self, event: AuditEvent, send: Send) -> bool:
        """Commit `event`; False (and a 503 sent) when it cannot be."""
        try:
            await self.audit.record(event)
        except ZguardError as error:
            await self._refuse(error, send)
            return False
        except Exception:
            log.exception("audit store write failed for request %s", event.request_id)
            await self._refuse(AuditUnavailable("the audit trail cannot be written; retry later"), send)
            return False
        return True

    def _sampled(self, event: AuditEvent) -> bool:
        """Whether a stranger's refusal gets its own event; writes the summaries of a minute
        that just ended, and makes sure this one's count is written when its minute ends."""
        recorded, ended = self.strangers.admit(self.listener, event.client, event.code)
        if ended:
            self._write_later(ended)
        if not recorded and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.strangers.seconds_left() + FLUSH_SLACK_S, self._flush
            )
        return recorded

    def _flush(self) -> None:
        """The minute's end: write its summaries (their counts are in no other event)."""
        self._timer = None
        ended = self.strangers.due()
        if ended:
            self._write_later(ended)
        elif self.strangers.pending:  # early (the clocks differ): try again at the minute's end
            self._timer = asyncio.get_running_loop().call_later(
                self.strangers.seconds_left() + FLUSH_SLACK_S, self._flush
            )

    def _write_later(self, events: Sequence[AuditEvent]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(events))
        self._writing.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._writing.discard)

    async def _write(self, events: Sequence[AuditEvent]) -> None:
        for event in events:
            try:
                await self.audit.record(event)
            except Exception:
                # Fail loud: the refusals were answered already; the operator's log keeps the counts.
                log.exception("could not write the audit summary of suppressed refusals: %s", dict(event.detail))

    def _count(self, event: AuditEvent) -> None:
        """/metrics: the request by listener, status and code; a completed generation's latency."""
        status = event.http.get("status") if event.http else None
        self.metrics.record_request(self.listener, status if isinstance(status, int) else None, event.code)
        if event.type == "generation.completed" and event.latency_ms is not None:
            self.metrics.observe_generation(event.latency_ms / 1000)

    async def _refuse(self, error: ZguardError, send: Send) -> None:
        response = error_response(error)

        async def no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
            return {"type": "http.disconnect"}

        await response({"type": "http"}, no_receive, send)

    def _event(
        self,
        scope: Scope,
        record: RequestRecord,
        status: int | None,
        code: str | None,
        *,
        arrived: float,
        started: float,
    ) -> AuditEvent:
        state: dict[str, Any] = scope.get("state", {})
        if status is not None:
            record.set_outcome(record.outcome if record.outcome is not None and status < 400 else _outcome_for(status))
        path = scope.get("path", "")
        event = AuditEvent(
            type=record.type or "http.request",
            outcome=record.outcome or "failed",
            code=record.code or code,
            request_id=state.get("request_id"),
            listener=self.listener,
            client=state.get("client_address") or (scope["client"][0] if scope.get("client") else None),
            principal=record.principal,
            roles=record.roles,
            auth_method=record.auth_method,
            detail={**record.detail, "decisions": ",".join(record.decisions)} if record.decisions else record.detail,
            time=arrived,
            model=record.model,
            manifest=record.manifest,
            generation=record.generation,
            prompt=record.prompt,
            policy=record.policy,
            latency_ms=(time.perf_counter() - started) * 1000,
            images=record.images,
            http={"method": scope.get("method"), "path": path[:PATH_MAX], "status": status},
        )
        self._count(event)  # called once per request: from commit, or for a request never answered
        return event
