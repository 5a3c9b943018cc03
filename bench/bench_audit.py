"""Benchmark: the audit trail's durable appends and its verification.

Run ``.venv/bin/python bench/bench_audit.py [--events N] [--lookup-events N] [--postgres]``. Prints ONE JSON object.

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
``lookup``
    Finding the generation event of a watermark id (``find_generation``, what ``zguard trace``
    does) among ``--lookup-events`` generation events (after the request events above): ``scan``
    pages through generation events by sequence (the lookup before the ``audit_watermarks``
    index), ``index`` asks the index. Median and max over ids spread across the trail, the last
    one included (a scan's worst case). ``append_s``: writing those events with their index rows.
Targets from issue 4 (2-core CI machine): ≥ 2,000 durable events/s, verify ≥ 50,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from zguard.audit import AuditEvent
from zguard.audit.chain import load_or_create_signing_key
from zguard.audit.store import AuditStore, CheckpointPolicy, pending
from zguard.audit.trail import AuditTrail
from zguard.audit.verify import verify_store
from zguard.provenance.trace import GENERATION_EVENT, find_generation
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


def generation(i: int, watermark_id: str) -> AuditEvent:
    """A completed generation carrying one watermarked image: what `audit_watermarks` indexes."""
    return dataclasses.replace(
        event(i),
        type=GENERATION_EVENT,
        outcome="done",
        model="z-image-turbo",
        manifest="9f" * 32,
        generation={"width": 1024, "height": 1024, "steps": 8, "seed": i, "n": 1},
        prompt={"hmac": "ab" * 32, "length": 120},
        policy={"verdict": "allowed", "rules": 0},
        latency_ms=1800.0,
        images=({"bytes": 1_234_567, "sha256": "cd" * 32, "watermark_id": watermark_id},),
        http=None,
        detail={},
    )


def scan_generation(store: AuditStore, watermark_id: str) -> dict[str, Any] | None:
    """The lookup as it was before the index: generation events page by page, bodies searched."""
    needle, after = f'"watermark_id":"{watermark_id}"', 0
    while True:
        page = store.search(type_prefix=GENERATION_EVENT, after_seq=after, limit=1000)
        for stored in page:
            if needle in stored.body:
                body: dict[str, Any] = json.loads(stored.body)
                return body
        if len(page) < 1000:
            return None
        after = page[-1].seq


def measure_lookup(store: AuditStore, count: int) -> dict[str, Any]:
    ids = [secrets.token_hex(8) for _ in range(count)]
    started = time.perf_counter()
    for start in range(0, count, 1000):
        store.append([pending(generation(i, ids[i])) for i in range(start, min(start + 1000, count))])
    append_s = time.perf_counter() - started
    wanted = [ids[k] for k in (count // 10, count // 2, (count * 9) // 10, count - 1)]

    def timed(lookup: Any) -> dict[str, float]:
        seconds = []
        for watermark_id in wanted:
            started = time.perf_counter()
            body = lookup(store, watermark_id)
            seconds.append(time.perf_counter() - started)
            if body is None or body["images"][0]["watermark_id"] != watermark_id:
                raise SystemExit(f"lookup of {watermark_id} failed")
        return {"median_ms": round(statistics.median(seconds) * 1000, 2), "max_ms": round(max(seconds) * 1000, 2)}

    scan, index = timed(scan_generation), timed(find_generation)
    return {
        "generation_events": count,
        "append_s": round(append_s, 3),
        "scan": scan,
        "index": index,
        "speedup_median": round(scan["median_ms"] / max(index["median_ms"], 0.001)),
    }


def run_backend(url: URL, key_dir: Path, events: int, lookup_events: int) -> dict[str, Any]:
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    signer = load_or_create_signing_key(key_dir / "audit-signing.pem")
    store = AuditStore(engine, signer=signer, checkpoints=CheckpointPolicy(1000, 300_000))
    append = {mode: measure(store, mode, events) for mode in ("writers_1", "writers_16", "async_16")}
    started = time.perf_counter()
    report = verify_store(store, signer.public_key)
    elapsed = time.perf_counter() - started
    lookup = measure_lookup(store, lookup_events) if lookup_events else None
    store.close()
    engine.dispose()
    return {
        "lookup": lookup,
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
    parser.add_argument(
        "--lookup-events",
        type=int,
        default=50_000,
        help="generation events for the watermark lookup (default 50000; 0 skips it)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        out: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": len(__import__("os").sched_getaffinity(0))},
            "sqlite": run_backend(
                URL.create("sqlite", database=str(directory / "zguard.db")), directory, args.events, args.lookup_events
            ),
        }
        if args.postgres:
            from sqlalchemy import create_engine, text

            schema = f"zguard_bench_{int(time.time())}"
            admin = create_engine(make_url(args.postgres), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
                out["postgresql"] = run_backend(url, directory, args.events, args.lookup_events)
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
