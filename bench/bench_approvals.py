"""Benchmark: the grant and quota check on the generation path, beside the rate-limit check.

Run it with ``.venv/bin/python bench/bench_approvals.py [--iterations N] [--redis URL] [--out FILE]``.
It prints ONE JSON object on stdout (and writes it to ``--out`` when given); progress goes to
stderr. A measurement, not a test: figures over target only set the ``*_ok`` booleans to false.

The service is built as ``zguard serve`` builds it (``approval_service`` over a migrated SQLite
state database, one principal holding one active grant with a quota too large to run out), the
counters on ``memory://`` and, when ``--redis`` answers, on Redis (a key prefix of its own, its
keys deleted afterwards). Per storage:

    ``grant_charge``: ``ApprovalService.charge(name, 1, job=...)``: the ``auth_state.version``
        probe, the cached grant, the expiry check, the scope check (the grant has ``max_size`` and
        ``max_steps``), and the two atomic counter increments (total, today):
        what ``approvals.required`` adds to a generation once the grant is cached.
    ``rate_limit_check``: ``RateLimitService.check`` of the same principal under
        ``rate_limit: 1000000/minute``, the existing per-request figure (the baseline), measured in
        the same loop, call for call alternating, so other load on the machine falls on both.

``median_ok`` compares the memory ``grant_charge`` median with ``target_median_us`` (50 µs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*

from bench.auth_deployment import DiscardAuditSink
from bench.auth_inprocess import summarize_us
from bench.machine import machine_info
from sqlalchemy.engine import URL

from zguard.config import Settings
from zguard.engine import GenerationJob
from zguard.services.approvals import ApprovalService, Caller, RequestForm
from zguard.services.auth import Identity, RequestInfo
from zguard.services.counters import CounterStorage
from zguard.services.grant_scope import Scope
from zguard.services.ratelimit import RateLimitService
from zguard.store import migrate
from zguard.store.approvals import ApprovalStore
from zguard.store.database import create_store_engine
from zguard.store.principals import PrincipalStore

TARGET_MEDIAN_US = 50.0
MODEL = "bench-model"
DIGEST = "sha256:" + "ab" * 32
# Within the grant's scope (max_size 1024, max_steps 8), so every charge passes the scope check.
JOB = GenerationJob(prompt="a lighthouse", negative_prompt=None, width=1024, height=768, steps=8, seed=0)


def log(message: str) -> None:
    print(f"[bench_approvals] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000, help="timed calls per kind and storage")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis URL; skipped when it does not answer")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def settings_for(storage: str, prefix: str) -> Settings:
    return Settings.model_validate(
        {
            "rate_limit": "1000000/minute",
            "rate_limits": {"storage": storage, "key_prefix": prefix},
            "approvals": {"required": True, "max_images_per_day": 1_000_000, "max_images_total": 100_000_000},
        }
    )


def granted_service(settings: Settings, principals: PrincipalStore, audit: DiscardAuditSink) -> ApprovalService:
    service = ApprovalService(
        settings.approvals,
        ApprovalStore(principals.engine),
        settings.role_registry(),
        audit=audit,
        counters=CounterStorage.from_settings(settings.rate_limits),
        served=lambda: (MODEL, DIGEST),
        version=principals.auth_version,
    )
    form = RequestForm(DIGEST, "bench", "bench", "internal", 1_000_000, 100_000_000, 30)
    request = service.request(Caller("bench-user", frozenset({"generator"})), form)
    service.decide(Caller("bench-approver", frozenset({"approver"})), request.id, "approve", None, Scope(1024, 8))
    return service


async def measure(settings: Settings, principals: PrincipalStore, iterations: int, warmup: int) -> dict[str, Any]:
    audit = DiscardAuditSink()
    approvals = granted_service(settings, principals, audit)
    rates = RateLimitService.from_settings(settings, audit)
    identity = Identity("bench-user", "user", frozenset({"generator"}), "bearer")
    samples: dict[str, list[int]] = {"grant_charge": [], "rate_limit_check": []}
    usage = None
    for i in range(warmup + iterations):
        info = RequestInfo(client="127.0.0.1", request_id="0" * 32, listener="api")
        t0 = time.perf_counter_ns()
        usage = await approvals.charge("bench-user", 1, job=JOB)
        t1 = time.perf_counter_ns()
        await rates.check(identity, info)
        t2 = time.perf_counter_ns()
        if i >= warmup:
            samples["grant_charge"].append(t1 - t0)
            samples["rate_limit_check"].append(t2 - t1)
    if usage is not None:  # this run's own counter keys, nobody else's
        for key in (usage.day_key, usage.total_key):
            await approvals_storage(settings).clear(key)
    return {kind: summarize_us(values) for kind, values in samples.items()}


def approvals_storage(settings: Settings) -> Any:
    return CounterStorage.from_settings(settings.rate_limits).storage


async def redis_answers(url: str) -> bool:
    try:
        return await CounterStorage(url).reachable()
    except Exception:  # noqa: BLE001 - any failure means "not there"; the figure is skipped, not faked
        return False


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "approvals",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "iterations": args.iterations,
        "target_median_us": TARGET_MEDIAN_US,
        "machine": machine_info(["limits", "redis", "sqlalchemy"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_store_engine(URL.create("sqlite", database=str(Path(tmp) / "zguard.db")))
        migrate.upgrade(engine)
        principals = PrincipalStore(engine)
        try:
            log("memory://")
            result["memory"] = await measure(
                settings_for("memory://", "zgbench"), principals, args.iterations, args.warmup
            )
            if await redis_answers(args.redis):
                prefix = f"zgbench-{uuid.uuid4().hex[:8]}"
                log(f"{args.redis} (prefix {prefix})")
                settings = settings_for(args.redis, prefix)
                result["redis"] = await measure(settings, principals, args.iterations, args.warmup)
            else:
                result["redis"] = None
                log(f"{args.redis} does not answer: no Redis figure")
        finally:
            engine.dispose()
    memory = result["memory"]["grant_charge"]["median_us"]
    result["median_ok"] = memory <= TARGET_MEDIAN_US
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
