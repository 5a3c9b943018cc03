"""The watermark round trip and its attacks on small synthetic pictures (the 50-image robustness
table is bench/bench_watermark.py's)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from zguard.provenance.embedder import embed
from zguard.provenance.watermark import (
    MAC_BITS,
    MAX_CANDIDATES,
    MAX_DELTA,
    Watermarker,
    conv_encode,
    list_viterbi,
    viterbi,
)

KEY = b"w" * 32
WATERMARK_ID = 0x0123_4567_89AB_CDEF


def picture(side: int = 256, seed: int = 1) -> Image.Image:
    """Smooth shading, a few edges and some texture: a stand-in for a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = 120 + 60 * np.sin(3 * x + 2 * y) + 40 * (x > 0.6) - 30 * ((x - 0.3) ** 2 + (y - 0.4) ** 2 < 0.03)
    texture = rng.normal(0, 6, (side, side))
    rgb = np.stack([base + texture, base * 0.8 + texture, base * 0.6 + 30 + texture], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def reencode(image: Image.Image, fmt: str, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def marked() -> Image.Image:
    return embed(Watermarker(KEY), picture(), WATERMARK_ID, salt=3, offset=(37, 90))


def test_the_code_corrects_errors() -> None:
    bits = np.random.default_rng(0).integers(0, 2, 128).astype(np.uint8)
    soft = 1.0 - 2.0 * conv_encode(bits)
    soft[::9] *= -1  # one coded bit in nine flipped
    assert np.array_equal(viterbi(soft), bits)


def test_the_list_decoder_keeps_the_right_path_when_the_best_one_is_wrong() -> None:
    rng = np.random.default_rng(5)
    rescued = 0
    for _ in range(40):
        bits = rng.integers(0, 2, 128).astype(np.uint8)
        soft = 1.0 - 2.0 * conv_encode(bits) + rng.normal(0, 1.1, 268)
        paths = list_viterbi(soft, 16)
        assert np.array_equal(paths[0], viterbi(soft))  # the best path is plain Viterbi's
        assert len({p.tobytes() for p in paths}) == 16  # and the others are distinct
        best_is_wrong = not np.array_equal(paths[0], bits)
        rescued += best_is_wrong and any(np.array_equal(p, bits) for p in paths[1:])
    assert rescued >= 3  # noise at which Viterbi alone fails often; the list finds several


def test_a_salt_outside_the_keyed_patterns_is_refused() -> None:
    with pytest.raises(ValueError, match="salt"):
        embed(Watermarker(KEY), picture(64), WATERMARK_ID, salt=16)
    with pytest.raises(ValueError, match="64 bits"):
        embed(Watermarker(KEY), picture(64), 1 << 64)


def test_round_trip_at_psnr_above_42_db(marked: Image.Image) -> None:
    found = Watermarker(KEY).detect(marked)
    assert found is not None
    assert (found.watermark_id, found.salt) == (WATERMARK_ID, 3)
    assert found.hex_id == "0123456789abcdef"
    error = np.asarray(marked, np.float64) - np.asarray(picture(), np.float64)
    assert np.abs(error).max() <= MAX_DELTA
    assert 10 * np.log10(255**2 / (error**2).mean()) >= 42


def test_survives_jpeg_75(marked: Image.Image) -> None:
    found = Watermarker(KEY).detect(reencode(marked, "JPEG", 75))
    assert found is not None
    assert found.watermark_id == WATERMARK_ID


def test_survives_halving_then_jpeg() -> None:
    big = embed(Watermarker(KEY), picture(512, seed=2), WATERMARK_ID)
    half = reencode(big.resize((256, 256), Image.Resampling.LANCZOS), "JPEG", 75)
    found = Watermarker(KEY).detect(half)
    assert found is not None
    assert found.watermark_id == WATERMARK_ID


def test_survives_a_rescale_the_decoder_must_measure() -> None:
    big = embed(Watermarker(KEY), picture(512, seed=3), WATERMARK_ID)
    found = Watermarker(KEY).detect(big.resize((371, 371), Image.Resampling.BICUBIC))  # 72.5%
    assert found is not None
    assert found.watermark_id == WATERMARK_ID
    assert found.scale[0] == pytest.approx(371 / 512, abs=0.003)


def test_survives_an_odd_crop(marked: Image.Image) -> None:
    found = Watermarker(KEY).detect(marked.crop((27, 13, 229, 240)))
    assert found is not None
    assert found.watermark_id == WATERMARK_ID


def test_another_key_reads_nothing(marked: Image.Image) -> None:
    assert Watermarker(b"x" * 32).detect(marked) is None


@pytest.mark.parametrize("seed", range(4))
def test_unmarked_images_read_nothing(seed: int) -> None:
    assert Watermarker(KEY).detect(picture(seed=seed)) is None


def test_tiny_images_read_nothing() -> None:
    assert Watermarker(KEY).detect(picture(32)) is None


def test_marks_of_the_same_id_differ_per_image() -> None:
    """Salt and offset are drawn per image: two marks of one id are not the same pattern."""
    wm = Watermarker(KEY)
    flat = Image.new("RGB", (256, 256), (128, 128, 128))
    a = np.asarray(embed(wm, flat, WATERMARK_ID), np.float64) - 128
    b = np.asarray(embed(wm, flat, WATERMARK_ID), np.float64) - 128
    correlation = (a * b).mean() / (a * a).mean()
    assert abs(correlation) < 0.1


def test_false_trace_bound_is_below_one_in_a_billion() -> None:
    assert MAX_CANDIDATES * 2.0**-MAC_BITS < 1e-9


def test_refuses_short_keys_and_wide_ids() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Watermarker(b"short")
    with pytest.raises(ValueError, match="64 bits"):
        embed(Watermarker(KEY), picture(64), 1 << 64)
