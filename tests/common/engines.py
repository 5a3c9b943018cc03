"""Engines for tests. `GatedEngine` is a stand-in used only where a test is about zguard's own
admission and timeout logic and needs to hold a generation open deterministically; everything
else runs the real demo pipeline."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

from PIL import Image

from zguard.engine import GenerationCancelled, GenerationJob, ModelInfo


class GatedEngine:
    """Each generate() waits until `release()` (or its stop flag), recording what ran."""

    def __init__(self, model_id: str = "z-image-turbo", demo: bool = True) -> None:
        self.info = ModelInfo(id=model_id, demo=demo, device="cpu", dtype="float32")
        self.started: list[GenerationJob] = []
        self.finished: list[GenerationJob] = []
        self.cancelled: list[GenerationJob] = []
        self.running = threading.Event()
        self._gate = threading.Event()

    def load(self) -> None:
        pass

    def release(self) -> None:
        self._gate.set()

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image.Image]:
        self.started.append(job)
        self.running.set()
        try:
            while not self._gate.wait(0.005):
                if should_stop():
                    self.cancelled.append(job)
                    raise GenerationCancelled
        finally:
            self.running.clear()
        self.finished.append(job)
        return [Image.new("RGB", (job.width, job.height), (job.seed % 256, 0, 0)) for _ in range(job.n)]


def encode_png(images: list[Image.Image], _fmt: str = "png", _quality: int = 0) -> list[bytes]:
    """Each image as PNG bytes: the `encode` callback `ProvenanceMarker.mark` takes, for tests."""
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    return blobs
