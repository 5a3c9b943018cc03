"""Benchmark: each per-image CPU step after the engine, the way it was against the way it is now,
on the same images in the same run (issue 21 item 2: what each step gained).

Run it with ``.venv/bin/python bench/bench_encoding.py [--baseline f140218] [--repeats N]``;
ONE JSON object on stdout. The two versions of each step alternate (old, new, new, old, ...) so
that other people's load on a shared machine hits both alike; figures are the median and the
minimum (the minimum is what the step costs on a quiet machine) of wall-clock milliseconds, and
the CPU time of the calling thread (all of it with ``--torch-threads 1``).

Steps, old → new:

``watermark``
    ``embedder.embed`` as of ``--baseline`` (the module's source at that commit, read with
    ``git show``, so no copy of it lives in the tree) → this tree's. Both outputs are compared:
    ``identical`` must be true (the same marked pixels, bit for bit).
``png``
    Pillow ``save(format="PNG", compress_level=1)`` (the old ``encode_images``) → this tree's
    ``encoding.encode_png``; with the file sizes and each file's decode time in Pillow.
``label``
    the signed implicit label of a PNG: decoding the file again to hash its pixels → hashing the
    encoded image's pixels (what ``ProvenanceMarker.mark`` does now).
``json``
    the response body: ``image_response(result).model_dump_json()`` encoded to bytes → ``wire.image_response_json``.

Images: the demo model's own output (built in a temporary directory; noise-like), a photo-like
synthetic picture and pure noise, at 64², 512² and 1024².
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*, tests.common.*

from bench.machine import machine_info
from tests.common.pictures import noise, photo_like

from zguard.app.wire import image_response, image_response_json
from zguard.provenance import embedder
from zguard.provenance.labels import pixel_hash
from zguard.provenance.watermark import Watermarker
from zguard.services.encoding import encode_png
from zguard.services.images import GeneratedImages

DEFAULT_BASELINE = "f140218"  # the tree before issue 21's item 2
ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def module_at(commit: str, path: str, name: str) -> types.ModuleType:
    """The module at `path` as of `commit`, imported under `name` (its own imports are this tree's)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{commit}:{path}"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own file at a commit
    return module


def ab(old: Callable[[], Any], new: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Alternating timings of `old` and `new` (one unrecorded call of each first)."""
    old(), new()
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(repeats):
        order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
        for name, step in order:
            started, cpu_started = time.perf_counter(), time.thread_time()
            step()
            times[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.thread_time() - cpu_started) * 1000)
    out: dict[str, Any] = {
        name: {
            "median_ms": round(statistics.median(v), 3),
            "min_ms": round(min(v), 3),
            "calling_thread_cpu_median_ms": round(statistics.median(cpu[name]), 3),
        }
        for name, v in times.items()
    }
    out["speedup_median"] = round(out["old"]["median_ms"] / out["new"]["median_ms"], 2)
    out["speedup_min"] = round(out["old"]["min_ms"] / out["new"]["min_ms"], 2)
    return out


def decode_ms(blob: bytes, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
        best = min(best, (time.perf_counter() - started) * 1000)
    return round(best, 3)


def pillow_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def demo_images(sides: list[int]) -> dict[int, Image.Image]:
    from zguard.engine import GenerationJob
    from zguard.engine.demo import write_demo_model
    from zguard.engine.pipeline import DiffusersEngine

    out = {}
    with tempfile.TemporaryDirectory(prefix="zguard-bench-encoding-") as tmp:
        engine = DiffusersEngine(write_demo_model(Path(tmp) / "m"), model_id="z", device="cpu", demo=True)
        engine.load()
        for side in sides:
            job = GenerationJob(
                prompt="a lighthouse on a cliff at dusk, oil painting",
                negative_prompt=None,
                width=side,
                height=side,
                steps=2,
                seed=1234,
            )
            out[side] = engine.generate(job, lambda: False)[0]
    return out


def measure(name: str, image: Image.Image, old_embedder: types.ModuleType, repeats: int) -> dict[str, Any]:
    wm = Watermarker(bytes(range(32)))
    placement: dict[str, Any] = {"salt": 3, "offset": (17, 101)}
    marked_old = old_embedder.embed(wm, image, 0x0123456789ABCDEF, **placement)
    marked_new = embedder.embed(wm, image, 0x0123456789ABCDEF, **placement)
    identical = np.array_equal(np.asarray(marked_old), np.asarray(marked_new))
    old_png, new_png = pillow_png(marked_new), encode_png(np.asarray(marked_new))
    result = GeneratedImages(
        created=1, blobs=[new_png], output_format="png", size="x", request_id="0" * 32, seed=1, model="z"
    )

    def label_by_decoding() -> str:
        with Image.open(io.BytesIO(new_png)) as decoded:
            return pixel_hash(decoded)

    out = {
        "watermark": {
            **ab(
                lambda: old_embedder.embed(wm, image, 1, **placement),
                lambda: embedder.embed(wm, image, 1, **placement),
                repeats,
            ),
            "identical": identical,
        },
        "png": {
            **ab(lambda: pillow_png(marked_new), lambda: encode_png(np.asarray(marked_new)), repeats),
            "bytes_old": len(old_png),
            "bytes_new": len(new_png),
            "decode_ms_old": decode_ms(old_png),
            "decode_ms_new": decode_ms(new_png),
        },
        "label": ab(label_by_decoding, lambda: pixel_hash(marked_new), repeats),
        "json": ab(
            lambda: image_response(result).model_dump_json().encode(), lambda: image_response_json(result), repeats
        ),
    }
    log(f"{name}: " + ", ".join(f"{k} ×{v['speedup_median']}" for k, v in out.items()))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit of the old embedder")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch's intra-op threads (0: torch's default); 1 gives steadier embedder figures on a busy machine",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 1024])
    parser.add_argument(
        "--repeats", type=int, default=0, help="per step and version (0: 60 at 64², 12 at 512², 8 at 1024²)"
    )
    args = parser.parse_args(argv)
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    old_embedder = module_at(args.baseline, "src/zguard/provenance/embedder.py", "baseline_embedder")
    demos = demo_images(args.sizes)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for side in args.sizes:
        repeats = args.repeats or {64: 60, 512: 12}.get(side, 8)
        pictures = {
            "demo": demos[side],
            "photo_like": Image.fromarray(photo_like(side, side)),
            "noise": Image.fromarray(noise(side, side)),
        }
        for kind, image in pictures.items():
            results[f"{side}x{side}/{kind}"] = measure(f"{side}² {kind}", image, old_embedder, repeats)
    print(
        json.dumps(
            {
                "benchmark": "per-image CPU steps after the engine: before (old) and after (new), same images, same run",
                "baseline_commit": args.baseline,
                "torch_threads": torch.get_num_threads(),
                "machine": machine_info(("torch", "numpy", "pillow", "isal", "pydantic")),
                "results": results,
                "bench_wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )
    return 0 if all(r["watermark"]["identical"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
