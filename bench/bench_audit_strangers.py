"""Benchmark: what a stranger's flood of refusals costs the audit trail (issue 14, observation 3).

Run ``.venv/bin/python bench/bench_audit_strangers.py [--requests N] [--baseline-requests N]``.
Prints ONE JSON object.

The API app as ``zguard serve`` wires it (``create_api_app`` over ``build_runtime``, a real
``AuditTrail`` on a SQLite file, ``open_audit_store`` from the settings), driven in-process through
``httpx.ASGITransport``. Every request is ``GET /v1/models`` with ``Authorization: Basic`` of a
200 KB username and a wrong password: 401 ``invalid_api_key`` until the failed-login limits answer
429 ``too_many_failed_logins``. When the flood is over, the counts still held are written as a
shutdown writes them (``StrangerRefusals.drain``), so every refusal is accounted for.

``stored_bytes`` is what the new rows hold: every column's value (the body, which is what was
hashed, the hashes, ids, the principal and type columns; 8 bytes per number).
``db_growth_bytes``: the SQLite file and its WAL after a WAL checkpoint, minus before.

Modes:

``one_address``
    ``--requests`` refusals from one client address, with today's settings (256-character
    fields, 60 events a minute per address).
``many_addresses``
    the same number from as many addresses, one each (an attacker rotating addresses):
    bounded by ``unauthenticated_events_per_minute_total`` (600).
``bounded_only``
    one address, sampling off (every refusal its own event): the bounding alone.
``baseline``
    one address, bounds and sampling off (what the server did before this change), over
    ``--baseline-requests`` refusals, measured in the same run.

bcrypt's cost is lowered to 4 for the run: the figure is bytes, not CPU (bench_auth.py measures
the CPU of failed logins). Target: ≤ 1 MB stored for 1,000 refusals from one address.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

import zguard.services.auth as auth_module
from zguard.app.api import create_api_app
from zguard.audit import bounds as audit_bounds
from zguard.audit.prompts import PromptCapture
from zguard.audit.setup import open_audit_store
from zguard.audit.store import AuditStore
from zguard.audit.strangers import SUMMARY_TYPE
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.provenance.marking import ProvenanceMarker
from zguard.serve.wiring import build_auth, build_runtime
from zguard.services.readiness import ModelState
from zguard.store import migrate
from zguard.store.database import create_store_engine

USERNAME_BYTES = 200_000
TARGET_BYTES_PER_1000 = 1_000_000
UNBOUNDED = 1_000_000_000


class NullEngine:
    """No model: nothing here reaches generation."""

    info = ModelInfo(id="z-image-turbo", demo=True, device="cpu", dtype="float32")

    def load(self) -> None:
        pass

    def generate(self, job: GenerationJob, should_stop: Any) -> list[Any]:
        raise RuntimeError("the benchmark never generates")


def row_bytes(store: AuditStore, after: int) -> tuple[int, int, int, int]:
    """(bytes, events, request events, summary events) of the rows after `after`."""
    total = events = requests = summaries = 0
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT seq, event_id, time_ms, type, outcome, principal, request_id, body, prev_hash, hash "
                "FROM audit_events WHERE seq > :after"
            ),
            {"after": after},
        )
        for row in rows:
            events += 1
            requests += row.type == "http.request"
            summaries += row.type == SUMMARY_TYPE
            total += sum(8 if isinstance(v, int) else len(str(v).encode()) for v in row if v is not None)
    return total, events, requests, summaries


def db_bytes(directory: Path, store: AuditStore) -> int:
    with store.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in directory.glob("zguard.db*"))


async def flood(app: Any, requests: int, *, addresses: int) -> dict[str, int]:
    username = "u" * USERNAME_BYTES
    header = {"Authorization": "Basic " + base64.b64encode(f"{username}:wrong".encode()).decode()}
    statuses: dict[str, int] = {}
    clients: dict[int, httpx.AsyncClient] = {}
    try:
        for i in range(requests):
            peer = i % addresses
            client = clients.get(peer)
            if client is None:
                address = str(ipaddress.IPv4Address(0x7F000002 + peer))  # loopback: inside the allowlist
                transport = httpx.ASGITransport(app=app, client=(address, 40000))
                client = clients[peer] = httpx.AsyncClient(transport=transport, base_url="http://zguard.test")
            resp = await client.get("/v1/models", headers=header)
            statuses[str(resp.status_code)] = statuses.get(str(resp.status_code), 0) + 1
    finally:
        for client in clients.values():
            await client.aclose()
    return statuses


def run_mode(work: Path, requests: int, *, addresses: int, bounded: bool, sampled: bool) -> dict[str, Any]:
    directory = work / f"state-{time.monotonic_ns()}"
    audit: dict[str, Any] = {} if sampled else {"unauthenticated_events_per_minute": 100_000}
    if not sampled:
        audit["unauthenticated_events_per_minute_total"] = 1_000_000
    settings = Settings.model_validate(
        {"state_dir": str(directory), "api_auth": {"enabled": True}, "audit": audit, "integrity": {"allow_root": True}}
    )
    directory.mkdir(parents=True)
    engine = create_store_engine(f"sqlite:///{directory / 'zguard.db'}")
    migrate.upgrade(engine)
    store = open_audit_store(settings, engine)
    if not bounded:  # the server before this change: nothing cut
        store.bounds = audit_bounds.EventBounds(field_chars=UNBOUNDED, event_chars=UNBOUNDED, entries=UNBOUNDED)
    trail = AuditTrail(store)
    runtime = build_runtime(
        settings,
        NullEngine(),
        auth=build_auth(settings, None, os.urandom(32), trail),
        audit=trail,
        prompts=PromptCapture("none"),
        provenance=ProvenanceMarker.ephemeral(settings.provenance),
    )
    runtime.services.readiness.set(ModelState.READY)
    app = create_api_app(settings, runtime.services)
    before_seq, before_db = store.head_seq(), db_bytes(directory, store)
    started = time.perf_counter()
    statuses = asyncio.run(flood(app, requests, addresses=addresses))
    elapsed = time.perf_counter() - started
    for event in runtime.services.strangers.drain():  # what a shutdown writes (close_audit)
        trail.emit(event)
    trail.close()
    runtime.worker.stop(timeout=10)
    stored, events, request_events, summaries = row_bytes(store, before_seq)
    grown = db_bytes(directory, store) - before_db
    store.close()
    engine.dispose()
    return {
        "requests": requests,
        "addresses": addresses,
        "statuses": statuses,
        "events": events,
        "request_events": request_events,
        "summary_events": summaries,
        "stored_bytes": stored,
        "stored_bytes_per_refusal": round(stored / requests, 1),
        "db_growth_bytes": grown,
        "seconds": round(elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="refusals per mode (default 1000)")
    parser.add_argument(
        "--baseline-requests", type=int, default=100, help="refusals for the unbounded baseline (default 100)"
    )
    args = parser.parse_args()
    auth_module.DEFAULT_COST = 4  # type: ignore[attr-defined]  # bytes, not bcrypt CPU, are measured here
    logging.getLogger("zguard").setLevel(logging.ERROR)  # one refusal warning per address otherwise
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        modes = {
            "one_address": run_mode(work, args.requests, addresses=1, bounded=True, sampled=True),
            "many_addresses": run_mode(work, args.requests, addresses=args.requests, bounded=True, sampled=True),
            "bounded_only": run_mode(work, args.requests, addresses=1, bounded=True, sampled=False),
            "baseline": run_mode(work, args.baseline_requests, addresses=1, bounded=False, sampled=False),
        }
    one = modes["one_address"]
    out: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
        "username_bytes": USERNAME_BYTES,
        "modes": modes,
        "target": {"stored_bytes_per_1000_refusals": TARGET_BYTES_PER_1000},
        "stored_bytes_per_1000_refusals": round(one["stored_bytes"] * 1000 / one["requests"]),
        "met": one["stored_bytes"] * 1000 / one["requests"] <= TARGET_BYTES_PER_1000,
        "baseline_over_bounded_per_refusal": round(
            modes["baseline"]["stored_bytes_per_refusal"] / one["stored_bytes_per_refusal"], 1
        ),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
