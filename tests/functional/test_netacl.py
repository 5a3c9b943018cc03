"""Network allowlists through the real apps: in-process with chosen peer addresses, then over TCP.

`httpx.ASGITransport(client=...)` sets the TCP peer address the app sees; the last test runs the
real `zguard serve` and connects from two loopback source addresses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, console_client, make_settings, ready_runtime
from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from tests.functional.test_errors import GENERATIONS, assert_error
from zguard.app.middleware.network_acl import NetworkAcl
from zguard.audit.memory import MemoryAuditSink
from zguard.security.netacl import NetworkAllowlist
from zguard.serve.wiring import Runtime

PERMISSION_ERROR = "permission_error"
PROXY = "10.0.0.1"
BODY = {"prompt": "a cat", "size": "64x64"}


@contextlib.asynccontextmanager
async def clients(
    tmp_path: Path, peer: str, engine: GatedEngine | None = None, **sections: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, Runtime]]:
    """(API client, console client, runtime) as seen from `peer`, under `sections` settings."""
    if engine is None:
        engine = GatedEngine()
        engine.release()
    settings = make_settings(tmp_path / "state", generation={"min_side": 16, "default_steps": 1}, **sections)
    runtime = ready_runtime(settings, engine)
    try:
        async with (
            api_client(settings, runtime, peer=(peer, 40000)) as api,
            console_client(settings, runtime, peer=(peer, 40000)) as console,
        ):
            yield api, console, runtime
    finally:
        assert runtime.worker.stop(timeout=5)


def denied(resp: httpx.Response, message: str, *, console: bool = False) -> None:
    assert assert_error(resp, 403, "ip_not_allowed", error_type=PERMISSION_ERROR, console=console) == message


# --- the peer address ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/nope", "/docs", GENERATIONS])
async def test_peer_outside_the_allowlist_gets_403_on_every_path(tmp_path: Path, path: str) -> None:
    async with clients(tmp_path, "10.1.2.3", api={"allow": ["192.168.0.0/16"]}) as (api, _, _):
        resp = await api.get(path)
    denied(resp, "address 10.1.2.3 is not allowed on the api listener; add it to api.allow")


@pytest.mark.anyio
async def test_default_allowlist_is_loopback_only(tmp_path: Path) -> None:
    async with clients(tmp_path, "10.1.2.3") as (api, console, _):
        denied(await api.get("/healthz"), "address 10.1.2.3 is not allowed on the api listener; add it to api.allow")
        message = "address 10.1.2.3 is not allowed on the console listener; add it to console.allow"
        denied(await console.get("/"), message, console=True)
    for loopback in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        async with clients(tmp_path, loopback) as (api, console, _):
            assert (await api.get("/healthz")).json() == {"status": "ok"}
            assert (await console.get("/")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("peer", ["10.1.2.3", "10.255.0.1", "192.168.7.7"])
async def test_peer_inside_the_allowlist_is_served(tmp_path: Path, peer: str) -> None:
    async with clients(tmp_path, peer, api={"allow": ["10.0.0.0/8", "192.168.7.7"]}) as (api, _, _):
        resp = await api.get("/healthz")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ok"}
        assert (await api.post(GENERATIONS, json=BODY)).status_code == 200


@pytest.mark.anyio
async def test_ipv6_peers(tmp_path: Path) -> None:
    allow = {"allow": ["2001:db8::/32", "10.0.0.0/8"]}
    async with clients(tmp_path, "2001:db8::7", api=allow) as (api, _, _):
        assert (await api.get("/healthz")).status_code == 200
    async with clients(tmp_path, "::ffff:10.1.2.3", api=allow) as (api, _, _):
        assert (await api.get("/healthz")).status_code == 200  # IPv4-mapped: checked as 10.1.2.3
    async with clients(tmp_path, "2001:db9::1", api=allow) as (api, _, _):
        message = "address 2001:db9::1 is not allowed on the api listener; add it to api.allow"
        denied(await api.get("/healthz"), message)
    async with clients(tmp_path, "::ffff:11.0.0.1", api=allow) as (api, _, _):
        message = "address 11.0.0.1 is not allowed on the api listener; add it to api.allow"
        denied(await api.get("/healthz"), message)


@pytest.mark.anyio
async def test_console_has_its_own_allowlist(tmp_path: Path) -> None:
    sections = {"api": {"allow": ["10.0.0.0/8"]}, "console": {"allow": ["192.168.0.0/24"]}}
    async with clients(tmp_path, "10.1.2.3", **sections) as (api, console, _):
        assert (await api.get("/healthz")).status_code == 200
        message = "address 10.1.2.3 is not allowed on the console listener; add it to console.allow"
        for path in ("/", "/api/status", "/healthz", "/nope"):
            denied(await console.get(path), message, console=True)
    async with clients(tmp_path, "192.168.0.9", **sections) as (api, console, _):
        assert (await console.get("/api/status")).json()["ready"] is True
        message = "address 192.168.0.9 is not allowed on the api listener; add it to api.allow"
        denied(await api.get("/healthz"), message)


@pytest.mark.anyio
async def test_empty_allowlist_refuses_everyone(tmp_path: Path) -> None:
    async with clients(tmp_path, "127.0.0.1", api={"allow": []}) as (api, console, _):
        denied(await api.get("/healthz"), "address 127.0.0.1 is not allowed on the api listener; add it to api.allow")
        assert (await console.get("/")).status_code == 200


# --- a refused request costs nothing ---------------------------------------------------------


@pytest.mark.anyio
async def test_refused_request_never_reads_the_body_or_reaches_the_engine(tmp_path: Path) -> None:
    engine = GatedEngine()
    engine.release()
    read: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(b"{}")
        yield b'{"prompt": "a cat", "size": "64x64"}'

    async with clients(tmp_path, "10.1.2.3", engine=engine) as (api, _, runtime):
        message = "address 10.1.2.3 is not allowed on the api listener; add it to api.allow"
        denied(await api.post(GENERATIONS, json=BODY), message)
        denied(
            await api.post(GENERATIONS, content=b"x" * 10_000_000, headers={"content-type": "application/json"}),
            message,
        )
        denied(await api.post(GENERATIONS, content=body(), headers={"content-type": "application/json"}), message)
        denied(await api.post(GENERATIONS, content=b"{", headers={"content-type": "text/plain"}), message)
        assert runtime.admission.running == 0
    assert read == []  # the streamed body was never asked for
    assert engine.started == []


@pytest.mark.anyio
async def test_refusal_is_logged_without_secrets(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zguard")
    secret = "Bearer zg_live_do-not-log-me"
    async with clients(tmp_path, "10.1.2.3") as (api, _, _):
        resp = await api.get("/v1/models", headers={"authorization": secret, "x-forwarded-for": "127.0.0.1"})
    assert resp.status_code == 403
    [record] = [r for r in caplog.records if r.name == "zguard.http" and "ip_not_allowed" in r.getMessage()]
    line = record.getMessage()
    assert record.levelno == logging.WARNING
    assert resp.headers["x-request-id"] in line
    assert "api listener" in line
    assert "client 10.1.2.3, TCP peer 10.1.2.3, 1 X-Forwarded-For header(s)" in line
    assert "do-not-log-me" not in caplog.text


@pytest.mark.anyio
async def test_refusal_is_an_audit_event(tmp_path: Path) -> None:
    audit = MemoryAuditSink()
    settings = make_settings(tmp_path / "state")
    runtime = ready_runtime(settings, GatedEngine(), audit=audit)
    async with (
        api_client(settings, runtime, peer=("10.1.2.3", 40000)) as api,
        console_client(settings, runtime, peer=("10.1.2.4", 40000)) as console,
    ):
        first = await api.get("/healthz")
        second = await console.get("/")
    runtime.worker.stop(timeout=5)
    events = audit.of_type("network.denied")
    assert [(e.listener, e.client, e.code, e.outcome) for e in events] == [
        ("api", "10.1.2.3", "ip_not_allowed", "denied"),
        ("console", "10.1.2.4", "ip_not_allowed", "denied"),
    ]
    assert [e.request_id for e in events] == [first.headers["x-request-id"], second.headers["x-request-id"]]


# --- X-Forwarded-For -------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("forwarded", ["127.0.0.1", "10.1.2.3, 127.0.0.1", "192.168.0.1", "::1", "junk"])
async def test_spoofed_header_from_an_untrusted_peer_changes_nothing(tmp_path: Path, forwarded: str) -> None:
    sections: dict[str, Any] = {"api": {"allow": ["127.0.0.0/8", "::1"]}, "trusted_proxies": [PROXY]}
    message = "address 10.1.2.3 is not allowed on the api listener; add it to api.allow"
    headers = {"x-forwarded-for": forwarded}
    async with clients(tmp_path, "10.1.2.3", **sections) as (api, _, _):
        denied(await api.get("/healthz", headers=headers), message)
    async with clients(tmp_path, "127.0.0.1", **sections) as (api, _, _):
        assert (await api.get("/healthz", headers=headers)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "forwarded",
    [
        ["192.0.2.9"],
        ["6.6.6.6, 192.0.2.9"],
        ["6.6.6.6", "192.0.2.9"],
        ["203.0.113.7, 192.0.2.9, 10.0.0.2"],
        ["junk, 192.0.2.9"],
        ["[2001:db8::9]:443"],
    ],
)
async def test_trusted_proxy_right_most_untrusted_address_allowed(tmp_path: Path, forwarded: list[str]) -> None:
    sections: dict[str, Any] = {"api": {"allow": ["192.0.2.0/24", "2001:db8::/32"]}, "trusted_proxies": ["10.0.0.0/29"]}
    async with clients(tmp_path, PROXY, **sections) as (api, _, _):
        headers = [("x-forwarded-for", value) for value in forwarded]
        assert (await api.get("/healthz", headers=headers)).status_code == 200
        assert (await api.post(GENERATIONS, json=BODY, headers=headers)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("forwarded", "message"),
    [
        (["192.0.2.9, 203.0.113.7"], "address 203.0.113.7 (from X-Forwarded-For) is not allowed on the api listener; add it to api.allow"),
        (["192.0.2.9", "203.0.113.7, 10.0.0.2"], "address 203.0.113.7 (from X-Forwarded-For) is not allowed on the api listener; add it to api.allow"),
        (["2001:db9::1"], "address 2001:db9::1 (from X-Forwarded-For) is not allowed on the api listener; add it to api.allow"),
        ([], "address 10.0.0.1 is not allowed on the api listener; add it to api.allow"),
        (["10.0.0.2"], "address 10.0.0.2 (from X-Forwarded-For) is not allowed on the api listener; add it to api.allow"),
        (
            ["192.0.2.9, unknown"],
            "address unknown (X-Forwarded-For entry 'unknown' from trusted proxy 10.0.0.1 is not an IP address) "
            "is not allowed on the api listener; the proxies in trusted_proxies must append the client's IP address "
            "to X-Forwarded-For",
        ),
    ],
)  # fmt: skip
async def test_trusted_proxy_right_most_untrusted_address_denied(
    tmp_path: Path, forwarded: list[str], message: str
) -> None:
    sections: dict[str, Any] = {"api": {"allow": ["192.0.2.0/24", "2001:db8::/32"]}, "trusted_proxies": ["10.0.0.0/29"]}
    engine = GatedEngine()
    engine.release()
    async with clients(tmp_path, PROXY, engine=engine, **sections) as (api, _, _):
        headers = [("x-forwarded-for", value) for value in forwarded]
        denied(await api.get("/healthz", headers=headers), message)
        denied(await api.post(GENERATIONS, json=BODY, headers=headers), message)
    assert engine.started == []


@pytest.mark.anyio
async def test_console_reads_forwarded_for_from_trusted_proxies_too(tmp_path: Path) -> None:
    sections: dict[str, Any] = {"console": {"allow": ["192.168.5.0/24"]}, "trusted_proxies": [PROXY]}
    async with clients(tmp_path, PROXY, **sections) as (_, console, _):
        assert (await console.get("/", headers={"x-forwarded-for": "192.168.5.5"})).status_code == 200
        message = (
            "address 6.6.6.6 (from X-Forwarded-For) is not allowed on the console listener; add it to console.allow"
        )
        denied(await console.get("/", headers={"x-forwarded-for": "192.168.5.5, 6.6.6.6"}), message, console=True)


# --- the middleware on its own ---------------------------------------------------------------


async def _call(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run NetworkAcl (api.allow = 10.0.0.0/8) on `scope`: (scopes passed on, messages sent)."""
    passed: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed.append(scope)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the allowlist never reads the request")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    acl = NetworkAcl(
        inner,
        listener="api",
        allow=NetworkAllowlist.from_entries(["10.0.0.0/8"]),
        trusted_proxies=NetworkAllowlist.from_entries([PROXY]),
    )
    await acl(scope, receive, send)
    return passed, sent


@pytest.mark.anyio
async def test_allowed_client_address_is_left_for_later_layers() -> None:
    headers = [(b"x-forwarded-for", b"10.9.9.9")]
    passed, sent = await _call({"type": "http", "client": (PROXY, 1), "headers": headers, "state": {}})
    assert passed[0]["state"]["client_address"] == "10.9.9.9"
    assert sent == []


@pytest.mark.anyio
async def test_websocket_from_a_refused_address_is_closed_unopened() -> None:
    passed, sent = await _call({"type": "websocket", "client": ("192.0.2.1", 1), "headers": []})
    assert passed == []
    assert sent == [{"type": "websocket.close", "code": 1008}]


@pytest.mark.anyio
async def test_connection_without_a_peer_address_is_refused() -> None:
    passed, sent = await _call({"type": "http", "client": None, "headers": []})
    assert passed == []
    assert sent[0]["status"] == 403


@pytest.mark.anyio
async def test_lifespan_passes_through() -> None:
    passed, _ = await _call({"type": "lifespan"})
    assert passed == [{"type": "lifespan"}]


# --- over TCP, with the real process ---------------------------------------------------------


@contextlib.contextmanager
def tcp_client(source: str) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as client:
        yield client


@pytest.mark.slow
def test_zguard_serve_refuses_addresses_outside_the_allowlist_over_tcp(tmp_path: Path, demo_model_dir: Path) -> None:
    """127.0.0.2 plays the trusted proxy; 127.0.0.1 is a client that api.allow leaves out."""
    env = {
        "ZGUARD_MODEL__PATH": str(demo_model_dir),
        "ZGUARD_API__ALLOW": '["10.0.0.0/8"]',
        "ZGUARD_TRUSTED_PROXIES": "127.0.0.2",
    }
    with ZguardProcess(tmp_path / "state", env=env) as server, tcp_client("127.0.0.1") as direct:

        def ready() -> bool:  # the api's /readyz is behind the allowlist; the console (still loopback) is not
            assert server.proc is not None
            assert server.proc.poll() is None, server.log()
            return bool(direct.get(f"{server.console}/api/status").json()["ready"])

        wait_until(ready, timeout=120, ignoring=(httpx.HTTPError,), what=lambda: f"zguard to be ready:\n{server.log()}")
        message = "address 127.0.0.1 is not allowed on the api listener; add it to api.allow"
        denied(direct.get(f"{server.api}/healthz"), message)
        # uvicorn's own proxy-header handling is off: a loopback peer's header is not believed either.
        denied(direct.get(f"{server.api}/readyz", headers={"x-forwarded-for": "10.1.2.3"}), message)
        denied(direct.post(f"{server.api}{GENERATIONS}", json=BODY), message)
        assert direct.get(f"{server.console}/").status_code == 200
        with tcp_client("127.0.0.2") as proxy:
            assert proxy.get(f"{server.api}/readyz", headers={"x-forwarded-for": "10.1.2.3"}).status_code == 200
            forwarded = "address 6.6.6.6 (from X-Forwarded-For) is not allowed on the api listener; add it to api.allow"
            denied(proxy.get(f"{server.api}/healthz", headers={"x-forwarded-for": "10.1.2.3, 6.6.6.6"}), forwarded)
        assert server.stop() == 0
    assert "ip_not_allowed on the api listener: client 127.0.0.1, TCP peer 127.0.0.1" in server.log()
