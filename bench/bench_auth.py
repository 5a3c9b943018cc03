"""Benchmark: what authentication, authorization and refusals cost.

Run it with ``.venv/bin/python bench/bench_auth.py [--iterations N] [--duration S]``. It prints
ONE JSON object on stdout; progress goes to stderr. It is a measurement, not a test: figures over
target only set the ``*_ok`` booleans to false (a broken setup makes the script exit 1).

Everything runs against a migrated SQLite state database in a temporary directory, with the
services built as ``zguard serve`` builds them (`build_auth`, `RateLimitService.from_settings`
when rate limiting exists, `build_runtime`) around the durable audit trail ``zguard serve``
uses: an `AuditTrail` over `open_audit_store(settings, engine)`, i.e. hash-chained events in
that SQLite file (WAL, ``synchronous=FULL``), signed checkpoints, one writer thread with group
commit. Over HTTP every request, ``/healthz`` included, is one event committed before its
response starts, so the baseline pays for its commit as the refusals do. Every log record is
formatted and written (to ``/dev/null``), as a deployment logging at ``info`` would. The
configured user's password hash has bcrypt's default cost (12), as `zguard user hash-password`
makes it. ``audit`` at the end says how many events the trail committed and whether the chain
verifies.

``in_process``
    One request's access checks, called directly in an event loop, for a valid bearer token and
    for a valid Basic credential after its first verification (so from the credential cache):
    ``AuthService.authenticate`` (including the per-request ``auth_version`` query),
    ``AuthService.authorize(models:read)`` and, when rate limiting exists,
    ``RateLimitService.check`` (memory storage, moving window, a rate that is never exhausted).
    Each call gets a fresh `RequestRecord`, as `AccessControl` passes the request's record: the
    decisions are folded into it, and the one commit per request happens in `AuditRequests`.
    Median and p95 in microseconds over ``--iterations`` calls each, after a warm-up; the two
    credential kinds alternate call by call. ``median_ok`` compares the total's median with
    ``target_median_us``. ``without_audit_output`` repeats it with no record and audit events
    discarded, ``auth_version_query`` times that query alone, and ``audit_commit`` times
    ``await AuditTrail.record(event)`` of one request's event by a lone caller (no group commit
    to share: the durable cost a request adds on an idle server, not part of the target), to
    show where the microseconds go. The server socket of ``zguard serve`` is measured separately
    (``healthz_on_zguard_serve_socket``).
``http``
    A real uvicorn server (``listener_config``, as ``zguard serve`` configures it) in a thread of
    this process serving ``create_api_app``; the load comes from a separate process (so the
    client does not compete for this process's GIL) over ``--connections`` keep-alive connections,
    each sending its next request as soon as the last answer is read. The client is ``wrk``
    (``-t1``, ``--latency``; headers with ``-H``, a POST's method and body from a small Lua
    script) when it is on ``PATH``, and ``http`` then says ``"client": "wrk"``. wrk is preferred
    because it is written in C: it spends a small fraction of the CPU per request that the
    server does, so the rates measure the server. The fallback, a minimal asyncio HTTP/1.1 client
    in a spawned Python process (``"client": "python-asyncio-process"``), spends about as much
    CPU per request as the server, so on a small machine it competes with the server for cores
    and its rates and ratios partly measure the client. wrk times
    whole seconds: ``--duration`` is rounded to at least 1 s for it. wrk only tells 2xx/3xx from
    the rest, so before the timed rounds (after the warm-up) one httpx request per scenario checks
    the exact status. Scenarios, ``--duration`` seconds each per round, answered
    with the expected status only: ``/healthz`` 200 (the baseline), ``/v1/models`` with a valid
    token (200, for reference), a malformed token (401), a client address outside ``api.allow``
    (403 ``ip_not_allowed``; the address comes in ``X-Forwarded-For`` from ``127.0.0.1``, which
    is a trusted proxy), a viewer posting a generation (403 ``permission_denied``), a principal
    over its rate (429 ``rate_limit_exceeded``, when rate limiting exists) and an address locked
    out after failed logins (429 ``too_many_failed_logins``).
    ``ratio_ok`` compares the refusals' ``ratio_to_healthz`` with ``target_ratio``. Every slice follows
    a ``/healthz`` slice, and its ratio is the median over the rounds of its rate divided by that
    slice's, so load from other work on the machine cancels out.
    ``http.asgi_cpu`` sends the same requests straight into the same app in this process
    (``--asgi-requests`` per slice from ``--connections`` concurrent tasks, no socket, no client)
    and divides process CPU by requests: every thread counts, the audit writer's commits
    included. Its ``ratio_to_healthz`` is the baseline's CPU per request over the scenario's, per
    round, median: where the HTTP rates on a small, shared machine swing with other work and
    with the client, this says what each refusal costs the server against the baseline.
``basic_flood``
    ``--flood`` wrong passwords for one configured user through ``AuthService.authenticate``,
    once one after another and once all at the same time. ``verify_password`` is wrapped to count
    calls and the CPU time of the thread running each (``time.thread_time``), i.e. the CPU spent
    in bcrypt. ``bcrypt_cpu_s_per_1000_attempts`` must stay at the failure limit's worth (5 per
    minute per user by default, plus at most one per extra bcrypt slot when attempts race), not
    grow with the flood: ``bounded`` says whether it did.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import importlib.util
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.engine import URL

import zguard.services.auth as auth_module
from zguard.app.api import create_api_app
from zguard.audit import AuditEvent, AuditSink, RequestRecord
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.config import ListenerSettings, Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.errors import InvalidApiKey, TooManyFailedLogins
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.keys import KEY_BYTES
from zguard.security.passwords import DEFAULT_COST, hash_password, verify_password
from zguard.security.rbac import Permission
from zguard.security.tokens import new_token, token_digest
from zguard.serve.listeners import bind, listen_socket, listener_config
from zguard.serve.wiring import build_auth, build_runtime
from zguard.services.auth import BCRYPT_SLOTS, AuthService, RequestInfo
from zguard.services.readiness import ModelState
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

TARGET_MEDIAN_US = 100.0
TARGET_RATIO = 0.7
USER, PASSWORD = "designer01", "correct horse battery staple"
HAS_RATE_LIMITS = (
    importlib.util.find_spec("zguard.services.ratelimit") is not None and "rate_limits" in Settings.model_fields
)
GENEROUS_RATE = "1000000/day"  # counted on every request, never exhausted during the run
GENERATIONS_PATH = "/v1/images/generations"
LIMITED = "limited"  # a principal allowed one request a day: every later one is a 429
COMMIT_SAMPLES = 1000  # lone commits timed for in_process.audit_commit
ASGI_ROUNDS = 3


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def summarize_us(samples_ns: list[int]) -> dict[str, float | int]:
    ordered = sorted(samples_ns)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18]
    return {
        "n": len(ordered),
        "median_us": round(statistics.median(ordered) / 1000, 2),
        "p95_us": round(p95 / 1000, 2),
        "mean_us": round(statistics.fmean(ordered) / 1000, 2),
        "min_us": round(ordered[0] / 1000, 2),
    }


class NullEngine:
    """No model: nothing in this benchmark reaches generation."""

    info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")

    def load(self) -> None:
        pass

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Any]:
        raise RuntimeError("the auth benchmark never generates")


# --- the deployment -------------------------------------------------------------------------


@dataclass
class Deployment:
    settings: Settings
    store: PrincipalStore
    auth: AuthService
    rate_limits: Any  # RateLimitService, when it exists
    tokens: dict[str, str]
    password_hash: str
    key: bytes
    audit: AuditSink


def deploy(work_dir: Path, password_hash: str) -> Deployment:
    data: dict[str, Any] = {
        "state_dir": str(work_dir / "state"),
        "api_auth": {"enabled": True, "users": [{"username": USER, "password": password_hash}]},
        "trusted_proxies": ["127.0.0.1"],
    }
    if HAS_RATE_LIMITS:
        data["rate_limit"] = GENEROUS_RATE
        data["rate_limits"] = {"per_principal": {LIMITED: "1/day"}}
    settings = Settings.model_validate(data)
    engine = create_store_engine(URL.create("sqlite", database=str(work_dir / "state" / "zguard.db")))
    migrate.upgrade(engine)
    store = PrincipalStore(engine)
    trail = AuditTrail(open_audit_store(settings, engine))  # as `zguard serve` opens it
    key = os.urandom(KEY_BYTES)
    tokens = {}
    for name, roles in (("bench-service", ["generator"]), ("watcher", ["viewer"]), (LIMITED, ["viewer"])):
        store.create_principal(name, "service", roles=roles)
        token = new_token()
        store.add_token(name, token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
        tokens[name] = token.plaintext
    auth = build_auth(settings, store, key, audit=trail)
    rate_limits = None
    if HAS_RATE_LIMITS:
        from zguard.services.ratelimit import RateLimitService

        rate_limits = RateLimitService.from_settings(settings, trail)
    return Deployment(settings, store, auth, rate_limits, tokens, password_hash, key, trail)


def audit_summary(trail: AuditTrail) -> dict[str, Any]:
    """Close the trail (final checkpoint) and say what it holds: every request of the run is in it."""
    trail.close()
    report = verify_store(trail.store, trail.store.signer.public_key if trail.store.signer else None)
    return {
        "sink": "AuditTrail over open_audit_store (SQLite file in the temporary state dir, WAL, "
        "synchronous=FULL, group commit), as zguard serve",
        "events_committed": trail.store.count(),
        "write_failures": trail.failures,
        "chain_verifies": report.ok,
    }


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


# --- (a) in process -------------------------------------------------------------------------


async def measure_in_process(d: Deployment, iterations: int, warmup: int, *, records: bool = True) -> dict[str, Any]:
    def request_info() -> RequestInfo:
        # As AccessControl builds it: the request's audit record, which the decisions fold into.
        return RequestInfo(
            client="127.0.0.1", request_id="0" * 32, listener="api", record=RequestRecord() if records else None
        )

    headers = {"bearer": f"Bearer {d.tokens['bench-service']}", "basic": basic_header(USER, PASSWORD)}
    parts: dict[str, dict[str, list[int]]] = {
        kind: {"authenticate": [], "authorize": [], "rate_limit": [], "total": []} for kind in headers
    }
    perf = time.perf_counter_ns
    for i in range(warmup + iterations):
        for kind, header in headers.items():
            info = request_info()
            t0 = perf()
            identity = await d.auth.authenticate(header, info)
            t1 = perf()
            d.auth.authorize(identity, Permission.MODELS_READ, info)
            t2 = perf()
            if d.rate_limits is not None:
                await d.rate_limits.check(identity, info)
            t3 = perf()
            if i >= warmup:
                sample = parts[kind]
                sample["authenticate"].append(t1 - t0)
                sample["authorize"].append(t2 - t1)
                sample["rate_limit"].append(t3 - t2)
                sample["total"].append(t3 - t0)
        if i == 0:
            await asyncio.sleep(0.2)  # let the first request's last-used bookkeeping finish in its thread
    version_ns = []
    for _ in range(iterations):
        t0 = perf()
        d.store.auth_version()
        version_ns.append(perf() - t0)
    result: dict[str, Any] = {
        "auth_version_query": summarize_us(version_ns),
        "measures": "authenticate + authorize(models:read)"
        + (" + RateLimitService.check" if d.rate_limits is not None else "")
        + ", called directly; Basic after its first verification (cached); "
        + ("decisions folded into a RequestRecord per call" if records else "no record, audit events discarded"),
        "rate_limit_check": "included (memory://, moving-window, rate " + GENEROUS_RATE + ")"
        if d.rate_limits is not None
        else "not available: zguard.services.ratelimit does not exist in this tree",
        "target_median_us": TARGET_MEDIAN_US,
    }
    for kind, sample in parts.items():
        total = summarize_us(sample["total"])
        result[kind] = {
            "total": total,
            "authenticate": summarize_us(sample["authenticate"]),
            "authorize": summarize_us(sample["authorize"]),
            "rate_limit": summarize_us(sample["rate_limit"]) if d.rate_limits is not None else None,
            "median_ok": total["median_us"] <= TARGET_MEDIAN_US,
        }
    return result


async def measure_commit(trail: AuditSink, iterations: int) -> dict[str, Any]:
    """One request's event committed by a lone caller, one after another: no batch to share."""
    samples = []
    for i in range(iterations):
        event = AuditEvent(
            type="http.request",
            outcome="allowed",
            request_id=f"{i:032x}",
            listener="api",
            client="127.0.0.1",
            principal="bench-service",
            roles=("generator",),
            auth_method="bearer",
            detail={"permission": "models:read", "reason": "role generator", "decisions": "access.allowed"},
            latency_ms=0.1,
            http={"method": "GET", "path": "/v1/models", "status": 200},
        )
        t0 = time.perf_counter_ns()
        await trail.record(event)
        samples.append(time.perf_counter_ns() - t0)
    return {
        "measures": "await AuditTrail.record(one request's event), one caller at a time (SQLite, synchronous=FULL)",
        **summarize_us(samples),
    }


class DiscardAuditSink:
    def emit(self, event: Any) -> None:
        pass

    async def record(self, event: Any) -> None:
        pass


def without_audit(d: Deployment) -> Deployment:
    """The same deployment with audit events discarded: what the access checks cost by themselves."""
    sink = DiscardAuditSink()
    auth = build_auth(d.settings, d.store, d.key, audit=sink)
    rate_limits = None
    if d.rate_limits is not None:
        from zguard.services.ratelimit import RateLimitService

        rate_limits = RateLimitService.from_settings(d.settings, sink)
    return Deployment(d.settings, d.store, auth, rate_limits, d.tokens, d.password_hash, d.key, sink)


# --- (b) over HTTP --------------------------------------------------------------------------


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


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _one_connection(port: int, request: bytes, deadline: float, statuses: collections.Counter[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head[9:12])] += 1
            lower = head.lower()
            start = lower.find(b"content-length:")
            length = int(lower[start + 15 : lower.find(b"\r\n", start)]) if start >= 0 else 0
            await reader.readexactly(length)
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def _load(port: int, request: bytes, seconds: float, connections: int) -> tuple[collections.Counter[int], float]:
    statuses: collections.Counter[int] = collections.Counter()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_one_connection(port, request, deadline, statuses) for _ in range(connections)))
    return statuses, time.perf_counter() - started


def run_client(  # noqa: PLR0917 - a multiprocessing target takes positional arguments
    port: int, scenarios: list[dict[str, Any]], rounds: int, seconds: float, connections: int, out: Any
) -> None:
    """The load generator, in its own process: every scenario once per round, for `seconds`."""

    async def main() -> dict[str, Any]:
        results: dict[str, Any] = {
            s["name"]: {"rps": [], "ratios": [], "unexpected": collections.Counter()} for s in scenarios
        }

        async def run(scenario: dict[str, Any]) -> float:
            statuses, elapsed = await _load(port, bytes.fromhex(scenario["request"]), seconds, connections)
            rps = statuses.pop(scenario["status"], 0) / elapsed
            results[scenario["name"]]["rps"].append(rps)
            results[scenario["name"]]["unexpected"].update(statuses)
            return rps

        for scenario in scenarios:  # warm-up: caches, lock-outs, connections
            await _load(port, bytes.fromhex(scenario["request"]), min(0.5, seconds), connections)
        baseline, others = scenarios[0], scenarios[1:]
        for _ in range(rounds):
            # Each scenario right after a baseline slice, compared with it: the machine's drift and
            # other work on it hit both alike.
            for scenario in others:
                before = await run(baseline)
                rps = await run(scenario)
                results[scenario["name"]]["ratios"].append(rps / before if before else 0.0)
            if not others:
                await run(baseline)
        return {
            name: {
                "rps": r["rps"],
                "ratios": r["ratios"],
                "unexpected": {str(k): v for k, v in r["unexpected"].items()},
            }
            for name, r in results.items()
        }

    out.put(asyncio.run(main()))


def load_from_another_process(
    port: int, spec: list[dict[str, Any]], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.SimpleQueue()
    client = context.Process(target=run_client, args=(port, spec, rounds, seconds, connections, out))
    client.start()
    client.join(timeout=60 + len(spec) * (rounds + 1) * (seconds + 1))
    if client.exitcode != 0 or out.empty():
        client.kill()
        raise RuntimeError(f"the load client failed (exit {client.exitcode})")
    results: dict[str, Any] = out.get()
    return results


@dataclass(frozen=True)
class Scenario:
    name: str
    status: int
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    what: str

    def raw(self) -> bytes:
        return request_bytes(self.method, self.path, self.headers, self.body)


WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)\b", re.MULTILINE)
WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)", re.MULTILINE)
WRK_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_LATENCY = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_seconds(seconds: float) -> int:
    return max(1, round(seconds))  # wrk's -d takes whole seconds


def wrk_once(port: int, scenario: Scenario, seconds: int, connections: int, script_dir: Path) -> dict[str, Any]:
    """One wrk run of `scenario`: the rate answered with its status class, and what was not."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in scenario.headers.items():
        command += ["-H", f"{name}: {value}"]
    if scenario.method != "GET" or scenario.body:
        script = script_dir / f"{scenario.name}.lua"
        if not script.exists():
            body = scenario.body.decode("ascii")
            assert "]==]" not in body
            script.write_text(
                f'wrk.method = "{scenario.method}"\n'
                f"wrk.body = [==[{body}]==]\n"
                'wrk.headers["Content-Type"] = "application/json"\n',
                encoding="utf-8",
            )
        command += ["-s", str(script)]
    command.append(f"http://127.0.0.1:{port}{scenario.path}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False)
    out = done.stdout
    requests, rps = WRK_REQUESTS.search(out), WRK_RPS.search(out)
    if done.returncode != 0 or requests is None or rps is None:
        raise RuntimeError(
            f"wrk failed for {scenario.name} (exit {done.returncode}): {out[-500:]} {done.stderr[-500:]}"
        )
    total = int(requests.group(1))
    non_2xx_match = WRK_NON_2XX.search(out)
    non_2xx = int(non_2xx_match.group(1)) if non_2xx_match else 0
    unexpected: collections.Counter[str] = collections.Counter()
    if scenario.status < 400:
        unexpected["non-2xx/3xx"] = non_2xx
    else:
        unexpected["2xx/3xx"] = total - non_2xx
    errors = WRK_SOCKET_ERRORS.search(out)
    if errors:
        for kind, count in zip(("connect", "read", "write", "timeout"), errors.groups(), strict=True):
            unexpected[f"socket_error_{kind}"] = int(count)
    expected = total - sum(v for k, v in unexpected.items() if not k.startswith("socket_error"))
    latency = {f"p{q}": float(v) * TO_MS[unit] for q, v, unit in WRK_LATENCY.findall(out)}
    return {
        "rps": float(rps.group(1)) * expected / total if total else 0.0,
        "unexpected": +unexpected,
        "latency_ms": latency,
    }


def check_status(port: int, scenario: Scenario) -> None:
    """One request with httpx: wrk only tells 2xx/3xx from the rest, this checks the exact status."""
    import httpx

    response = httpx.request(
        scenario.method,
        f"http://127.0.0.1:{port}{scenario.path}",
        headers={**scenario.headers, **({"Content-Type": "application/json"} if scenario.body else {})},
        content=scenario.body or None,
        timeout=10,
    )
    if response.status_code != scenario.status:
        raise RuntimeError(
            f"{scenario.name}: expected {scenario.status}, got {response.status_code} {response.text[:200]}"
        )


def load_with_wrk(
    port: int, scenarios: list[Scenario], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    """What `load_from_another_process` measures, with wrk as the client."""
    secs = wrk_seconds(seconds)
    results: dict[str, Any] = {
        s.name: {"rps": [], "ratios": [], "unexpected": collections.Counter(), "p50": [], "p99": []} for s in scenarios
    }
    with tempfile.TemporaryDirectory(prefix="zguard-bench-wrk-") as tmp:
        script_dir = Path(tmp)

        def run(scenario: Scenario) -> float:
            once = wrk_once(port, scenario, secs, connections, script_dir)
            r = results[scenario.name]
            r["rps"].append(once["rps"])
            r["unexpected"].update(once["unexpected"])
            for q in ("p50", "p99"):
                if q in once["latency_ms"]:
                    r[q].append(once["latency_ms"][q])
            rps: float = once["rps"]
            return rps

        for scenario in scenarios:  # warm-up: caches, lock-outs, connections
            wrk_once(port, scenario, 1, connections, script_dir)
            check_status(port, scenario)
        baseline, others = scenarios[0], scenarios[1:]
        for _ in range(rounds):
            # Each scenario right after a baseline slice, compared with it (see run_client).
            for scenario in others:
                before = run(baseline)
                rps = run(scenario)
                results[scenario.name]["ratios"].append(rps / before if before else 0.0)
            if not others:
                run(baseline)
    return {
        name: {
            "rps": r["rps"],
            "ratios": r["ratios"],
            "unexpected": dict(r["unexpected"]),
            "latency_ms_p50_median": round(statistics.median(r["p50"]), 3) if r["p50"] else None,
            "latency_ms_p99_median": round(statistics.median(r["p99"]), 3) if r["p99"] else None,
        }
        for name, r in results.items()
    }


def load(  # noqa: PLR0917 - positional like load_from_another_process
    client: str, port: int, scenarios: list[Scenario], rounds: int, seconds: float, connections: int
) -> dict[str, Any]:
    if client == "wrk":
        return load_with_wrk(port, scenarios, rounds, seconds, connections)
    spec = [{"name": s.name, "status": s.status, "request": s.raw().hex()} for s in scenarios]
    return load_from_another_process(port, spec, rounds, seconds, connections)


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


def api_app(d: Deployment, rate_limits: Any) -> tuple[Any, Any]:
    """The API app over `d`'s services and the durable trail, as `zguard serve` wires them; and its runtime."""
    runtime = build_runtime(
        d.settings,
        NullEngine(),
        auth=d.auth,
        audit=d.audit,
        prompts=prompt_capture(d.settings),
        provenance=ProvenanceMarker.ephemeral(d.settings.provenance),  # no image is made: the keys do not matter
        rate_limits=rate_limits,
    )
    runtime.services.readiness.set(ModelState.READY)
    return create_api_app(d.settings, runtime.services), runtime


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


# --- (c) a flood of wrong Basic passwords ---------------------------------------------------


class CountedBcrypt:
    """Stands in for `verify_password` in the auth service: counts calls and their thread CPU."""

    def __init__(self) -> None:
        self.cpu_s: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, password: str, password_hash: str) -> bool:
        started = time.thread_time()
        try:
            return verify_password(password, password_hash)
        finally:
            used = time.thread_time() - started
            with self._lock:
                self.cpu_s.append(used)


async def flood_once(
    auth: AuthService, audit: AuditSink, attempts: int, *, concurrent: bool, client: str
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()

    async def attempt(i: int) -> None:
        # Each attempt is a request: its decisions fold into its record, committed as one event.
        record = RequestRecord()
        try:
            await auth.authenticate(basic_header(USER, f"guess-{i}"), RequestInfo(client=client, record=record))
            outcomes["accepted"] += 1
        except TooManyFailedLogins:
            outcomes["429 too_many_failed_logins"] += 1
        except InvalidApiKey:
            outcomes["401 invalid_api_key"] += 1
        await audit.record(
            AuditEvent(
                type=record.type or "http.request",
                outcome=record.outcome or "allowed",
                code=record.code,
                client=client,
                principal=record.principal,
                auth_method=record.auth_method,
                detail={**record.detail, "decisions": ",".join(record.decisions)},
            )
        )

    if concurrent:
        await asyncio.gather(*(attempt(i) for i in range(attempts)))
    else:
        for i in range(attempts):
            await attempt(i)
    return outcomes


async def measure_flood(d: Deployment, attempts: int) -> dict[str, Any]:
    counted = CountedBcrypt()
    namespace = vars(auth_module)  # the name the auth service calls bcrypt by
    namespace["verify_password"] = counted
    try:
        settings = d.settings
        runs: dict[str, Any] = {}
        for mode in ("sequential", "concurrent"):
            auth = build_auth(settings, d.store, os.urandom(KEY_BYTES), audit=d.audit)  # fresh limits
            counted.cpu_s.clear()
            # One correct login first: the CPU of one verification, measured the same way.
            await auth.authenticate(
                basic_header(USER, PASSWORD), RequestInfo(client="127.0.0.2", record=RequestRecord())
            )
            one_verification_s = counted.cpu_s[0]
            counted.cpu_s.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            outcomes = await flood_once(auth, d.audit, attempts, concurrent=mode == "concurrent", client="127.0.0.3")
            process_cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            calls = len(counted.cpu_s)
            bcrypt_cpu = sum(counted.cpu_s)
            runs[mode] = {
                "attempts": attempts,
                "outcomes": dict(outcomes),
                "verify_password_calls": calls,
                "bcrypt_cpu_s": round(bcrypt_cpu, 3),
                "bcrypt_cpu_s_per_1000_attempts": round(bcrypt_cpu * 1000 / attempts, 3),
                "process_cpu_s_whole_flood": round(process_cpu, 3),
                "wall_s": round(wall, 3),
                "one_verification_cpu_s": round(one_verification_s, 4),
                "unbounded_would_be_cpu_s": round(one_verification_s * attempts, 1),
                "bounded": calls <= 5 + BCRYPT_SLOTS - 1,
            }
            log(f"flood {mode}: {calls} bcrypt verifications for {attempts} attempts")
    finally:
        namespace["verify_password"] = verify_password
    return {
        "measures": f"{attempts} wrong passwords for one configured user (bcrypt cost {DEFAULT_COST}) "
        "through AuthService.authenticate; verify_password wrapped to count calls and their thread CPU",
        "failed_logins_per_user": d.settings.api_auth.failed_logins_per_user,
        "bcrypt_slots": BCRYPT_SLOTS,
        "limit_verifications": f"<= 5 + {BCRYPT_SLOTS - 1} (the per-user limit, plus racing bcrypt slots)",
        **runs,
        "bounded": all(run["bounded"] for run in runs.values()),
    }


# --- main -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m_5m_15m": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: version(name) for name in ("uvicorn", "fastapi", "starlette", "sqlalchemy", "bcrypt")},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000, help="in-process calls per credential kind")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded in-process calls first")
    parser.add_argument("--duration", type=float, default=0.4, help="seconds per HTTP scenario per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of all HTTP scenarios")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load client")
    parser.add_argument("--flood", type=int, default=1000, help="wrong passwords per flood")
    parser.add_argument(
        "--asgi-requests", type=int, default=2000, help="in-process ASGI requests per scenario per round (0 skips)"
    )
    args = parser.parse_args(argv)
    if args.iterations < 20 or args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.flood < 10:
        parser.error("need --iterations >= 20, --rounds >= 1, --duration > 0, --connections >= 1, --flood >= 10")
    if args.asgi_requests and args.asgi_requests < args.connections:
        parser.error("--asgi-requests must be 0 (skip) or at least --connections")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    # As a deployment logging at info: every audit event and refusal is formatted and written.
    devnull = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
    logging.basicConfig(level=logging.INFO, stream=devnull, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="zguard-bench-auth-") as tmp:
        log(f"hashing the configured user's password at cost {DEFAULT_COST}")
        d = deploy(Path(tmp), hash_password(PASSWORD, DEFAULT_COST))
        try:
            log("in-process access checks")
            in_process = asyncio.run(measure_in_process(d, args.iterations, args.warmup))
            quiet = without_audit(d)
            in_process["without_audit_output"] = asyncio.run(
                measure_in_process(quiet, args.iterations, args.warmup, records=False)
            )
            in_process["audit_commit"] = asyncio.run(measure_commit(d.audit, min(args.iterations, COMMIT_SAMPLES)))
            log("HTTP")
            http = measure_http(d, args.rounds, args.duration, args.connections, args.asgi_requests)
            log("Basic flood")
            flood = asyncio.run(measure_flood(d, args.flood))
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return 1
        finally:
            assert isinstance(d.audit, AuditTrail)
            audit = audit_summary(d.audit)
    result = {
        "benchmark": "zguard access control: per-request checks, refusal throughput, Basic flood cost",
        "parameters": {
            "iterations": args.iterations,
            "warmup": args.warmup,
            "http_rounds": args.rounds,
            "http_seconds_per_scenario": args.duration,
            "http_connections": args.connections,
            "flood_attempts": args.flood,
            "asgi_requests": args.asgi_requests,
            "state_database": "SQLite file (WAL), migrated",
            "bcrypt_cost": DEFAULT_COST,
            "audit": "AuditTrail (the durable trail of zguard serve: one event per request committed before the "
            "response, SQLite synchronous=FULL, group commit); logging at info to /dev/null",
        },
        "machine": machine_info(),
        "in_process": in_process,
        "http": http,
        "basic_flood": flood,
        "audit": audit,
        "all_ok": in_process["bearer"]["median_ok"]
        and in_process["basic"]["median_ok"]
        and http["ratio_ok"]
        and flood["bounded"]
        and audit["chain_verifies"],
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
