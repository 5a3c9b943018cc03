"""Issue 14 (7, 8): hostile query strings, repeated headers, foreign `Host` names, slash
redirects, 405s that map protected routes, and sizes the loaded model cannot draw — each a 4xx in
the error shape, never a 500, and never a hint of which protected routes exist."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from tests.common.audit import audit_trail, sqlite_url
from tests.common.factories import api_client, build_test_auth, build_test_runtime, make_settings
from tests.functional.test_errors import assert_error
from zguard.app.api import create_api_app
from zguard.audit.trail import AuditTrail
from zguard.engine.pipeline import DiffusersEngine
from zguard.security.passwords import hash_password
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio
EVENTS = "/v1/audit/events"
PASSWORD = "correct horse"


def basic(username: str, password: str = PASSWORD) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


AUDITOR = basic("auditor1")


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    with audit_trail(sqlite_url(tmp_path), tmp_path / "keys") as t:
        yield t


def _settings(tmp_path: Path, **sections: Any) -> Any:
    users = [
        {"username": "auditor1", "password": hash_password(PASSWORD, cost=4), "roles": ["auditor"]},
        {"username": "gen1", "password": hash_password(PASSWORD, cost=4), "roles": ["generator"]},
    ]
    return make_settings(
        tmp_path / "state", api_auth={"enabled": True, "users": users}, generation={"min_side": 16}, **sections
    )


@pytest.fixture
async def api(tmp_path: Path, demo_engine: DiffusersEngine, trail: AuditTrail) -> AsyncIterator[httpx.AsyncClient]:
    settings = _settings(tmp_path, api={"server_names": ["zguard.test", "api.bank.example:5000"]})
    runtime = build_test_runtime(settings, demo_engine, build_test_auth(settings, audit=trail), audit=trail)
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as client:
            yield client
    finally:
        runtime.worker.stop(timeout=10)


# --- query parameters: FastAPI's validation errors in our shape, every bound before the database --


@pytest.mark.parametrize(
    ("query", "status", "code", "param"),
    [
        ("limit=abc", 400, "invalid_type", "limit"),
        ("limit=1.5", 400, "invalid_type", "limit"),
        ("after=abc", 400, "invalid_type", "after"),
        ("limit=0", 400, "invalid_value", "limit"),
        ("limit=1001", 400, "invalid_value", "limit"),
        ("limit=" + "9" * 400, 400, "invalid_value", "limit"),
        (f"after={2**63}", 400, "invalid_value", "after"),
        ("after=-1", 400, "invalid_value", "after"),
        ("after=" + "9" * 5000, 400, "invalid_value", "after"),
        ("since=", 400, "invalid_value", "since"),
        ("since=" + "9" * 300, 400, "invalid_value", "since"),
        ("since=99999999999999999", 400, "invalid_value", "since"),
        ("until=" + "2026-01-01" * 20, 400, "invalid_value", "until"),
        ("since=%D9%A3%D9%A3", 400, "invalid_value", "since"),  # Arabic-Indic digits: isdigit(), not int()
        ("since=0001-01-01T00:00:00%2B23:59", 400, "invalid_value", "since"),
        ("principal=" + "x" * 10_000, 400, "invalid_value", "principal"),
        ("type=" + "y" * 300, 400, "invalid_value", "type"),
    ],
)
async def test_hostile_audit_queries_answer_400_in_the_error_shape(
    api: httpx.AsyncClient, query: str, status: int, code: str, param: str
) -> None:
    resp = await api.get(f"{EVENTS}?{query}", headers=AUDITOR)
    message = assert_error(resp, status, code, param=param)
    assert "detail" not in resp.json()
    assert len(message) < 300


async def test_bounds_themselves_are_accepted(api: httpx.AsyncClient) -> None:
    for query in ("limit=1", "limit=1000", f"after={2**63 - 1}", "after=0", "since=253402300799999", "since=0"):
        resp = await api.get(f"{EVENTS}?{query}", headers=AUDITOR)
        assert resp.status_code == 200, (query, resp.text)


def test_the_published_document_has_no_fastapi_validation_shape(tmp_path: Path, demo_engine: DiffusersEngine) -> None:
    settings = _settings(tmp_path)
    runtime = build_test_runtime(settings, demo_engine)
    document = create_api_app(settings, runtime.services).openapi()
    text = repr(document)
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in text
    for operations in document["paths"].values():
        for operation in operations.values():
            assert "422" not in operation["responses"]
    events = document["paths"][EVENTS]["get"]
    assert "400" in events["responses"]
    limit = next(p for p in events["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


# --- repeated headers and Host ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["authorization", "content-type", "proxy-authorization"])
async def test_a_repeated_deciding_header_is_refused(api: httpx.AsyncClient, name: str) -> None:
    good = AUDITOR["authorization"]
    headers = [("authorization", good), (name, good if name != "content-type" else "application/json")]
    if name != "authorization":
        headers.append((name, "text/plain" if name == "content-type" else good))
    resp = await api.get(EVENTS, headers=headers)
    assert_error(resp, 400, "duplicate_header", param=name)


async def test_two_authorization_headers_never_authenticate_either(api: httpx.AsyncClient) -> None:
    # a WAF reading the first sees a generator; Starlette alone would take the second (an auditor)
    resp = await api.get(EVENTS, headers=[("authorization", basic("gen1")["authorization"]), *AUDITOR.items()])
    assert_error(resp, 400, "duplicate_header", param="authorization")


@pytest.mark.parametrize(
    "host", ["evil.example", "zguard.test.evil.example", "api.bank.example:5001", "api.bank.example"]
)
async def test_a_host_outside_server_names_is_refused(api: httpx.AsyncClient, host: str) -> None:
    resp = await api.get("/v1/models", headers={"host": host, **AUDITOR})
    assert_error(resp, 400, "invalid_host")
    assert host not in resp.text


@pytest.mark.parametrize("host", ["zguard.test", "ZGUARD.test:8443", "api.bank.example:5000"])
async def test_hosts_in_server_names_are_served(api: httpx.AsyncClient, host: str) -> None:
    resp = await api.get("/healthz", headers={"host": host})
    assert resp.status_code == 200, resp.text


async def test_any_host_is_served_without_server_names_and_never_reflected(tmp_path: Path) -> None:
    from tests.common.engines import GatedEngine

    settings = make_settings(tmp_path / "state")
    runtime = build_test_runtime(settings, GatedEngine())
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as client:
            ok = await client.get("/v1/models", headers={"host": "evil.example"})
            slash = await client.get("/v1/models/", headers={"host": "evil.example"})
    finally:
        runtime.worker.stop(timeout=5)
    assert ok.status_code == 200
    assert_error(slash, 404, "not_found")  # no 307 to http://evil.example/v1/models
    assert "location" not in slash.headers
    assert "evil.example" not in slash.text


# --- a stranger cannot map protected routes ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models/"),  # was a 307 to the protected route
        ("POST", "/v1/models"),  # was a 405 only a real route gives
        ("DELETE", "/v1/images/generations"),
        ("GET", EVENTS + "/"),
        ("GET", "/v1/no-such-route"),
        ("PUT", "/v1/provenance/trace"),
    ],
)
async def test_strangers_get_401_whether_or_not_a_route_exists(api: httpx.AsyncClient, method: str, path: str) -> None:
    resp = await api.request(method, path)
    assert_error(resp, 401, "missing_credentials", error_type="authentication_error")
    assert "location" not in resp.headers
    assert "allow" not in resp.headers


async def test_authenticated_callers_still_learn_404_and_405(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/v1/no-such-route", headers=AUDITOR), 404, "not_found")
    assert_error(await api.post("/v1/models", headers=AUDITOR), 405, "method_not_allowed")


async def test_public_routes_answer_their_own_405(api: httpx.AsyncClient) -> None:
    assert_error(await api.post("/healthz"), 405, "method_not_allowed")


# --- sizes the loaded model cannot draw --------------------------------------------------------


def test_the_demo_model_reports_what_it_can_draw(demo_engine: DiffusersEngine) -> None:
    # axes_lens [1024, 64, 64], patch 2, VAE 8: 64 patches of 16 pixels a side
    assert (demo_engine.info.max_width, demo_engine.info.max_height) == (1024, 1024)


@pytest.mark.parametrize("size", ["1040x64", "64x1040", "2048x2048", "1024x1040"])
async def test_sizes_the_model_cannot_draw_are_refused_before_admission(
    tmp_path: Path, demo_engine: DiffusersEngine, size: str
) -> None:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    runtime = build_test_runtime(settings, demo_engine)
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as client:
            resp = await client.post("/v1/images/generations", json={"prompt": "a cat", "size": size})
    finally:
        runtime.worker.stop(timeout=10)
    message = assert_error(resp, 400, "invalid_size", param="size")
    assert "1024x1024" in message
    assert runtime.services.admission.running == 0


async def test_the_largest_drawable_side_is_served(tmp_path: Path, demo_engine: DiffusersEngine) -> None:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16})
    runtime = build_test_runtime(settings, demo_engine)
    runtime.services.readiness.set(ModelState.READY)
    try:
        async with api_client(settings, runtime) as client:
            resp = await client.post(
                "/v1/images/generations", json={"prompt": "a cat", "size": "1024x16", "num_inference_steps": 1}
            )
    finally:
        runtime.worker.stop(timeout=10)
    assert resp.status_code == 200, resp.text


# --- fuzz: any query string on the audit reader is a 200 or a 400 in the shape -----------------

QUERY_PARAMS = ("since", "until", "principal", "outcome", "type", "request_id", "after", "limit")
_values = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet="0123456789", min_size=15, max_size=400),
    st.sampled_from(["", "2026-01-01", "2026-13-01", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"]),
)


def test_audit_queries_never_fail_with_a_server_error(
    tmp_path: Path, demo_engine: DiffusersEngine, trail: AuditTrail
) -> None:
    settings = _settings(tmp_path)
    runtime = build_test_runtime(settings, demo_engine, build_test_auth(settings, audit=trail), audit=trail)
    runtime.services.readiness.set(ModelState.READY)
    statuses: dict[int, int] = {}
    with asyncio.Runner() as runner:
        client = api_client(settings, runtime)

        @hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
        @hypothesis.given(params=st.dictionaries(st.sampled_from(QUERY_PARAMS), _values, max_size=4))
        def fuzz(params: dict[str, str]) -> None:
            resp = runner.run(client.get(EVENTS, params=params, headers=AUDITOR))
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code != 200:
                body = resp.json()
                assert resp.status_code == 400, (params, resp.text)
                assert list(body) == ["error"]
                assert body["error"]["code"] in ("invalid_type", "invalid_value"), body

        try:
            fuzz()
        finally:
            runner.run(client.aclose())
            runtime.worker.stop(timeout=10)
    assert statuses.get(200, 0) >= 5, statuses
    assert statuses.get(400, 0) >= 20, statuses


# --- every hostile request: a 4xx in the shape, a bounded event, a healthy server --------------


async def test_hostile_requests_get_4xx_bounded_events_and_leave_the_server_healthy(
    api: httpx.AsyncClient, trail: AuditTrail
) -> None:
    huge = "u" * 262_144
    hostile: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/models", {"headers": basic(huge)}),  # a 256 KiB Basic username
        ("GET", "/v1/models", {"headers": {"authorization": "Bearer " + "zg_" + "x" * 100_000}}),
        ("GET", EVENTS, {"headers": [*AUDITOR.items(), *AUDITOR.items()]}),
        ("GET", "/v1/models", {"headers": {"host": "evil.example", **AUDITOR}}),
        ("GET", f"{EVENTS}?limit=abc", {"headers": AUDITOR}),
        ("GET", f"{EVENTS}?after={2**63}", {"headers": AUDITOR}),
        ("GET", f"{EVENTS}?since=" + "9" * 5000, {"headers": AUDITOR}),
        ("GET", "/v1/" + "p" * 20_000, {}),
        ("GET", "/v1/models?" + "q=" + "x" * 20_000, {"headers": {"user-agent": "a" * 50_000}}),
        ("POST", "/v1/images/generations", {"headers": basic("gen1"), "json": {"prompt": "x", "size": "2048x2048"}}),
        ("POST", "/v1/images/generations", {"headers": basic("gen1"), "json": {"prompt": "x", "user": "u" * 50_000}}),
        ("DELETE", "/v1/models", {}),
    ]
    for method, path, kwargs in hostile:
        resp = await api.request(method, path, **kwargs)
        assert 400 <= resp.status_code < 500, (method, path[:40], resp.status_code, resp.text[:200])
        body = resp.json()
        assert list(body) == ["error"], body
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert len(resp.content) < 2048
    assert (await api.get("/readyz")).status_code == 200
    sizes = [len(event.body) for event in trail.store.iter_events()]
    assert len(sizes) >= len(hostile)
    assert max(sizes) < 8192 + 1024, max(sizes)  # every client text in an event is bounded
