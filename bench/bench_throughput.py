"""Benchmark: throughput, latency and the engine's idle time with concurrent HTTP clients.

Run it with ``.venv/bin/python -m bench.bench_throughput [--out FILE] [--compare-batching N]``.
It prints ONE JSON object on stdout (and writes it to ``--out``); progress goes to stderr. It is a
measurement, not a test: only a failed request makes it exit 1.

Everything runs on the embedded demo model (random weights, the real ``ZImagePipeline`` code
path) on this machine's device, as ``zguard serve`` wires it: a bearer token per request, the
durable audit trail, provenance on (watermark and signed label), PNG, 8 steps. For each size:

``raw``
    ``DiffusersEngine.generate(job)`` called back to back, ``--raw-iterations`` times: the most
    images per second the engine can give with nothing around it (the baseline of this run).
``clients``
    For each count in ``--clients``: that many threads, each with its own keep-alive
    ``httpx.Client``, sending ``--requests-per-client`` requests one after the other (closed
    loop, distinct seeds). ``throughput_images_per_s`` is images over the wall time from the
    first request sent to the last response received; ``vs_raw`` divides it by the raw rate.
    ``latency`` is each request's client time (p50/p95).
``engine_idle``
    The engine's ``generate()`` calls are timed (start, end) by a wrapper. ``gap_fraction`` is
    the share of the window from the first call's start to the last call's end in which no call
    ran: with one client it includes the whole round trip (nothing else waits), with two or
    more clients in a closed loop a job is nearly always waiting, so every gap is time the
    engine waited for the CPU side (handing over the next job, post-processing in its way).
    ``admission_idle_fraction`` (when the admission queue has the counter) is the queue's own
    measure: time with a job waiting but none running, over the same window.

``--compare-batching N``
    Two servers over the same engine, one with batching off and one with
    ``generation.max_batch_images = N`` (and ``--batch-wait-ms``); every round runs on each in
    turn (unbatched, batched, next client count ...), so drift on the machine hits both alike.
    ``engine_idle.images_per_call_mean`` says how many images the batched calls really drew.

On a CPU engine the "GPU" work runs on the same cores as post-processing, HTTP and the other
clients, so throughput cannot rise much by overlapping; what overlapping removes is the gap
between jobs, which the idle fraction shows. ``machine.load_average_*`` says whether other work
competed for the CPUs (above the core count, every figure is inflated by waiting for a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from bench.bench_generation import http_server, summarize
from bench.machine import machine_info

from zguard.app.api import create_api_app
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.engine.demo import write_demo_model
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import build_auth, build_runtime, open_store
from zguard.services.admin import load_token_key
from zguard.services.readiness import ModelState
from zguard.state_paths import token_key_file

if TYPE_CHECKING:
    from PIL.Image import Image

MODEL_ID = "z-image-turbo"
STEPS = 8
PROMPT = "a lighthouse on a cliff at dusk"
GENERATIONS_PATH = "/v1/images/generations"
PACKAGES = ("torch", "diffusers", "uvicorn", "httpx", "pillow")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class IntervalEngine:
    """An `ImageEngine` around the real one that records each `generate()`'s (start, end, images)."""

    def __init__(self, inner: DiffusersEngine) -> None:
        self.inner = inner
        self.calls: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def load(self) -> None:
        self.inner.load()

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]:
        started = time.perf_counter()
        try:
            return self.inner.generate(job, should_stop)
        finally:
            with self._lock:
                self.calls.append((started, time.perf_counter(), job.n))

    def generate_batch(self, jobs: Sequence[GenerationJob], should_stop: Callable[[], bool]) -> list[list[Image]]:
        started = time.perf_counter()
        try:
            return self.inner.generate_batch(jobs, should_stop)
        finally:
            with self._lock:
                self.calls.append((started, time.perf_counter(), sum(job.n for job in jobs)))

    def take(self) -> list[tuple[float, float, int]]:
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


def gap_fraction(calls: list[tuple[float, float, int]]) -> dict[str, float | int]:
    """Share of [first start, last end] in which no `generate()` ran, and the largest gap."""
    if not calls:
        return {"calls": 0}
    ordered = sorted(calls)
    window = ordered[-1][1] - ordered[0][0]
    busy = sum(end - start for start, end, _ in ordered)
    gaps = [max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(ordered)]
    return {
        "calls": len(ordered),
        "images_per_call_mean": round(statistics.fmean(n for *_, n in ordered), 3),
        "window_s": round(window, 3),
        "gap_fraction": round(max(0.0, 1 - busy / window), 5) if window > 0 else 0.0,
        "gap_median_ms": round(statistics.median(gaps) * 1000, 3) if gaps else 0.0,
        "gap_max_ms": round(max(gaps) * 1000, 3) if gaps else 0.0,
    }


@dataclasses.dataclass
class Clients:
    """How one round of closed-loop clients runs."""

    base_url: str
    token: str
    size: int
    clients: int
    per_client: int
    seed0: int = 1_000_000


def run_clients(spec: Clients) -> tuple[list[float], float]:
    """`spec.clients` closed-loop clients; return each request's latency (ms) and the wall time (s)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(spec.clients + 1)

    def client(index: int) -> None:
        headers = {"Authorization": f"Bearer {spec.token}"}
        with httpx.Client(base_url=spec.base_url, timeout=600.0, trust_env=False, headers=headers) as http:
            barrier.wait()
            for i in range(spec.per_client):
                body = {
                    "prompt": f"{PROMPT}, view {index}",
                    "size": f"{spec.size}x{spec.size}",
                    "num_inference_steps": STEPS,
                    "seed": spec.seed0 + index * 1000 + i,
                }
                started = time.perf_counter()
                resp = http.post(GENERATIONS_PATH, json=body)
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    if resp.status_code != 200:
                        errors.append(f"{resp.status_code}: {resp.text[:300]}")
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(spec.clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return latencies, wall


@dataclasses.dataclass
class Server:
    base_url: str
    token: str
    engine: IntervalEngine
    admission: Any


@contextlib.contextmanager
def served(state_dir: Path, engine: DiffusersEngine, generation: dict[str, Any]) -> Iterator[Server]:
    """The API over `engine`, wired as `zguard serve` wires it, on a free loopback port."""
    state_dir.mkdir(mode=0o700)
    settings = Settings.model_validate(
        {
            "state_dir": str(state_dir),
            "generation": {"max_queue": 16, **generation},
            "rate_limits": {"max_concurrent_per_principal": 64},  # one principal for every client
        }
    )
    timed = IntervalEngine(engine)
    store, token_key = open_store(settings), load_token_key(token_key_file(settings))
    store.create_principal("bench", "service", roles=["generator"])
    issued = new_token()
    store.add_token("bench", token_hash=token_digest(issued.plaintext, token_key), prefix=issued.display_prefix)
    audit = AuditTrail(open_audit_store(settings, store.engine))
    runtime = build_runtime(
        settings,
        timed,
        auth=build_auth(settings, store, token_key, audit),
        audit=audit,
        prompts=prompt_capture(settings),
        provenance=ProvenanceMarker.from_settings(settings),
    )
    runtime.services.readiness.set(ModelState.READY)
    try:
        with http_server(create_api_app(settings, runtime.services)) as base_url:
            yield Server(base_url, issued.plaintext, timed, runtime.services.admission)
    finally:
        runtime.worker.stop(timeout=60)
        audit.close()
        audit.store.close()


def raw_rate(engine: DiffusersEngine, size: int, iterations: int) -> dict[str, Any]:
    """`generate()` back to back: the engine's own rate, nothing around it."""
    job = GenerationJob(prompt=PROMPT, negative_prompt=None, width=size, height=size, steps=STEPS, seed=1)
    engine.generate(job, lambda: False)  # warm-up
    raw_ms = []
    for i in range(iterations):
        started = time.perf_counter()
        engine.generate(dataclasses.replace(job, seed=100 + i), lambda: False)
        raw_ms.append((time.perf_counter() - started) * 1000)
    rate = 1000 / statistics.median(raw_ms)
    log(f"{size}x{size}: raw median {statistics.median(raw_ms):.0f} ms ({rate:.3f} images/s)")
    return {**summarize(raw_ms), "images_per_s": round(rate, 4)}


def one_round(server: Server, size: int, clients: int, requests: int, raw_images_per_s: float) -> dict[str, Any]:
    per_client = max(1, requests // clients)
    server.engine.take()
    idle_before = (
        float(server.admission.idle_while_pending_s) if hasattr(server.admission, "idle_while_pending_s") else None
    )
    latencies, wall = run_clients(Clients(server.base_url, server.token, size, clients, per_client))
    gaps = gap_fraction(server.engine.take())
    rate = clients * per_client / wall
    if idle_before is not None and gaps.get("window_s"):
        idle = float(server.admission.idle_while_pending_s) - idle_before
        gaps["admission_idle_fraction"] = round(idle / float(gaps["window_s"]), 5)
    entry = {
        "requests": clients * per_client,
        "wall_s": round(wall, 3),
        "throughput_images_per_s": round(rate, 4),
        "vs_raw": round(rate / raw_images_per_s, 4),
        "latency": summarize(latencies),
        "engine_idle": gaps,
    }
    log(
        f"{size}x{size} {clients} clients: {rate:.3f} images/s ({rate / raw_images_per_s:.2f}x raw), "
        f"p50 {entry['latency']['median_ms']:.0f} ms, gaps {gaps.get('gap_fraction')}, "
        f"images/call {gaps.get('images_per_call_mean')}"
    )
    return entry


def measure(args: argparse.Namespace, state_dir: Path, model_dir: Path) -> dict[str, Any]:
    engine = DiffusersEngine(model_dir, model_id=MODEL_ID, device=args.device, demo=True)
    engine.load()
    log(f"engine loaded on {engine.info.device} ({engine.info.dtype})")
    configs: dict[str, dict[str, Any]] = {"configured": {}}
    for name, value in (
        ("batch_wait_ms", args.batch_wait_ms),
        ("max_batch_images", args.max_batch_images),
        ("postprocess_workers", args.postprocess_workers),
    ):
        if value is not None:
            configs["configured"][name] = value
    if args.compare_batching is not None:  # the same rounds, alternately without and with batching
        configs = {
            "unbatched": {"max_batch_images": 1},
            "batched": {"max_batch_images": args.compare_batching, "batch_wait_ms": args.batch_wait_ms or 0.0},
        }
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(served(state_dir / name, engine, generation))
            for name, generation in configs.items()
        }
        for size in args.sizes:
            for server in servers.values():
                run_clients(Clients(server.base_url, server.token, size, 1, 1, seed0=10))  # warm-up
            raw = raw_rate(engine, size, args.raw_iterations)
            per_size: dict[str, Any] = {"raw": raw}
            for clients in args.clients:
                for name, server in servers.items():
                    entry = one_round(server, size, clients, args.requests, raw["images_per_s"])
                    key = f"clients_{clients}" if len(servers) == 1 else f"clients_{clients}_{name}"
                    per_size[key] = entry
            results[f"{size}x{size}"] = per_size
    return {"device": engine.info.device, "dtype": engine.info.dtype, "configs": configs, "sizes": results}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=8, help="requests per client count (split among clients)")
    parser.add_argument("--raw-iterations", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-wait-ms", type=float, default=None)
    parser.add_argument("--max-batch-images", type=int, default=None)
    parser.add_argument("--postprocess-workers", type=int, default=None)
    parser.add_argument(
        "--compare-batching",
        type=int,
        default=None,
        metavar="MAX_IMAGES",
        help="run every round twice, unbatched and with generation.max_batch_images=MAX_IMAGES",
    )
    parser.add_argument("--label", default=None, help="a free-text note stored in the JSON")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zguard-bench-throughput-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir(mode=0o700)
        model_dir = write_demo_model(state_dir / "demo-model")
        try:
            figures = measure(args, state_dir, model_dir)
        except RuntimeError as exc:
            log(f"failed: {exc}")
            return 1
    result = {
        "benchmark": "bench_throughput",
        "label": args.label,
        "settings": {
            "steps": STEPS,
            "output_format": "png",
            "provenance": "default (watermark + signed label)",
            "batch_wait_ms": args.batch_wait_ms,
            "max_batch_images": args.max_batch_images,
            "postprocess_workers": args.postprocess_workers,
            "requests_per_client_count": args.requests,
        },
        **figures,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": {**machine_info(PACKAGES), "load_average_at_start": load_at_start},
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
