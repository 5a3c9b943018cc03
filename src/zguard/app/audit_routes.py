"""`GET /v1/audit/events`: auditors page through the trail, on either listener.

The deployment guide puts auditors on the management network (the console) and business
systems on the API's; the route is the same code on both, with the same permission
(`audit:read`), bounds and error shape. Every query parameter is bounded before the database
sees it: a sequence number fits a BIGINT, times lie between 1970 and the end of 9999, text
filters are no longer than anything stored.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Query

from zguard.app.auth import requires
from zguard.app.context import Services
from zguard.app.contract import (
    AUTHENTICATED,
    TIME_MS_MAX,
    TIME_PATTERN,
    TIME_RE,
    error_responses,
    patch_document,
    set_parameter,
)
from zguard.app.schemas import AuditEventList
from zguard.audit import Outcome
from zguard.errors import AuditUnavailable, InvalidValue
from zguard.security.rbac import Permission

AUDIT_PATH = "/v1/audit/events"
AUDIT_PAGE_MAX = 1000
SEQ_MAX = 2**63 - 1  # the largest sequence number a database BIGINT holds
TEXT_PARAM_MAX = 256  # filters on names, types and ids; nothing stored is longer
TIME_PARAM_MAX = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time_ms(value: str | None, param: str) -> int | None:
    """ISO 8601 (UTC when no zone is given) or UNIX milliseconds, as `TIME_PATTERN` (the published
    contract) writes them, from 1970 to the end of 9999."""
    if value is None:
        return None
    problem = f"'{param}' must be ISO 8601 (2026-11-26T09:00:00Z) or UNIX milliseconds"
    if not TIME_RE.fullmatch(value):
        raise InvalidValue(f"{problem}, from 1970 to the end of 9999", param=param)
    if value.isdigit():  # the pattern admits ASCII digits only, and no more than TIME_MS_MAX
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:  # pragma: no cover - the pattern admits only dates fromisoformat reads
        raise InvalidValue(problem, param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Exact integer milliseconds: a float timestamp rounds 9999-12-31T23:59:59.999999Z past the end.
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    if not 0 <= ms <= TIME_MS_MAX:  # pragma: no cover - the pattern keeps offsets in range
        raise InvalidValue(f"{problem}, from 1970 to the end of 9999", param=param)
    return ms


AUDIT_ERRORS = {400: ("invalid_value", "invalid_type")}  # and 503 `audit_unavailable`, as every route


def _time(schema: dict[str, Any]) -> None:  # a function: FastAPI consumes a dict given here
    schema.update(pattern=TIME_PATTERN, examples=["2026-11-26T09:00:00Z", "1764147600000"])


# The query parameters both listeners' audit searches take (and the console's JSON API), declared once.
TimeQuery = Annotated[str | None, Query(max_length=TIME_PARAM_MAX, json_schema_extra=_time)]
TextQuery = Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)]
OutcomeQuery = Annotated[Outcome | None, Query()]


def _next_page_link(document: dict[str, Any]) -> None:
    """The next page is an OpenAPI link: generated clients (and schemathesis' stateful phase) follow it."""
    ok = document["paths"][AUDIT_PATH]["get"]["responses"]["200"]
    ok["links"] = {
        "NextPage": {
            "operationRef": "#/paths/~1v1~1audit~1events/get",
            "parameters": {"after": "$response.body#/next_after"},
            "description": "The next page, oldest first (on the last page `next_after` is null: stop)",
        }
    }


def add_audit_routes(app: FastAPI, services: Services) -> None:
    patch_document(app, set_parameter(AUDIT_PATH, "get", "after", minimum=0, maximum=SEQ_MAX))
    patch_document(app, _next_page_link)

    @app.get(
        AUDIT_PATH,
        response_model=AuditEventList,
        summary="Read the audit trail (auditors)",
        responses=error_responses(AUTHENTICATED, AUDIT_ERRORS),
        dependencies=[requires(Permission.AUDIT_READ)],
    )
    async def audit_events(
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
        reader = services.audit_reader
        if reader is None:
            raise AuditUnavailable("this server keeps no readable audit store")
        filters = {
            "since_ms": parse_time_ms(since, "since"),
            "until_ms": parse_time_ms(until, "until"),
            "principal": principal,
            "outcome": outcome,
            "type_prefix": type,
            "request_id": request_id,
            "after_seq": after,
            "limit": limit + 1,
        }
        events = await asyncio.to_thread(reader.search, **filters)
        page = events[:limit]
        data = [{**json.loads(e.body), "hash": e.hash} for e in page]
        return AuditEventList(data=data, next_after=page[-1].seq if len(events) > limit else None)
