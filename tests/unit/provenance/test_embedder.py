"""`embed_tensor` (the watermark on a torch tensor) gives `Watermarker.embed`'s pixels, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from zguard.provenance.embedder import embed, embed_tensor
from zguard.provenance.watermark import MAX_DELTA, TILE, Watermarker

KEY = b"t" * 32
WATERMARK_ID = 0xFEDC_BA98_7654_3210


@pytest.fixture(scope="module")
def watermarker() -> Watermarker:
    return Watermarker(KEY)


def noise(h: int, w: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def on_cpu(
    watermarker: Watermarker, rgb: npt.NDArray[np.uint8], salt: int, offset: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    return np.asarray(embed(watermarker, Image.fromarray(rgb), WATERMARK_ID, salt=salt, offset=offset))


@pytest.mark.parametrize(
    ("h", "w", "salt", "offset"),
    [
        (128, 128, 0, (0, 0)),
        (200, 328, 5, (17, 101)),  # not a multiple of the tile either way
        (256, 256, 15, (127, 127)),
        (64, 333, 9, (64, 3)),  # smaller than the tile in height
        (1024, 1024, 3, (90, 37)),
        (513, 129, 7, (255, 300)),  # offsets past the tile wrap as np.roll wraps them
    ],
)
def test_equals_embed_in_both_layouts(
    watermarker: Watermarker, h: int, w: int, salt: int, offset: tuple[int, int]
) -> None:
    rgb = noise(h, w, seed=h * w)
    expected = on_cpu(watermarker, rgb, salt, offset)

    last = embed_tensor(watermarker, torch.from_numpy(rgb), WATERMARK_ID, salt=salt, offset=offset)
    first = embed_tensor(
        watermarker, torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), WATERMARK_ID, salt=salt, offset=offset
    )

    assert last.shape == (h, w, 3)
    assert first.shape == (3, h, w)
    assert last.dtype == first.dtype == torch.uint8
    assert np.array_equal(last.numpy(), expected)
    assert np.array_equal(first.permute(1, 2, 0).numpy(), expected)
    assert not np.array_equal(expected, rgb)  # the mark is there at all


def test_accepts_a_non_contiguous_view(watermarker: Watermarker) -> None:
    rgb = noise(200, 328, seed=4)
    view = torch.from_numpy(rgb).permute(2, 0, 1)  # channels first, strided as (H, W, 3)
    marked = embed_tensor(watermarker, view, WATERMARK_ID, salt=2, offset=(5, 6))
    assert np.array_equal(marked.permute(1, 2, 0).numpy(), on_cpu(watermarker, rgb, 2, (5, 6)))


@pytest.mark.parametrize("level", [0, 1, 254, 255])
def test_clips_like_embed(watermarker: Watermarker, level: int) -> None:
    rgb = np.full((TILE + 40, TILE + 8, 3), level, dtype=np.uint8)
    expected = on_cpu(watermarker, rgb, 11, (3, 4))
    marked = embed_tensor(watermarker, torch.from_numpy(rgb), WATERMARK_ID, salt=11, offset=(3, 4)).numpy()
    assert np.array_equal(marked, expected)
    # Clipped, not wrapped: no change beyond MAX_DELTA (a wrap at 0 or 255 would be ~250), and
    # the side that runs out of range is held at its end.
    change = marked.astype(np.int16) - level
    assert np.abs(change).max() <= MAX_DELTA
    assert (marked.min() == 0) if level < 128 else (marked.max() == 255)


def test_leaves_the_input_alone_and_keeps_the_device(watermarker: Watermarker) -> None:
    pixels = torch.from_numpy(noise(130, 140))
    before = pixels.clone()
    marked = embed_tensor(watermarker, pixels, WATERMARK_ID, salt=1, offset=(0, 0))
    assert torch.equal(pixels, before)
    assert marked.device == pixels.device


def test_random_placement_reads_back(watermarker: Watermarker) -> None:
    y, x = np.mgrid[0:256, 0:256]
    shade = (64 + (x + y) / 4).astype(np.uint8)  # smooth: the mark is the only texture
    rgb = np.stack([shade, shade, shade], axis=-1)
    marked = embed_tensor(watermarker, torch.from_numpy(rgb), WATERMARK_ID)
    found = watermarker.detect(Image.fromarray(marked.numpy()))
    assert found is not None
    assert found.watermark_id == WATERMARK_ID


@pytest.mark.parametrize(
    ("pixels", "error"),
    [
        (torch.zeros((3, 64, 64), dtype=torch.float32), TypeError),
        (np.zeros((64, 64, 3), dtype=np.uint8), TypeError),
        (torch.zeros((4, 64, 64), dtype=torch.uint8), ValueError),
        (torch.zeros((64, 64), dtype=torch.uint8), ValueError),
        (torch.zeros((1, 3, 64, 64), dtype=torch.uint8), ValueError),
    ],
)
def test_refuses_what_is_not_one_uint8_rgb_image(watermarker: Watermarker, pixels: object, error: type) -> None:
    with pytest.raises(error):
        embed_tensor(watermarker, pixels, WATERMARK_ID, salt=0, offset=(0, 0))


@pytest.mark.parametrize("watermark_id", [-1, 1 << 64])
def test_refuses_an_id_past_64_bits(watermarker: Watermarker, watermark_id: int) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        embed_tensor(watermarker, torch.zeros((3, 64, 64), dtype=torch.uint8), watermark_id)


def test_the_watermark_module_does_not_import_torch() -> None:
    code = "import sys, zguard.provenance.watermark, zguard.provenance.marking; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
