"""Every error response the API document declares is real, and every code is reachable.

`zguard.app.contract` declares, per operation and status, the stable `code`s a client can get.
Here: each declared code names an error of zguard.errors with that HTTP status (no typo, no
status drift); each operation's own codes are produced by a real request through the app, whose
answer matches the declared schema; and the codes every route shares (the listener stack's and
authentication's) are each asserted by the tests of that layer (test_transport_limits,
test_auth, test_ratelimit, test_audit_requests, ...), which a check below keeps true. The
opposite direction, that no response carries an undeclared code, is what schemathesis checks
against a live server (tests/contract).
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, build_test_runtime, make_settings, ready_runtime
from tests.functional.test_trace_abuse import tracing
from zguard import errors
from zguard.app.api import GENERATIONS_PATH
from zguard.app.audit_routes import AUDIT_ERRORS, AUDIT_PATH
from zguard.app.contract import AUTHENTICATED, GENERATION_ERRORS, STACK, declared_codes, merge
from zguard.app.provenance import TRACE_ERRORS, TRACE_PATH
from zguard.cli.docs import openapi_document
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.passwords import hash_password
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio

STATUS_OF = {cls.code: cls.status for cls in errors.error_classes()}
OWN = {
    (GENERATIONS_PATH, "post"): GENERATION_ERRORS,
    (AUDIT_PATH, "get"): AUDIT_ERRORS,
    (TRACE_PATH, "post"): TRACE_ERRORS,
}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


@pytest.mark.parametrize("listener", ["api", "console"])
def test_every_declared_code_is_an_error_with_that_status(listener: str) -> None:
    document = openapi_document(listener)
    seen = 0
    for path, method, operation in _operations(document):
        for status, codes in declared_codes(operation).items():
            for code in codes:
                seen += 1
                assert STATUS_OF.get(code) == status, f"{method.upper()} {path}: {code} is not an HTTP {status} error"
    assert seen > 20


def test_operations_declare_the_stack_authentication_and_their_own_codes() -> None:
    document = openapi_document("api")
    for path, method, operation in _operations(document):
        declared = declared_codes(operation)
        public = "401" not in operation["responses"]
        wanted = merge(STACK, *(() if public else (AUTHENTICATED,)), OWN.get((path, method), {}))
        assert {status: set(codes) for status, codes in wanted.items()} == declared, f"{method.upper()} {path}"
        if not public:
            assert operation["security"] == [{"bearer": []}, {"basic": []}]


def test_every_shared_code_is_asserted_by_the_tests_of_its_layer() -> None:
    here = Path(__file__).resolve()
    texts = [
        path.read_text(encoding="utf-8")
        for folder in ("functional", "integration")
        for path in (here.parents[1] / folder).glob("test_*.py")
        if path != here
    ]
    for code in {code for codes in merge(STACK, AUTHENTICATED).values() for code in codes}:
        assert any(f'"{code}"' in text for text in texts), f"no test outside this one asserts {code}"


# --- each operation's own codes, reached ---------------------------------------------------------


@pytest.fixture
async def api(tmp_path: Path, demo_engine: DiffusersEngine) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, generation={"max_n": 2, "max_steps": 8, "min_side": 64, "max_side": 128})
    runtime = ready_runtime(settings, demo_engine)
    async with api_client(settings, runtime) as client:
        yield client
    runtime.worker.stop(timeout=10)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    return out.getvalue()


GEN = {"prompt": "a lighthouse", "size": "64x64"}
REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # generation
    "invalid_json": ("post", GENERATIONS_PATH, {"content": b"{", "headers": {"content-type": "application/json"}}),
    "missing_required_field": ("post", GENERATIONS_PATH, {"json": {"size": "64x64"}}),
    "unknown_field": ("post", GENERATIONS_PATH, {"json": {**GEN, "colour": "red"}}),
    "invalid_type": ("post", GENERATIONS_PATH, {"json": {**GEN, "n": "1"}}),
    "invalid_value": ("post", GENERATIONS_PATH, {"json": {**GEN, "num_inference_steps": 9}}),
    "invalid_prompt": ("post", GENERATIONS_PATH, {"json": {**GEN, "prompt": "   "}}),
    "invalid_size": ("post", GENERATIONS_PATH, {"json": {**GEN, "size": "72x64"}}),
    "unsupported_response_format": ("post", GENERATIONS_PATH, {"json": {**GEN, "response_format": "url"}}),
    "model_not_found": ("post", GENERATIONS_PATH, {"json": {**GEN, "model": "dall-e-3"}}),
    "prompt_rejected": ("post", GENERATIONS_PATH, {"json": {**GEN, "prompt": "机密 lighthouse"}}),
    "unsupported_media_type": ("post", GENERATIONS_PATH, {"content": b"prompt=x"}),
}
AUDIT_REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "invalid_value": ("get", AUDIT_PATH, {"params": {"since": "2026-02-30"}}),
    "invalid_type": ("get", AUDIT_PATH, {"params": {"limit": "ten"}}),
}
TRACE_REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "invalid_json": ("post", TRACE_PATH, {"content": b"{", "headers": {"content-type": "application/json"}}),
    "invalid_value": ("post", TRACE_PATH, {"content": b"GIF89a", "headers": {"content-type": "image/png"}}),
    "unsupported_media_type": ("post", TRACE_PATH, {"content": _png(), "headers": {"content-type": "text/plain"}}),
}


def _check(response: httpx.Response, path: str, method: str, code: str) -> None:
    operation = openapi_document("api")["paths"][path][method]
    body = response.json()
    assert "error" in body, (code, response.status_code, response.text[:300])
    assert body["error"]["code"] == code, response.text
    assert response.status_code == STATUS_OF[code]
    assert code in declared_codes(operation)[response.status_code]
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("code", sorted(REQUESTS))
async def test_generation_codes_are_reached(api: httpx.AsyncClient, code: str) -> None:
    method, path, kwargs = REQUESTS[code]
    _check(await api.request(method.upper(), path, **kwargs), path, method, code)


async def _held(tmp_path: Path, **generation: Any) -> tuple[GatedEngine, Any, httpx.AsyncClient]:
    engine = GatedEngine()
    settings = make_settings(tmp_path, generation={"min_side": 64, **generation})
    runtime = ready_runtime(settings, engine)
    return engine, runtime, api_client(settings, runtime)


async def _two(
    client: httpx.AsyncClient,
) -> tuple[asyncio.Task[httpx.Response], Callable[[], Awaitable[httpx.Response]]]:
    first = asyncio.create_task(client.post(GENERATIONS_PATH, json=GEN))
    return first, lambda: client.post(GENERATIONS_PATH, json=GEN)


async def test_busy_concurrency_not_ready_and_timeout_are_reached(tmp_path: Path) -> None:
    engine, runtime, client = await _held(tmp_path / "busy", max_queue=0)
    async with client:
        first, second = await _two(client)
        await asyncio.to_thread(engine.running.wait, 10)
        _check(await second(), GENERATIONS_PATH, "post", "server_busy")
        engine.release()
        assert (await first).status_code == 200
    runtime.worker.stop(timeout=10)

    engine, runtime, client = await _held(tmp_path / "timeout", timeout_s=0.2)
    async with client:
        _check(await client.post(GENERATIONS_PATH, json=GEN), GENERATIONS_PATH, "post", "generation_timeout")
    engine.release()
    runtime.worker.stop(timeout=10)

    engine, runtime, client = await _held(tmp_path / "ready")
    runtime.services.readiness.set(ModelState.LOADING)
    async with client:
        _check(await client.post(GENERATIONS_PATH, json=GEN), GENERATIONS_PATH, "post", "model_not_ready")
    runtime.worker.stop(timeout=10)


async def test_concurrency_cap_is_reached(tmp_path: Path) -> None:
    engine = GatedEngine()
    settings = make_settings(tmp_path, rate_limits={"max_concurrent_per_principal": 1})
    runtime = ready_runtime(settings, engine)
    async with api_client(settings, runtime) as client:
        first, second = await _two(client)
        await asyncio.to_thread(engine.running.wait, 10)
        _check(await second(), GENERATIONS_PATH, "post", "too_many_concurrent_requests")
        engine.release()
        assert (await first).status_code == 200
    runtime.worker.stop(timeout=10)


def test_every_own_code_has_a_request_here() -> None:
    """The tables above cover each operation's own codes (a new code needs a request here)."""
    reached = {
        GENERATIONS_PATH: set(REQUESTS)
        | {"server_busy", "generation_timeout", "model_not_ready"}
        | {"too_many_concurrent_requests"}
        | GRANT_REACHED_ELSEWHERE,
        AUDIT_PATH: set(AUDIT_REQUESTS),
        TRACE_PATH: set(TRACE_REQUESTS) | TRACE_REACHED_ELSEWHERE,
    }
    for (path, _method), own in OWN.items():
        assert {code for codes in own.values() for code in codes} == reached[path], path


# The trace pool's cap (server_busy) and deadline (trace_timeout) are reached on this route, with
# these codes, by tests/functional/test_trace_abuse.py; a server without a watermark key
# (service_unavailable) below.
TRACE_REACHED_ELSEWHERE = {"server_busy", "trace_timeout", "service_unavailable"}
# The grant's codes (approvals.required, a state database) are reached on the generation route,
# and checked against this document, by tests/functional/test_grant_governance.py.
GRANT_REACHED_ELSEWHERE = {"approval_required", "grant_exhausted", "grant_scope_exceeded", "grant_quota_exceeded"}


async def test_trace_and_audit_codes_are_reached(tmp_path: Path) -> None:
    async with tracing(tmp_path / "store") as tr:
        for code, (method, path, kwargs) in {**TRACE_REQUESTS, **AUDIT_REQUESTS}.items():
            headers = {**kwargs.get("headers", {}), **tr.auditor}
            _check(await tr.api.request(method.upper(), path, **{**kwargs, "headers": headers}), path, method, code)


async def test_a_server_without_a_watermark_key_says_so(tmp_path: Path) -> None:
    auditor = {"username": "audrey", "password": hash_password(PASSWORD, cost=4), "roles": ["auditor"]}
    settings = make_settings(tmp_path, api_auth={"enabled": True, "users": [auditor]})
    runtime = build_test_runtime(settings, GatedEngine(), provenance=ProvenanceMarker(settings.provenance, None, None))
    runtime.services.readiness.set(ModelState.READY)
    headers = {
        "authorization": "Basic " + base64.b64encode(f"audrey:{PASSWORD}".encode()).decode(),
        "content-type": "image/png",
    }
    async with api_client(settings, runtime) as client:
        _check(
            await client.post(TRACE_PATH, content=_png(), headers=headers), TRACE_PATH, "post", "service_unavailable"
        )
    runtime.worker.stop(timeout=10)


PASSWORD = "contract-test-password-1"
