"""Benchmark: the watermark added on the engine's device (`embed_tensor`) against the CPU `embed`.

Run it with ``.venv/bin/python bench/bench_watermark_device.py [--side 1024] [--runs 50]``. It
prints ONE JSON object on stdout. A measurement, not a test; it exits 1 when a path's pixels
differ from the CPU path's, so a GPU session can run it as its device check.

On a CUDA host the device is the GPU; elsewhere the same code runs on CPU tensors and the object
says ``"cuda": false``. Each run marks a fresh id at a random salt and offset, as the server does.

``embed_cpu_ms``: `Watermarker.embed` on a PIL image (the baseline, measured in the same run).
``embed_tensor_ms``: `embed_tensor` on a uint8 (3, side, side) tensor already on the device,
``torch.cuda.synchronize()`` before and after each run.
``tail_ms``: from the decoded float tensor in [0, 1] (bfloat16 on CUDA, as the engine decodes;
float32 on the CPU) to a marked PIL image. ``cpu_path``: diffusers' own ``pt_to_numpy`` and
``numpy_to_pil`` (what ``output_type="pil"`` does), then `embed`; ``device_path``: the engine's
`marked_images` (quantised and marked on the device, then one uint8 copy to the host).
``agree``: per path, over every run, the largest pixel difference from the CPU path and the
fraction of pixels that differ at all. Both paths run the same torch code (`embed_tensor`), so on
CPU tensors they are equal; on a GPU, float reductions in another order can move a rounding
boundary, so a level of difference on a few pixels is expected and anything more is a failure.
``decoded``: every device-path mark reads back with its id.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from zguard.engine.pipeline import marked_images
from zguard.provenance.embedder import embed, embed_tensor
from zguard.provenance.marking import DeviceMarks, Placement
from zguard.provenance.watermark import Watermarker

KEY = b"bench-watermark-key-0123456789ab"
WARMUP = 3


def picture(side: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """Shading plus texture, with saturated corners so clipping is exercised."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = 128 + 140 * np.sin(3 * x + 2 * y)
    rgb = np.stack([base, base * 0.8 + 20, base * 0.6 + 40], axis=-1) + rng.normal(0, 6, (side, side, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def percentiles(samples: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(samples, 50)), 3), "p95": round(float(np.percentile(samples, 95)), 3)}


def timed(run: Callable[[Placement], Any], placements: list[Placement], sync: Callable[[], None]) -> list[float]:
    for placement in placements[:WARMUP]:
        run(placement)
    samples = []
    for placement in placements:
        sync()
        started = time.perf_counter()
        run(placement)
        sync()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    wm = Watermarker(KEY)
    placements = [Placement.draw() for _ in range(args.runs)]

    rgb = picture(args.side)
    image = Image.fromarray(rgb)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(device)

    def on_cpu(p: Placement) -> Image.Image:
        return embed(wm, image, p.watermark_id, salt=p.salt, offset=p.offset)

    def on_device(p: Placement) -> Any:
        return embed_tensor(wm, pixels, p.watermark_id, salt=p.salt, offset=p.offset)

    # The decoded tensor as the VAE hands it over, in the engine's dtype on the device.
    decoded = torch.from_numpy(np.random.default_rng(1).random((1, 3, args.side, args.side), dtype=np.float32))
    decoded = decoded.to(device=device, dtype=torch.bfloat16 if cuda else torch.float32)

    def tail_cpu(p: Placement) -> Image.Image:
        plain = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(decoded))[0]
        return embed(wm, plain, p.watermark_id, salt=p.salt, offset=p.offset)

    def tail_device(p: Placement) -> Image.Image:
        return marked_images(decoded, DeviceMarks(wm, [p]))[0]

    def agreement(pairs: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]) -> dict[str, float]:
        diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in pairs]
        return {
            "max_level_difference": int(max(int(d.max()) for d in diffs)),
            "differing_fraction": float(np.mean([float((d > 0).mean()) for d in diffs])),
        }

    embed_pairs = [(on_device(p).permute(1, 2, 0).cpu().numpy(), np.asarray(on_cpu(p))) for p in placements]
    tail_pairs = [(np.asarray(tail_device(p)), np.asarray(tail_cpu(p))) for p in placements]
    agree = {"embed_tensor": agreement(embed_pairs), "tail": agreement(tail_pairs)}
    decoded_ok = all(
        (found := wm.detect(Image.fromarray(marked))) is not None and found.watermark_id == p.watermark_id
        for (marked, _), p in zip(embed_pairs[:10], placements[:10], strict=True)
    )
    ok = decoded_ok and all(a["max_level_difference"] <= 1 and a["differing_fraction"] <= 1e-3 for a in agree.values())
    result = {
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "side": args.side,
        "runs": args.runs,
        "embed_cpu_ms": percentiles(timed(on_cpu, placements, sync)),
        "embed_tensor_ms": percentiles(timed(on_device, placements, sync)),
        "tail_ms": {
            "cpu_path": percentiles(timed(tail_cpu, placements, sync)),
            "device_path": percentiles(timed(tail_device, placements, sync)),
        },
        "agree": agree,
        "decoded": decoded_ok,
    }
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
