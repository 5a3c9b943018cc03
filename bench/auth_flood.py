"""bench_auth.py's ``basic_flood`` part: wrong Basic passwords for one configured user, and the bcrypt
CPU they cost (see bench_auth.py's docstring for the method)."""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from typing import Any

from bench.auth_deployment import PASSWORD, USER, Deployment, basic_header, log

import zguard.services.auth as auth_module
from zguard.audit import AuditEvent, AuditSink, RequestRecord
from zguard.errors import InvalidApiKey, TooManyFailedLogins
from zguard.security.keys import KEY_BYTES
from zguard.security.passwords import DEFAULT_COST, verify_password
from zguard.serve.wiring import build_auth
from zguard.services.auth import BCRYPT_SLOTS, AuthService, RequestInfo


class CountedBcrypt:
    """Stands in for `verify_password` in the auth service: counts calls and their thread CPU."""

    def __init__(self) -> None:
        self.cpu_s: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, password: str, password_hash: str) -> bool:
        started = time.thread_time()
        try:
            return verify_password(password, password_hash)
        finally:
            used = time.thread_time() - started
            with self._lock:
                self.cpu_s.append(used)


async def flood_once(
    auth: AuthService, audit: AuditSink, attempts: int, *, concurrent: bool, client: str
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()

    async def attempt(i: int) -> None:
        # Each attempt is a request: its decisions fold into its record, committed as one event.
        record = RequestRecord()
        try:
            await auth.authenticate(basic_header(USER, f"guess-{i}"), RequestInfo(client=client, record=record))
            outcomes["accepted"] += 1
        except TooManyFailedLogins:
            outcomes["429 too_many_failed_logins"] += 1
        except InvalidApiKey:
            outcomes["401 invalid_api_key"] += 1
        await audit.record(
            AuditEvent(
                type=record.type or "http.request",
                outcome=record.outcome or "allowed",
                code=record.code,
                client=client,
                principal=record.principal,
                auth_method=record.auth_method,
                detail={**record.detail, "decisions": ",".join(record.decisions)},
            )
        )

    if concurrent:
        await asyncio.gather(*(attempt(i) for i in range(attempts)))
    else:
        for i in range(attempts):
            await attempt(i)
    return outcomes


async def measure_flood(d: Deployment, attempts: int) -> dict[str, Any]:
    counted = CountedBcrypt()
    namespace = vars(auth_module)  # the name the auth service calls bcrypt by
    namespace["verify_password"] = counted
    try:
        settings = d.settings
        runs: dict[str, Any] = {}
        for mode in ("sequential", "concurrent"):
            auth = build_auth(settings, d.store, os.urandom(KEY_BYTES), audit=d.audit)  # fresh limits
            counted.cpu_s.clear()
            # One correct login first: the CPU of one verification, measured the same way.
            await auth.authenticate(
                basic_header(USER, PASSWORD), RequestInfo(client="127.0.0.2", record=RequestRecord())
            )
            one_verification_s = counted.cpu_s[0]
            counted.cpu_s.clear()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            outcomes = await flood_once(auth, d.audit, attempts, concurrent=mode == "concurrent", client="127.0.0.3")
            process_cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall0
            calls = len(counted.cpu_s)
            bcrypt_cpu = sum(counted.cpu_s)
            runs[mode] = {
                "attempts": attempts,
                "outcomes": dict(outcomes),
                "verify_password_calls": calls,
                "bcrypt_cpu_s": round(bcrypt_cpu, 3),
                "bcrypt_cpu_s_per_1000_attempts": round(bcrypt_cpu * 1000 / attempts, 3),
                "process_cpu_s_whole_flood": round(process_cpu, 3),
                "wall_s": round(wall, 3),
                "one_verification_cpu_s": round(one_verification_s, 4),
                "unbounded_would_be_cpu_s": round(one_verification_s * attempts, 1),
                "bounded": calls <= 5 + BCRYPT_SLOTS - 1,
            }
            log(f"flood {mode}: {calls} bcrypt verifications for {attempts} attempts")
    finally:
        namespace["verify_password"] = verify_password
    return {
        "measures": f"{attempts} wrong passwords for one configured user (bcrypt cost {DEFAULT_COST}) "
        "through AuthService.authenticate; verify_password wrapped to count calls and their thread CPU",
        "failed_logins_per_user_address": d.settings.api_auth.failed_logins_per_user_address,
        "bcrypt_slots": BCRYPT_SLOTS,
        "limit_verifications": f"<= 5 + {BCRYPT_SLOTS - 1} (the per user and address limit, plus racing bcrypt slots)",
        **runs,
        "bounded": all(run["bounded"] for run in runs.values()),
    }
