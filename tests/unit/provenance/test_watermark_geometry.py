"""Issue 17: the mark is found after the way people re-share images — screenshots at a larger
size, thumbnails, flips and quarter turns, small rotations, uneven stretch — on a 512² synthetic
picture (the photograph tables at 1024² and 512² are bench/bench_watermark.py's)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from tests.unit.provenance.test_watermark import picture
from zguard.provenance import watermark
from zguard.provenance.embedder import embed
from zguard.provenance.watermark import _PERIOD_SLACK, _SCALE_STEP, MAC_BITS, MAX_CANDIDATES, Watermarker, _scale_steps

KEY = b"g" * 32
WATERMARK_ID = 0x7E57_1D5E_A5ED_0017
T = Image.Transpose


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def scaled(image: Image.Image, fx: float, fy: float | None = None) -> Image.Image:
    fy = fx if fy is None else fy
    return image.resize((round(image.width * fx), round(image.height * fy)), Image.Resampling.LANCZOS)


FAMILIES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "upscale 1.25": lambda im: scaled(im, 1.25),
    "upscale 2": lambda im: scaled(im, 2.0),
    "upscale 2.5": lambda im: scaled(im, 2.5),
    "phone screenshot 1179/1024 + JPEG 80": lambda im: jpeg(scaled(im, 1179 / 1024), 80),
    "downscale 0.35": lambda im: scaled(im, 0.35),
    "downscale 0.25 of 1024": lambda im: scaled(scaled(im, 2.0), 0.25),
    "horizontal flip": lambda im: im.transpose(T.FLIP_LEFT_RIGHT),
    "vertical flip": lambda im: im.transpose(T.FLIP_TOP_BOTTOM),
    "rotate 90": lambda im: im.transpose(T.ROTATE_90),
    "rotate 180": lambda im: im.transpose(T.ROTATE_180),
    "rotate 270": lambda im: im.transpose(T.ROTATE_270),
    "transpose": lambda im: im.transpose(T.TRANSPOSE),
    "rotate 1°": lambda im: im.rotate(1, Image.Resampling.BICUBIC),
    "rotate -2°": lambda im: im.rotate(-2, Image.Resampling.BICUBIC),
    "rotate 5° + JPEG 80": lambda im: jpeg(im.rotate(5, Image.Resampling.BICUBIC), 80),
    "stretch y 0.75": lambda im: scaled(im, 1.0, 0.75),
    "stretch x 0.75": lambda im: scaled(im, 0.75, 1.0),
    "crop half the area, zoom back": lambda im: im.crop((40, 100, 402, 462)).resize(
        (512, 512), Image.Resampling.LANCZOS
    ),
    "re-shared twice (0.7x + JPEG 75)": lambda im: jpeg(scaled(jpeg(scaled(im, 0.7), 75), 0.7), 75),
    "flip, then upscale 1.5": lambda im: scaled(im.transpose(T.FLIP_LEFT_RIGHT), 1.5),
}


@pytest.fixture(scope="module")
def marked() -> Image.Image:
    return embed(Watermarker(KEY), picture(512, seed=5), WATERMARK_ID, salt=9, offset=(21, 70))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_mark_survives(marked: Image.Image, family: str) -> None:
    found = Watermarker(KEY).detect(FAMILIES[family](marked))
    assert found is not None
    assert found.watermark_id == WATERMARK_ID


def test_the_scale_of_each_axis_is_reported(marked: Image.Image) -> None:
    found = Watermarker(KEY).detect(scaled(marked, 1.2, 0.8))
    assert found is not None
    assert found.scale == pytest.approx((0.8, 1.2), abs=0.003)  # (rows, columns)


def test_a_marked_image_decodes_within_a_second(marked: Image.Image) -> None:
    wm = Watermarker(KEY)
    wm.detect(marked)  # the keyed patterns are derived once per key
    for family in ("upscale 2", "rotate 5° + JPEG 80", "stretch x 0.75"):
        attacked = FAMILIES[family](marked)
        start = time.perf_counter()
        assert wm.detect(attacked) is not None
        assert time.perf_counter() - start < 1.0, family


class CountingWatermarker(Watermarker):
    """Counts MAC checks: the false-trace bound is one 2^-48 per check."""

    checks = 0

    def mac(self, salt: int, watermark_id: int) -> int:
        self.checks += 1
        return super().mac(salt, watermark_id)


@pytest.mark.parametrize("family", ["upscale 2", "rotate 5° + JPEG 80", "horizontal flip", "downscale 0.35"])
def test_unmarked_and_foreign_images_read_nothing_within_the_candidate_cap(family: str) -> None:
    """The wider search tries more geometries and symmetries; the MAC still decides, and the
    checks per decode stay within MAX_CANDIDATES, so P(false trace) ≤ 1024 · 2^-48 per decode."""
    foreign = embed(Watermarker(b"f" * 32), picture(512, seed=6), WATERMARK_ID)
    noise = Image.fromarray(np.random.default_rng(7).integers(0, 256, (512, 512, 3), dtype=np.uint8), "RGB")
    for image in (picture(512, seed=8), foreign, noise):
        wm = CountingWatermarker(KEY)
        assert wm.detect(FAMILIES[family](image)) is None
        assert 0 < wm.checks <= MAX_CANDIDATES
    assert MAX_CANDIDATES * 2.0**-MAC_BITS < 1e-9


def test_short_periods_get_a_wider_scale_search() -> None:
    """A faint lattice's period is good to ~0.3 px: 0.7 % of a 0.35× shrink's 45-px tile, which the
    three scales around it (±0.15 %) miss; the steps reach `_PERIOD_SLACK` pixels either way."""
    assert _scale_steps(128.0) == [0, -1, 1]
    for period in (32.0, 45.0, 64.0, 90.0):
        steps = _scale_steps(period)
        assert steps[:3] == [0, -1, 1]
        assert max(steps) * _SCALE_STEP * period >= _PERIOD_SLACK - _SCALE_STEP * period
        assert steps == sorted(steps, key=abs)
    assert len(_scale_steps(32.0)) == 9  # 0.25×: the most, and what the candidate cap counts


def test_a_shrunk_image_is_read_when_its_period_is_0_4_pixel_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """1024² shrunk to 0.35× (8 tiles across): 0.4 px is 0.9 % of the 45-px period, which the three
    scales nearest the estimate miss on this picture; the wider steps reach it."""
    marked = embed(Watermarker(KEY), picture(1024, seed=5), WATERMARK_ID, salt=9, offset=(21, 70))
    small = scaled(marked, 0.35)
    true_period = 128 * small.width / marked.width
    monkeypatch.setattr(watermark, "lattice_bases", lambda auto, count: [])  # only the faint-lattice path
    monkeypatch.setattr(watermark, "isotropic_periods", lambda *args, **kwargs: [true_period + 0.4])
    found = Watermarker(KEY).detect(small)
    assert found is not None
    assert found.watermark_id == WATERMARK_ID
