"""Transport limits over raw sockets against a real `zguard serve` (zguard.serve.transport).

One server for the module, with short deadlines and small caps from settings; each test that
holds connections uses its own loopback source addresses (127.0.x.y), so the per-address cap of
one test does not meet another's. Refusals must come in the error shape with a request id and
the security headers, and be in the audit trail.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.common.polling import wait_until
from tests.common.servers import ZguardProcess
from tests.functional.test_errors import assert_error

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 2.0
BODY_IDLE_TIMEOUT_S = 1.0
MAX_HEADERS = 30
PER_CLIENT = 6
MAX_CONNECTIONS = 48
TRANSPORT = "ZGUARD_API__TRANSPORT__"
GET = b"GET /v1/models HTTP/1.1\r\nHost: zguard\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[ZguardProcess]:
    env = {
        "ZGUARD_MODEL__PATH": str(demo_model_dir),
        f"{TRANSPORT}HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        f"{TRANSPORT}BODY_IDLE_TIMEOUT_S": str(BODY_IDLE_TIMEOUT_S),
        f"{TRANSPORT}MAX_HEADERS": str(MAX_HEADERS),
        f"{TRANSPORT}MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        f"{TRANSPORT}MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    proc = ZguardProcess(tmp_path_factory.mktemp("transport") / "state", env=env).start()
    proc.wait_ready()
    yield proc
    assert proc.stop() == 0


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def parse(raw: bytes) -> httpx.Response:
    """One HTTP/1.1 response with a Content-Length, as httpx would have read it."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[httpx.Response, float]:
    """Send `data` (from a thread, so a big send cannot block reading), read until the server
    closes; (the response, seconds it took)."""
    with connect(port, source) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=lambda: _send_all(sock, data))
        sender.start()
        raw = read_until_closed(sock)
        sender.join(10)
        return parse(raw), time.monotonic() - started


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server may close before taking it all
        sock.sendall(data)


def transport_events(server: ZguardProcess) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "zguard", "audit", "export", "--type", "transport"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def recorded(server: ZguardProcess, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((e for e in transport_events(server) if e.get("request_id") == request_id), None)

    found: dict[str, Any] = wait_until(find, timeout=20, interval=0.2, what=f"a transport event for {request_id}")
    return found


# --- header limits -----------------------------------------------------------------------------


def test_a_1_mib_header_value_gets_431_quickly_and_is_recorded(server: ZguardProcess) -> None:
    resp, took = exchange(server.api_port, GET + b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    message = assert_error(resp, 431, "request_header_fields_too_large")
    assert "16384 bytes" in message
    assert resp.headers["connection"] == "close"
    assert took < 2.0
    event = recorded(server, resp.headers["x-request-id"])
    assert event["type"] == "transport.refused"
    assert event["outcome"] == "denied"
    assert event["code"] == "request_header_fields_too_large"
    assert event["listener"] == "api"
    assert event["client"] == "127.0.0.1"
    assert event["http"]["status"] == 431


def test_too_many_headers_get_431(server: ZguardProcess) -> None:
    fields = b"".join(b"X-Field-%d: 1\r\n" % n for n in range(MAX_HEADERS + 1))
    resp, _ = exchange(server.api_port, GET + fields + b"\r\n")
    assert f"at most {MAX_HEADERS}" in assert_error(resp, 431, "request_header_fields_too_large")


def test_headers_just_within_the_limits_are_served(server: ZguardProcess) -> None:
    fields = {f"X-Field-{n}": "v" * 100 for n in range(MAX_HEADERS - 5)}
    assert httpx.get(f"{server.api}/v1/models", headers=fields).status_code == 200


def test_a_body_past_the_header_limit_in_the_same_write_is_not_counted_as_headers(server: ZguardProcess) -> None:
    body = json.dumps({"prompt": "x", "padding": "p" * 40_000}).encode()
    head = b"POST /v1/images/generations HTTP/1.1\r\nHost: z\r\nContent-Type: application/json\r\n"
    resp, _ = exchange(server.api_port, head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert_error(resp, 400, "unknown_field", param="padding")


def test_pipelined_requests_in_one_write_are_each_answered(server: ZguardProcess) -> None:
    with connect(server.api_port) as sock:
        sock.sendall(GET + b"\r\n" + GET + b"Connection: close\r\n\r\n")
        raw = read_until_closed(sock)
    assert raw.count(b"HTTP/1.1 200 OK") == 2


def test_the_console_refuses_with_its_own_security_headers(server: ZguardProcess) -> None:
    resp, _ = exchange(server.console_port, b"GET / HTTP/1.1\r\nHost: zguard\r\nCookie: " + b"c" * 40_000 + b"\r\n\r\n")
    assert_error(resp, 431, "request_header_fields_too_large", console=True)


# --- parser refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="request-line"),
        pytest.param(b"GET /v1/models HTTP/1.1\r\nBad Header\r\n\r\n", id="header-syntax"),
        pytest.param(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: z\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            id="chunking",
        ),
    ],
)
def test_malformed_requests_get_400_in_the_error_shape_and_are_recorded(
    server: ZguardProcess, request_bytes: bytes
) -> None:
    resp, _ = exchange(server.api_port, request_bytes)
    assert_error(resp, 400, "malformed_request")
    event = recorded(server, resp.headers["x-request-id"])
    assert (event["code"], event["http"]["status"], event["listener"]) == ("malformed_request", 400, "api")
    assert "Invalid HTTP request" not in server.log()  # uvicorn's own line per bad request is gone


def test_a_websocket_upgrade_gets_a_plain_http_answer_through_the_app(server: ZguardProcess) -> None:
    upgrade = (
        b"GET /v1/models HTTP/1.1\r\nHost: zguard\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with connect(server.api_port) as sock:
        sock.sendall(upgrade)
        raw = read_until_closed(sock)  # the server closes after its answer: no protocol switch
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 200 ")
    assert "upgrade: websocket" not in head
    assert "x-request-id: " in head
    assert "x-content-type-options: nosniff" in head
    assert "Unsupported upgrade request" not in server.log()


# --- deadlines --------------------------------------------------------------------------------


def test_a_socket_that_sends_nothing_is_closed_after_the_header_deadline(server: ZguardProcess) -> None:
    with connect(server.api_port, "127.0.2.1") as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        took = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.85 < took < HEADER_TIMEOUT_S + 2  # up to 10% jitter (DEADLINE_JITTER)


def test_headers_sent_slowly_get_408_at_the_deadline(server: ZguardProcess) -> None:
    with connect(server.api_port, "127.0.2.2") as sock:
        started = time.monotonic()
        sock.sendall(GET)
        # One header byte every 0.1 s, until the server answers.
        while not select.select([sock], [], [], 0.1)[0] and time.monotonic() < started + HEADER_TIMEOUT_S + 5:
            sock.sendall(b"X")
        resp = parse(read_until_closed(sock))
        took = time.monotonic() - started
    assert "did not arrive within 2 s" in assert_error(resp, 408, "request_timeout")
    assert took < HEADER_TIMEOUT_S + 2


def test_a_body_that_stalls_gets_408(server: ZguardProcess) -> None:
    with connect(server.api_port, "127.0.2.3") as sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: z\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        started = time.monotonic()
        resp = parse(read_until_closed(sock))
        took = time.monotonic() - started
    assert "paused longer than 1 s" in assert_error(resp, 408, "request_timeout")
    assert BODY_IDLE_TIMEOUT_S - 0.2 < took < BODY_IDLE_TIMEOUT_S + 2
    assert recorded(server, resp.headers["x-request-id"])["detail"]["phase"] == "body"


# --- connection caps ---------------------------------------------------------------------------


def test_per_address_cap_refuses_one_more_while_the_first_stay(server: ZguardProcess) -> None:
    source = "127.0.3.1"
    held = [connect(server.api_port, source) for _ in range(PER_CLIENT)]
    try:
        time.sleep(0.2)  # all accepted
        resp, _ = exchange(server.api_port, GET + b"\r\n", source)
        assert "from your address" in assert_error(resp, 503, "too_many_connections")
        assert resp.headers["retry-after"] == "1"
        for sock in held:  # the first ones still work
            sock.sendall(GET + b"Connection: close\r\n\r\n")
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    # Another address is not affected, and the address is served again once its sockets are gone.
    assert httpx.get(f"{server.api}/v1/models").status_code == 200
    wait_until(
        lambda: exchange(server.api_port, GET + b"Connection: close\r\n\r\n", source)[0].status_code == 200,
        timeout=10,
        what="the address to be served again",
    )


def test_a_legitimate_request_is_answered_while_idle_sockets_fill_the_listener(server: ZguardProcess) -> None:
    sources = [f"127.0.4.{n}" for n in range(1, 21)]  # 20 addresses x 4 = 80 sockets > MAX_CONNECTIONS
    held = [connect(server.api_port, source) for source in sources for _ in range(4)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        resp = httpx.get(f"{server.api}/v1/models", timeout=5)
        took = time.monotonic() - started
        assert resp.status_code == 200
        assert took < 2.0  # not behind the idle sockets' deadline (HEADER_TIMEOUT_S)
        # The sockets that gave way were closed by the server (end of stream, nothing written).
        closed = 0
        for sock in held:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                closed += sock.recv(1) == b""
        assert closed >= len(held) - MAX_CONNECTIONS
    finally:
        for sock in held:
            sock.close()


def test_refusals_from_one_address_are_recorded_a_bounded_number_of_times(server: ZguardProcess) -> None:
    source = "127.0.5.1"
    for _ in range(30):
        exchange(server.api_port, b"GARBAGE\r\n\r\n", source)
    time.sleep(1)
    from_source = [e for e in transport_events(server) if e.get("client") == source]
    assert len(from_source) == 10  # zguard.serve.refusals.PER_CLIENT_EVENTS a minute; the rest counted


def test_too_few_open_files_for_the_caps_refuses_to_start(tmp_path: Path) -> None:
    env = ZguardProcess(tmp_path / "state").env
    limit = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
    run = "import sys; from zguard.cli.main import main; sys.exit(main(['serve']))"
    done = subprocess.run(
        [sys.executable, "-c", limit + run], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "api.transport.max_connections" in done.stderr
    assert "LimitNOFILE=" in done.stderr
    assert "ulimit -n" in done.stderr
