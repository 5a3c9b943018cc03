"""Prometheus metrics: what `/metrics` on the console shows, in the text exposition format.

Counted as requests finish (`AuditRequests` calls `record_request`, the one place that sees every
request's listener, status and error code); gauges are read when scraped. Written by hand: seven
series do not need a client library and its process-wide default registry.

Label values are only ever taken from closed sets: listener names, HTTP status numbers and
zguard's own error codes (anything else becomes `other`). Prompts, principals, tokens and
addresses never become labels, so a scrape cannot leak them and cardinality stays bounded.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GENERATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
LISTENERS = frozenset({"api", "console"})
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
OTHER = "other"


def label_code(code: str | None) -> str:
    """`ok` for success, the error code when it is one of zguard's shape, else `other`."""
    if code is None:
        return "ok"
    return code if _CODE.fullmatch(code) else OTHER


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    value: float
    kind: str = "gauge"
    labels: tuple[tuple[str, str], ...] = ()


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in pairs)
    return f"{{{text}}}" if text else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class RequestMetrics:
    """Request counts and the generation latency histogram; safe to update from any thread."""

    def __init__(self, buckets: tuple[float, ...] = GENERATION_BUCKETS_S) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._buckets = buckets
        self._bucket_counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._latency_sum = 0.0

    def record_request(self, listener: str, status: int | None, code: str | None) -> None:
        key = (listener if listener in LISTENERS else OTHER, str(status) if status else "none", label_code(code))
        with self._lock:
            self._requests[key] += 1

    def observe_generation(self, seconds: float) -> None:
        with self._lock:
            self._bucket_counts[bisect_left(self._buckets, seconds)] += 1
            self._latency_sum += seconds

    def render(self, gauges: Iterable[Gauge] = ()) -> str:
        with self._lock:
            requests = sorted(self._requests.items())
            counts, total_s = list(self._bucket_counts), self._latency_sum
        lines = [
            "# HELP zguard_requests_total Requests answered, by listener, HTTP status and outcome code.",
            "# TYPE zguard_requests_total counter",
        ]
        for (listener, status, code), n in requests:
            lines.append(f"zguard_requests_total{_labels((('listener', listener), ('status', status), ('code', code)))} {n}")  # fmt: skip
        lines += [
            "# HELP zguard_generation_duration_seconds Time to answer successful image generations, queueing included.",
            "# TYPE zguard_generation_duration_seconds histogram",
        ]
        cumulative = 0
        for bound, n in zip((*self._buckets, math.inf), counts, strict=True):
            cumulative += n
            lines.append(f'zguard_generation_duration_seconds_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines.append(f"zguard_generation_duration_seconds_sum {_number(total_s)}")
        lines.append(f"zguard_generation_duration_seconds_count {cumulative}")
        seen: set[str] = set()
        for gauge in gauges:
            if gauge.name not in seen:
                seen.add(gauge.name)
                lines += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} {gauge.kind}"]
            lines.append(f"{gauge.name}{_labels(gauge.labels)} {_number(gauge.value)}")
        return "\n".join(lines) + "\n"


def service_gauges(
    *,
    waiting: int,
    running: int,
    model_verified: bool,
    model_ready: bool,
    policy_reloads: Mapping[str, int],
    audit: Mapping[str, object],
    engine_busy_s: float | None = None,
    engine_idle_s: float | None = None,
) -> list[Gauge]:
    """The scrape-time series, from plain values (the console route reads them from the services)."""
    gauges = [
        Gauge("zguard_queue_waiting", "Generations admitted and waiting for the engine.", waiting),
        Gauge("zguard_queue_running", "Generations running on the engine.", running),
    ]
    if engine_busy_s is not None and engine_idle_s is not None:  # idle / (busy + idle): the engine's idle fraction
        gauges += [
            Gauge("zguard_engine_busy_seconds_total", "Seconds the engine spent generating.", engine_busy_s, "counter"),
            Gauge(
                "zguard_engine_idle_while_pending_seconds_total",
                "Seconds a generation waited while the engine ran nothing.",
                engine_idle_s,
                "counter",
            ),
        ]
    gauges += [
        Gauge("zguard_model_verified", "1 when the loaded model matched its pinned manifest.", int(model_verified)),
        Gauge("zguard_model_ready", "1 when the model is loaded and serving.", int(model_ready)),
    ]
    gauges += [
        Gauge("zguard_policy_reloads_total", "Prompt policy reloads, by result.", n, "counter", (("result", result),))
        for result, n in sorted(policy_reloads.items())
    ]
    failures = audit.get("write_failures")
    if isinstance(failures, int):
        gauges.append(Gauge("zguard_audit_write_failures_total", "Audit events that could not be written.", failures, "counter"))  # fmt: skip
    forwarding = audit.get("forwarding")
    lag = forwarding.get("lag") if isinstance(forwarding, Mapping) else None
    if isinstance(lag, int):
        gauges.append(Gauge("zguard_audit_forwarding_lag_events", "Audit events not yet delivered to syslog.", lag))
    return gauges
