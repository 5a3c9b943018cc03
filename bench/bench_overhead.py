"""Benchmark: what a user of zguard's API gets on top of the bare pipeline, with DEFAULT settings.

Run it with ``.venv/bin/python bench/bench_overhead.py [--sizes 64 512 1024] [--iterations ...]``.
It prints ONE JSON object on stdout (progress on stderr); a measurement, not a test: only a
broken server or an image that differs from the raw run's makes it exit 1.

What differs from ``bench_generation.py`` (whose pieces it reuses: the in-process uvicorn server,
the timed engine, pipe and app, the statistics): provenance is as configured by default, i.e.
the invisible watermark and the signed GB 45438 implicit label on, no visible label; three
sizes (64² at 2 steps, 512² and 1024² at 8 steps: Turbo's own); PNG, JPEG and WebP.

Order. Per size, after the warm-up, each iteration runs the raw call once and one HTTP request
per format, the four in an order that rotates from one iteration to the next (raw, png, jpeg,
webp | png, jpeg, webp, raw | ...), so drift and other people's load on the machine hit all
alike. The raw samples are shared by the three formats (the pipeline call does not depend on
the output format).

Breakdown per request, two ways (both reported):

``in_server`` (measured inside the serving process, per request, from perf_counter timestamps
taken by thin wrappers the bench puts around the service's collaborators; nothing in zguard is
changed): ``policy`` (the prompt policy's ``enforce``), ``before_admission`` (ASGI app start to
the admission queue: network ACL, authentication, rate limit, validation, the policy, the
``generation.accepted`` audit commit), ``admission_wait`` (queue to engine start, including the
hop to the worker thread), ``engine``, ``hop_to_finish`` (engine end to the marking thread's
start), ``mark_total`` (watermark + encode + label, in its thread), ``encode`` (the encoder
call inside it), ``after_finish`` (base64, JSON, the completion audit event and sending the
body, up to the app's return), ``transport`` (client time minus app time: uvicorn's HTTP, the
loopback socket, httpx reading ~1.4× the image in base64).
``stages`` (measured outside the server, by calling the same functions the server calls on the
same images, those of each raw run): ``watermark`` (the embedder), ``encode``, ``label`` (the
signed implicit label: pixel digest, signature, XMP inserted), ``base64_json`` (the response
body from the encoded bytes, as the route builds it). The functions are this tree's: the BEFORE
figures (bench/results/overhead-before-2026-12-04.json) were taken with the same script calling
the functions of that tree (the label decoding the file, ``image_response(...).model_dump_json()``).

Figures: ``raw`` and ``e2e`` medians and p95; ``added_median_ms`` = e2e median − raw median with
its bootstrap 95 % interval (noisy: the pipeline's spread is larger than the overhead on a
shared 2-core machine); ``added_paired_ms`` = per request, client time − that request's engine
time (cancels the pipeline's noise: the steady figure); the load average at start and end.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*

from bench.bench_generation import (
    GENERATIONS_PATH,
    MODEL_ID,
    TimedApp,
    TimedEngine,
    TimedPipe,
    http_server,
    log,
    machine_info,
    median_difference_ci95,
    ms,
    paired,
    summarize,
)

from zguard.app.api import create_api_app
from zguard.audit.setup import open_audit_store, prompt_capture
from zguard.audit.trail import AuditTrail
from zguard.config import Settings
from zguard.engine import GenerationJob
from zguard.engine.demo import write_demo_model
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.tokens import new_token, token_digest
from zguard.serve.wiring import build_auth, build_runtime, open_store
from zguard.services.admin import load_token_key
from zguard.services.readiness import ModelState
from zguard.state_paths import token_key_file

FORMATS = ("png", "jpeg", "webp")
QUALITY = 90  # the service's default output_compression
STEPS = {64: 2, 512: 8, 1024: 8}
DEFAULT_ITERATIONS = {64: 24, 512: 8, 1024: 5}
TARGETS_MS = {  # issue 21: added latency at 1024² (PNG, JPEG) and at 64² (any format)
    (1024, "png"): 40.0,
    (1024, "jpeg"): 25.0,
    (64, "png"): 15.0,
    (64, "jpeg"): 15.0,
    (64, "webp"): 15.0,
}


class Spans:
    """perf_counter timestamps of the request being served (one request at a time)."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.values[name] = time.perf_counter()

    def take(self) -> dict[str, float]:
        values, self.values = self.values, {}
        return values


class TimedPolicy:
    def __init__(self, inner: Any, spans: Spans) -> None:
        self._inner, self._spans = inner, spans

    def enforce(self, *args: Any, **kwargs: Any) -> Any:
        self._spans.mark("policy_start")
        try:
            return self._inner.enforce(*args, **kwargs)
        finally:
            self._spans.mark("policy_end")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedAdmission:
    def __init__(self, inner: Any, spans: Spans) -> None:
        self._inner, self._spans = inner, spans

    async def run(self, job: Callable[..., Any]) -> Any:
        self._spans.mark("admission_start")
        return await self._inner.run(job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedMarker:
    def __init__(self, inner: ProvenanceMarker, spans: Spans) -> None:
        self._inner, self._spans = inner, spans

    def mark(self, *args: Any, **kwargs: Any) -> Any:
        self._spans.mark("mark_start")
        try:
            return self._inner.mark(*args, **kwargs)
        finally:
            self._spans.mark("mark_end")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def timed_encode(encode: Callable[..., list[bytes]], spans: Spans) -> Callable[..., list[bytes]]:
    def wrapper(*args: Any, **kwargs: Any) -> list[bytes]:
        spans.mark("encode_start")
        try:
            return encode(*args, **kwargs)
        finally:
            spans.mark("encode_end")

    return wrapper


# --- the stages, timed outside the server on the same images ---------------------------------


def time_stages(marker: ProvenanceMarker, images: list[Any], fmt: str, out: dict[str, list[float]]) -> None:
    """Watermark, encode, label and response body for `images`, each timed on its own, calling
    the same functions `ProvenanceMarker.mark` and the route call."""
    from zguard.app.wire import image_response_json
    from zguard.provenance.embedder import embed
    from zguard.provenance.marking import Placement
    from zguard.services.images import GeneratedImages, encode_images

    wm, key = marker._watermarker, marker._signing_key
    assert wm is not None, "the default settings watermark"
    assert key is not None, "the default settings sign the implicit label"
    t0 = time.perf_counter()
    marked = []
    for image in images:
        p = Placement.draw()
        marked.append(embed(wm, image, p.watermark_id, salt=p.salt, offset=p.offset))
    t1 = time.perf_counter()
    blobs = encode_images(marked, fmt, QUALITY)  # type: ignore[arg-type]
    t2 = time.perf_counter()
    lossless = marked if fmt == "png" else [None] * len(blobs)  # as ProvenanceMarker.mark
    blobs = [marker._label(key, b, fmt, "0" * 32, i) for b, i in zip(blobs, lossless, strict=True)]  # type: ignore[arg-type]
    t3 = time.perf_counter()
    result = GeneratedImages(
        created=int(time.time()),
        blobs=blobs,
        output_format=fmt,  # type: ignore[arg-type]
        size=f"{images[0].width}x{images[0].height}",
        request_id="0" * 32,
        seed=1,
        model=MODEL_ID,
    )
    body = image_response_json(result)
    t4 = time.perf_counter()
    assert body
    for name, value in (("watermark", t1 - t0), ("encode", t2 - t1), ("label", t3 - t2), ("base64_json", t4 - t3)):
        out[name].append(ms(value))
    out["total"].append(ms(t4 - t0))


# --- one size ---------------------------------------------------------------------------------


@dataclass
class FormatSamples:
    client: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("watermark", "encode", "label", "base64_json", "total")}
    )
    response_bytes: list[int] = field(default_factory=list)
    image_bytes: list[int] = field(default_factory=list)

    def add(self, name: str, value_ms: float) -> None:
        self.parts.setdefault(name, []).append(value_ms)


class SizeRun:
    def __init__(self, side: int, args: argparse.Namespace, engine: DiffusersEngine, server: Server) -> None:
        self.side, self.steps = side, STEPS.get(side, 8)
        self.engine, self.server = engine, server
        self.job = GenerationJob(
            prompt=args.prompt, negative_prompt=None, width=side, height=side, steps=self.steps, seed=args.seed
        )
        self.raw_ms: list[float] = []
        self.pipe_ms: list[float] = []
        self.formats = {fmt: FormatSamples() for fmt in FORMATS}
        self.body = {"prompt": args.prompt, "size": f"{side}x{side}", "num_inference_steps": self.steps}
        self.seed = args.seed

    def raw(self, record: bool) -> None:
        started = time.perf_counter()
        images = self.engine.generate(self.job, lambda: False)
        elapsed = time.perf_counter() - started
        if record:
            self.raw_ms.append(ms(elapsed))
            self.pipe_ms.append(ms(self.server.timed_pipe.last_s) if self.server.timed_pipe else math.nan)
            for fmt, samples in self.formats.items():
                time_stages(self.server.marker, images, fmt, samples.stages)

    def http(self, fmt: str, record: bool) -> None:
        server = self.server
        server.spans.take()
        started = time.perf_counter()
        resp = server.client.post(GENERATIONS_PATH, json={**self.body, "seed": self.seed, "output_format": fmt})
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            raise RuntimeError(f"POST {GENERATIONS_PATH} answered {resp.status_code}: {resp.text[:500]}")
        app_start, app_end = server.timed_app.next_span()
        spans = server.spans.take()
        engine = server.timed_engine
        s = self.formats[fmt]
        if not record:
            return
        s.client.append(ms(elapsed))
        s.engine.append(ms(engine.last_s))
        engine_start, engine_end = engine.last_started, engine.last_started + engine.last_s
        s.add("policy", ms(spans["policy_end"] - spans["policy_start"]))
        s.add("before_admission", ms(spans["admission_start"] - app_start))
        s.add("admission_wait", ms(engine_start - spans["admission_start"]))
        s.add("engine", ms(engine.last_s))
        s.add("hop_to_finish", ms(spans["mark_start"] - engine_end))
        s.add("mark_total", ms(spans["mark_end"] - spans["mark_start"]))
        s.add("encode", ms(spans["encode_end"] - spans["encode_start"]))
        s.add(
            "mark_minus_encode",
            ms(spans["mark_end"] - spans["mark_start"] - spans["encode_end"] + spans["encode_start"]),
        )
        s.add("after_finish", ms(app_end - spans["mark_end"]))
        s.add("transport", ms(elapsed - (app_end - app_start)))
        s.response_bytes.append(len(resp.content))
        blob = base64.b64decode(resp.json()["data"][0]["b64_json"])
        s.image_bytes.append(len(blob))

    def run(self, iterations: int, warmup: int) -> None:
        steps: list[Callable[[bool], None]] = [self.raw, *[(lambda r, f=f: self.http(f, r)) for f in FORMATS]]
        for _ in range(warmup):
            for step in steps:
                step(False)
        started = time.perf_counter()
        for i in range(iterations):
            for step in steps[i % len(steps) :] + steps[: i % len(steps)]:
                step(True)
            log(
                f"{self.side}² iteration {i + 1}/{iterations}: raw median {statistics.median(self.raw_ms):.1f} ms, "
                + ", ".join(f"{f} {statistics.median(s.client):.1f} ms" for f, s in self.formats.items())
                + f" ({time.perf_counter() - started:.0f} s)"
            )

    def report(self) -> dict[str, Any]:
        raw_median = statistics.median(self.raw_ms)
        out: dict[str, Any] = {
            "steps": self.steps,
            "raw": {**summarize(self.raw_ms), "pipe_call_ms": summarize(self.pipe_ms)},
            "formats": {},
        }
        for fmt, s in self.formats.items():
            added_paired = paired(s.client, s.engine)
            target = TARGETS_MS.get((self.side, fmt))
            out["formats"][fmt] = {
                "e2e": summarize(s.client),
                "added_median_ms": round(statistics.median(s.client) - raw_median, 3),
                "added_median_ci95_ms": median_difference_ci95(s.client, self.raw_ms),
                "added_paired_ms": summarize(added_paired),
                "ratio_e2e_over_raw": round(statistics.median(s.client) / raw_median, 4),
                "target_added_ms": target,
                "target_met_paired": None if target is None else statistics.median(added_paired) <= target,
                "in_server_median_ms": {k: round(statistics.median(v), 3) for k, v in s.parts.items()},
                "stages_median_ms": {k: round(statistics.median(v), 3) for k, v in s.stages.items()},
                "stages_p95_ms": {k: summarize(v)["p95_ms"] for k, v in s.stages.items()},
                "image_bytes_median": int(statistics.median(s.image_bytes)),
                "response_bytes_median": int(statistics.median(s.response_bytes)),
            }
        return out


# --- the server -------------------------------------------------------------------------------


@dataclass
class Server:
    client: httpx.Client
    timed_app: TimedApp
    timed_engine: TimedEngine
    timed_pipe: TimedPipe | None
    marker: ProvenanceMarker
    spans: Spans


def measure(model_dir: Path, state_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    engine = DiffusersEngine(model_dir, model_id=MODEL_ID, device=args.device, demo=True)
    engine.load()
    timed_pipe = None
    if getattr(engine, "_pipe", None) is not None:
        timed_pipe = TimedPipe(engine._pipe)
        engine._pipe = timed_pipe
    settings = Settings.model_validate({"state_dir": str(state_dir)})  # defaults: watermark + signed label
    timed_engine = TimedEngine(engine)
    store, token_key = open_store(settings), load_token_key(token_key_file(settings))
    store.create_principal("bench", "service", roles=["generator"])
    issued = new_token()
    store.add_token("bench", token_hash=token_digest(issued.plaintext, token_key), prefix=issued.display_prefix)
    audit = AuditTrail(open_audit_store(settings, store.engine))
    marker = ProvenanceMarker.from_settings(settings)
    runtime = build_runtime(
        settings,
        timed_engine,
        auth=build_auth(settings, store, token_key, audit),
        audit=audit,
        prompts=prompt_capture(settings),
        provenance=marker,
    )
    runtime.services.readiness.set(ModelState.READY)
    # Thin timing wrappers around the image service's collaborators (private attributes: a bench).
    spans = Spans()
    images: Any = runtime.services.images  # the ImageService behind the protocol
    images._policy = TimedPolicy(images._policy, spans)
    images._admission = TimedAdmission(images._admission, spans)
    images._provenance = TimedMarker(marker, spans)
    images._encode = timed_encode(images._encode, spans)
    timed_app = TimedApp(create_api_app(settings, runtime.services))
    results: dict[str, Any] = {}
    try:
        with (
            http_server(timed_app) as base_url,
            httpx.Client(
                base_url=base_url,
                timeout=300.0,
                trust_env=False,
                headers={"Authorization": f"Bearer {issued.plaintext}"},
            ) as client,
        ):
            server = Server(client, timed_app, timed_engine, timed_pipe, marker, spans)
            for side in args.sizes:
                run = SizeRun(side, args, engine, server)
                load_before = [round(x, 2) for x in os.getloadavg()]
                run.run(args.iterations or DEFAULT_ITERATIONS.get(side, 5), args.warmup)
                results[f"{side}x{side}"] = {
                    **run.report(),
                    "load_average_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
                }
    finally:
        runtime.worker.stop(timeout=30)
        audit.close()
        audit.store.close()
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 1024], help="square sides")
    parser.add_argument("--iterations", type=int, default=0, help="per size (0: 24 at 64², 8 at 512², 5 at 1024²)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first (default 1)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--label", default="", help="a note stored in the JSON (e.g. before/after)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="zguard-bench-overhead-") as tmp:
        state_dir = Path(tmp) / "state"
        model_dir = write_demo_model(state_dir / "demo-model")
        try:
            sizes = measure(model_dir, state_dir, args)
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return 1
    result = {
        "benchmark": "zguard per-image overhead with default provenance: bare pipeline vs HTTP end to end",
        "label": args.label,
        "parameters": {
            "model": "embedded demo model (random weights)",
            "settings": "defaults: provenance.watermark and provenance.implicit_label on, explicit_label off",
            "formats": list(FORMATS),
            "quality": QUALITY,
            "seed": args.seed,
            "prompt": args.prompt,
            "order": "per iteration raw + one request per format, order rotating",
            "breakdown": "in_server: perf_counter wrappers around the image service's policy, admission, "
            "engine, marker and encoder, per request; stages: the same functions called outside the server "
            "on each raw run's images",
        },
        "machine": machine_info(load_at_start),
        "sizes": sizes,
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
