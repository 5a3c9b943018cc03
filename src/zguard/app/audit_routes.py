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
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query

from zguard.app.auth import requires
from zguard.app.context import Services
from zguard.app.schemas import AuditEventList, ErrorResponse
from zguard.errors import AuditUnavailable, InvalidValue
from zguard.security.rbac import Permission

AUDIT_PATH = "/v1/audit/events"
AUDIT_PAGE_MAX = 1000
SEQ_MAX = 2**63 - 1  # the largest sequence number a database BIGINT holds
TIME_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last moment ISO 8601 can write
TEXT_PARAM_MAX = 256  # filters on names, types and ids; nothing stored is longer
TIME_PARAM_MAX = 64


def parse_time_ms(value: str | None, param: str) -> int | None:
    """ISO 8601 (UTC when no zone is given) or UNIX milliseconds, 0 to the end of year 9999."""
    if value is None:
        return None
    problem = f"'{param}' must be ISO 8601 (2026-11-26T09:00:00Z) or UNIX milliseconds"
    if value.isascii() and value.isdigit():
        if len(value) > len(str(TIME_MS_MAX)) or int(value) > TIME_MS_MAX:
            raise InvalidValue(f"{problem} up to {TIME_MS_MAX}", param=param)
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue(problem, param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        ms = int(moment.timestamp() * 1000)
    except (OverflowError, ValueError):  # a zone that moves 0001-01-01 or 9999-12-31 out of range
        raise InvalidValue(problem, param=param) from None
    if not 0 <= ms <= TIME_MS_MAX:
        raise InvalidValue(f"{problem}, from 1970 to the end of 9999", param=param)
    return ms


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": "Error in the OpenAI shape"} for status in statuses}


def add_audit_routes(app: FastAPI, services: Services) -> None:
    @app.get(
        AUDIT_PATH,
        response_model=AuditEventList,
        summary="Read the audit trail (auditors)",
        responses=_error_responses(400, 401, 403, 429, 503),
        dependencies=[requires(Permission.AUDIT_READ)],
    )
    async def audit_events(
        *,
        since: Annotated[str | None, Query(max_length=TIME_PARAM_MAX)] = None,
        until: Annotated[str | None, Query(max_length=TIME_PARAM_MAX)] = None,
        principal: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        outcome: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        type: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
        request_id: Annotated[str | None, Query(max_length=TEXT_PARAM_MAX)] = None,
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
