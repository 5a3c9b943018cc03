"""What a trace decodes: PNG, JPEG and WebP only, never more pixels than its budget, stopping on
request (issue 14: decompression bombs and external decoders)."""

from __future__ import annotations

import io
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.common.hostile_images import (
    REFUSED_FORMATS,
    EmptyEvents,
    png_declaring,
    refuse_external_programs,
    refused_upload,
    saved,
    tiny_file_bomb,
    truncated_bomb,
)
from tests.unit.provenance.test_watermark import KEY, WATERMARK_ID, picture
from zguard.provenance.embedder import embed
from zguard.provenance.trace import (
    ImageTooLarge,
    NotAnImage,
    TraceStopped,
    image_format,
    open_image,
    trace,
)
from zguard.provenance.watermark import DECODE_BYTES_PER_PIXEL, DecodeStopped, Watermarker

CAP = 2048 * 2048  # provenance.trace_max_pixels' default


@pytest.fixture
def no_external_programs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return refuse_external_programs(monkeypatch)


@pytest.fixture
def pillow_opens(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """The `formats` of every Image.open call."""
    calls: list[list[str] | None] = []
    real = Image.open

    def spy(fp: Any, mode: Any = "r", formats: Any = None) -> Any:
        calls.append(None if formats is None else list(formats))
        return real(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    return calls


@pytest.mark.parametrize(("fmt", "name"), [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP")])
def test_the_three_formats_are_named_by_their_bytes(fmt: str, name: str) -> None:
    assert image_format(saved(picture(64), fmt)) == name
    assert open_image(saved(picture(64), fmt), max_pixels=CAP).size == (64, 64)


@pytest.mark.parametrize("fmt", REFUSED_FORMATS)
def test_other_formats_are_refused_before_pillow_sees_them(
    fmt: str, no_external_programs: list[str], pillow_opens: list[list[str] | None]
) -> None:
    blob = refused_upload(fmt)
    assert Image.open(io.BytesIO(blob)).format is not None  # Pillow itself would read it
    pillow_opens.clear()
    assert image_format(blob) is None
    with pytest.raises(NotAnImage, match="not a PNG, JPEG or WebP"):
        open_image(blob, max_pixels=CAP)
    with pytest.raises(NotAnImage):
        trace(blob, Watermarker(KEY), EmptyEvents(), max_pixels=CAP)
    assert pillow_opens == []
    assert no_external_programs == []


def test_postscript_behind_a_png_signature_reaches_the_png_plugin_only(
    no_external_programs: list[str], pillow_opens: list[list[str] | None]
) -> None:
    blob = b"\x89PNG\r\n\x1a\n" + refused_upload("EPS")
    with pytest.raises(NotAnImage):
        open_image(blob, max_pixels=CAP)
    assert pillow_opens == [["PNG"]]
    assert no_external_programs == []


def test_a_truncated_8000_square_png_is_refused_before_decoding() -> None:
    blob = truncated_bomb()
    assert len(blob) < 4096
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as refused:
            trace(blob, Watermarker(KEY), EmptyEvents(), max_pixels=CAP)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.size == (8000, 8000)
    assert refused.value.max_pixels == CAP
    assert elapsed < 1.0
    assert peak < 1024 * 1024  # nothing decoded (the pixels would be 256 MB)


def test_a_declared_size_far_over_pillows_own_limit_is_too_large() -> None:
    with pytest.raises(ImageTooLarge):
        open_image(png_declaring(20_000, 20_000, 1), max_pixels=CAP)


def test_a_tiny_file_over_the_budget_is_refused_and_within_it_is_bounded() -> None:
    bomb = tiny_file_bomb(2048)
    assert len(bomb) < 8192
    with pytest.raises(ImageTooLarge):
        open_image(bomb, max_pixels=1024 * 1024)
    tracemalloc.start()
    try:
        result = trace(bomb, Watermarker(KEY), EmptyEvents(), max_pixels=CAP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.mark is None
    assert result.image_size == (2048, 2048)
    assert peak <= DECODE_BYTES_PER_PIXEL * CAP  # today's decoder read it "as if halved": 4096², 3x this


def test_the_decoder_never_resamples_past_its_budget() -> None:
    """A 1024² image read "as if halved" is whitened at 2048²: within a 2048² budget, not a 1024² one."""
    image = Image.new("RGB", (1024, 1024), (128, 128, 128))
    peaks = []
    for budget in (1024 * 1024, 2048 * 2048):
        tracemalloc.start()
        try:
            Watermarker(KEY).detect(image, max_pixels=budget)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert peaks[0] <= DECODE_BYTES_PER_PIXEL * 1024 * 1024
    assert peaks[0] < peaks[1] <= DECODE_BYTES_PER_PIXEL * 2048 * 2048


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_truncated_file_fails_fast(fmt: str) -> None:
    blob = saved(picture(512), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    with pytest.raises(NotAnImage):
        open_image(blob[: len(blob) // 3], max_pixels=CAP)


def test_a_jpeg_up_to_four_times_over_is_read_at_half_size() -> None:
    """An image upscaled 2x: read at half size. (The decoder's own scale search often finds it at
    full size too, but a 256² image upscaled has only 4 tiles to measure its scale on.)"""
    wm = Watermarker(KEY)
    marked = embed(wm, picture(256, seed=4), WATERMARK_ID)
    upscaled = saved(marked.resize((512, 512), Image.Resampling.BICUBIC), "JPEG", quality=90)
    assert open_image(upscaled, max_pixels=256 * 256).size == (256, 256)
    result = trace(upscaled, wm, EmptyEvents(), max_pixels=256 * 256)
    assert result.mark is not None
    assert result.mark.watermark_id == WATERMARK_ID
    assert result.mark.scale[0] == pytest.approx(2.0, abs=0.01)
    assert result.image_size == (512, 512)
    assert any("1/2" in note for note in result.notes)
    with pytest.raises(ImageTooLarge):
        open_image(saved(Image.new("RGB", (513, 512)), "JPEG"), max_pixels=256 * 256 // 4)
    with pytest.raises(ImageTooLarge):  # PNG and WebP have no such shortcut
        open_image(saved(Image.new("RGB", (512, 512)), "PNG"), max_pixels=256 * 256)


def test_a_trace_stops_when_asked() -> None:
    blob = saved(picture(256), "PNG")
    with pytest.raises(TraceStopped):
        trace(blob, Watermarker(KEY), EmptyEvents(), max_pixels=CAP, should_stop=lambda: True)
    assert TraceStopped is DecodeStopped


def test_the_decoder_asks_between_its_steps() -> None:
    asked = []

    def should_stop() -> bool:
        asked.append(time.perf_counter())
        return len(asked) > 3

    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    with pytest.raises(DecodeStopped):
        Watermarker(KEY).detect(Image.fromarray(noise, "RGB"), should_stop=should_stop)
    assert len(asked) == 4
