"""`POST /v1/provenance/trace` under attack (issue 14): bombs are refused before decoding, only
PNG, JPEG and WebP reach Pillow, no program is ever started, traces run in a pool of their own
under a cap and a deadline, and a generation stays fast while traces hold every trace thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from tests.common.audit import audit_trail, sqlite_url
from tests.common.engines import GatedEngine
from tests.common.factories import build_test_runtime, make_settings
from tests.common.hostile_images import (
    GatedWatermarker,
    refuse_external_programs,
    refused_upload,
    saved,
    tiny_file_bomb,
    truncated_bomb,
)
from tests.common.polling import wait_until, wait_until_async
from tests.common.servers import serve_in_thread
from tests.functional.test_errors import assert_error, assert_retry_after
from zguard.app.api import create_api_app
from zguard.audit.trail import AuditTrail
from zguard.engine import ImageEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.provenance.watermark import Watermarker
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import Runtime, build_auth
from zguard.services.readiness import ModelState
from zguard.store.principals import PrincipalStore

pytestmark = pytest.mark.anyio
TRACE = "/v1/provenance/trace"
PNG = {"content-type": "image/png"}
OCTETS = {"content-type": "application/octet-stream"}
REFUSED = ("GIF", "TIFF", "ICO", "EPS", "JPEG2000", "BMP")


@dataclass
class Tracing:
    api: httpx.AsyncClient
    runtime: Runtime
    trail: AuditTrail
    auditor: dict[str, str]
    generator: dict[str, str]


def _tokens(trail: AuditTrail, key: bytes) -> dict[str, dict[str, str]]:
    principals, headers = PrincipalStore(trail.store.engine), {}
    for name, role in (("auditor1", "auditor"), ("gen1", "generator")):
        principals.create_principal(name, "service", roles=[role])
        token = new_token()
        principals.add_token(name, token_hash=token_digest(token.plaintext, key), prefix=token.display_prefix)
        headers[role] = {"authorization": f"Bearer {token.plaintext}"}
    return headers


@contextlib.contextmanager
def _runtime(
    tmp_path: Path, reader: Watermarker | None, engine: ImageEngine | None, provenance: dict[str, Any]
) -> Iterator[tuple[Runtime, AuditTrail, dict[str, dict[str, str]], Any]]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, parents=True)
    with audit_trail(sqlite_url(state), state / "keys") as trail:
        settings = make_settings(
            state,
            api_auth={"enabled": True},
            generation={"min_side": 16},
            provenance=provenance,
            rate_limits={"max_concurrent_per_principal": 100},
        )
        key = b"t" * 32
        tokens = _tokens(trail, key)
        if engine is None:
            gated = GatedEngine()
            gated.release()  # generations run at once; the traces are what these tests hold
            engine = gated
        marker = ProvenanceMarker(settings.provenance, reader or Watermarker(secrets.token_bytes(32)), None)
        runtime = build_test_runtime(
            settings,
            engine,
            build_auth(settings, PrincipalStore(trail.store.engine), key, audit=trail),
            audit=trail,
            provenance=marker,
        )
        runtime.services.readiness.set(ModelState.READY)
        try:
            yield runtime, trail, tokens, create_api_app(settings, runtime.services)
        finally:
            runtime.worker.stop(timeout=10)


@contextlib.asynccontextmanager
async def tracing(
    tmp_path: Path, reader: Watermarker | None = None, engine: ImageEngine | None = None, **provenance: Any
) -> AsyncIterator[Tracing]:
    """An API client (auth on, an auditor and a generator token) whose trace route reads marks with `reader`."""
    with _runtime(tmp_path, reader, engine, provenance) as (runtime, trail, tokens, app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://zguard.test", timeout=60) as api:
            yield Tracing(api, runtime, trail, tokens["auditor"], tokens["generator"])


@pytest.fixture
def no_external_programs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return refuse_external_programs(monkeypatch)


@pytest.fixture
def pillow_opens(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = Image.open

    def spy(fp: Any, mode: Any = "r", formats: Any = None) -> Any:
        calls.append(formats)
        return real(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    return calls


def _traced_events(trail: AuditTrail) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in trail.store.iter_events() if e.type == "provenance.traced"]


# --- decompression bombs -----------------------------------------------------------------------


async def test_a_truncated_8000_square_png_is_refused_fast_without_decoding(
    tmp_path: Path, pillow_opens: list[Any]
) -> None:
    async with tracing(tmp_path) as t:
        started = time.perf_counter()
        resp = await t.api.post(TRACE, content=truncated_bomb(), headers={**PNG, **t.auditor})
        elapsed = time.perf_counter() - started
    message = assert_error(resp, 400, "invalid_value", param="image")
    assert "8000x8000" in message
    assert "4194304 pixels" in message
    assert elapsed < 5  # today: about 70 s and 12.5 GB
    assert pillow_opens == [["PNG"]]  # the header only: the size check comes before load()


async def test_a_2048_square_tiny_file_bomb_costs_at_most_the_budget(tmp_path: Path) -> None:
    bomb = tiny_file_bomb(2048)
    assert len(bomb) < 8192
    async with tracing(tmp_path, trace_max_pixels=1024 * 1024) as t:
        refused = await t.api.post(TRACE, content=bomb, headers={**PNG, **t.auditor})
    assert "2048x2048" in assert_error(refused, 400, "invalid_value", param="image")
    async with tracing(tmp_path / "default") as t:
        read = await t.api.post(TRACE, content=bomb, headers={**PNG, **t.auditor})
        assert read.status_code == 200, read.text
        assert read.json()["found"] is False
        assert [e["detail"]["width"] for e in _traced_events(t.trail)] == [2048]


# --- formats and external decoders -------------------------------------------------------------


@pytest.mark.parametrize("fmt", REFUSED)
async def test_other_formats_are_refused_without_decoding_or_programs(
    tmp_path: Path, fmt: str, no_external_programs: list[str], pillow_opens: list[Any]
) -> None:
    blob = refused_upload(fmt)
    async with tracing(tmp_path) as t:
        answers = [
            await t.api.post(TRACE, content=blob, headers={**PNG, **t.auditor}),
            await t.api.post(TRACE, content=blob, headers={**OCTETS, **t.auditor}),
            await t.api.post(TRACE, json={"image": base64.b64encode(blob).decode()}, headers=t.auditor),
        ]
    for resp in answers:
        message = assert_error(resp, 400, "invalid_value", param="image")
        assert "PNG, JPEG or WebP" in message
    assert pillow_opens == []
    assert no_external_programs == []


async def test_a_content_type_that_names_another_format_is_refused(tmp_path: Path) -> None:
    jpeg = saved(Image.new("RGB", (96, 96), (1, 2, 3)), "JPEG")
    async with tracing(tmp_path) as t:
        lying = await t.api.post(TRACE, content=jpeg, headers={**PNG, **t.auditor})
        webp = await t.api.post(TRACE, content=jpeg, headers={"content-type": "image/webp", **t.auditor})
        honest = await t.api.post(TRACE, content=jpeg, headers={"content-type": "image/jpeg", **t.auditor})
        untyped = await t.api.post(TRACE, content=jpeg, headers={**OCTETS, **t.auditor})
    message = assert_error(lying, 400, "invalid_value", param="image")
    assert "JPEG" in message
    assert "image/jpeg" in message
    assert_error(webp, 400, "invalid_value", param="image")
    assert honest.status_code == 200, honest.text
    assert untyped.status_code == 200, untyped.text


# --- the pool: cap, deadline, disconnect, isolation ----------------------------------------------


async def test_more_traces_than_workers_get_server_busy(tmp_path: Path) -> None:
    reader = GatedWatermarker()
    png = saved(Image.new("RGB", (96, 96)), "PNG")
    async with tracing(tmp_path, reader, trace_workers=2) as t:
        held = [asyncio.create_task(t.api.post(TRACE, content=png, headers={**PNG, **t.auditor})) for _ in range(2)]
        await wait_until_async(lambda: len(reader.threads) == 2, timeout=10, interval=0.005, what="two traces")
        busy = await t.api.post(TRACE, content=png, headers={**PNG, **t.auditor})
        reader.release()
        done = await asyncio.gather(*held)
    assert_error(busy, 503, "server_busy")
    assert assert_retry_after(busy) >= 1
    assert [r.status_code for r in done] == [200, 200]
    assert all(name.startswith("zguard-trace_") for name in (th.name for th in reader.threads))


async def test_a_trace_past_its_deadline_is_504_and_stops(tmp_path: Path) -> None:
    reader = GatedWatermarker()
    png = saved(Image.new("RGB", (96, 96)), "PNG")
    async with tracing(tmp_path, reader, trace_timeout_s=0.3) as t:
        late = await t.api.post(TRACE, content=png, headers={**PNG, **t.auditor})
        await wait_until_async(lambda: reader.stopped, timeout=10, interval=0.005, what="the trace to stop")
    message = assert_error(late, 504, "trace_timeout")
    assert "0.3 s" in message
    assert reader.finished == []


async def test_a_real_trace_past_its_deadline_stops_too(tmp_path: Path) -> None:
    noise = Image.frombytes("RGB", (2048, 2048), os.urandom(2048 * 2048 * 3))  # a full decode: seconds
    small = saved(Image.new("RGB", (96, 96)), "PNG")
    async with tracing(tmp_path, trace_timeout_s=0.2, trace_workers=1) as t:
        started = time.perf_counter()
        late = await t.api.post(TRACE, content=saved(noise, "PNG", compress_level=1), headers={**PNG, **t.auditor})
        answered = time.perf_counter() - started

        async def free() -> bool:  # the one slot is free once the abandoned work has stopped
            return (await t.api.post(TRACE, content=small, headers={**PNG, **t.auditor})).status_code == 200

        while not await free():
            assert time.perf_counter() - started < 10, "the abandoned trace did not stop"
            await asyncio.sleep(0.02)
    assert_error(late, 504, "trace_timeout")
    assert answered < 5


def _raw_trace(base: str, body: bytes, token: dict[str, str]) -> socket.socket:
    parts = urlsplit(base)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(
        f"POST {TRACE} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nAuthorization: {token['authorization']}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def test_a_client_that_leaves_stops_its_trace_and_frees_the_slot(tmp_path: Path) -> None:
    reader = GatedWatermarker()
    png = saved(Image.new("RGB", (96, 96)), "PNG")
    with (
        _runtime(tmp_path, reader, None, {"trace_workers": 1}) as (_, trail, tokens, app),
        serve_in_thread(app) as base,
    ):
        gone = _raw_trace(base, png, tokens["auditor"])
        wait_until(reader.running.is_set, timeout=10, interval=0.005, what="the trace to start")
        gone.close()
        wait_until(lambda: reader.stopped, timeout=10, interval=0.005, what="the abandoned trace to stop")
        reader.release()

        def traced() -> httpx.Response | None:
            resp = httpx.post(f"{base}{TRACE}", content=png, headers={**PNG, **tokens["auditor"]}, timeout=30)
            return resp if resp.status_code == 200 else None  # 503 while the abandoned trace holds the slot

        after = wait_until(traced, timeout=10, interval=0.05, what="the slot to be free again")
        assert after.json()["found"] is False
    codes = [e["code"] for e in _traced_events(trail)]
    assert "client_disconnected" in codes


async def test_a_generation_stays_fast_while_traces_hold_every_trace_thread(tmp_path: Path) -> None:
    """More uploads than the default executor has threads: today they took every thread that
    image encoding needs; now two run in the trace pool, the rest are refused, and encoding runs."""
    reader = GatedWatermarker()
    png = saved(Image.new("RGB", (96, 96)), "PNG")
    uploads = min(32, (os.cpu_count() or 1) + 4) + 1
    async with tracing(tmp_path, reader, trace_workers=2) as t:
        held = [
            asyncio.create_task(t.api.post(TRACE, content=png, headers={**PNG, **t.auditor})) for _ in range(uploads)
        ]
        try:
            await wait_until_async(lambda: len(reader.threads) >= 2, timeout=10, interval=0.005, what="traces running")
            started = time.perf_counter()
            generated = await asyncio.wait_for(
                t.api.post("/v1/images/generations", json={"prompt": "a cat", "size": "64x64"}, headers=t.generator),
                timeout=30,
            )
            elapsed = time.perf_counter() - started
            assert reader.running.is_set()  # the traces were still running meanwhile
        finally:
            reader.release()
        answers = await asyncio.gather(*held)
    assert generated.status_code == 200, generated.text
    assert elapsed < 10
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200] + [503] * (uploads - 2)


# --- genuine images still trace ------------------------------------------------------------------


async def test_marked_png_jpeg_and_webp_still_trace(tmp_path: Path, demo_engine: ImageEngine) -> None:
    reader = Watermarker(secrets.token_bytes(32))
    async with tracing(tmp_path, reader, demo_engine) as t:
        resp = await t.api.post(
            "/v1/images/generations",
            json={"prompt": "a quiet harbour at dawn", "size": "1024x1024", "num_inference_steps": 2, "seed": 11},
            headers=t.generator,
        )
        assert resp.status_code == 200, resp.text
        request_id = resp.headers["x-request-id"]
        image = Image.open(io.BytesIO(base64.b64decode(resp.json()["data"][0]["b64_json"]))).convert("RGB")
        uploads = {
            "image/png": saved(image, "PNG"),
            "image/jpeg": saved(image, "JPEG", quality=90),
            "image/webp": saved(image, "WEBP", quality=90),
        }
        answers = {
            kind: await t.api.post(TRACE, content=blob, headers={"content-type": kind, **t.auditor})
            for kind, blob in uploads.items()
        }
    for kind, answer in answers.items():
        assert answer.status_code == 200, (kind, answer.text)
        assert answer.json()["found"] is True, kind
        assert answer.json()["generation"]["request_id"] == request_id
