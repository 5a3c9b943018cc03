"""Which jobs get their watermark on the engine's device (`provenance.embed_on_device`), and what
`ProvenanceMarker.mark` records and embeds when they do."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.common.engines import encode_png
from zguard.config import ProvenanceSettings
from zguard.provenance.embedder import embed
from zguard.provenance.marking import DeviceMarks, Placement, ProvenanceMarker
from zguard.provenance.watermark import Watermarker

KEY = b"d" * 32


class Unlabelled:
    """A stand-in visible label: what matters is only that one is configured."""

    def draw(self, image: Image.Image) -> Image.Image:
        return image.copy()


def marker(mode: str, *, watermark: bool = True, explicit_label: bool = False) -> ProvenanceMarker:
    section = ProvenanceSettings(
        embed_on_device=mode, watermark=watermark, implicit_label=False, explicit_label=explicit_label
    )
    return ProvenanceMarker(section, Watermarker(KEY), None, Unlabelled() if explicit_label else None)  # type: ignore[arg-type]


def pixels(blob: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"))


def generated(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray(rng.integers(0, 256, (200, 328, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize(
    ("mode", "device", "on_device"),
    [
        ("auto", "cuda", True),
        ("auto", "cpu", False),
        ("always", "cpu", True),
        ("always", "cuda", True),
        ("never", "cuda", False),
        ("never", "cpu", False),
    ],
)
def test_the_setting_decides_where(mode: str, device: str, on_device: bool) -> None:
    marks = marker(mode).device_marks(3, device)
    assert (marks is not None) == on_device
    if marks is not None:
        assert len(marks.placements) == 3
        assert len({p.watermark_id for p in marks.placements}) == 3  # a fresh id per image


def test_auto_is_the_default() -> None:
    assert ProvenanceSettings().embed_on_device == "auto"


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_no_device_marks_without_a_watermark(mode: str) -> None:
    assert marker(mode, watermark=False).device_marks(1, "cuda") is None


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_a_visible_label_keeps_the_mark_on_the_cpu(mode: str) -> None:
    # The label is drawn first and the mark goes over it; on the device it would go under.
    assert marker(mode, explicit_label=True).device_marks(1, "cuda") is None


def test_ids_come_from_the_device_marks_and_unapplied_images_are_marked_here() -> None:
    m = marker("always")
    marks = m.device_marks(2, "cpu")
    assert marks is not None
    images = generated(2)
    marked = m.mark(images, "png", 90, "req-1", encode_png, device_marks=marks)  # the engine applied none

    wm = Watermarker(KEY)
    for image, result, placement in zip(images, marked, marks.placements, strict=True):
        assert result.watermark_id == f"{placement.watermark_id:016x}"
        expected = embed(wm, image, placement.watermark_id, salt=placement.salt, offset=placement.offset)
        assert np.array_equal(pixels(result.blob), np.asarray(expected))


def test_images_the_engine_marked_are_not_marked_twice() -> None:
    m = marker("always")
    placement = Placement(0x1234, salt=6, offset=(9, 70))
    marks = DeviceMarks(Watermarker(KEY), [placement])
    image = generated(1)[0]
    on_device = marks(0, torch.from_numpy(np.array(image)).permute(2, 0, 1))
    assert marks.applied == {0}
    engine_output = Image.fromarray(on_device.permute(1, 2, 0).contiguous().numpy())

    [result] = m.mark([engine_output], "png", 90, "req-2", encode_png, device_marks=marks)

    assert result.watermark_id == "0000000000001234"
    expected = embed(Watermarker(KEY), image, 0x1234, salt=6, offset=(9, 70))
    assert np.array_equal(pixels(result.blob), np.asarray(expected))
    assert np.array_equal(np.asarray(engine_output), np.asarray(expected))


def test_more_images_than_the_job_had_fail() -> None:
    m = marker("always")
    marks = m.device_marks(1, "cpu")
    assert marks is not None
    with pytest.raises(IndexError):
        m.mark(generated(2), "png", 90, "req-3", encode_png, device_marks=marks)


def test_placements_are_drawn_in_range() -> None:
    for _ in range(200):
        p = Placement.draw()
        assert 0 <= p.watermark_id < 1 << 64
        assert 0 <= p.salt < 16
        assert all(0 <= o < 128 for o in p.offset)
