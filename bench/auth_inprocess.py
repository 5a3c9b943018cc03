"""bench_auth.py's ``in_process`` part: one request's access checks called directly in an event loop,
and the lone audit commit a request adds (see bench_auth.py's docstring for the method)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.auth_deployment import GENEROUS_RATE, PASSWORD, USER, Deployment, basic_header

from zguard.audit import AuditEvent, AuditSink, RequestRecord
from zguard.security.rbac import Permission
from zguard.services.auth import RequestInfo

TARGET_MEDIAN_US = 100.0
COMMIT_SAMPLES = 1000  # lone commits timed for in_process.audit_commit


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
