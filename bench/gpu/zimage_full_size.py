"""Benchmark: Z-Image-Turbo at its real size (random weights, bf16) on one CUDA GPU, through zguard.

Issue 21, item 5. Nothing is downloaded: every module is built from its full-size config
(`full_size_model.py`: `TRANSFORMER`, `TEXT_ENCODER`, `VAE`, `SCHEDULER`) with random weights, and the tokenizer
is the embedded demo model's byte-level one (so a prompt is about one token per byte: more
caption tokens than Qwen's real vocabulary gives, still far under the 4,096 image tokens of 1024²).

``--dry-run`` (any machine, CI): builds every module on the ``meta`` device (no memory), checks
the dimensions agree, and reports parameter counts, the bf16 weight footprint and an estimate of
the activation memory at 1024². Prints ONE JSON object.

Without ``--dry-run`` (one H100/H200, within ``--budget-s``, 420 s by default): materialises the
pipeline on the GPU in bf16 and runs the sections named by ``--sections`` in this order, each in
its own ``try`` so one failure is recorded (``error``) and the next section still runs. No section
starts after ``--budget-s`` (counted from the start, imports and build included), nor a long one
(``SECTION_MIN_S``) that would end after ``--deadline-s`` (480 s); those are listed in ``skipped``:

``raw``           ``pipe(...)`` at 1024², 8 steps, guidance 0, PIL out: warm-up, then median/p95.
``watermark``     zguard's `DiffusersEngine.generate` with and without the device mark
                  (`ProvenanceMarker.device_marks` -> `embed_tensor` on the GPU), and the tail alone
                  (`marked_images` on a decoded 1024² tensor) against the CPU path.
``e2e``           ``POST /v1/images/generations`` over loopback HTTP to the real API app and services
                  (auth, durable audit trail, provenance on as served), interleaved with raw engine
                  calls; the engine is zguard's `DiffusersEngine` holding the in-memory pipeline.
``concurrency``   1, 2 and 4 HTTP clients (one principal each): images/s, latency, engine idle share.
``attention``     the transformer's attention backends (`set_attention_backend`): SDPA default,
                  flash-attn if installed, and the SDPA kernels forced one at a time.
``ready``         time to ready: ``save_pretrained`` (safetensors), `pin` (the manifest), then
                  `DiffusersEngine.load()` (manifest verification while loading), one image.
``compile``       `transformer.compile_repeated_blocks(fullgraph=True)`: compile time, then latency.
``compile_cudagraphs`` the same with ``mode="reduce-overhead"`` (CUDA graphs).

``--compile-cache DIR`` (issue 21, item 6): inductor and Triton caches in DIR. A populated DIR
is used only if it matches the zguard manifest pinned there after the last compile (`verify`:
every file's SHA-256); otherwise it is emptied first (fail closed: an unverified artifact is code).
The caches hold compiled kernels and graphs only (no prompt, no image). The ``compile`` section
then also compiles a second time after ``torch._dynamo.reset()``, i.e. as a restart would.

``--smoke`` runs the same code at the demo model's sizes on the CPU (64², 2 steps), to test this
script itself; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

GPU_DIR = Path(__file__).resolve().parent
for _path in (GPU_DIR, GPU_DIR.parent):  # bench scripts import each other as top-level modules
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from full_size_model import (  # noqa: E402 - after the path set-up above
    BF16_BYTES,
    GIB,
    SIDE,
    STEPS,
    build_pipeline,
    count,
    dimension_checks,
    dry_run,
    full_size_configs,
    smoke_configs,
)

__all__ = ["dimension_checks", "dry_run", "full_size_configs", "main"]  # the test's entry points

MODEL_ID = "z-image-turbo"
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SECTIONS = ("raw", "watermark", "e2e", "concurrency", "attention", "ready", "compile", "compile_cudagraphs")
ATTENTION_BACKENDS = ("native", "flash", "_native_flash", "_native_efficient", "_native_cudnn")
CLIENT_COUNTS = (1, 2, 4)
# Seconds a section needs at least on one H100/H200 (save+hash+load of ~20 GB; a regional compile):
# one that would end past --deadline-s is not started.
SECTION_MIN_S = {"ready": 150.0, "compile": 120.0, "compile_cudagraphs": 120.0}
CUDA_MISSING = "no CUDA device: the full-size run needs one H100/H200; on this machine run it with --dry-run"
EXIT_REFUSED = 2


def log(message: str) -> None:
    print(f"[zimage-full-size] {message}", file=sys.stderr, flush=True)


def summarize(samples_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    p95 = statistics.quantiles(ordered, n=20, method="inclusive")[18] if len(ordered) > 1 else ordered[0]
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2)}


# --- measuring ----------------------------------------------------------------------------------


class Bench:
    """Shared state of one run: the pipeline, the clock and the budget, the sections' results."""

    def __init__(self, args: argparse.Namespace, pipe: Any, device: str, dtype_name: str) -> None:
        import torch

        self.args, self.pipe, self.device, self.dtype_name = args, pipe, device, dtype_name
        self.cuda = device == "cuda"
        self.torch = torch
        self.started = time.perf_counter()
        self.raw_median_ms: float | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def over_budget(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def call(self, output_type: str = "pil", seed: int = 0) -> Any:
        generator = self.torch.Generator(device=self.device).manual_seed(seed)
        with self.torch.inference_mode():
            return self.pipe(
                prompt=[PROMPT],
                height=self.args.side,
                width=self.args.side,
                num_inference_steps=self.args.steps,
                guidance_scale=0.0,
                generator=generator,
                output_type=output_type,
            ).images

    def timed(self, run: Callable[[], Any], runs: int | None = None, warmup: int | None = None) -> list[float]:
        """Milliseconds of `runs` calls after `warmup`, synchronised; stops early past the budget."""
        for _ in range(self.args.warmup if warmup is None else warmup):
            run()
        samples: list[float] = []
        for _ in range(self.args.runs if runs is None else runs):
            if samples and self.over_budget():
                break
            self.sync()
            t0 = time.perf_counter()
            run()
            self.sync()
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    def engine(self) -> Any:
        """zguard's DiffusersEngine serving this in-memory pipeline, as load() would leave it."""
        from zguard.engine import ModelInfo
        from zguard.engine.pipeline import DiffusersEngine, drawable_size

        engine = DiffusersEngine(Path(os.devnull), model_id=MODEL_ID, device=self.device)
        max_h, max_w = drawable_size(self.pipe)
        # Private fields, as bench_generation swaps `_pipe`: load() reads weights from a directory only.
        engine._pipe = self.pipe
        engine._info = ModelInfo(MODEL_ID, False, self.device, self.dtype_name, None, max_w, max_h)
        return engine

    def job(self, seed: int = 0, mark: Any = None) -> Any:
        from zguard.engine import GenerationJob

        side = self.args.side
        return GenerationJob(PROMPT, None, side, side, self.args.steps, seed, device_mark=mark)

    def memory(self) -> dict[str, float] | None:
        if not self.cuda:
            return None
        cuda = self.torch.cuda
        return {
            "allocated_gib": round(cuda.memory_allocated() / GIB, 3),
            "peak_gib": round(cuda.max_memory_allocated() / GIB, 3),
        }


def section_raw(b: Bench) -> dict[str, Any]:
    samples = b.timed(b.call)
    b.raw_median_ms = statistics.median(samples)
    images = b.call(output_type="pt")
    return {
        "measures": f"pipe(prompt, {b.args.side}², {b.args.steps} steps, guidance 0, output_type='pil'), synchronised",
        **summarize(samples),
        "images_per_s": round(1000 / b.raw_median_ms, 3),
        "output_finite": bool(b.torch.isfinite(images).all()),  # random weights may overflow; timing unaffected
    }


def section_watermark(b: Bench) -> dict[str, Any]:
    from PIL import Image

    from zguard.config import ProvenanceSettings
    from zguard.engine.pipeline import marked_images
    from zguard.provenance.embedder import embed
    from zguard.provenance.marking import DeviceMarks, Placement, ProvenanceMarker

    marker = ProvenanceMarker.ephemeral(ProvenanceSettings())
    engine = b.engine()
    plain = b.timed(lambda: engine.generate(b.job(), lambda: False))
    marked = b.timed(lambda: engine.generate(b.job(mark=marker.device_marks(1, b.device)), lambda: False))
    decoded = b.call(output_type="pt")
    watermarker = marker.reader
    assert watermarker is not None

    def cpu_tail() -> Image.Image:
        from diffusers.image_processor import VaeImageProcessor

        image = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(decoded))[0]
        p = Placement.draw()
        return embed(watermarker, image, p.watermark_id, salt=p.salt, offset=p.offset)

    return {
        "device_marks_used": marker.device_marks(1, b.device) is not None,
        "engine_generate_unmarked_ms": summarize(plain),
        "engine_generate_marked_ms": summarize(marked),
        "added_by_mark_median_ms": round(statistics.median(marked) - statistics.median(plain), 2),
        "tail_device_ms": summarize(
            b.timed(lambda: marked_images(decoded, DeviceMarks(watermarker, [Placement.draw()])), runs=10)
        ),
        "tail_cpu_ms": summarize(b.timed(cpu_tail, runs=10)),
        "tail_note": "decoded float tensor -> marked PIL image; device: marked_images (embed_tensor on the "
        "engine's device); cpu: diffusers' pt_to_numpy/numpy_to_pil then embed",
    }


@contextlib.contextmanager
def served(b: Bench, clients: int) -> Iterator[tuple[Any, Any, list[str]]]:
    """The API app wired as `zguard serve` wires it, over loopback; yields (base URL, busy engine, tokens)."""
    import bench_generation as bg
    from zguard.app.api import create_api_app
    from zguard.audit.setup import open_audit_store, prompt_capture
    from zguard.audit.trail import AuditTrail
    from zguard.config import Settings
    from zguard.provenance.marking import ProvenanceMarker
    from zguard.security.tokens import new_token, token_digest
    from zguard.serve.wiring import build_auth, build_runtime, open_store
    from zguard.services.admin import load_token_key
    from zguard.services.readiness import ModelState
    from zguard.state_paths import token_key_file

    with tempfile.TemporaryDirectory(prefix="zguard-gpu-state-") as tmp:
        settings = Settings.model_validate({"state_dir": tmp})
        store, token_key = open_store(settings), load_token_key(token_key_file(settings))
        audit = AuditTrail(open_audit_store(settings, store.engine))
        tokens = []
        for i in range(clients):  # one principal per client: max_concurrent_per_principal is 2
            store.create_principal(f"bench-{i}", "service", roles=["generator"])
            issued = new_token()
            store.add_token(
                f"bench-{i}", token_hash=token_digest(issued.plaintext, token_key), prefix=issued.display_prefix
            )
            tokens.append(issued.plaintext)
        engine = BusyEngine(b.engine())
        runtime = build_runtime(
            settings,
            engine,
            auth=build_auth(settings, store, token_key, audit),
            audit=audit,
            prompts=prompt_capture(settings),
            provenance=ProvenanceMarker.from_settings(settings),
        )
        runtime.services.readiness.set(ModelState.READY)
        try:
            with bg.http_server(create_api_app(settings, runtime.services)) as base_url:
                yield base_url, engine, tokens
        finally:
            runtime.worker.stop(timeout=60)
            audit.close()
            audit.store.close()


class BusyEngine:
    """An ImageEngine around zguard's that adds up the time spent generating (for the idle share)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.busy_s, self.last_s = inner, 0.0, 0.0
        self._lock = threading.Lock()

    @property
    def info(self) -> Any:
        return self.inner.info

    def load(self) -> None:
        self.inner.load()

    def generate(self, job: Any, should_stop: Callable[[], bool]) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.generate(job, should_stop)
        finally:
            with self._lock:
                self.last_s = time.perf_counter() - t0
                self.busy_s += self.last_s


def _post(client: Any, b: Bench, seed: int) -> None:
    body = {"prompt": PROMPT, "size": f"{b.args.side}x{b.args.side}", "num_inference_steps": b.args.steps, "seed": seed}
    response = client.post("/v1/images/generations", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"generation answered {response.status_code}: {response.text[:300]}")


def _client(base_url: str, token: str) -> Any:
    import httpx

    return httpx.Client(base_url=base_url, timeout=300, trust_env=False, headers={"Authorization": f"Bearer {token}"})


def section_e2e(b: Bench) -> dict[str, Any]:
    import bench_generation as bg

    raw: list[float] = []
    e2e: list[float] = []
    in_engine: list[float] = []
    with served(b, 1) as (base_url, engine, tokens), _client(base_url, tokens[0]) as client:
        direct = engine.inner
        for _ in range(b.args.warmup):
            _post(client, b, 0)
        for i in range(b.args.runs):
            if i and b.over_budget():
                break
            order = ("raw", "e2e") if i % 2 == 0 else ("e2e", "raw")
            for kind in order:
                t0 = time.perf_counter()
                if kind == "raw":
                    direct.generate(b.job(seed=i), lambda: False)
                    raw.append((time.perf_counter() - t0) * 1000)
                else:
                    _post(client, b, i)
                    e2e.append((time.perf_counter() - t0) * 1000)
                    in_engine.append(engine.last_s * 1000)
    ratio = statistics.median(e2e) / statistics.median(raw)
    return {
        "measures": "raw: DiffusersEngine.generate (no mark, PIL out); e2e: POST over loopback HTTP, default "
        "settings (watermark on the device, signed label, PNG), auth + durable audit; interleaved",
        "raw_engine": summarize(raw),
        "e2e": summarize(e2e),
        "e2e_minus_raw_median_ms": round(statistics.median(e2e) - statistics.median(raw), 2),
        "e2e_minus_raw_ci95_ms": bg.median_difference_ci95(e2e, raw),
        "paired_outside_engine_ms": summarize([a - e for a, e in zip(e2e, in_engine, strict=True)]),
        "ratio_e2e_over_raw": round(ratio, 4),
        "target_ratio": 1.03,
        "ratio_ok": ratio <= 1.03,
    }


def section_concurrency(b: Bench) -> dict[str, Any]:
    results: dict[str, Any] = {}
    per_client = max(2, b.args.runs // 2)
    with served(b, max(CLIENT_COUNTS)) as (base_url, engine, tokens):
        clients = [_client(base_url, token) for token in tokens]
        try:
            _post(clients[0], b, 0)  # warm
            for n in CLIENT_COUNTS:
                if b.over_budget():
                    results[str(n)] = {"skipped": "budget"}
                    continue
                latencies: list[float] = []
                errors: list[str] = []

                def worker(c: Any, index: int, out: list[float] = latencies, errs: list[str] = errors) -> None:
                    for k in range(per_client):
                        t0 = time.perf_counter()
                        try:
                            _post(c, b, 1000 * index + k)
                        except Exception as exc:  # noqa: BLE001 - recorded, the other clients go on
                            errs.append(repr(exc)[:300])
                            return
                        out.append((time.perf_counter() - t0) * 1000)

                busy0, t0 = engine.busy_s, time.perf_counter()
                threads = [threading.Thread(target=worker, args=(clients[i], i)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                busy = engine.busy_s - busy0
                results[str(n)] = {
                    "images": len(latencies),
                    "images_per_s": round(len(latencies) / wall, 3),
                    "vs_raw_images_per_s": round(len(latencies) / wall / (1000 / b.raw_median_ms), 4)
                    if b.raw_median_ms
                    else None,
                    "latency": summarize(latencies) if latencies else None,
                    "engine_idle_share": round(max(0.0, 1 - busy / wall), 4),
                    "errors": errors,
                }
        finally:
            for c in clients:
                c.close()
    return {"requests_per_client": per_client, "clients": results, "idle_target": 0.02}


def section_attention(b: Bench) -> dict[str, Any]:
    transformer = b.pipe.transformer
    results: dict[str, Any] = {}
    for backend in ATTENTION_BACKENDS:
        if b.over_budget():
            results[backend] = {"skipped": "budget"}
            continue
        try:
            transformer.set_attention_backend(backend)
            results[backend] = summarize(b.timed(b.call, runs=max(2, b.args.runs // 2), warmup=1))
        except Exception as exc:  # noqa: BLE001 - a backend missing here is a result, not a failure
            results[backend] = {"error": repr(exc)[:400]}
        finally:
            # reset_attention_backend() leaves diffusers' process-wide active backend as it was set.
            transformer.set_attention_backend("native")
            transformer.reset_attention_backend()
    return {"backends": results, "note": "native = torch SDPA choosing its kernel (the default)"}


def section_ready(b: Bench) -> dict[str, Any]:
    from zguard.engine.pipeline import DiffusersEngine
    from zguard.integrity.manifest import pin

    work = Path(b.args.work_dir or tempfile.gettempdir())
    need = sum(count(getattr(b.pipe, n)) for n in ("transformer", "text_encoder", "vae")) * BF16_BYTES
    free = shutil.disk_usage(work).free
    if free < need * 1.2:
        return {"skipped": f"needs {need / 1e9:.1f} GB free in {work}, has {free / 1e9:.1f} GB (--work-dir)"}
    target = Path(tempfile.mkdtemp(prefix="zguard-gpu-model-", dir=work))
    try:
        t0 = time.perf_counter()
        b.pipe.save_pretrained(target, safe_serialization=True)
        t1 = time.perf_counter()
        manifest = pin(target)
        t2 = time.perf_counter()
        engine = DiffusersEngine(target, model_id=MODEL_ID, device=b.device)
        engine.load()
        b.sync()
        t3 = time.perf_counter()
        engine.generate(b.job(), lambda: False)
        t4 = time.perf_counter()
        result = {
            "bytes": manifest.total_bytes,
            "save_pretrained_s": round(t1 - t0, 2),
            "pin_manifest_s": round(t2 - t1, 2),
            "load_verified_s": round(t3 - t2, 2),
            "first_image_s": round(t4 - t3, 2),
            "time_to_ready_s": round(t3 - t2, 2),
            "time_to_ready_note": "DiffusersEngine.load(): layout check, then every byte hashed while read into the "
            "GPU (what zguard serve does before /readyz); page cache warm from the save, so a cold disk is slower",
            "verify_gb_per_s": round(manifest.total_bytes / 1e9 / (t3 - t2), 2),
            "bytes_read": engine.bytes_read,
        }
        del engine
        return result
    finally:
        shutil.rmtree(target, ignore_errors=True)
        gc.collect()
        if b.cuda:
            b.torch.cuda.empty_cache()


def _cache_files(cache: Path) -> tuple[int, int]:
    files = [p for p in cache.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def prepare_compile_cache(cache: Path) -> dict[str, Any]:
    """Point inductor and Triton at `cache`; keep its contents only if its pinned manifest verifies."""
    from zguard.integrity.manifest import MANIFEST_FILE, verify

    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    state: dict[str, Any] = {"dir": str(cache)}
    if (cache / MANIFEST_FILE).exists():
        report = verify(cache)
        state["verified"] = report.ok
        if not report.ok:
            state["problems"] = [str(p) for p in report.problems][:10]
    elif any(cache.iterdir()):
        state["verified"] = False
        state["problems"] = ["no manifest: not pinned by a previous run"]
    if state.get("verified") is False:  # fail closed: compiled artifacts are code
        shutil.rmtree(cache)
        cache.mkdir(mode=0o700)
    state["files_before"], state["bytes_before"] = _cache_files(cache)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return state


def _compile(b: Bench, mode: str | None) -> dict[str, Any]:
    import torch._dynamo

    transformer = b.pipe.transformer
    torch._dynamo.reset()
    kwargs: dict[str, Any] = {"fullgraph": True} | ({"mode": mode} if mode else {})
    transformer.compile_repeated_blocks(**kwargs)
    t0 = time.perf_counter()
    b.call()  # compiles every block shape on first use
    b.sync()
    first = time.perf_counter() - t0
    result: dict[str, Any] = {"kwargs": kwargs, "first_call_s": round(first, 2)}
    samples = b.timed(b.call, warmup=1)
    result["latency"] = summarize(samples)
    if b.raw_median_ms:
        result["speedup_vs_raw"] = round(b.raw_median_ms / statistics.median(samples), 3)
    cache = b.args.compile_cache
    if cache is not None and mode is None and not b.over_budget():
        torch._dynamo.reset()  # as a restarted process: in-memory caches gone, the on-disk ones stay
        transformer.compile_repeated_blocks(**kwargs)
        t0 = time.perf_counter()
        b.call()
        b.sync()
        result["first_call_after_reset_s"] = round(time.perf_counter() - t0, 2)
        from zguard.integrity.manifest import pin

        try:
            result["cache_manifest"] = pin(cache).digest  # what the next run verifies before use
        except Exception as exc:  # noqa: BLE001 - recorded; the next run then empties the cache
            result["cache_manifest_error"] = repr(exc)[:300]
        result["cache_files"], result["cache_bytes"] = _cache_files(cache)
    return result


def section_compile(b: Bench) -> dict[str, Any]:
    return _compile(b, None)


def section_compile_cudagraphs(b: Bench) -> dict[str, Any]:
    return _compile(b, "reduce-overhead")


SECTION_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "raw": section_raw,
    "watermark": section_watermark,
    "e2e": section_e2e,
    "concurrency": section_concurrency,
    "attention": section_attention,
    "ready": section_ready,
    "compile": section_compile,
    "compile_cudagraphs": section_compile_cudagraphs,
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The measured run; every section's failure lands in the result, not in a traceback."""
    import torch

    from machine import machine_info

    result: dict[str, Any] = {
        "benchmark": "Z-Image-Turbo full size (random weights) through zguard",
        "smoke": args.smoke,
    }
    if args.compile_cache is not None:
        result["compile_cache"] = prepare_compile_cache(args.compile_cache)
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    configs = smoke_configs() if args.smoke else full_size_configs()
    result["parameters"] = {
        "side": args.side,
        "steps": args.steps,
        "runs": args.runs,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "deadline_s": args.deadline_s,
        "sections": args.sections,
        "prompt": PROMPT,
    }
    result["machine"] = machine_info(("torch", "diffusers", "transformers", "accelerate", "flash-attn"))
    result["machine"]["device"] = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    t0 = time.perf_counter()
    try:
        pipe = build_pipeline(device, dtype, configs)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON like a section's failure
        result["build"] = {"error": repr(exc)[:1000], "s": round(time.perf_counter() - t0, 2)}
        result["sections"], result["skipped"] = {}, [{"section": n, "reason": "build failed"} for n in args.sections]
        return result
    bench = Bench(args, pipe, device, str(dtype).removeprefix("torch."))
    bench.started = args.started  # the budget counts the imports and the build
    result["build"] = {"s": round(time.perf_counter() - t0, 2), "memory": bench.memory()}
    result["sections"], result["skipped"] = {}, []
    for name in args.sections:
        if bench.over_budget():
            result["skipped"].append(
                {"section": name, "reason": f"budget: {bench.elapsed():.0f} s > {args.budget_s:.0f} s"}
            )
            continue
        if bench.elapsed() + SECTION_MIN_S.get(name, 0.0) > args.deadline_s:
            reason = f"deadline: needs ~{SECTION_MIN_S[name]:.0f} s, {args.deadline_s - bench.elapsed():.0f} s left"
            result["skipped"].append({"section": name, "reason": reason})
            continue
        log(f"{name} (at {bench.elapsed():.0f} s)")
        if bench.cuda:
            torch.cuda.reset_peak_memory_stats()
        s0 = time.perf_counter()
        try:
            section = SECTION_FUNCTIONS[name](bench)
        except Exception as exc:  # noqa: BLE001 - one section's failure must not lose the others' figures
            section = {"error": repr(exc)[:1000]}
        section["section_s"] = round(time.perf_counter() - s0, 2)
        section["memory"] = bench.memory()
        result["sections"][name] = section
    result["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3) if bench.cuda else None
    result["wall_s"] = round(bench.elapsed(), 1)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="meta device: counts, footprint, checks (no GPU)")
    parser.add_argument("--smoke", action="store_true", help="the measured run at demo sizes on the CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip remaining sections after this (420)")
    parser.add_argument(
        "--deadline-s", type=float, default=480.0, help="never start a long section that would end after this (480)"
    )
    parser.add_argument("--side", type=int, default=None, help="image side (1024; 64 with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (8; 2 with --smoke)")
    parser.add_argument("--work-dir", default=None, help="where 'ready' saves the ~20 GB model (default: tmp)")
    parser.add_argument("--compile-cache", type=Path, default=None, help="pinned inductor/Triton cache dir")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {','.join(SECTIONS)}")
    args.side = args.side or (64 if args.smoke else SIDE)
    args.steps = args.steps or (2 if args.smoke else STEPS)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    args.started = started
    if args.dry_run:
        result = dry_run()
        code = 0 if result["ok"] else 1
    else:
        import torch

        if not args.smoke and not torch.cuda.is_available():
            print(f"zimage_full_size: {CUDA_MISSING}", file=sys.stderr)
            return EXIT_REFUSED
        result = run(args)
        failed = "error" in result["build"] or any("error" in s for s in result["sections"].values())
        code = 1 if failed else 0
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
