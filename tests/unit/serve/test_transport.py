"""`zguard.serve.transport` as uvicorn is configured with it, and its refusal bytes."""

from __future__ import annotations

import json

from zguard.app.middleware.request_context import API_SECURITY_HEADERS, CONSOLE_SECURITY_HEADERS
from zguard.config import Settings
from zguard.errors import RequestHeaderFieldsTooLarge, TooManyConnections
from zguard.serve.listeners import ACCEPT_BATCH, listener_config
from zguard.serve.transport import GuardedHttpProtocol, listener_guards, refusal_bytes


async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_listener_config_runs_the_guarded_protocol_without_websockets() -> None:
    settings = Settings.model_validate({"api": {"transport": {"keep_alive_timeout_s": 7, "max_connections": 9}}})
    guards = listener_guards(settings, lambda _refusal: None)
    config = listener_config(app, 5, guard=guards["api"])
    config.load()
    assert issubclass(config.http_protocol_class, GuardedHttpProtocol)
    assert config.http_protocol_class.table.max_connections == 9
    assert config.ws_protocol_class is None
    assert config.timeout_keep_alive == 7
    assert config.backlog == ACCEPT_BATCH
    # Each config gets a table of its own: two listeners never share their counts.
    assert listener_config(app, 5).http is not listener_config(app, 5).http


def test_each_listener_refuses_with_its_own_security_headers() -> None:
    guards = listener_guards(Settings(), lambda _refusal: None)
    assert guards["api"].headers == API_SECURITY_HEADERS
    assert guards["console"].headers == CONSOLE_SECURITY_HEADERS
    assert (guards["api"].listener, guards["console"].listener) == ("api", "console")


def test_refusal_bytes_are_one_complete_response_in_the_error_shape() -> None:
    raw = refusal_bytes(
        TooManyConnections("too many connections to this listener; retry later", retry_after=1),
        "a" * 32,
        API_SECURITY_HEADERS,
        [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")],
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "1"
    assert headers["x-request-id"] == "a" * 32
    assert headers["connection"] == "close"
    assert headers["server"] == "zguard"
    assert headers["x-frame-options"] == "DENY"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {
        "error": {
            "message": "too many connections to this listener; retry later",
            "type": "server_error",
            "param": None,
            "code": "too_many_connections",
        }
    }
    first_line = refusal_bytes(RequestHeaderFieldsTooLarge("x"), "b" * 32, {}, []).split(b"\r\n", 1)[0]
    assert first_line == b"HTTP/1.1 431 Request Header Fields Too Large"
