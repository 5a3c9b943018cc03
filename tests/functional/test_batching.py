"""Requests of one shape that wait together share one pipeline call (`generation.max_batch_images`)
and still get their own seeds, images and watermarks; one leaving does not touch the others; a
batched image matches the same request drawn alone to within one level on a few pixels."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image

from tests.common.factories import api_client, build_test_runtime, make_settings
from tests.common.polling import wait_until, wait_until_async
from zguard.audit.memory import MemoryAuditSink
from zguard.config import Settings
from zguard.engine import GenerationJob, ModelInfo
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.marking import ProvenanceMarker
from zguard.serve.wiring import Runtime
from zguard.services.images import ImageRequest
from zguard.services.readiness import ModelState

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

pytestmark = pytest.mark.anyio
GENERATIONS = "/v1/images/generations"
SIZE = 256  # the watermark reads back at this size; the demo pipeline draws it in ~0.1 s


class RecordingEngine:
    """The demo engine, recording its calls; `hold` (when set) keeps a batched call from starting."""

    def __init__(self, inner: DiffusersEngine) -> None:
        self.inner = inner
        self.calls: list[tuple[str, list[int]]] = []  # ("alone" | "batch", the seeds of its jobs)
        self.batch_started = threading.Event()
        self.hold: threading.Event | None = None
        self.stop_seen: list[bool] = []

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def load(self) -> None:
        self.inner.load()

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[PILImage]:
        self.calls.append(("alone", [job.seed]))
        return self.inner.generate(job, should_stop)

    def generate_batch(self, jobs: Sequence[GenerationJob], should_stop: Callable[[], bool]) -> list[list[PILImage]]:
        self.calls.append(("batch", [job.seed for job in jobs]))
        self.batch_started.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        self.stop_seen.append(should_stop())
        return self.inner.generate_batch(jobs, should_stop)


@pytest.fixture
def engine(demo_engine: DiffusersEngine) -> RecordingEngine:
    return RecordingEngine(demo_engine)


@pytest.fixture(params=["never", "always"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Marked on the CPU after the batch, or by the engine on its device inside it."""
    return make_settings(
        tmp_path / "state",
        generation={"min_side": 16, "max_batch_images": 4},
        rate_limits={"max_concurrent_per_principal": 8},
        provenance={"embed_on_device": request.param},
    )


@pytest.fixture
def runtime(settings: Settings, engine: RecordingEngine) -> Iterator[Runtime]:
    rt = build_test_runtime(settings, engine, provenance=ProvenanceMarker.ephemeral(settings.provenance))
    rt.services.readiness.set(ModelState.READY)
    yield rt
    rt.worker.stop(timeout=30)


async def hold_engine(runtime: Runtime) -> threading.Event:
    """Keep the engine's thread busy (as a running generation does) until the event is set."""
    gate, busy = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        gate.wait(30)

    runtime.worker.submit(block)
    await wait_until_async(busy.is_set, timeout=10, interval=0.005, what="the engine thread to be held")
    return gate


def _pixels(b64: str) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


async def test_waiting_requests_share_one_call_with_their_own_seeds_images_and_watermarks(
    settings: Settings, runtime: Runtime, engine: RecordingEngine
) -> None:
    bodies = [
        {"prompt": "a red boat", "size": f"{SIZE}x{SIZE}", "num_inference_steps": 2, "seed": 11},
        {"prompt": "a green field", "size": f"{SIZE}x{SIZE}", "num_inference_steps": 2, "seed": 22, "n": 2},
        {"prompt": "a blue door", "size": f"{SIZE}x{SIZE}", "num_inference_steps": 2, "seed": 33},
    ]
    async with api_client(settings, runtime) as api:
        gate = await hold_engine(runtime)
        tasks = [asyncio.create_task(api.post(GENERATIONS, json=body)) for body in bodies]
        await wait_until_async(
            lambda: runtime.admission.waiting == 3, timeout=10, interval=0.005, what="three requests waiting"
        )
        gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text[:200] for r in responses]
    assert [(kind, sorted(seeds)) for kind, seeds in engine.calls] == [("batch", [11, 22, 33])]  # one call, 4 images
    assert [r.json()["zguard"]["seed"] for r in responses] == [11, 22, 33]
    images = [[_pixels(d["b64_json"]) for d in r.json()["data"]] for r in responses]
    assert [len(i) for i in images] == [1, 2, 1]
    flat = [image for group in images for image in group]
    assert all(not np.array_equal(a, b) for k, a in enumerate(flat) for b in flat[k + 1 :])  # own noise each

    audit = runtime.services.audit
    assert isinstance(audit, MemoryAuditSink)
    completed = {e.request_id: e for e in audit.events if e.type == "generation.completed"}
    ids = []
    for response, group in zip(responses, images, strict=True):
        event = completed[response.headers["x-request-id"]]
        recorded = [image["watermark_id"] for image in event.images]
        assert len(recorded) == len(group)
        ids += recorded
        reader = runtime.services.images.provenance.reader  # type: ignore[union-attr]
        for image, watermark_id in zip(group, recorded, strict=True):
            found = reader.detect(Image.fromarray(image.astype(np.uint8)))
            assert found is not None
            assert found.hex_id == watermark_id  # each image carries its own request's mark
    assert len(set(ids)) == 4


async def test_a_request_leaving_a_running_batch_does_not_fail_the_others(
    runtime: Runtime, engine: RecordingEngine
) -> None:
    images = runtime.services.images
    plans = [
        images.plan(ImageRequest(prompt=f"prompt {seed}", size="64x64", num_inference_steps=2, seed=seed))
        for seed in (1, 2, 3)
    ]
    engine.hold = threading.Event()
    gate = await hold_engine(runtime)
    tasks = [asyncio.create_task(images.generate(plan, f"request-{k}")) for k, plan in enumerate(plans)]
    await wait_until_async(lambda: runtime.admission.waiting == 3, timeout=10, interval=0.005, what="three waiting")
    gate.set()
    await wait_until_async(engine.batch_started.is_set, timeout=10, interval=0.005, what="the batch to start")
    tasks[1].cancel()  # its client went away (or its timeout struck) mid-batch
    await asyncio.sleep(0.02)
    engine.hold.set()
    first, third = await tasks[0], await tasks[2]
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert [(kind, sorted(seeds)) for kind, seeds in engine.calls] == [("batch", [1, 2, 3])]
    assert engine.stop_seen == [False]  # two of three still wanted their images: it was not stopped
    assert (first.seed, third.seed) == (1, 3)
    assert len(first.blobs) == len(third.blobs) == 1
    wait_until(lambda: runtime.admission.running == 0, timeout=10, interval=0.005, what="the engine to be free")


def test_a_batched_image_matches_the_same_job_drawn_alone(demo_engine: DiffusersEngine) -> None:
    """Measured: at most one level apart, on well under 0.1 % of the pixels (the batched
    transformer pads captions of different lengths; its float sums round differently)."""
    jobs = [
        GenerationJob(prompt=prompt, negative_prompt=None, width=128, height=128, steps=2, seed=seed, n=n)
        for prompt, seed, n in [("a cat", 5, 1), ("a much longer prompt about a dog in a park", 9, 2)]
    ]
    alone = [demo_engine.generate(job, lambda: False) for job in jobs]
    batched = demo_engine.generate_batch(jobs, lambda: False)
    assert [len(group) for group in batched] == [1, 2]
    for group_alone, group_batched in zip(alone, batched, strict=True):
        for a, b in zip(group_alone, group_batched, strict=True):
            diff = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
            assert diff.max() <= 1
            assert (diff > 0).mean() < 0.001
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(batched[1], demo_engine.generate_batch(jobs, lambda: False)[1], strict=True)
    )  # and a batch is as repeatable as a single job
