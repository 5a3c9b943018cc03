"""Benchmark: the admin console's server time per page, and audit search over a large trail.

Run ``.venv/bin/python bench/bench_console.py [--events N] [--postgres URL] [--requests N]``.
Prints ONE JSON object on stdout; progress on stderr. A measurement, not a test.

``pages``
    Each console page rendered through the real console app (in process, httpx's ASGI transport:
    the whole middleware stack, the session lookup, the template, no network), signed in with a
    session as the role that may see it, ``--requests`` times after a warm-up; median and p95 in
    ms. The state database is a SQLite file; the audit reader is the in-memory sink holding the
    few hundred events the run itself makes.
``audit_search``
    ``AuditStore.search`` (what /audit, /console/api/audit/events and /v1/audit/events call) over
    ``--events`` stored events (default 1,000,000: 1,000 principals, a mix of types and outcomes,
    one event a second), on SQLite and, with ``--postgres``, on PostgreSQL: the first page (50
    events), a deep page (keyset ``after`` near the end), a principal's first and deep page, a
    type-and-outcome filter, and time ranges (through ``audit_time_blocks``): the last hour
    oldest and newest first, an hour and a principal's day in the middle of the trail, everything
    since the middle, and everything before it newest first. Median and max of 20 runs each, ms.
    Target from issue 18: first and deep pages ≤ 100 ms, every search alike. The store's clock
    follows the synthetic event times, so checkpoints are timed like the events they cover, and
    the tables are ANALYZEd after the fill, as autovacuum would have done on a trail that grew
    to that size (PostgreSQL planned the type filter as a full scan without statistics: 403 ms).
``login``
    A console sign-in (bcrypt at the default cost 12, then the session insert), median of 10: what
    the failed-login limits bound per user and address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import URL, make_url

from zguard.app.console import create_console_app
from zguard.audit import AuditEvent
from zguard.audit.store import AuditStore, CheckpointPolicy, pending
from zguard.config import Settings
from zguard.security.passwords import hash_password
from zguard.serve.wiring import build_auth, build_runtime
from zguard.services.readiness import ModelState
from zguard.store import migrate
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

PASSWORD = "bench console passphrase 1"  # noqa: S105 - the bench users' password
PAGES = {  # path: who may see it
    "/login": None,
    "/": "dana",
    "/account": "dana",
    "/generate": "dana",
    "/users": "ada",
    "/audit": "audrey",
    "/system": "ada",
    "/policy": "ada",
}
TYPES = ("http.request", "generation.completed", "auth.denied", "console.login", "policy.reloaded")
OUTCOMES = ("allowed", "done", "denied", "failed")


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(percentile(ms, 0.95), 3), "n": len(ms)}


# --- pages -------------------------------------------------------------------------------------


class _DemoInfoEngine:
    """The console pages need the engine's info and nothing else: no model is loaded."""

    from zguard.engine import ModelInfo

    info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")

    def load(self) -> None:
        return None

    def generate(self, job: Any, should_stop: Callable[[], bool]) -> list[Any]:
        raise NotImplementedError


async def _pages(requests: int, state: Path, password_cost: int) -> dict[str, Any]:
    from zguard.audit.memory import MemoryAuditSink
    from zguard.audit.prompts import PromptCapture
    from zguard.provenance.marking import ProvenanceMarker

    settings = Settings.model_validate(
        {
            "state_dir": str(state),
            "api_auth": {"enabled": True},
            "console": {"totp_required_roles": []},
            "rate_limits": {"other_routes": "100000/minute"},  # measured here: rendering, not the limiter's refusals
            "integrity": {"allow_root": True},
        }
    )
    engine = create_store_engine(make_url(f"sqlite:///{state / 'zguard.db'}"))
    migrate.upgrade(engine)
    store = PrincipalStore(engine)
    for name, role in (("dana", "generator"), ("ada", "admin"), ("audrey", "auditor")):
        store.create_principal(name, "user", roles=[role], password_hash=hash_password(PASSWORD, cost=password_cost))
    audit = MemoryAuditSink()
    runtime = build_runtime(
        settings,
        _DemoInfoEngine(),  # type: ignore[arg-type]
        auth=build_auth(settings, store, b"k" * 32, audit),
        audit=audit,
        prompts=PromptCapture("none"),
        provenance=ProvenanceMarker.ephemeral(settings.provenance),
    )
    runtime.services.readiness.set(ModelState.READY)
    app = create_console_app(settings, runtime.services)
    headers = {"accept": "text/html", "origin": "http://console.bench"}
    clients: dict[str | None, httpx.AsyncClient] = {}
    login_ms: list[float] = []
    try:
        for who in set(PAGES.values()):
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 40000)), base_url="http://console.bench"
            )
            if who is not None:
                started = time.perf_counter()
                resp = await client.post("/login", data={"username": who, "password": PASSWORD}, headers=headers)
                login_ms.append((time.perf_counter() - started) * 1000)
                assert resp.status_code == 303, resp.text
            clients[who] = client
        out: dict[str, Any] = {}
        for path, who in PAGES.items():
            client = clients[who]
            for _ in range(10):  # warm-up: templates compiled, caches filled
                await client.get(path, headers=headers)
            ms = []
            for _ in range(requests):
                started = time.perf_counter()
                resp = await client.get(path, headers=headers)
                ms.append((time.perf_counter() - started) * 1000)
                assert resp.status_code == 200, (path, resp.status_code)
            out[path] = summary(ms)
            log("page", path, out[path])
        return {"pages": out, "login_bcrypt_cost": password_cost, "login": summary(login_ms)}
    finally:
        for client in clients.values():
            await client.aclose()
        runtime.worker.stop(timeout=5)
        engine.dispose()


# --- audit search --------------------------------------------------------------------------------


def _event(i: int, start_s: float) -> AuditEvent:
    return AuditEvent(
        type=TYPES[i % len(TYPES)],
        outcome=OUTCOMES[(i // 7) % len(OUTCOMES)],
        request_id=f"{i:032x}",
        listener="api" if i % 3 else "console",
        client=f"10.20.{(i // 256) % 256}.{i % 256}",
        principal=f"user{i % 1000:04d}",
        roles=("generator",),
        auth_method="bearer",
        detail={"bench": i},
        time=start_s + i,
    )


@contextmanager
def _store(url: URL, key_dir: Path, clock: Callable[[], float] = time.time) -> Iterator[AuditStore]:
    from zguard.audit.chain import load_or_create_signing_key

    engine = create_store_engine(url)
    migrate.upgrade(engine)
    try:
        signer = load_or_create_signing_key(key_dir / "audit-signing.pem")
        yield AuditStore(engine, signer=signer, checkpoints=CheckpointPolicy(1000, 300_000), clock=clock)
    finally:
        engine.dispose()


class _EventClock:
    """The store's clock during the fill: the time of the last event appended."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _search(store: AuditStore, events: int, clock: _EventClock) -> dict[str, Any]:
    started = time.perf_counter()
    start_s = time.time() - events
    batch = 5_000
    for first in range(0, events, batch):
        last = min(first + batch, events)
        clock.now = start_s + last - 1
        store.append([pending(_event(i, start_s)) for i in range(first, last)])
        if first and first % 200_000 == 0:
            log(f"  {first:,} events stored")
    fill_s = time.perf_counter() - started
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    last_hour = int((start_s + events - 3600) * 1000)
    middle = int((start_s + events / 2) * 1000)
    queries: dict[str, Callable[[], list[Any]]] = {
        "first_page": lambda: store.search(limit=50),
        "deep_page": lambda: store.search(after_seq=events - 100, limit=50),
        "principal_first_page": lambda: store.search(principal="user0500", limit=50),
        "principal_deep_page": lambda: store.search(principal="user0500", after_seq=events - 20_000, limit=50),
        "type_and_outcome": lambda: store.search(type_prefix="auth.", outcome="denied", limit=50),
        "last_hour": lambda: store.search(since_ms=last_hour, limit=50),
        "last_hour_newest_first": lambda: store.search(since_ms=last_hour, limit=50, newest_first=True),
        "an_hour_in_the_middle": lambda: store.search(since_ms=middle, until_ms=middle + 3_600_000, limit=50),
        "a_principals_day_in_the_middle": lambda: store.search(
            since_ms=middle, until_ms=middle + 86_400_000, principal="user0500", limit=50
        ),
        "since_the_middle": lambda: store.search(since_ms=middle, limit=50),
        "before_the_middle_newest_first": lambda: store.search(until_ms=middle, limit=50, newest_first=True),
    }
    out: dict[str, Any] = {"events": events, "fill_s": round(fill_s, 1)}
    for name, query in queries.items():
        ms = []
        for _ in range(20):
            began = time.perf_counter()
            rows = query()
            ms.append((time.perf_counter() - began) * 1000)
        out[name] = {"median_ms": round(statistics.median(ms), 2), "max_ms": round(max(ms), 2), "rows": len(rows)}
        log("search", name, out[name])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL database (a fresh schema is used)")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": {"python": platform.python_version(), "platform": platform.platform()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pages").mkdir()
        result.update(asyncio.run(_pages(args.requests, root / "pages", password_cost=12)))
        if not args.skip_search:
            clock = _EventClock()
            with _store(make_url(f"sqlite:///{root / 'audit.db'}"), root, clock) as store:
                log("sqlite")
                result["audit_search"] = {"sqlite": _search(store, args.events, clock)}
            if args.postgres:
                import secrets

                from sqlalchemy import text

                schema = f"bench_console_{secrets.token_hex(4)}"
                base = make_url(args.postgres)
                admin = create_store_engine(base)
                with admin.begin() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                try:
                    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
                    clock = _EventClock()
                    with _store(url, root, clock) as store:
                        log("postgresql")
                        result["audit_search"]["postgresql"] = _search(store, args.events, clock)
                finally:
                    with admin.begin() as connection:
                        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                    admin.dispose()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
