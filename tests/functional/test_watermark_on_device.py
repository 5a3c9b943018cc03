"""The watermark added by the engine on its device (`provenance.embed_on_device`), forced on the
CPU demo pipeline: the same pixels as the CPU path, and the id the audit event records is the one
the image carries."""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.common.factories import build_test_runtime, make_settings, post_generation
from zguard.audit.memory import MemoryAuditSink
from zguard.engine import GenerationJob
from zguard.engine.pipeline import DiffusersEngine
from zguard.provenance.embedder import embed
from zguard.provenance.marking import DeviceMarks, Placement, ProvenanceMarker
from zguard.provenance.watermark import Watermarker
from zguard.services.readiness import ModelState

pytestmark = pytest.mark.anyio
KEY = b"g" * 32


def job(n: int = 1, width: int = 208, height: int = 336) -> GenerationJob:
    return GenerationJob(
        prompt="a lighthouse at dawn", negative_prompt=None, width=width, height=height, steps=2, seed=7, n=n
    )


def test_engine_marks_on_the_device_as_the_cpu_path_does(demo_engine: DiffusersEngine) -> None:
    wm = Watermarker(KEY)
    placements = [Placement(0x0BAD_CAFE_0000_0001, 4, (100, 3)), Placement(0x0BAD_CAFE_0000_0002, 13, (0, 127))]
    marks = DeviceMarks(wm, placements)

    plain = demo_engine.generate(job(n=2), lambda: False)
    on_device = demo_engine.generate(dataclasses.replace(job(n=2), device_mark=marks), lambda: False)

    assert marks.applied == {0, 1}
    for image, marked, p in zip(plain, on_device, placements, strict=True):
        assert marked.mode == "RGB"
        assert marked.size == image.size == (208, 336)
        expected = embed(wm, image, p.watermark_id, salt=p.salt, offset=p.offset)
        assert np.array_equal(np.asarray(marked), np.asarray(expected))
        assert not np.array_equal(np.asarray(marked), np.asarray(image))


def test_engine_without_a_mark_returns_the_pil_path(demo_engine: DiffusersEngine) -> None:
    # The `pt` output quantised by the engine, with a mark that changes nothing, is the `pil` output.
    calls: list[int] = []

    def identity(index: int, pixels: object) -> object:
        calls.append(index)
        return pixels

    plain = demo_engine.generate(job(), lambda: False)
    through = demo_engine.generate(dataclasses.replace(job(), device_mark=identity), lambda: False)
    assert calls == [0]
    assert np.array_equal(np.asarray(through[0]), np.asarray(plain[0]))


@pytest.mark.parametrize("mode", ["always", "never"])
async def test_the_recorded_id_is_the_one_the_image_carries(
    tmp_path: Path, demo_engine: DiffusersEngine, mode: str
) -> None:
    settings = make_settings(tmp_path / "state", generation={"min_side": 16}, provenance={"embed_on_device": mode})
    marker = ProvenanceMarker.ephemeral(settings.provenance)
    audit = MemoryAuditSink()
    runtime = build_test_runtime(settings, demo_engine, audit=audit, provenance=marker)
    runtime.services.readiness.set(ModelState.READY)
    # Where the mark went on: spy on the marker's hand-off to the engine.
    handed: list[DeviceMarks | None] = []
    device_marks = marker.device_marks

    def spy(n: int, device: str) -> DeviceMarks | None:
        handed.append(device_marks(n, device))
        return handed[-1]

    marker.device_marks = spy  # type: ignore[method-assign]
    # 512²: at 256² the unattacked mark read back from these noise images in only ~97% of
    # (key, id) draws; at 512² in 400 of 400.
    request = {"prompt": "a harbour at dusk", "size": "512x512", "num_inference_steps": 2, "seed": 3, "n": 2}
    resp = await post_generation(settings, runtime, request)
    assert resp.status_code == 200, resp.text

    [marks] = handed
    if mode == "always":
        assert marks is not None
        assert marks.applied == {0, 1}  # marked by the engine, not by the fallback
    else:
        assert marks is None
    completed = next(e for e in audit.events if e.type == "generation.completed")
    recorded = [image["watermark_id"] for image in completed.images]
    assert len(set(recorded)) == 2
    assert marker.reader is not None
    for item, watermark_id in zip(resp.json()["data"], recorded, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as image:
            found = marker.reader.detect(image)
        assert found is not None
        assert found.hex_id == watermark_id
