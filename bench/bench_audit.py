"""Benchmark: the audit trail's durable appends and its verification.

Run ``.venv/bin/python bench/bench_audit.py [--events N] [--postgres]``. Prints ONE JSON object.

``append``
    Events committed through `AuditTrail` (the server's sink: group commit in one writer thread)
    with commit-before-return kept: each caller waits until its event's transaction is
    committed. SQLite file in a temporary directory, WAL, ``synchronous=FULL`` (each commit is
    fsynced). ``writers_1``: one thread calling ``emit`` in a loop (no batching is possible: one
    event per transaction). ``writers_16``: 16 threads at once. ``async_16``: 16 coroutines on
    one event loop awaiting ``record`` (how requests use it). Events are realistic request
    events (listener, client, principal, roles, http, detail), about 500 bytes of JSON.
    Checkpoints every 1,000 events are included, as in the default settings.
``verify``
    ``verify_store`` over the whole chain written above: rows read in batches, each body parsed,
    re-hashed, linked and compared with its columns, checkpoint signatures checked.
Targets from issue 4 (2-core CI machine): ≥ 2,000 durable events/s, verify ≥ 50,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from zguard.audit import AuditEvent
from zguard.audit.chain import load_or_create_signing_key
from zguard.audit.store import AuditStore, CheckpointPolicy
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.store import migrate
from zguard.store.database import create_store_engine


def event(i: int) -> AuditEvent:
    return AuditEvent(
        type="http.request",
        outcome="allowed",
        request_id=f"{i:032x}",
        listener="api",
        client="10.20.30.40",
        principal="batch-service",
        roles=("generator",),
        auth_method="bearer",
        http={"method": "POST", "path": "/v1/images/generations", "status": 200},
        detail={"decisions": "access.allowed", "permission": "images:generate", "token": "zg_AbCd1234"},
        latency_ms=12.5,
    )


def measure(store: AuditStore, mode: str, count: int) -> dict[str, Any]:
    trail = AuditTrail(store)
    started = time.perf_counter()
    if mode == "writers_1":
        for i in range(count):
            trail.emit(event(i))
    elif mode == "writers_16":
        per = count // 16

        def run(k: int) -> None:
            for i in range(per):
                trail.emit(event(k * per + i))

        threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        count = per * 16
    else:
        per = count // 16

        async def main() -> None:
            async def run(k: int) -> None:
                for i in range(per):
                    await trail.record(event(k * per + i))

            await asyncio.gather(*(run(k) for k in range(16)))

        asyncio.run(main())
        count = per * 16
    elapsed = time.perf_counter() - started
    trail.close()
    return {"events": count, "seconds": round(elapsed, 3), "events_per_s": round(count / elapsed)}


def run_backend(url: URL, key_dir: Path, events: int) -> dict[str, Any]:
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    signer = load_or_create_signing_key(key_dir / "audit-signing.pem")
    store = AuditStore(engine, signer=signer, checkpoints=CheckpointPolicy(1000, 300_000))
    append = {mode: measure(store, mode, events) for mode in ("writers_1", "writers_16", "async_16")}
    started = time.perf_counter()
    report = verify_store(store, signer.public_key)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {
        "append": append,
        "verify": {
            "ok": report.ok,
            "events": report.events,
            "checkpoints": report.checkpoints,
            "seconds": round(elapsed, 3),
            "events_per_s": round(report.events / elapsed),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8000, help="events per append mode (default 8000)")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        nargs="?",
        const="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="also measure PostgreSQL (a throwaway schema is created in this database)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        out: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0))},
            "sqlite": run_backend(URL.create("sqlite", database=str(directory / "zguard.db")), directory, args.events),
        }
        if args.postgres:
            from sqlalchemy import create_engine, text

            schema = f"zguard_bench_{int(time.time())}"
            admin = create_engine(make_url(args.postgres), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
                out["postgresql"] = run_backend(url, directory, args.events)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    out["targets"] = {"durable_events_per_s": 2000, "verify_events_per_s": 50000}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
