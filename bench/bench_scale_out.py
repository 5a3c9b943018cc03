"""Benchmark: the gateway path with 1, 2 and 3 replicas behind nginx, and the audit trail's
append rate with 3 writers on one PostgreSQL database.

Run ``.venv/bin/python bench/bench_scale_out.py [--seconds S] [--clients N] [--out FILE]``.
Prints ONE JSON object (and writes it to ``--out``). Needs the local PostgreSQL (127.0.0.1:5432,
database ``test``), redis-server and nginx (tests/common/frontdoor.py installs what is missing).

``gateway``
    POST /v1/images/generations (64x64, 1 step) through nginx (TLS, deploy/nginx/zguard.conf)
    to N replicas, each a real ``zguard serve`` (this file with ``--replica``: the server's own
    `serve()` with a stub engine that returns a fixed image at once, so what is measured is
    zguard's path: transport, network ACL, bearer authentication, RBAC, rate limit in Redis,
    validation, prompt policy, admission, watermark + AIGC labels on a 64x64 image, PNG
    encoding, and the audit events committed to PostgreSQL before the answer). ``--clients``
    keep-alive connections send requests back to back for ``--seconds``. Baseline in the same
    run: 1 replica. ``efficiency`` = rps(N) / (N * rps(1)).
``audit_append``
    3 processes, each an `AuditTrail` (the server's sink: group commit, commit before return)
    with 16 threads emitting request-sized events into one PostgreSQL schema for ``--seconds``;
    baseline in the same run: 1 process. One total order: every append takes the chain's head
    row lock, so writers queue on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.common.* (the harness the integration tests use)

GENERATE = {"prompt": "a lighthouse at dawn", "size": "64x64", "num_inference_steps": 1}


# --- the replica process: zguard's serve() with a stub engine ------------------------------------


class StubEngine:
    """Returns a fixed image at once: the benchmark measures zguard, not the model."""

    def __init__(self) -> None:
        from zguard.engine import ModelInfo

        self.info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")

    def load(self) -> None:
        pass

    def generate(self, job: Any, should_stop: Callable[[], bool]) -> list[Any]:
        from PIL import Image

        return [Image.new("RGB", (job.width, job.height), (40, 90, 160)) for _ in range(job.n)]


def run_replica() -> int:
    from zguard.cli.common import setup_logging
    from zguard.config.loader import load_settings
    from zguard.serve.lifecycle import serve

    settings = load_settings()
    setup_logging("warning")
    return asyncio.run(serve(settings, engine=StubEngine()))


# --- the load ------------------------------------------------------------------------------------


def drive(url: str, ca: str, token: str, clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    counts: dict[int, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one() -> None:
        mine: list[float] = []
        statuses: dict[int, int] = {}
        with httpx.Client(
            base_url=url,
            verify=ssl.create_default_context(cafile=ca),
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        ) as c:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = c.post("/v1/images/generations", json=GENERATE).status_code
                mine.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        with lock:
            latencies.extend(mine)
            for status, n in statuses.items():
                counts[status] = counts.get(status, 0) + n

    threads = [threading.Thread(target=one) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    ok = counts.get(200, 0)
    return {
        "requests": sum(counts.values()),
        "statuses": {str(k): v for k, v in sorted(counts.items())},
        "rps_200": round(ok / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
    }


def start_stub(process: Any) -> None:
    """Start a `tests.common.servers.ZguardProcess` as this file with --replica (same env and ports)."""
    process.log_path.parent.mkdir(parents=True, exist_ok=True)
    with process.log_path.open("w") as log:
        process.proc = subprocess.Popen(
            [sys.executable, __file__, "--replica"], env=process.env, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def gateway(base: Path, count: int, seconds: float, clients: int) -> dict[str, Any]:
    from tests.common.databases import postgres_schema_url
    from tests.common.frontdoor import Nginx, RedisServer, Replicas, TcpProxy, via_proxy
    from tests.common.pki import make_pki

    pki = make_pki(base / "pki")
    with postgres_schema_url() as url, RedisServer(base / "redis") as redis:
        proxy = TcpProxy(
            (url.host or "127.0.0.1", url.port or 5432)
        )  # the tests' path, kept for a like-for-like figure
        database_url = via_proxy(url, proxy)
        env = {
            "ZGUARD_GENERATION__MIN_SIDE": "16",
            "ZGUARD_GENERATION__MAX_QUEUE": "256",
            # Limits high enough never to refuse: the rate limit and the in-flight lease are still
            # checked in Redis on every request, which is the cost measured. The sliding-window
            # counter keeps that cost flat at this volume (a moving window keeps one list entry
            # per request counted).
            "ZGUARD_RATE_LIMIT": "1000000/minute",
            "ZGUARD_RATE_LIMITS__STRATEGY": "sliding-window-counter",
            "ZGUARD_RATE_LIMITS__MAX_CONCURRENT_PER_PRINCIPAL": "1000",
            "ZGUARD_LOG_LEVEL": "warning",
        }
        replicas = Replicas(base, count, database_url=database_url, redis_url=redis.url, env=env)
        init = subprocess.run(
            [sys.executable, "-m", "zguard", "init", "--admin", "root"],
            env=replicas[0].env,
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            raise SystemExit(init.stderr)
        admin = init.stdout.strip().splitlines()[-1]
        nginx: Nginx | None = None
        try:
            for replica in replicas:
                start_stub(replica)
                replica.wait_ready(180)
            token = service_token(replicas[0].console, admin)
            nginx = Nginx(base / "nginx", pki, replicas.api_ports, workers=1)
            nginx.start()
            drive(nginx.url, str(pki.ca), token, clients, 2.0)  # warm: connections, caches, JIT of regexes
            result = drive(nginx.url, str(pki.ca), token, clients, seconds)
            result["postgres_connections"] = proxy.connections  # every replica's pools, after the load
            result["postgres_connections_per_replica"] = round(proxy.connections / count, 1)
        finally:
            if nginx is not None:
                nginx.stop()
            replicas.stop()
            proxy.close()
    return {"replicas": count, **result}


def service_token(console: str, admin: str) -> str:
    import httpx

    with httpx.Client(base_url=console, headers={"authorization": f"Bearer {admin}"}, timeout=30) as c:
        made = c.post("/console/api/users", json={"name": "bench", "kind": "service", "roles": ["generator"]})
        made.raise_for_status()
        issued = c.post(f"/console/api/users/{made.json()['id']}/tokens", json={})
        issued.raise_for_status()
        return str(issued.json()["token"])


# --- audit appends with several writer processes -------------------------------------------------


def audit_writer(url: str, seconds: float, threads: int) -> None:
    """Child: one AuditTrail (one replica's sink), `threads` callers emitting until the deadline."""
    from zguard.audit import AuditEvent
    from zguard.audit.store import AuditStore
    from zguard.audit.trail import AuditTrail
    from zguard.store.database import create_store_engine

    engine = create_store_engine(url)
    trail = AuditTrail(AuditStore(engine))
    deadline = time.monotonic() + seconds
    done = [0] * threads

    def emit(i: int) -> None:
        while time.monotonic() < deadline:
            trail.emit(
                AuditEvent(
                    type="http.request",
                    outcome="allowed",
                    principal="bench",
                    detail={"route": "/v1/images/generations", "status": 200, "n": done[i]},
                )
            )
            done[i] += 1

    workers = [threading.Thread(target=emit, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    trail.close()
    engine.dispose()
    print(json.dumps({"events": sum(done)}))


def audit_append(writers: int, seconds: float) -> dict[str, Any]:
    from sqlalchemy import func, select
    from tests.common.databases import postgres_schema_url

    from zguard.store import migrate
    from zguard.store.database import create_store_engine
    from zguard.store.models import AuditEventRow

    with postgres_schema_url() as url:
        rendered = url.render_as_string(hide_password=False)
        engine = create_store_engine(rendered)
        migrate.upgrade(engine)
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--audit-writer", rendered, str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(writers)
        ]
        counts = [json.loads(c.communicate()[0].strip().splitlines()[-1])["events"] for c in children]
        with engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(AuditEventRow)).scalar_one()
        engine.dispose()
    return {
        "writers": writers,
        "threads_each": 16,
        "events": sum(counts),
        "stored": stored,
        "per_s": round(sum(counts) / seconds, 1),
    }


def redis_memory(base: Path) -> dict[str, Any]:
    """MEMORY USAGE of what one principal costs in Redis, keys written the way zguard writes them
    (the `limits` library's moving window and sliding-window counter for `10/minute`, one
    in-flight sorted set with 2 slots), on a private redis-server."""
    import redis as redis_py
    from limits import parse
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
    from tests.common.frontdoor import RedisServer

    out: dict[str, Any] = {}
    with RedisServer(base / "redis-memory") as server:
        client = redis_py.Redis.from_url(server.url)
        storage = storage_from_string(server.url)
        for name, strategy in (
            ("moving_window", MovingWindowRateLimiter),
            ("sliding_window_counter", SlidingWindowCounterRateLimiter),
        ):
            client.flushall()
            limiter = strategy(storage)
            for limit in ("10/minute", "100/hour"):
                for _ in range(int(limit.split("/")[0])):
                    limiter.hit(parse(limit), "zguard", "generation", "alice")
            sizes = {k.decode(): client.memory_usage(k) for k in client.scan_iter()}
            out[name] = {
                "keys": len(sizes),
                "bytes": sum(v or 0 for v in sizes.values()),
                "rates": "10/minute;100/hour (full)",
            }
        client.flushall()
        client.zadd("zguard:inflight:alice", {"slot-" + "0" * 32: 1.0, "slot-" + "1" * 32: 2.0})
        out["in_flight_2_slots"] = {"bytes": client.memory_usage("zguard:inflight:alice")}
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--audit-writer", nargs=2, metavar=("URL", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.replica:
        return run_replica()
    if args.audit_writer:
        audit_writer(args.audit_writer[0], float(args.audit_writer[1]), 16)
        return 0
    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        runs = [gateway(Path(tmp) / f"n{n}", int(n), args.seconds, args.clients) for n in args.replicas.split(",")]
    base = runs[0]["rps_200"] or 1.0
    for run in runs:
        run["efficiency"] = round(run["rps_200"] / (run["replicas"] * base), 2)
    audits = [audit_append(1, args.seconds), audit_append(3, args.seconds)]
    with tempfile.TemporaryDirectory(prefix="bench-scale-out-") as tmp:
        memory = redis_memory(Path(tmp))
    audits[1]["vs_one_writer"] = round(audits[1]["per_s"] / (audits[0]["per_s"] or 1.0), 2)
    result = {
        "bench": "scale_out",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": load_at_start,  # a shared machine: other people's work is in the figures
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": args.seconds,
        "clients": args.clients,
        "gateway": runs,
        "audit_append": audits,
        "redis_memory_per_principal": memory,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
