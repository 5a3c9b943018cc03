"""A client that disconnects while queued loses its slot, and the engine never sees its job.

Uses GatedEngine to hold the worker deterministically: the behaviour under test is zguard's own
admission logic over a real uvicorn server and a real TCP disconnect.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.common.engines import GatedEngine
from tests.common.factories import make_settings, ready_runtime
from tests.common.polling import wait_until
from tests.common.servers import serve_in_thread
from zguard.app.api import create_api_app


def _raw_post(base: str, body: dict[str, object]) -> socket.socket:
    parts = urlsplit(base)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def test_disconnect_while_queued_frees_slot_without_engine_work(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, generation={"max_queue": 1, "min_side": 16})
    engine = GatedEngine()
    runtime = ready_runtime(settings, engine)
    with serve_in_thread(create_api_app(settings, runtime.services)) as base:
        first: list[httpx.Response] = []
        holder = threading.Thread(
            target=lambda: first.append(
                httpx.post(f"{base}/v1/images/generations", json={"prompt": "first", "size": "16x16"}, timeout=30)
            )
        )
        holder.start()
        wait_until(lambda: len(engine.started) == 1, timeout=10, interval=0.005, what="the generation to start")

        queued = _raw_post(base, {"prompt": "gone", "size": "16x16"})
        wait_until(
            lambda: runtime.admission.waiting == 1, timeout=10, interval=0.005, what="a request waiting in the queue"
        )
        queued.close()  # the client goes away while waiting
        wait_until(
            lambda: runtime.admission.waiting == 0,
            timeout=10,
            interval=0.005,
            what="the abandoned request to leave the queue",
        )

        # The slot is free again: with max_queue=1 a new request may wait instead of being refused.
        later: list[httpx.Response] = []
        third = threading.Thread(
            target=lambda: later.append(
                httpx.post(f"{base}/v1/images/generations", json={"prompt": "third", "size": "16x16"}, timeout=30)
            )
        )
        third.start()
        wait_until(
            lambda: runtime.admission.waiting == 1, timeout=10, interval=0.005, what="a request waiting in the queue"
        )
        engine.release()
        holder.join(30)
        third.join(30)
    runtime.worker.stop(timeout=5)
    assert first[0].status_code == 200
    assert later[0].status_code == 200
    assert [job.prompt for job in engine.started] == ["first", "third"]


def test_disconnect_while_running_stops_the_generation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, generation={"min_side": 16})
    engine = GatedEngine()
    runtime = ready_runtime(settings, engine)
    with serve_in_thread(create_api_app(settings, runtime.services)) as base:
        sock = _raw_post(base, {"prompt": "abandoned", "size": "16x16"})
        wait_until(lambda: len(engine.started) == 1, timeout=10, interval=0.005, what="the generation to start")
        sock.close()
        wait_until(
            lambda: len(engine.cancelled) == 1, timeout=10, interval=0.005, what="the generation to be cancelled"
        )
        wait_until(lambda: runtime.admission.running == 0, timeout=10, interval=0.005, what="no generation running")
    runtime.worker.stop(timeout=5)
    assert engine.finished == []
