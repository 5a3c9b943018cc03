"""An operator's error reaching the HTTP layer is answered as internal_error, never with its message."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from zguard.app.errors import handle_zguard_error
from zguard.errors import ZguardError
from zguard.security.keys import KeyFileError

pytestmark = pytest.mark.anyio
SECRET_PATH = "/var/lib/zguard/watermark.key"


def _with_request_id(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["request_id"] = "r1"
        await app(scope, receive, send)

    return wrapped


async def test_a_key_file_error_is_an_internal_error_without_its_path() -> None:
    app = FastAPI()
    app.add_exception_handler(ZguardError, handle_zguard_error)

    @app.get("/boom")
    async def boom() -> None:
        raise KeyFileError(f"{SECRET_PATH} is readable by group or others (mode 640); chmod 600 {SECRET_PATH}")

    transport = httpx.ASGITransport(app=_with_request_id(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    assert "r1" in error["message"]
    assert SECRET_PATH not in response.text
    assert "chmod" not in response.text
