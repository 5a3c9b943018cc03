"""Benchmark: what serving Z-Image through zguard's HTTP API costs on top of the bare pipeline.

Run it with ``make bench`` or ``.venv/bin/python bench/bench_generation.py [--iterations N]``.
It prints ONE JSON object on stdout; progress goes to stderr. It is a measurement, not a test:
nothing fails when a figure is high (only a broken server, a wrong image or a non-zero exit of
``zguard serve`` makes the script exit 1).

Everything runs on the embedded demo model (random weights, the real ``ZImagePipeline`` code
path), built into a temporary state directory, at 256x256, 8 steps, guidance 0, one image, a
fixed prompt and seed. What is measured, in one process unless said otherwise:

``raw``
    ``DiffusersEngine.generate(job, lambda: False)`` called directly, i.e. exactly the call the
    server's worker thread makes: the ``pipe(...)`` call (text encoder, 8 transformer steps, VAE
    decode, conversion to PIL) plus a ``torch.Generator`` per image. ``pipe_call_ms`` is the bare
    ``pipe(...)`` call alone, timed inside the same runs; the two differ by microseconds.
``e2e``
    ``POST /v1/images/generations`` with ``{"prompt", "size": "256x256", "num_inference_steps": 8,
    "seed"}`` over real HTTP on 127.0.0.1: uvicorn (configured as ``zguard serve`` configures it)
    serving ``create_api_app(settings, build_runtime(settings, engine, ...).services)`` in a thread
    of this process, one keep-alive ``httpx.Client`` connection. The services are wired as ``zguard
    serve`` wires them: a bearer token checked per request, and the durable audit trail (an
    `AuditTrail` over `open_audit_store`, in the temporary state dir's SQLite file, WAL,
    ``synchronous=FULL``), so each request's event is committed before its response starts and
    that commit is part of the overhead. Its figures run from sending the
    request to having the whole response body (not parsing it). The same requests also record
    ``server_app_ms`` (the ASGI app, from receiving the request to sending the last byte, i.e.
    without HTTP parsing and the socket) and ``server_generate_ms`` (the engine call inside it);
    the image must be byte-identical to the raw run's (``image_identical_to_raw``).
    Raw and HTTP iterations alternate (raw, http, http, raw, ...) after the warm-up runs, so
    drift and noise on the machine hit both alike.
``encoding``
    What the service does to the generated images after the engine: ``encode_images(images,
    "png", 90)``, base64, and the JSON body (``ImageGenerationResponse.model_dump_json()``),
    timed on each raw run's images.
``serve``
    ``python -m zguard serve`` as a subprocess (clean ``ZGUARD_*`` environment, demo model already
    in ``$ZGUARD_STATE_DIR/demo-model``, free ports): seconds from process start until
    ``GET /readyz`` answers 200 (model loaded and warmed up), median of the repeats; then SIGTERM
    and the exit status. ``listening_s`` is until the first answer of any status.
    ``cold_start`` is one start on an empty state dir, which builds the demo model first (the
    in-process build time is ``setup.demo_model_build_s``).

How to read it: ``raw`` and ``e2e`` give median and p95 over the iterations (inclusive 95th
percentile; all times from ``time.perf_counter``). ``overhead.e2e_minus_raw_median_ms``, the
difference of the two medians, is the headline figure and what ``overhead_ok`` compares with
``target_overhead_ms``; ``ratio_e2e_over_raw`` is e2e median / raw median. On a small or shared
machine the pipeline's own run-to-run spread is larger than the overhead, so the difference of
medians is noisy: ``e2e_minus_raw_median_ci95_ms`` is its bootstrap 95% interval. The
``overhead.paired_*`` figures subtract *within* each HTTP request (client time minus that same
request's engine time), which cancels the pipeline's noise and says where the milliseconds go:
``paired_in_app_ms`` (validation, admission and the hop to the worker thread, encoding in a
thread, JSON) plus ``paired_transport_ms`` (uvicorn's HTTP handling, loopback socket, httpx)
make ``paired_total_ms``; ``overhead_ok_paired`` checks its median against the target.
``encoding.share_of_e2e`` (of the e2e median) and ``encoding.share_of_overhead`` (of the paired
total, the steadier denominator) say how much of it is image encoding.
The ``machine.load_average_*`` figures show whether other work competed for the CPUs: with a
load above the core count, every figure (the overhead included) is inflated by waiting for a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from zguard.app.api import create_api_app
from zguard.app.schemas import ImageData, ImageGenerationResponse, ZguardMeta
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.engine.demo import write_demo_model
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.tokens import new_token, token_digest
from zguard.serve.listeners import listen_socket, listener_config
from zguard.serve.wiring import build_auth, build_runtime, open_store
from zguard.services.admin import load_token_key
from zguard.services.images import OutputFormat, encode_images
from zguard.services.readiness import ModelState
from zguard.state_paths import token_key_file

if TYPE_CHECKING:
    from PIL.Image import Image
    from starlette.types import ASGIApp, Receive, Scope, Send

WIDTH = HEIGHT = 256
STEPS = 8
OUTPUT_FORMAT: OutputFormat = "png"
QUALITY = 90
MODEL_ID = "z-image-turbo"
TARGET_OVERHEAD_MS = 15.0
GENERATIONS_PATH = "/v1/images/generations"
READY_LINE = re.compile(r"ready in ([0-9.]+) s")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    """Median, inclusive p95 and spread of `samples_ms`, rounded to microseconds."""
    ordered = sorted(samples_ms)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 else ordered[0]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(p95, 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3),
        "stdev_ms": round(statistics.stdev(ordered), 3) if len(ordered) > 1 else 0.0,
    }


# --- instrumentation: wrappers that record durations without changing behaviour ---------------


class TimedPipe:
    """Stands in for the engine's pipeline object and records how long each ``pipe(...)`` took."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.last_s = math.nan

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._pipe(*args, **kwargs)
        finally:
            self.last_s = time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class TimedEngine:
    """An `ImageEngine` around the real one that records each `generate()`'s duration."""

    def __init__(self, inner: DiffusersEngine) -> None:
        self.inner = inner
        self.last_s = math.nan
        self.last_started = math.nan  # perf_counter at the start of the last generate()

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def load(self) -> None:
        self.inner.load()

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]:
        started = self.last_started = time.perf_counter()
        try:
            return self.inner.generate(job, should_stop)
        finally:
            self.last_s = time.perf_counter() - started


class TimedApp:
    """Outermost ASGI layer: how long the app took for each generation request, and from which
    client address each came (one address = one keep-alive connection).

    The client can have the whole response before the app's coroutine has returned on the
    server's thread, so durations go through a queue the client waits on, not an attribute.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.durations: queue.SimpleQueue[float] = queue.SimpleQueue()
        self.starts: queue.SimpleQueue[float] = queue.SimpleQueue()  # perf_counter when each began
        self.clients: set[tuple[str, int]] = set()

    def next_duration_s(self) -> float:
        try:
            return self.durations.get(timeout=30)
        except queue.Empty:
            raise RuntimeError("the API app recorded no duration for a generation request") from None

    def next_span(self) -> tuple[float, float]:
        """(start, end) in perf_counter seconds of the next generation request the app served."""
        duration = self.next_duration_s()
        start = self.starts.get(timeout=30)
        return start, start + duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != GENERATIONS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            client = scope.get("client")
            if client:
                self.clients.add((str(client[0]), int(client[1])))
            self.starts.put(started)
            self.durations.put(elapsed)


# --- the in-process HTTP server -------------------------------------------------------------


@contextlib.contextmanager
def http_server(app: ASGIApp) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yield its base URL.

    The uvicorn options are those of `zguard.serve.lifecycle.serve`, and like it the server runs on a
    plain `asyncio.run` loop with the default HTTP implementation.
    """
    sock = listen_socket("127.0.0.1", 0)  # made exactly as `zguard serve` makes its own
    port = sock.getsockname()[1]
    server = uvicorn.Server(listener_config(app, grace_s=5))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="bench-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the in-process uvicorn server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# --- raw vs end-to-end ----------------------------------------------------------------------


@dataclass
class Samples:
    raw_generate: list[float] = field(default_factory=list)
    raw_pipe: list[float] = field(default_factory=list)
    e2e_client: list[float] = field(default_factory=list)
    e2e_app: list[float] = field(default_factory=list)
    e2e_generate: list[float] = field(default_factory=list)
    e2e_pipe: list[float] = field(default_factory=list)
    encode_png: list[float] = field(default_factory=list)
    encode_b64: list[float] = field(default_factory=list)
    encode_json: list[float] = field(default_factory=list)
    encode_total: list[float] = field(default_factory=list)
    png_bytes: int = 0
    response_bytes: int = 0
    raw_b64: str = ""
    mismatches: int = 0


class Runner:
    """One raw iteration and one HTTP iteration, each recording into `samples` when asked."""

    def __init__(
        self,
        *,
        engine: DiffusersEngine,
        timed_engine: TimedEngine,
        timed_pipe: TimedPipe | None,
        timed_app: TimedApp,
        client: httpx.Client,
        job: GenerationJob,
        body: dict[str, Any],
    ) -> None:
        self.engine = engine
        self.timed_engine = timed_engine
        self.timed_pipe = timed_pipe
        self.timed_app = timed_app
        self.client = client
        self.job = job
        self.body = body
        self.samples = Samples()

    def _pipe_ms(self) -> float:
        return ms(self.timed_pipe.last_s) if self.timed_pipe is not None else math.nan

    def raw(self, record: bool) -> None:
        started = time.perf_counter()
        images = self.engine.generate(self.job, lambda: False)
        elapsed = time.perf_counter() - started
        pipe_ms = self._pipe_ms()
        # What ImageService.generate does after the engine, and the JSON body the route sends.
        t0 = time.perf_counter()
        blobs = encode_images(images, OUTPUT_FORMAT, QUALITY)
        t1 = time.perf_counter()
        data = [ImageData(b64_json=base64.b64encode(blob).decode("ascii")) for blob in blobs]
        t2 = time.perf_counter()
        response = ImageGenerationResponse(
            created=int(time.time()),
            data=data,
            output_format=OUTPUT_FORMAT,
            size=f"{self.job.width}x{self.job.height}",
            zguard=ZguardMeta(request_id="0" * 32, seed=self.job.seed, model=MODEL_ID),
        )
        payload = response.model_dump_json().encode("utf-8")
        t3 = time.perf_counter()
        s = self.samples
        s.raw_b64 = data[0].b64_json
        s.png_bytes = len(blobs[0])
        if not record:
            return
        s.raw_generate.append(ms(elapsed))
        s.raw_pipe.append(pipe_ms)
        s.encode_png.append(ms(t1 - t0))
        s.encode_b64.append(ms(t2 - t1))
        s.encode_json.append(ms(t3 - t2))
        s.encode_total.append(ms(t3 - t0))
        s.response_bytes = len(payload)

    def http(self, record: bool) -> None:
        started = time.perf_counter()
        resp = self.client.post(GENERATIONS_PATH, json=self.body)
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            raise RuntimeError(f"POST {GENERATIONS_PATH} answered {resp.status_code}: {resp.text[:500]}")
        app_s = self.timed_app.next_duration_s()
        b64 = resp.json()["data"][0]["b64_json"]
        s = self.samples
        if s.raw_b64 and b64 != s.raw_b64:
            s.mismatches += 1
        if not record:
            return
        s.e2e_client.append(ms(elapsed))
        s.e2e_app.append(ms(app_s))
        s.e2e_generate.append(ms(self.timed_engine.last_s))
        s.e2e_pipe.append(self._pipe_ms())
        s.response_bytes = len(resp.content)


def run_interleaved(runner: Runner, iterations: int, warmup: int) -> Samples:
    for i in range(warmup):
        log(f"warm-up {i + 1}/{warmup}")
        runner.raw(record=False)
        runner.http(record=False)
    started = time.perf_counter()
    for i in range(iterations):
        # raw, http | http, raw | raw, http ...: neither kind always runs right after the other.
        steps = (runner.raw, runner.http) if i % 2 == 0 else (runner.http, runner.raw)
        for step in steps:
            step(record=True)
        if (i + 1) % 5 == 0 or i + 1 == iterations:
            s = runner.samples
            log(
                f"iteration {i + 1}/{iterations}: raw median {statistics.median(s.raw_generate):.1f} ms, "
                f"e2e median {statistics.median(s.e2e_client):.1f} ms ({time.perf_counter() - started:.1f} s)"
            )
    return runner.samples


def paired(minuend: list[float], subtrahend: list[float]) -> list[float]:
    return [a - b for a, b in zip(minuend, subtrahend, strict=True)]


def median_difference_ci95(a: list[float], b: list[float], resamples: int = 2000) -> list[float]:
    """Bootstrap 95% interval of median(a) - median(b): how far noise alone moves the headline."""
    rng = random.Random(0)  # noqa: S311 - resampling for a statistic, not security
    diffs = sorted(
        statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
        for _ in range(resamples)
    )
    return [round(diffs[int(0.025 * resamples)], 3), round(diffs[int(0.975 * resamples) - 1], 3)]


def measure_generation(model_dir: Path, state_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    engine = DiffusersEngine(model_dir, model_id=MODEL_ID, device=args.device, demo=True)
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    log(f"engine loaded in {load_s:.2f} s on {engine.info.device} ({engine.info.dtype})")
    # The bare pipe(...) call is timed by swapping the engine's (private) pipeline for a proxy.
    timed_pipe: TimedPipe | None = None
    if getattr(engine, "_pipe", None) is not None:
        timed_pipe = TimedPipe(engine._pipe)
        engine._pipe = timed_pipe
    else:
        log("DiffusersEngine has no _pipe attribute any more: pipe_call_ms is not measured")

    settings = Settings.model_validate({"state_dir": str(state_dir)})
    timed_engine = TimedEngine(engine)
    # As served: authentication on (a bearer token checked per request), every request one audit
    # event committed to the durable trail before its response (as `zguard serve` opens it).
    store, token_key = open_store(settings), load_token_key(token_key_file(settings))
    store.create_principal("bench", "service", roles=["generator"])
    issued = new_token()
    store.add_token("bench", token_hash=token_digest(issued.plaintext, token_key), prefix=issued.display_prefix)
    audit = AuditTrail(open_audit_store(settings, store.engine))
    runtime = build_runtime(
        settings,
        timed_engine,
        auth=build_auth(settings, store, token_key, audit),
        audit=audit,
        prompts=prompt_capture(settings),
        provenance=ProvenanceMarker.from_settings(settings),  # as `zguard serve`: marks under the state_dir's keys
    )
    runtime.services.readiness.set(ModelState.READY)  # as tests/common/factories.ready_runtime
    timed_app = TimedApp(create_api_app(settings, runtime.services))
    job = GenerationJob(
        prompt=args.prompt, negative_prompt=None, width=WIDTH, height=HEIGHT, steps=STEPS, seed=args.seed
    )
    body = {"prompt": args.prompt, "size": f"{WIDTH}x{HEIGHT}", "num_inference_steps": STEPS, "seed": args.seed}
    try:
        with (
            http_server(timed_app) as base_url,
            httpx.Client(
                base_url=base_url,
                timeout=120.0,
                trust_env=False,
                headers={"Authorization": f"Bearer {issued.plaintext}"},
            ) as client,
        ):
            log(f"API listening on {base_url}")
            runner = Runner(
                engine=engine,
                timed_engine=timed_engine,
                timed_pipe=timed_pipe,
                timed_app=timed_app,
                client=client,
                job=job,
                body=body,
            )
            samples = run_interleaved(runner, args.iterations, args.warmup)
    finally:
        runtime.worker.stop(timeout=30)
        audit.close()  # commits what is queued and writes the closing checkpoint, as serve does
        audit.store.close()
    result = report_generation(samples, timed_app, load_s, engine.info)
    result["audit"] = {
        "sink": "AuditTrail over open_audit_store (SQLite file in the temporary state dir, WAL, synchronous=FULL, "
        "group commit), as zguard serve",
        "events_committed": audit.store.count(),
        "write_failures": audit.failures,
    }
    return result


def report_generation(s: Samples, timed_app: TimedApp, load_s: float, info: ModelInfo) -> dict[str, Any]:
    raw_median = statistics.median(s.raw_generate)
    e2e_median = statistics.median(s.e2e_client)
    encode_median = statistics.median(s.encode_total)
    diff = e2e_median - raw_median
    paired_median = statistics.median(paired(s.e2e_client, s.e2e_generate))
    has_pipe = not any(math.isnan(v) for v in s.raw_pipe)
    return {
        "engine_load_s": round(load_s, 3),
        "device": info.device,
        "dtype": info.dtype,
        "raw": {
            "measures": "DiffusersEngine.generate(job, lambda: False), called directly (the pipe(...) call "
            "with output_type='pil', plus a torch.Generator); no encoding",
            **summarize(s.raw_generate),
            "pipe_call_ms": summarize(s.raw_pipe) if has_pipe else None,
        },
        "e2e": {
            "measures": f"httpx POST {GENERATIONS_PATH} over 127.0.0.1 (keep-alive), request sent to response "
            "body received; uvicorn + create_api_app in a thread of this process",
            **summarize(s.e2e_client),
            "server_app_ms": summarize(s.e2e_app),
            "server_generate_ms": summarize(s.e2e_generate),
            "server_pipe_call_ms": summarize(s.e2e_pipe) if has_pipe else None,
            "http_connections_used": len(timed_app.clients),
            "response_bytes": s.response_bytes,
            "image_identical_to_raw": s.mismatches == 0,
        },
        "encoding": {
            "measures": f"encode_images(images, {OUTPUT_FORMAT!r}, {QUALITY}) + base64 + "
            "ImageGenerationResponse.model_dump_json(), on each raw run's image",
            "png_bytes": s.png_bytes,
            "total_ms": summarize(s.encode_total),
            "png_encode_ms": summarize(s.encode_png),
            "base64_ms": summarize(s.encode_b64),
            "json_ms": summarize(s.encode_json),
            "share_of_e2e": round(encode_median / e2e_median, 4),
            "share_of_overhead": round(encode_median / paired_median, 4) if paired_median > 0 else None,
        },
        "overhead": {
            "e2e_minus_raw_median_ms": round(diff, 3),
            "e2e_minus_raw_median_ci95_ms": median_difference_ci95(s.e2e_client, s.raw_generate),
            "ratio_e2e_over_raw": round(e2e_median / raw_median, 4),
            "paired_total_ms": summarize(paired(s.e2e_client, s.e2e_generate)),
            "paired_in_app_ms": summarize(paired(s.e2e_app, s.e2e_generate)),
            "paired_transport_ms": summarize(paired(s.e2e_client, s.e2e_app)),
            "paired_note": "per HTTP request: total = client time - that request's engine.generate time; "
            "in_app = ASGI app time - engine time; transport = client time - ASGI app time",
        },
        "target_overhead_ms": TARGET_OVERHEAD_MS,
        "overhead_ok": diff <= TARGET_OVERHEAD_MS,
        "overhead_ok_paired": paired_median <= TARGET_OVERHEAD_MS,
    }


# --- zguard serve time-to-ready -------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def serve_once(state_dir: Path, work_dir: Path, device: str, timeout_s: float, label: str) -> dict[str, Any]:
    """Start `zguard serve`, time it to /readyz 200, SIGTERM it; raise RuntimeError on failure."""
    api_port, console_port = free_ports(2)
    env = {name: value for name, value in os.environ.items() if not name.startswith("ZGUARD_")}
    env.update(
        ZGUARD_STATE_DIR=str(state_dir),
        ZGUARD_API__PORT=str(api_port),
        ZGUARD_CONSOLE__PORT=str(console_port),
        ZGUARD_MODEL__DEVICE=device,
        ZGUARD_INTEGRITY__ALLOW_ROOT="true",  # benchmark hosts often run as root
    )
    log_path = work_dir / f"serve-{label}.log"
    url = f"http://127.0.0.1:{api_port}/readyz"
    listening_s = ready_s = math.nan
    with log_path.open("wb") as log_file:
        # cwd = an empty directory, so no config/zguard.yaml of the caller's is picked up.
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "zguard", "serve"], cwd=work_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            with httpx.Client(timeout=2.0, trust_env=False) as client:
                while math.isnan(ready_s):
                    if proc.poll() is not None:
                        message = f"zguard serve exited with {proc.returncode} before ready"
                        raise RuntimeError(f"{message}:\n{_tail(log_path)}")
                    if time.perf_counter() - started > timeout_s:
                        raise RuntimeError(f"zguard serve not ready within {timeout_s:.0f} s:\n{_tail(log_path)}")
                    try:
                        status = client.get(url).status_code
                    except httpx.TransportError:
                        time.sleep(0.02)
                        continue
                    now = time.perf_counter() - started
                    if math.isnan(listening_s):
                        listening_s = now
                    if status == 200:
                        ready_s = now
                    else:
                        time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            stopping = time.perf_counter()
            returncode = proc.wait(timeout=60)
            stop_s = time.perf_counter() - stopping
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    match = READY_LINE.search(log_path.read_text(encoding="utf-8", errors="replace"))
    result = {
        "ready_s": round(ready_s, 3),
        "listening_s": round(listening_s, 3),
        "server_reported_load_and_warmup_s": float(match.group(1)) if match else None,
        "stop_s": round(stop_s, 3),
        "exit_code": returncode,
    }
    log(f"serve {label}: {json.dumps(result)}")
    return result


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def measure_serve(state_dir: Path, work_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs = [
        serve_once(state_dir, work_dir, args.device, args.serve_timeout, f"warm-{i + 1}")
        for i in range(args.serve_repeats)
    ]
    cold = None
    if not args.no_cold_start:
        cold_state = work_dir / "cold-state"  # absent: serve creates it and builds the demo model
        cold = serve_once(cold_state, work_dir, args.device, args.serve_timeout, "cold")
    ready = [run["ready_s"] for run in runs]
    return {
        "measures": "python -m zguard serve, demo model already in $ZGUARD_STATE_DIR/demo-model: process start "
        "to GET /readyz 200 (listening_s: first answer of any status); then SIGTERM",
        "repeats": len(runs),
        "ready_s_median": round(statistics.median(ready), 3),
        "ready_s": ready,
        "listening_s": [run["listening_s"] for run in runs],
        "server_reported_load_and_warmup_s": [run["server_reported_load_and_warmup_s"] for run in runs],
        "stop_s": [run["stop_s"] for run in runs],
        "exit_codes": [run["exit_code"] for run in runs],
        "sigterm_exit_ok": all(run["exit_code"] == 0 for run in runs) and (cold is None or cold["exit_code"] == 0),
        "cold_start": cold,
    }


# --- main -----------------------------------------------------------------------------------


def machine_info(load_at_start: list[float] | None) -> dict[str, Any]:
    import torch

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m_5m_15m_at_start": load_at_start,
        "load_average_1m_5m_15m_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            name: version(name) for name in ("zguard", "diffusers", "transformers", "uvicorn", "httpx", "pillow")
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=30, help="measured iterations of each kind (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded raw+HTTP runs first (default 2)")
    parser.add_argument("--seed", type=int, default=1234, help="generation seed (default 1234)")
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting", help="prompt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="model.device (default auto)")
    parser.add_argument("--serve-repeats", type=int, default=3, help="zguard serve starts to time (default 3; 0 skips)")
    parser.add_argument("--serve-timeout", type=float, default=120.0, help="seconds a serve start may take to be ready")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the serve start that builds the demo model")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.serve_repeats < 0:
        parser.error("--iterations must be >= 1, --warmup and --serve-repeats >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="zguard-bench-") as tmp:
        work_dir = Path(tmp)
        state_dir = work_dir / "state"
        log(f"building the demo model in {state_dir / 'demo-model'}")
        t0 = time.perf_counter()
        model_dir = write_demo_model(state_dir / "demo-model")
        build_s = time.perf_counter() - t0
        log(f"demo model built in {build_s:.2f} s")
        try:
            generation = measure_generation(model_dir, state_dir, args)
            serve = measure_serve(state_dir, work_dir, args) if args.serve_repeats else None
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return 1
    e2e, raw, overhead = generation["e2e"], generation["raw"], generation["overhead"]
    result: dict[str, Any] = {
        "benchmark": "zguard generation: bare pipeline vs HTTP end to end",
        "parameters": {
            "model": "embedded demo model (random weights)",
            "size": f"{WIDTH}x{HEIGHT}",
            "num_inference_steps": STEPS,
            "guidance_scale": 0.0,
            "n": 1,
            "seed": args.seed,
            "prompt": args.prompt,
            "output_format": OUTPUT_FORMAT,
            "iterations": args.iterations,
            "warmup": args.warmup,
            "order": "interleaved: raw,http then http,raw, alternating",
            "serve_repeats": args.serve_repeats,
            "audit": "AuditTrail, as zguard serve: each request's event committed (SQLite, synchronous=FULL) "
            "before its response starts",
        },
        "machine": {
            **machine_info(load_at_start),
            "device": generation["device"],
            "dtype": generation["dtype"],
        },
        "setup": {"demo_model_build_s": round(build_s, 3), "engine_load_s": generation["engine_load_s"]},
        "raw": raw,
        "e2e": e2e,
        "encoding": generation["encoding"],
        "audit": generation["audit"],
        "overhead": overhead,
        "target_overhead_ms": generation["target_overhead_ms"],
        "overhead_ok": generation["overhead_ok"],
        "overhead_basis": "e2e median - raw median (overhead.e2e_minus_raw_median_ms)",
        "overhead_ok_paired": generation["overhead_ok_paired"],
        "overhead_paired_basis": "median over HTTP requests of client time - that request's engine time "
        "(overhead.paired_total_ms.median_ms)",
        "serve": serve,
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if e2e["http_connections_used"] != 1:
        log(f"note: the HTTP requests used {e2e['http_connections_used']} connections, not one keep-alive connection")
    ok = e2e["image_identical_to_raw"] and (serve is None or serve["sigterm_exit_ok"])
    if not ok:
        log("FAILED: see e2e.image_identical_to_raw and serve.sigterm_exit_ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
