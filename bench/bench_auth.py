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

This file parses the flags, runs the parts and prints the JSON. The parts live beside it:
``auth_deployment.py`` (the deployment under test and the app as ``zguard serve`` wires it),
``auth_inprocess.py`` (``in_process``), ``auth_http.py`` (``http``: the server side, the scenarios,
``asgi_cpu``) with ``auth_load.py`` (its load clients, wrk or the spawned asyncio client) and
``auth_flood.py`` (``basic_flood``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the parts import as bench.auth_*

from bench.auth_deployment import PASSWORD, audit_summary, deploy, log, without_audit
from bench.auth_flood import measure_flood
from bench.auth_http import measure_http
from bench.auth_inprocess import COMMIT_SAMPLES, measure_commit, measure_in_process
from bench.machine import machine_info as shared_machine_info

from zguard.audit.trail import AuditTrail
from zguard.security.passwords import DEFAULT_COST, hash_password


def machine_info() -> dict[str, Any]:
    return shared_machine_info(("uvicorn", "fastapi", "starlette", "sqlalchemy", "bcrypt"))


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
