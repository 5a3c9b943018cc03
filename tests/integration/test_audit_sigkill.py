"""SIGKILL in the middle of a load test: every request that got a response has its event, and
the chain still verifies. This is what "committed before the response leaves" buys."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.common.servers import ZguardProcess
from zguard.audit.store import AuditStore
from zguard.audit.verify import verify_store
from zguard.security.keys import load_public_key
from zguard.store.database import create_store_engine

GENERATE = {"prompt": "a lighthouse at dawn", "size": "64x64", "num_inference_steps": 1}


def test_sigkill_under_load_loses_no_answered_request(tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = ZguardProcess(state, env={"ZGUARD_GENERATION__MIN_SIDE": "16", "ZGUARD_GENERATION__MAX_QUEUE": "64"})
    server.start()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        server.wait_ready()

        def load(kind: int) -> None:
            with httpx.Client(base_url=server.api, timeout=10) as client:
                while not stop.is_set():
                    try:
                        if kind % 3 == 0:
                            resp = client.post("/v1/images/generations", json=GENERATE)
                        else:
                            resp = client.get("/healthz" if kind % 3 == 1 else "/v1/models")
                    except httpx.HTTPError:
                        return  # the server is gone
                    with lock:
                        answered.append(resp.headers["x-request-id"])

        threads = [threading.Thread(target=load, args=(k,)) for k in range(12)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        stop.set()
        for thread in threads:
            thread.join(15)
    finally:
        stop.set()
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
    assert len(answered) > 100, f"only {len(answered)} requests answered before the kill"
    print(f"{len(answered)} requests answered before SIGKILL")

    engine = create_store_engine(f"sqlite:///{state / 'zguard.db'}")
    try:
        store = AuditStore(engine)
        recorded = {json.loads(e.body)["request_id"] for e in store.iter_events()}
        missing = [rid for rid in answered if rid not in recorded]
        assert not missing, f"{len(missing)} answered request(s) have no audit event, e.g. {missing[:3]}"
        report = verify_store(store, load_public_key(state / "audit-signing.pem"))
        assert report.ok, report.problem
        assert report.events >= len(answered)
    finally:
        engine.dispose()
