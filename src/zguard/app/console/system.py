"""The console's model-and-system and prompt-policy pages, and their JSON API twins.

- /system (`system:read`): the served model (its manifest digest once verified), readiness, the
  queue, and the audit trail's head, checkpoint and forwarding state: the same numbers
  `/readyz/detail` and `/metrics` give, read the same way (the trail off the event loop).
- /policy (`system:read` to view, `policy:manage` to test and reload): the lists in force with the
  SHA-256 of each, the reload counts; "test a prompt" answers with the verdict the API would give
  (the category, never the matched term unless `policy.reveal_terms`); "reload" is the same
  `reload_and_audit` SIGHUP and `zguard policy reload` run, so it leaves the same audit event.
  The page (and `GET /console/api/policy/reloads`) also shows the last reloads, read back from
  the audit trail: shown to whoever may view the page, not only to `audit:read`, because a
  `policy.reloaded` event is policy metadata (when, who, outcome, list hashes) and holds no
  prompt. Without a readable store the history says it is unavailable; the page still answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from zguard.app.auth import CurrentIdentity, requires
from zguard.app.console.common import N_, Page, form
from zguard.app.console.web import see_other
from zguard.app.context import Services
from zguard.app.middleware.audit_requests import request_record
from zguard.app.wire import parse_json_object
from zguard.errors import InvalidValue
from zguard.security.rbac import Permission
from zguard.services.prompt_policy import RELOAD_EVENT, reload_and_audit
from zguard.services.sessions import NoSessions, SessionService

API = "/console/api"
PROMPT_MAX = 4000  # characters a tested prompt may have (the API's own bound is tighter or equal)
HISTORY_ROWS = 20  # reloads the history shows, newest first: one bounded, indexed read of the trail
SOURCES = {"SIGHUP": "signal", "console": "console"}  # `zguard policy reload` sends SIGHUP: "signal"
HASH_PREFIX = "sha256:"
log = logging.getLogger("zguard.console")


_TEST_BODY = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX, "pattern": r"\S"},
        "negative_prompt": {"type": ["string", "null"], "maxLength": PROMPT_MAX},
    },
}


def system_status(services: Services) -> dict[str, Any]:
    info = services.engine.info
    return {
        "model": info.id,
        "demo": info.demo,
        "device": info.device,
        "dtype": info.dtype,
        "manifest": info.manifest,
        "state": services.readiness.state.value,
        "ready": services.readiness.ready,
        "generating": services.admission.running,
        "waiting": services.admission.waiting,
    }


def policy_status(services: Services) -> dict[str, Any]:
    holder = services.policy
    if holder is None:
        return {"lists": {}, "terms": 0, "reloads": {}}
    return {"lists": dict(holder.hashes), "terms": holder.policy.term_count, "reloads": dict(holder.reloads)}


def reload_row(stored: Any) -> dict[str, Any]:
    """One `policy.reloaded` event as the history shows it: every field is the event's own."""
    body = json.loads(stored.body)
    detail = body.get("detail") or {}
    trigger = str(detail.get("trigger") or "")
    return {
        "seq": stored.seq,
        "time": datetime.fromtimestamp(stored.time, UTC),
        "principal": body.get("principal"),
        "source": SOURCES.get(trigger, trigger),
        "outcome": "ok" if stored.outcome == "done" else "failed",
        "code": body.get("code"),
        "error": detail.get("error"),
        "terms": detail.get("terms"),
        "lists": {k.removeprefix(HASH_PREFIX): v for k, v in detail.items() if k.startswith(HASH_PREFIX)},
    }


async def reload_history(services: Services) -> list[dict[str, Any]] | None:
    """The last HISTORY_ROWS reloads, newest first; None when no readable audit store answers.

    Fail open for this view only: the history is a read-back for people, the reload itself and
    its audit event are unaffected, so a store that cannot be read costs the section, not the page."""
    reader = services.audit_reader
    if reader is None:
        return None
    try:
        found = await asyncio.to_thread(reader.search, type_prefix=RELOAD_EVENT, newest_first=True, limit=HISTORY_ROWS)
    except Exception:  # any store failure: the section says "unavailable", the log has the cause
        log.exception("could not read the prompt policy reload history")
        return None
    rows = [reload_row(e) for e in found if e.type == RELOAD_EVENT]
    return sorted(rows, key=lambda row: row["seq"], reverse=True)[:HISTORY_ROWS]


def history_json(rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    if rows is None:
        return {"available": False, "reloads": []}
    return {"available": True, "reloads": [{**row, "time": row["time"].isoformat()} for row in rows]}


def verdict_of(services: Services, prompt: str, negative: str | None, roles: frozenset[str]) -> dict[str, Any]:
    """What the API would decide for this prompt, as shown to a policy admin."""
    holder = services.policy
    if holder is None:
        return {"outcome": "allowed", "findings": []}
    verdict = holder.check(prompt, negative, roles)
    reveal = holder.settings.reveal_terms
    return {"outcome": verdict.outcome, "findings": [f.as_dict(reveal_terms=reveal) for f in verdict.findings]}


def add_system_pages(app: FastAPI, services: Services, sessions: SessionService | NoSessions, page: Page) -> None:
    del sessions  # nothing here is per session

    async def audit_state() -> dict[str, object]:
        return await asyncio.to_thread(services.audit_health.snapshot)

    async def findings() -> list[dict[str, Any]]:
        return await asyncio.to_thread(services.doctor) if services.doctor is not None else []

    @app.get("/system", dependencies=[requires(Permission.SYSTEM_READ)], include_in_schema=False)
    async def system_page(request: Request, identity: CurrentIdentity) -> Response:
        return page(
            request,
            "system.html",
            identity,
            system=system_status(services),
            audit=await audit_state(),
            findings=await findings(),
        )

    @app.get(f"{API}/system", dependencies=[requires(Permission.SYSTEM_READ)])
    async def system_json() -> JSONResponse:
        """The served model, readiness, queue, the audit trail's state and `zguard doctor`'s findings."""
        return JSONResponse(
            {"model": system_status(services), "audit": await audit_state(), "doctor": await findings()}
        )

    @app.get("/policy", dependencies=[requires(Permission.SYSTEM_READ)], include_in_schema=False)
    async def policy_page(request: Request, identity: CurrentIdentity) -> Response:
        return page(
            request,
            "policy.html",
            identity,
            policy=policy_status(services),
            history=await reload_history(services),
            tested=None,
            prompt="",
            error=None,
        )

    @app.get(f"{API}/policy", dependencies=[requires(Permission.SYSTEM_READ)])
    async def policy_json() -> JSONResponse:
        """The banned-term lists in force (name → SHA-256), their term count and reloads."""
        return JSONResponse(policy_status(services))

    @app.get(f"{API}/policy/reloads", dependencies=[requires(Permission.SYSTEM_READ)])
    async def policy_reloads_json() -> JSONResponse:
        """The last 20 prompt policy reloads, newest first, from the audit trail: time, principal,
        source (`signal` or `console`), outcome (`ok`, `failed` with `code` and `error`) and the
        SHA-256 of each list read. `available` is false when this server keeps no readable store."""
        return JSONResponse(history_json(await reload_history(services)))

    @app.post("/policy/test", dependencies=[requires(Permission.POLICY_MANAGE)], include_in_schema=False)
    async def policy_test(request: Request, identity: CurrentIdentity) -> Response:
        fields = await form(request)
        prompt = fields.get("prompt", "")[:PROMPT_MAX]
        tested = verdict_of(services, prompt, None, identity.roles) if prompt.strip() else None
        error = None if tested is not None else N_("Enter a prompt to test.")
        status = 200 if tested is not None else 400
        return page(
            request,
            "policy.html",
            identity,
            status,
            policy=policy_status(services),
            history=await reload_history(services),
            tested=tested,
            prompt=prompt,
            error=error,
        )

    @app.post(
        f"{API}/policy/test",
        dependencies=[requires(Permission.POLICY_MANAGE)],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _TEST_BODY}}}},
    )
    async def policy_test_json(request: Request, identity: CurrentIdentity) -> JSONResponse:
        """The verdict the image API would give `prompt` (and `negative_prompt`) for the caller's roles."""
        body = parse_json_object(await request.body())
        prompt, negative = body.get("prompt"), body.get("negative_prompt")
        if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > PROMPT_MAX:
            raise InvalidValue(f"prompt: a non-empty string of at most {PROMPT_MAX} characters", param="prompt")
        if negative is not None and (not isinstance(negative, str) or len(negative) > PROMPT_MAX):
            raise InvalidValue(f"negative_prompt: a string of at most {PROMPT_MAX} characters", param="negative_prompt")
        return JSONResponse(verdict_of(services, prompt, negative, identity.roles))

    async def reload(identity: CurrentIdentity) -> dict[str, Any]:
        if services.policy is None:
            return {"ok": False, "error": "no prompt policy"}
        result = await asyncio.to_thread(reload_and_audit, services.policy, services.audit, "console", identity.name)
        return {"ok": result.ok, "lists": result.hashes, "terms": result.terms, "error": result.error}

    @app.post("/policy/reload", dependencies=[requires(Permission.POLICY_MANAGE)], include_in_schema=False)
    async def policy_reload(request: Request, identity: CurrentIdentity) -> Response:
        done = await reload(identity)
        record = request_record(request.scope)
        if record is not None:
            record.type = "console.policy_reload"
            record.detail["reload_ok"] = bool(done["ok"])
        return see_other("/policy")

    @app.post(f"{API}/policy/reload", dependencies=[requires(Permission.POLICY_MANAGE)])
    async def policy_reload_json(identity: CurrentIdentity) -> JSONResponse:
        """Re-read the lists (as SIGHUP and `zguard policy reload` do); the old policy stays on failure."""
        return JSONResponse(await reload(identity))
