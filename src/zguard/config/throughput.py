"""Settings `generation.*` that shape throughput: the post-processing pool and request batching.

Decisions written here (measured in bench/bench_throughput.py, figures in bench/results/):

- `postprocess_workers` unset means one thread per CPU: watermarking, encoding and signing are
  CPU-bound, release the GIL, and must never run on the engine's thread.
- Batching is off by default (`max_batch_images: 1`). Measured on the CPU (demo model, 8 steps,
  `bench/results/throughput-batching-2026-12-04.json`): at 512x512 with 4 and 8 clients it cut
  throughput by 23-40 % and raised the median latency 1.7-2.1x; at 1024x1024 it was even (0.98-1.1x).
  The cores are already busy, so a batch only makes requests wait for each other. On a GPU a
  batch of small images can fill the device's idle width (published figures: up to ~3x at 512x512,
  ~1x at 1024x1024): turn it on per deployment after measuring there with
  `bench/bench_throughput.py --compare-batching N [--batch-wait-ms MS] --device cuda`.
- `batch_wait_ms` is bounded by `MAX_BATCH_WAIT_MS`: holding the engine idle longer than a
  small fraction of one generation to gather a batch costs more than it can win.
"""

from __future__ import annotations

from pydantic import Field

from zguard.config.sections import Section

MAX_BATCH_WAIT_MS = 200.0
MAX_BATCH_IMAGES = 16


class ThroughputSettings(Section):
    """Keys of the `generation` section (it inherits them): how the engine is kept busy."""

    postprocess_workers: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads that watermark, encode and label generated images, apart from the engine's thread and the event loop's. Unset: one per CPU (at most 32).",
    )
    max_batch_images: int = Field(
        1,
        ge=1,
        le=MAX_BATCH_IMAGES,
        description="Most images one engine call may draw for several waiting requests of the same size and steps (each keeps its seed and watermark; one leaving does not stop the others). 1: requests never share a call; the default, because on the CPU it does not pay. Measure on your GPU with `bench/bench_throughput.py --compare-batching N` before raising it.",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=MAX_BATCH_WAIT_MS,
        description="With `max_batch_images` above 1: how long the engine may wait, from the first request's arrival, for more requests to share its call. 0: only requests already waiting share it.",
    )
