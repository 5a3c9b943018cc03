"""Benchmark: several replicas appending to one audit trail on PostgreSQL — head-row lock vs advisory lock.

Run ``.venv/bin/python bench/bench_audit_writers.py [--events N] [--writers 3] [--batch 1]``.
Prints ONE JSON object (also written to ``bench/results/audit-writers-<date>.json`` with ``--save``).

Each writer is an `AuditStore` on its own engine and signing key, in its own thread: a replica's
single audit writer (each `AuditTrail` funnels its process's events into one writer). They
append `--events` request events each, `--batch` per transaction (1: one event per request,
the worst case; a busy replica's group commit makes batches larger), checkpoints every 1,000.

``head_row``
    Today's order: each transaction starts with ``UPDATE audit_head ... RETURNING`` (the row lock
    is the serialisation point, held until commit).
``advisory``
    ``SELECT pg_advisory_xact_lock(k)`` first, then the head read and the same writes: the same
    total order, the lock outside any table row.
``baseline_1``
    One writer alone with the head-row lock: the ceiling the others are compared with.

For each: events/s over the whole run, the chain verified afterwards (`verify_store` with every
writer's key listed) and the sequence checked dense (1..N, no gap, no duplicate). Both locks
serialise every append on the database, so neither can scale past one writer's commit rate; the
question is which costs less per transaction under contention.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*

from bench.machine import machine_info
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, make_url

from zguard.audit import AuditEvent
from zguard.audit import store as store_module
from zguard.audit.chain import CheckpointSigner, load_or_create_signing_key
from zguard.audit.checkpoint_keys import CheckpointKeys, TrustedKey
from zguard.audit.store import AuditStore, CheckpointPolicy, Head, pending
from zguard.audit.verify import verify_store
from zguard.store import migrate
from zguard.store.database import create_store_engine

ADVISORY_KEY = 0x7A67_7561_7264  # "zguard": the advisory lock's key
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).parent / "results"


def advisory_lock_head(conn: Connection) -> Head:
    """The head, read under a transaction-scoped advisory lock instead of the row lock."""
    conn.execute(text(f"SELECT pg_advisory_xact_lock({ADVISORY_KEY})"))
    return store_module._read_head(conn)


def event(writer: int, i: int) -> AuditEvent:
    return AuditEvent(
        type="http.request",
        outcome="allowed",
        listener="api",
        client="10.20.30.40",
        principal=f"svc-{writer}",
        roles=("generator",),
        auth_method="bearer",
        http={"method": "GET", "path": "/v1/models", "status": 200},
        detail={"i": i, "replica": f"gpu-{writer}"},
    )


def run(url: URL, keys_dir: Path, *, writers: int, events: int, batch: int) -> dict[str, Any]:
    engines = [create_store_engine(url) for _ in range(writers)]
    signers: list[CheckpointSigner] = [load_or_create_signing_key(keys_dir / f"gpu-{w}.pem") for w in range(writers)]
    stores = [
        AuditStore(engine, signer=signer, checkpoints=CheckpointPolicy(1000, 300_000))
        for engine, signer in zip(engines, signers, strict=True)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(writers + 1)

    def write(w: int) -> None:
        try:
            start.wait()
            for first in range(0, events, batch):
                stores[w].append([pending(event(w, i)) for i in range(first, min(events, first + batch))])
        except BaseException as exc:  # noqa: BLE001 - reported in the result
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    keys = CheckpointKeys(
        TrustedKey(f"gpu-{w}", signer.public_key, keys_dir / f"gpu-{w}.pem") for w, signer in enumerate(signers)
    )
    report = verify_store(stores[0], keys)
    seqs = [e.seq for e in stores[0].iter_events()]
    for store in stores:
        store.close()
    for engine in engines:
        engine.dispose()
    total = writers * events
    return {
        "writers": writers,
        "events": total,
        "batch": batch,
        "seconds": round(elapsed, 3),
        "events_per_s": round(total / elapsed),
        "transactions_per_s": round(total / batch / elapsed),
        "verified": report.ok,
        "signers": report.signers,
        "dense": seqs == list(range(1, len(seqs) + 1)),
        "errors": [f"{type(e).__name__}: {e}"[:200] for e in errors],
    }


def fresh_schema(admin_url: URL, name: str) -> URL:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    admin.dispose()
    url = admin_url.update_query_dict({"options": f"-csearch_path={name}"})
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def drop_schema(admin_url: URL, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


def measured(admin_url: URL, label: str, lock: Callable[[Connection], Head], **params: int) -> dict[str, Any]:
    original = store_module._lock_head
    setattr(store_module, "_lock_head", lock)  # the variant under test, for this run only  # noqa: B010
    schema = f"bench_writers_{label}"
    try:
        url = fresh_schema(admin_url, schema)
        with tempfile.TemporaryDirectory() as keys:
            return run(url, Path(keys), **params)
    finally:
        setattr(store_module, "_lock_head", original)  # noqa: B010 - as above
        drop_schema(admin_url, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL URL (a schema of its own is made)")
    parser.add_argument("--events", type=int, default=1500, help="events per writer")
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="events per transaction")
    parser.add_argument("--save", action="store_true", help="also write the JSON under bench/results/")
    args = parser.parse_args()
    admin_url = make_url(args.url)
    params = {"events": args.events, "batch": args.batch}
    out: dict[str, Any] = {
        "benchmark": "audit_writers",
        "machine": machine_info(["SQLAlchemy", "psycopg"]),
        "baseline_1": measured(admin_url, "baseline", store_module._lock_head, writers=1, **params),
        "head_row": measured(admin_url, "head_row", store_module._lock_head, writers=args.writers, **params),
        "advisory": measured(admin_url, "advisory", advisory_lock_head, writers=args.writers, **params),
    }
    head_row, advisory = out["head_row"]["events_per_s"], out["advisory"]["events_per_s"]
    out["advisory_vs_head_row"] = round(advisory / head_row, 3)
    out["scaling_head_row_vs_1"] = round(head_row / out["baseline_1"]["events_per_s"], 3)
    text_out = json.dumps(out, indent=2)
    print(text_out)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"audit-writers-{datetime.now(UTC):%Y-%m-%d}.json").write_text(text_out + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
