"""The embedder's and the code's fast paths against the plain versions they replaced: the same
values exactly (a mark must not move by a rounding when the arithmetic is reorganised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zguard.provenance.embedder import _box_mean, _fold, _tiled, _times_tiled
from zguard.provenance.watermark import _G, _K, TILE, _bits, conv_encode


def conv_encode_by_register(bits: np.ndarray) -> np.ndarray:
    """The code as first written: one shift-register step per input bit."""
    padded = np.concatenate([bits.astype(np.int64), np.zeros(_K - 1, dtype=np.int64)])
    state = 0
    out = np.empty(2 * len(padded), dtype=np.uint8)
    for i, bit in enumerate(padded):
        reg = (int(bit) << (_K - 1)) | state
        out[2 * i] = bin(reg & _G[0]).count("1") & 1
        out[2 * i + 1] = bin(reg & _G[1]).count("1") & 1
        state = reg >> 1
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=200))
def test_conv_encode_is_the_shift_register(bits: list[int]) -> None:
    array = np.array(bits, dtype=np.uint8)
    assert np.array_equal(conv_encode(array), conv_encode_by_register(array))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**70), st.sampled_from([1, 7, 8, 48, 64]))
def test_bits_are_the_low_bits_most_significant_first(value: int, count: int) -> None:
    expected = [(value >> (count - 1 - i)) & 1 for i in range(count)]
    assert _bits(value, count).tolist() == expected


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 128), (256, 384), (100, 130), (1024, 576)])
def test_times_tiled_is_the_product_with_the_tiled_pattern(h: int, w: int) -> None:
    generator = torch.Generator().manual_seed(h * w)
    part = torch.rand((h, w), generator=generator) * 3
    tile = torch.randn((TILE, TILE), generator=generator)
    assert torch.equal(_times_tiled(part, tile), part * _tiled(tile, h, w))


@pytest.mark.parametrize(("h", "w"), [(64, 64), (128, 256), (130, 100)])
def test_fold_of_whole_tiles_needs_no_padding(h: int, w: int) -> None:
    a = torch.rand((h, w), generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(a, (0, -w % TILE, 0, -h % TILE))
    blocks = padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE)
    assert torch.equal(_fold(a), blocks.sum(dim=(0, 2)))


def box_mean_by_zero_padding(a: torch.Tensor, radius: int) -> torch.Tensor:
    """The box mean as first written: running sums padded with a zero line each way."""
    k = 2 * radius + 1
    padded = torch.nn.functional.pad(a[None, None], (radius, radius, radius, radius), mode="replicate")[0, 0]
    c = torch.nn.functional.pad(padded.cumsum(0), (0, 0, 1, 0))
    c = torch.nn.functional.pad((c[k:] - c[:-k]).cumsum(1), (1, 0))
    return (c[:, k:] - c[:, :-k]) * (1.0 / (k * k))


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 40), (64, 64), (100, 131), (512, 300)])
@pytest.mark.parametrize("radius", [2, 7])
def test_box_mean_is_the_zero_padded_running_sum(h: int, w: int, radius: int) -> None:
    a = torch.rand((h, w), generator=torch.Generator().manual_seed(h + w + radius)) * 255
    assert torch.equal(_box_mean(a, radius), box_mean_by_zero_padding(a, radius))
