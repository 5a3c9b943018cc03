"""AccessControl runs before routing; a protected route without it fails closed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, make_settings, ready_runtime
from zguard.app.auth import PUBLIC, requires
from zguard.app.middleware.request_context import RequestContext
from zguard.security.rbac import Permission

pytestmark = pytest.mark.anyio


async def test_protected_route_without_the_middleware_fails_closed() -> None:
    app = FastAPI()

    @app.get("/secret", dependencies=[requires(Permission.AUDIT_READ)])
    async def secret() -> dict[str, str]:
        return {"leaked": "yes"}

    @app.get("/open", dependencies=[PUBLIC])
    async def open_() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(RequestContext, headers={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        refused = await client.get("/secret")
        public = await client.get("/open")
    assert refused.status_code == 500
    assert refused.json()["error"]["code"] == "internal_error"
    assert "leaked" not in refused.text
    assert public.json() == {"ok": "yes"}


async def test_unauthenticated_body_is_never_read(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_auth={"enabled": True})
    engine = GatedEngine()
    runtime = ready_runtime(settings, engine)
    read = []

    async def body():  # type: ignore[no-untyped-def]
        read.append(1)
        yield b'{"prompt": "x"}'

    async with api_client(settings, runtime) as client:
        resp = await client.post("/v1/images/generations", content=body(), headers={"content-type": "application/json"})
    runtime.worker.stop(timeout=5)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "missing_credentials"
    assert read == []
    assert engine.started == []
