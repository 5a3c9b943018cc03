"""bench_auth.py's ``http`` part: the API app served by uvicorn as ``zguard serve`` configures it,
loaded from another process, and ``http.asgi_cpu``, the same requests straight into the app (see
bench_auth.py's docstring for the method)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from bench.auth_deployment import LIMITED, Deployment, api_app, log
from bench.auth_load import Scenario, load, wrk_seconds

from zguard.config import ListenerSettings
from zguard.security.tokens import new_token
from zguard.serve.listeners import bind, listen_socket, listener_config

TARGET_RATIO = 0.7
GENERATIONS_PATH = "/v1/images/generations"
ASGI_ROUNDS = 3


@contextlib.contextmanager
def http_server(app: Any, sock: socket.socket | None = None) -> Iterator[int]:
    """Serve `app` on `sock` (default: a loopback socket made as asyncio makes its own)."""
    if sock is None:
        sock = listen_socket("127.0.0.1", 0)  # made exactly as `zguard serve` makes its own
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(listener_config(app, grace_s=5))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the in-process uvicorn server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def asgi_scope(scenario: Scenario) -> dict[str, Any]:
    """The scope uvicorn would hand the app for `scenario`'s request from 127.0.0.1."""
    headers = [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in scenario.headers.items()]
    if scenario.body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(scenario.body)).encode())]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": scenario.method,
        "scheme": "http",
        "path": scenario.path,
        "raw_path": scenario.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_request(app: Any, scenario: Scenario) -> int:
    """One request straight into the ASGI app (no socket, no HTTP parsing); its status."""
    scope = asgi_scope(scenario)  # a fresh one: the stack keeps per-request state in it
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": scenario.body, "more_body": False}
        await asyncio.Event().wait()  # pragma: no cover - the app never reads past the body
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure_asgi(
    app: Any, scenarios: list[Scenario], requests: int, rounds: int, concurrency: int
) -> dict[str, Any]:
    """Process CPU per request of each scenario through the app in this process: no sockets, no
    client competing for the CPUs, so the refusal-to-baseline ratios hold still on a busy machine."""
    per_task = requests // concurrency
    unexpected: dict[str, collections.Counter[str]] = {s.name: collections.Counter() for s in scenarios}

    async def run(scenario: Scenario, *, record: bool = True) -> float:
        async def worker() -> None:
            for _ in range(per_task):
                status = await asgi_request(app, scenario)
                if status != scenario.status and record:
                    unexpected[scenario.name][str(status)] += 1

        cpu = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - cpu) * 1e6 / (per_task * concurrency)

    for scenario in scenarios:  # warm-up: caches, lock-outs, the limited principal's one request
        await run(scenario, record=False)
    baseline, others = scenarios[0], scenarios[1:]
    cpu_us: dict[str, list[float]] = {s.name: [] for s in scenarios}
    ratios: dict[str, list[float]] = {s.name: [] for s in others}
    for _ in range(rounds):
        for scenario in others:  # each right after a baseline slice, as over HTTP
            before = await run(baseline)
            cpu_us[baseline.name].append(before)
            used = await run(scenario)
            cpu_us[scenario.name].append(used)
            ratios[scenario.name].append(before / used)
    return {
        "measures": f"process CPU (all threads: the event loop and the audit writer) per request, {requests} "
        f"requests per slice from {concurrency} concurrent tasks straight into the ASGI app, {rounds} rounds; "
        "ratio_to_healthz = healthz CPU per request / this scenario's, median over rounds",
        "scenarios": {
            s.name: {
                "cpu_us_per_request_median": round(statistics.median(cpu_us[s.name]), 1),
                "ratio_to_healthz": round(statistics.median(ratios[s.name]), 3) if s.name in ratios else 1.0,
                # e.g. a few 401s while the failed-login lock-out is renewed: counted in the CPU, shown here
                "unexpected_statuses": dict(unexpected[s.name]),
            }
            for s in scenarios
        },
    }


def measure_asgi_cpu(d: Deployment, scenarios: list[Scenario], requests: int, concurrency: int) -> dict[str, Any]:
    # A rate limiter of its own, as a second process would have: the memory storage's locks
    # belong to the event loop that first waited on them, the HTTP server thread's.
    fresh = type(d.rate_limits).from_settings(d.settings, d.audit) if d.rate_limits is not None else None
    app, runtime = api_app(d, fresh)
    log(f"in-process ASGI: {len(scenarios)} scenarios x {ASGI_ROUNDS} rounds x {requests} requests")
    try:
        return asyncio.run(measure_asgi(app, scenarios, requests, ASGI_ROUNDS, concurrency))
    finally:
        runtime.worker.stop(timeout=10)


def scenarios_for(d: Deployment) -> list[Scenario]:
    """The baseline first, then the reference and the refusals."""
    bad = d.tokens["bench-service"]
    bad = bad[:20] + ("A" if bad[20] != "A" else "B") + bad[21:]  # one character off: a bad checksum
    scenarios = [
        Scenario("healthz_200", 200, "GET", "/healthz", {}, b"", "GET /healthz, public"),
        Scenario(
            "valid_token_200",
            200,
            "GET",
            "/v1/models",
            {"Authorization": f"Bearer {d.tokens['bench-service']}"},
            b"",
            "GET /v1/models, valid token (reference, not a refusal)",
        ),
        Scenario(
            "bad_token_401",
            401,
            "GET",
            "/v1/models",
            {"Authorization": f"Bearer {bad}"},
            b"",
            "GET /v1/models, token with a bad checksum",
        ),
        Scenario(
            "denied_address_403",
            403,
            "GET",
            "/healthz",
            {"X-Forwarded-For": "10.9.9.9"},
            b"",
            "GET /healthz from 10.9.9.9 (X-Forwarded-For via trusted proxy 127.0.0.1), not in api.allow",
        ),
        Scenario(
            "permission_denied_403",
            403,
            "POST",
            GENERATIONS_PATH,
            {"Authorization": f"Bearer {d.tokens['watcher']}"},
            b'{"prompt": "x"}',
            "POST /v1/images/generations with a viewer's token",
        ),
        Scenario(
            "failed_logins_429",
            429,
            "GET",
            "/v1/models",
            {"Authorization": f"Bearer {new_token().plaintext}", "X-Forwarded-For": "127.0.0.77"},
            b"",
            "GET /v1/models, unknown token from an address locked out after failed logins",
        ),
    ]
    if d.rate_limits is not None:
        scenarios.append(
            Scenario(
                "rate_limited_429",
                429,
                "GET",
                "/v1/models",
                {"Authorization": f"Bearer {d.tokens[LIMITED]}"},
                b"",
                f"GET /v1/models by a principal allowed 1/day (rate_limits.per_principal.{LIMITED})",
            )
        )
    return scenarios


def measure_http(
    d: Deployment, rounds: int, seconds: float, connections: int, asgi_requests: int = 0
) -> dict[str, Any]:
    app, runtime = api_app(d, d.rate_limits)
    scenarios = scenarios_for(d)
    client = "wrk" if shutil.which("wrk") else "python-asyncio-process"
    secs = wrk_seconds(seconds) if client == "wrk" else seconds
    try:
        with http_server(app) as port:
            log(
                f"HTTP load ({client}): {len(scenarios)} scenarios x {rounds} rounds x {secs} s, {connections} connections"
            )
            raw_results = load(client, port, scenarios, rounds, seconds, connections)
        # The same /healthz on a socket made by zguard.serve.listeners.bind, as `zguard serve` makes it.
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        listener = ListenerSettings(host="127.0.0.1", port=int(free.getsockname()[1]))
        free.close()
        with http_server(app, bind(listener, "api")) as port:
            log(f"HTTP load ({client}): /healthz on a socket from zguard.serve.listeners.bind")
            serve_bind = load(client, port, scenarios[:1], 1, seconds, connections)["healthz_200"]
    finally:
        runtime.worker.stop(timeout=10)
    asgi = measure_asgi_cpu(d, scenarios, asgi_requests, connections) if asgi_requests else None
    baseline = statistics.median(raw_results["healthz_200"]["rps"])
    result: dict[str, Any] = {
        "client": client,
        "client_command": f"wrk -t1 -c{connections} -d{secs}s --latency [-H ...] [-s post.lua] URL"
        if client == "wrk"
        else f"asyncio HTTP/1.1 client in a spawned process, {connections} connections, {secs} s slices",
        "seconds_per_slice": secs,
        "measures": "requests answered per second with the expected status; uvicorn (listener_config) in a "
        f"thread of this process, load from another process over {connections} keep-alive connections",
        "target_ratio": TARGET_RATIO,
        "rate_limit_scenario": "included" if d.rate_limits is not None else "not available (no rate limiting)",
        "scenarios": {},
    }
    ratios = []
    for scenario in scenarios:
        name = scenario.name
        rps = raw_results[name]["rps"]
        ratio = statistics.median(raw_results[name]["ratios"]) if name != "healthz_200" else 1.0
        if name not in ("healthz_200", "valid_token_200"):
            ratios.append(ratio)
        result["scenarios"][name] = {
            "what": scenario.what,
            "status": scenario.status,
            "rps_median": round(statistics.median(rps), 1),
            "rps_rounds": [round(x, 1) for x in rps],
            "ratio_to_healthz": round(ratio, 3),
            "ratio_rounds": [round(x, 3) for x in raw_results[name]["ratios"]],
            "unexpected_statuses": raw_results[name]["unexpected"],
        }
        if client == "wrk":
            result["scenarios"][name]["latency_ms_p50_median"] = raw_results[name]["latency_ms_p50_median"]
            result["scenarios"][name]["latency_ms_p99_median"] = raw_results[name]["latency_ms_p99_median"]
    bind_rps = statistics.median(serve_bind["rps"])
    result["healthz_on_zguard_serve_socket"] = {
        "what": "GET /healthz, the same app, on a listening socket made by zguard.serve.listeners.bind (proto 0): "
        "asyncio then leaves TCP_NODELAY off on accepted connections",
        "rps_median": round(bind_rps, 1),
        "ms_per_request_per_connection": round(1000 * connections / bind_rps, 2) if bind_rps else None,
        "ratio_to_healthz": round(bind_rps / baseline, 3),
        "unexpected_statuses": serve_bind["unexpected"],
    }
    result["min_refusal_ratio"] = round(min(ratios), 3)
    result["ratio_ok"] = min(ratios) >= TARGET_RATIO
    if asgi is not None:
        refusals = [
            v["ratio_to_healthz"] for k, v in asgi["scenarios"].items() if k not in ("healthz_200", "valid_token_200")
        ]
        asgi["min_refusal_ratio"] = round(min(refusals), 3)
        result["asgi_cpu"] = asgi
    return result
