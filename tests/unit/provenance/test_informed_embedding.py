"""The informed embedder (zguard.provenance.embedder): where it spends the PSNR budget, and the decoder's
period search on textured pictures. Robustness over 59 photographs is bench/bench_watermark.py's."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from zguard.provenance import embedder
from zguard.provenance.embedder import _margins as margins
from zguard.provenance.embedder import embed, informed_delta
from zguard.provenance.watermark import MAX_DELTA, TILE, Watermarker, luminance, whiten
from zguard.provenance.watermark import _tile_periods as tile_periods

KEY = b"i" * 32
WATERMARK_ID = 0x0F1E_2D3C_4B5A_6978


def grass(side: int, seed: int) -> Image.Image:
    """Loud vertical streaks everywhere, like the grass and gravel photographs the old period
    search lost."""
    n = np.random.default_rng(seed).normal(0, 1, (side + 4, side + 4))
    streaks = n[2:-2, 2:-2] * 2 + n[:-4, 2:-2] + n[4:, 2:-2] + n[1:-3, 2:-2] + n[3:-1, 2:-2]
    y = 110 + 22 * streaks
    return Image.fromarray(np.clip(np.stack([y * 0.7, y, y * 0.5], -1), 0, 255).astype(np.uint8))


def shaded(side: int) -> Image.Image:
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = 60 + 120 * xx + 40 * np.sin(6 * yy)
    return Image.fromarray(np.stack([base, base * 0.9, base * 0.7 + 20], -1).astype(np.uint8))


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return float(10 * np.log10(255**2 / (error**2).mean()))


def test_margins_lift_the_bits_the_picture_works_against_and_spend_the_whole_budget() -> None:
    host = np.array([-3.0, -1.0, 0.0, 1.0, 5.0])  # what the picture alone adds to each bit's reading
    gain = np.ones(5)
    pixels = np.full(5, 10.0)
    amplitudes = margins(host, gain, pixels, sync_energy=20.0, budget=200.0)
    assert np.all(np.diff(amplitudes) <= 0)  # the more the picture helps a bit, the less it gets
    paid = amplitudes > 0
    assert paid[:3].all()
    assert not paid[-1]  # one the picture already carries past the margin gets nothing
    reading = host + amplitudes * gain
    assert np.allclose(reading[paid], reading[0])  # every bit it pays for ends at the same margin
    assert np.all(reading[~paid] >= reading[0])
    assert (amplitudes**2 * pixels).sum() + 20.0 == pytest.approx(200.0, rel=1e-6)


def test_margins_follow_each_bits_gain() -> None:
    amplitudes = margins(np.zeros(2), np.array([1.0, 2.0]), np.ones(2), sync_energy=0.0, budget=5.0)
    assert amplitudes[0] == pytest.approx(2 * amplitudes[1])  # same margin, half the gain: twice the level


@pytest.mark.parametrize("picture", [grass(256, 1), shaded(256)], ids=["texture", "shading"])
def test_psnr_stays_above_42_db_and_no_pixel_moves_more_than_max_delta(picture: Image.Image) -> None:
    marked = embed(Watermarker(KEY), picture, WATERMARK_ID, salt=4, offset=(9, 77))
    assert 42.0 <= psnr(picture, marked) < 42.3  # the budget is spent, not left over
    assert np.abs(np.asarray(marked, np.int16) - np.asarray(picture, np.int16)).max() <= MAX_DELTA


def test_the_delta_is_luminance_weighted() -> None:
    """Channel c changes by luma · w_c / Σw²: green most, blue least, for 1.16x the luminance change
    of adding the same delta to R, G and B at the same PSNR."""
    picture = shaded(256)
    marked = embed(Watermarker(KEY), picture, WATERMARK_ID, salt=1, offset=(0, 0))
    change = np.abs(np.asarray(marked, np.float64) - np.asarray(picture, np.float64)).mean(axis=(0, 1))
    red, green, blue = change
    assert green > 1.5 * red > 1.5 * 1.5 * blue
    gain = np.abs(luminance(np.asarray(marked)) - luminance(np.asarray(picture))).mean()
    assert gain > 1.1 * np.sqrt((change**2).mean())  # more luminance change than the mean channel change


def test_the_delta_is_periodic_where_the_picture_is_flat() -> None:
    """On a uniform picture the spatial factors are constant: the delta repeats with the tile
    (which is what the decoder folds)."""
    y = torch.full((2 * TILE, 2 * TILE), 128.0)
    delta = informed_delta(Watermarker(KEY), y, WATERMARK_ID, 3, (5, 6)).numpy()
    assert np.allclose(delta[:TILE, :TILE], delta[TILE:, TILE:], atol=1e-4)
    assert np.abs(delta).max() > 1.0


@pytest.mark.parametrize("seed", range(3))
def test_the_period_search_finds_a_rescaled_tile_under_loud_texture(seed: int) -> None:
    """Whitening the power spectrum keeps the tile's spectral lines and flattens the texture's
    hump; without it the texture's own autocorrelation outscored the tile (0 of 6 such pictures
    before the change, 6 of 6 after)."""
    marked = embed(Watermarker(KEY), grass(512, seed), WATERMARK_ID, salt=seed, offset=(7 * seed, 11 * seed))
    small = marked.resize((364, 364), Image.Resampling.LANCZOS)  # 71%
    periods = tile_periods(whiten(luminance(np.asarray(small))))
    assert periods[0] == pytest.approx(364 / 512 * TILE, abs=0.3)


def test_loud_texture_gets_stronger_sync_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shading keeps the least sync level (its peak is strong anyway); loud texture, which drowns
    the folded sync peak, gets more, within SYNC_AMPLITUDE."""
    levels: list[float] = []
    real = embedder._sync_amplitude

    def spy(*args: Any) -> float:
        levels.append(real(*args))
        return levels[-1]

    monkeypatch.setattr(embedder, "_sync_amplitude", spy)
    embed(Watermarker(KEY), shaded(512), WATERMARK_ID, salt=2, offset=(3, 4))
    embed(Watermarker(KEY), grass(512, 5), WATERMARK_ID, salt=2, offset=(3, 4))
    least, most = embedder.SYNC_AMPLITUDE
    assert levels[0] == least
    assert least < levels[1] <= most
