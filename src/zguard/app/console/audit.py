"""The console's audit pages: search the trail, one event's detail, the chain's state, exports.

They read `services.audit_reader`, the reader `GET /v1/audit/events` serves, with that route's
time parsing, bounds and filters (zguard.app.audit_routes); None means this server keeps no
readable store, and the pages say so. Paging is by keyset (`after=<last seq>`), never OFFSET.

Decisions:
- The chain's state (head, checkpoint, forwarding) is `services.audit_health.snapshot()`, read
  off the event loop like `/readyz/detail` does: it queries the state database.
- An event is addressed by its id *and* its chain position (`/audit/events/{event_id}?seq=N`):
  the reader interface searches by position, and the id checks that the position holds it.
- Exports (`audit:export`) stream page by page, at most `EXPORT_ROWS_MAX` rows (the response's
  `X-Export-Row-Limit` says so; continue with `after=<last seq>`). The request's own event
  (type `audit.export`, with the filters) is committed before the first byte leaves, so a
  failing store refuses the export (fail closed); an `audit.exported` event with the row count
  follows the last row. CSV cells that a spreadsheet would run as a formula get a leading quote.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Annotated, Any, get_args
from urllib.parse import urlencode

from fastapi import FastAPI, Query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from zguard.app.audit_routes import (
    AUDIT_PAGE_MAX,
    SEQ_MAX,
    TEXT_PARAM_MAX,
    TIME_PARAM_MAX,
    OutcomeQuery,
    TextQuery,
    TimeQuery,
    parse_time_ms,
)
from zguard.app.auth import CurrentIdentity, request_info, requires
from zguard.app.console.common import N_, Page
from zguard.app.console.web import negotiate, translate
from zguard.app.context import Services
from zguard.app.contract import patch_document, set_parameter
from zguard.app.middleware.audit_requests import request_record
from zguard.app.schemas import AuditEventList
from zguard.audit import AuditEvent, AuditReader, DetailValue, Outcome
from zguard.errors import AuditUnavailable, InvalidValue, RouteNotFound
from zguard.security.rbac import Permission
from zguard.services.auth import Identity
from zguard.services.sessions import NoSessions, SessionService

API_EVENTS = "/console/api/audit/events"
OUTCOMES: tuple[str, ...] = get_args(Outcome)
PAGE_ROWS = 50
EXPORT_ROWS_MAX = 100_000  # per export; the next one continues with after=<last seq>
EXPORT_LIMIT_HEADER = "X-Export-Row-Limit"
EVENT_ID = re.compile(r"[0-9a-f]{32}")  # what the store (uuid4().hex) and the memory sink issue
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "seq",
    "event_id",
    "time",
    "type",
    "outcome",
    "code",
    "principal",
    "roles",
    "auth_method",
    "client",
    "listener",
    "request_id",
    "http",
    "model",
    "latency_ms",
    "detail",
    "hash",
)
TIME_HELP = N_("ISO 8601 (2026-11-26T09:00:00Z, UTC when no zone is given) or UNIX milliseconds.")
TOO_LONG = N_("At most {max} characters.")
BAD_OUTCOME = N_("Choose one of the listed outcomes.")
BAD_CURSOR = N_("The page cursor is not a sequence number; start again from the first page.")
NOT_READABLE = N_("This server keeps no readable audit trail: the audit store is not a database here.")
NO_EVENT = N_("There is no such event at that position in the trail.")


@dataclass(frozen=True)
class AuditQuery:
    """The filters of `GET /v1/audit/events`, as the console's pages, exports and API take them."""

    since: str | None = None
    until: str | None = None
    principal: str | None = None
    outcome: str | None = None
    type: str | None = None
    request_id: str | None = None

    def filters(self, *, after: int | None, limit: int) -> dict[str, Any]:
        """`AuditReader.search`'s keywords, as audit_routes builds them (raises InvalidValue)."""
        return {
            "since_ms": parse_time_ms(self.since, "since"),
            "until_ms": parse_time_ms(self.until, "until"),
            "principal": self.principal,
            "outcome": self.outcome,
            "type_prefix": self.type,
            "request_id": self.request_id,
            "after_seq": after,
            "limit": limit,
        }

    def params(self) -> dict[str, str]:
        """The query string's filters, for links to the next page and the exports."""
        return {name: value for name, value in asdict(self).items() if value is not None}


FILTER_MAX = {f.name: TIME_PARAM_MAX if f.name in ("since", "until") else TEXT_PARAM_MAX for f in fields(AuditQuery)}


def query_of(request: Request) -> tuple[AuditQuery, int | None, dict[str, str]]:
    """A page's or an export's filters and cursor from its query string; `errors` by field (English)."""
    values: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    for name, most in FILTER_MAX.items():
        value = request.query_params.get(name, "").strip() or None  # an empty form field filters nothing
        if value is not None and len(value) > most:
            errors[name] = TOO_LONG
        values[name] = value
    query = AuditQuery(**values)
    for name in ("since", "until"):
        if name not in errors:
            try:
                parse_time_ms(values[name], name)
            except InvalidValue:
                errors[name] = TIME_HELP
    if query.outcome is not None and query.outcome not in OUTCOMES:
        errors["outcome"] = BAD_OUTCOME
    raw = request.query_params.get("after", "")
    after = None
    if raw:
        if raw.isascii() and raw.isdigit() and len(raw) <= len(str(SEQ_MAX)) and int(raw) <= SEQ_MAX:
            after = int(raw)
        else:
            errors["after"] = BAD_CURSOR
    return query, after, errors


def _reader(services: Services) -> AuditReader:
    if services.audit_reader is None:
        raise AuditUnavailable("this server keeps no readable audit store")
    return services.audit_reader


async def search(reader: AuditReader, query: AuditQuery, after: int | None, limit: int) -> tuple[list[Any], int | None]:
    """One page of stored events (oldest first) and the cursor of the next, None on the last."""
    found = await asyncio.to_thread(reader.search, **query.filters(after=after, limit=limit + 1))
    page = found[:limit]
    return page, page[-1].seq if len(found) > limit else None


async def stored_event(reader: AuditReader, event_id: str, seq: int | None) -> Any:
    """The stored event `event_id` at chain position `seq`; RouteNotFound when it is not there."""
    if seq is None or not 1 <= seq <= SEQ_MAX or not EVENT_ID.fullmatch(event_id):
        raise RouteNotFound("no such audit event: pass its id and its seq")
    found = await asyncio.to_thread(reader.search, after_seq=seq - 1, limit=1)
    if not found or found[0].seq != seq or found[0].event_id != event_id:
        raise RouteNotFound("no such audit event at that seq")
    return found[0]


def chain_position(stored: Any, health: Mapping[str, Any]) -> dict[str, Any]:
    """Where an event stands: its hashes, whether a signed checkpoint covers it, whether syslog has it."""
    position: dict[str, Any] = {"seq": stored.seq, "hash": stored.hash, "prev_hash": stored.prev_hash}
    if "head_seq" in health:
        checkpoint = health.get("checkpoint_seq") or 0
        position["checkpointed"] = stored.seq <= checkpoint
        forwarding = health.get("forwarding") or {}
        if forwarding.get("transport") != "off" and "cursor" in forwarding:
            position["forwarded"] = stored.seq <= (forwarding.get("cursor") or 0)
    return position


def _row(stored: Any) -> dict[str, Any]:
    body = json.loads(stored.body)
    return {
        "seq": stored.seq,
        "event_id": stored.event_id,
        "time": datetime.fromtimestamp(stored.time, UTC),
        "type": stored.type,
        "outcome": stored.outcome,
        "code": body.get("code"),
        "principal": body.get("principal"),
        "client": body.get("client"),
        "request_id": body.get("request_id"),
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """An event body as (field, text) rows, every field: nested objects dotted, lists of objects
    indexed, lists of plain values as JSON, null as `null` (recorded as unknown, not left out)."""
    if isinstance(value, Mapping) and value:
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}.{key}" if prefix else key)]
    if isinstance(value, list) and any(isinstance(item, Mapping | list) for item in value):
        return [row for i, item in enumerate(value) for row in _flatten(item, f"{prefix}[{i}]")]
    if isinstance(value, str):
        return [(prefix, value)]
    return [(prefix, json.dumps(value, ensure_ascii=False))]


def csv_cell(value: Any) -> str:
    """A CSV cell: nested values as JSON, and text a spreadsheet would run as a formula quoted."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


def csv_lines(stored: Any) -> str:
    body = json.loads(stored.body)
    body["hash"] = stored.hash
    return _csv_line([csv_cell(body.get(column)) for column in CSV_COLUMNS])


def jsonl_line(stored: Any) -> str:
    return json.dumps({**json.loads(stored.body), "hash": stored.hash}, ensure_ascii=False) + "\n"


def add_audit_pages(app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page) -> None:
    """Register the audit pages and their JSON API routes on the console app."""
    del sessions  # the audit pages change nothing: no CSRF token of their own to ask for
    _add_pages(app, services, page)
    _add_api(app, services)
    _add_exports(app, services)


def _add_pages(app: FastAPI, services: Services, page: Page) -> None:
    @app.get("/audit", dependencies=[requires(Permission.AUDIT_READ)], include_in_schema=False)
    async def audit_page(request: Request, identity: CurrentIdentity) -> Response:
        query, after, errors = query_of(request)
        language = negotiate(request)
        shown = {
            name: translate(language, message).format(max=FILTER_MAX.get(name)) for name, message in errors.items()
        }
        health = await asyncio.to_thread(services.audit_health.snapshot)
        context: dict[str, Any] = {
            "query": query,
            "outcomes": OUTCOMES,
            "errors": shown,
            "health": health,
            "readable": services.audit_reader is not None,
            "rows": [],
            "next_query": None,
            "filter_query": urlencode(query.params()),
            "filter_max": FILTER_MAX,
            "export_max": f"{EXPORT_ROWS_MAX:,}",
            "after": after,
        }
        if services.audit_reader is None:
            return page(request, "audit.html", identity, status=503, **context)
        if errors:
            return page(request, "audit.html", identity, status=400, **context)
        found, next_after = await search(services.audit_reader, query, after, PAGE_ROWS)
        context["rows"] = [_row(e) for e in found]
        if next_after is not None:
            context["next_query"] = urlencode({**query.params(), "after": str(next_after)})
        return page(request, "audit.html", identity, **context)

    @app.get("/audit/events/{event_id}", dependencies=[requires(Permission.AUDIT_READ)], include_in_schema=False)
    async def audit_event_page(request: Request, identity: CurrentIdentity, event_id: str) -> Response:
        language = negotiate(request)
        if services.audit_reader is None:
            message = translate(language, NOT_READABLE)
            return page(request, "error.html", identity, status=503, code="audit_unavailable", message=message)
        raw = request.query_params.get("seq", "")
        seq = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= len(str(SEQ_MAX)) else None
        try:
            stored = await stored_event(services.audit_reader, event_id, seq)
        except RouteNotFound as error:
            return page(
                request, "error.html", identity, status=404, code=error.code, message=translate(language, NO_EVENT)
            )
        health = await asyncio.to_thread(services.audit_health.snapshot)
        body = json.loads(stored.body)
        return page(
            request,
            "audit_event.html",
            identity,
            event=_row(stored),
            fields=_flatten(body),
            chain=chain_position(stored, health),
            health=health,
        )


def _add_api(app: FastAPI, services: Services) -> None:
    patch_document(app, set_parameter(API_EVENTS, "get", "after", minimum=0, maximum=SEQ_MAX))

    @app.get(API_EVENTS, response_model=AuditEventList, dependencies=[requires(Permission.AUDIT_READ)])
    async def audit_events_api(
        *,
        since: TimeQuery = None,
        until: TimeQuery = None,
        principal: TextQuery = None,
        outcome: OutcomeQuery = None,
        type: TextQuery = None,
        request_id: TextQuery = None,
        after: Annotated[int | None, Query(ge=0, le=SEQ_MAX)] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = 100,
    ) -> AuditEventList:
        """The trail, as `GET /v1/audit/events` serves it (same parameters, bounds and shape)."""
        query = AuditQuery(since, until, principal, outcome, type, request_id)
        found, next_after = await search(_reader(services), query, after, limit)
        return AuditEventList(data=[{**json.loads(e.body), "hash": e.hash} for e in found], next_after=next_after)

    @app.get(f"{API_EVENTS}/{{event_id}}", dependencies=[requires(Permission.AUDIT_READ)])
    async def audit_event_api(event_id: str, seq: Annotated[int, Query(ge=1, le=SEQ_MAX)]) -> JSONResponse:
        """One event at its chain position: its hashed body, hash, previous hash, and whether the
        last signed checkpoint covers it and syslog forwarding has sent it (when they are known)."""
        stored = await stored_event(_reader(services), event_id, seq)
        health = await asyncio.to_thread(services.audit_health.snapshot)
        return JSONResponse({"event": json.loads(stored.body), "chain": chain_position(stored, health)})


def _add_exports(app: FastAPI, services: Services) -> None:
    def export(kind: str, media_type: str, line: Callable[[Any], str], header: str) -> Any:
        async def download(request: Request, identity: CurrentIdentity) -> Response:
            query, after, errors = query_of(request)
            if errors:
                name = sorted(errors)[0]
                raise InvalidValue(errors[name].format(max=FILTER_MAX.get(name)), param=name)
            reader = _reader(services)
            query.filters(after=after, limit=1)  # the times parse: refused before anything is committed
            described: dict[str, DetailValue] = {**query.params(), "format": kind, "row_limit": EXPORT_ROWS_MAX}
            if after is not None:
                described["after"] = after
            record = request_record(request.scope)
            if record is not None:
                record.type = "audit.export"
                record.detail.update(described)
            rows = _export_rows(reader, query, after, line, header)
            body = _then_record(rows, services, identity, request, described)
            headers = {
                EXPORT_LIMIT_HEADER: str(EXPORT_ROWS_MAX),
                "Content-Disposition": f'attachment; filename="zguard-audit.{kind}"',
                "Cache-Control": "no-store",
            }
            return StreamingResponse(body, media_type=media_type, headers=headers)

        return download

    app.get("/audit/export.csv", dependencies=[requires(Permission.AUDIT_EXPORT)], include_in_schema=False)(
        export("csv", "text/csv; charset=utf-8", csv_lines, _csv_line(list(CSV_COLUMNS)))
    )
    app.get("/audit/export.jsonl", dependencies=[requires(Permission.AUDIT_EXPORT)], include_in_schema=False)(
        export("jsonl", "application/jsonl; charset=utf-8", jsonl_line, "")
    )


@dataclass
class _Count:
    rows: int = 0
    truncated: bool = False


async def _export_rows(
    reader: AuditReader, query: AuditQuery, after: int | None, line: Callable[[Any], str], header: str
) -> AsyncIterator[str | _Count]:
    """The export's text, a page of the reader at a time, then its count (not sent)."""
    count = _Count()
    if header:
        yield header
    more = True
    while more and count.rows < EXPORT_ROWS_MAX:
        want = min(AUDIT_PAGE_MAX, EXPORT_ROWS_MAX - count.rows)
        found, after = await search(reader, query, after, want)
        if found:
            yield "".join(line(stored) for stored in found)
        count.rows += len(found)
        more = after is not None
    count.truncated = more
    yield count


async def _then_record(
    rows: AsyncIterator[str | _Count],
    services: Services,
    identity: Identity,
    request: Request,
    described: dict[str, DetailValue],
) -> AsyncIterator[str]:
    """The export's text; after its last row, the `audit.exported` event with the row count."""
    async for chunk in rows:
        if isinstance(chunk, _Count):
            info = request_info(request)
            await services.audit.record(
                AuditEvent(
                    type="audit.exported",
                    outcome="done",
                    request_id=info.request_id,
                    listener=info.listener,
                    client=info.client,
                    principal=identity.name,
                    roles=tuple(sorted(identity.roles)),
                    auth_method=identity.method,
                    detail={**described, "rows": chunk.rows, "truncated": chunk.truncated},
                )
            )
        else:
            yield chunk
