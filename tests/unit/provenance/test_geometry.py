"""The lattice search on synthetic autocorrelation maps, and the tile's symmetries."""

from __future__ import annotations

import numpy as np
import pytest

from zguard.provenance.geometry import DIHEDRAL, affine_for, dihedral, lattice_bases


def spikes(a: tuple[float, float], b: tuple[float, float], side: int = 512, seed: int = 0) -> np.ndarray:
    """A map of noise with spikes on the lattice i·a + j·b, like a marked image's autocorrelation:
    every second point stronger (as measured: two tiles' lag often outscores one)."""
    rng = np.random.default_rng(seed)
    auto = rng.normal(0, 1, (side, side))
    va, vb = np.array(a), np.array(b)
    for i in range(-8, 9):
        for j in range(-8, 9):
            if i == j == 0:
                continue
            y, x = side // 2 + i * va + j * vb
            if 1 <= y < side - 2 and 1 <= x < side - 2:
                y0, x0, fy, fx = int(y), int(x), y - int(y), x - int(x)
                level = 60.0 if i % 2 == 0 and j % 2 == 0 else 40.0
                for dy, dx, w in (
                    (0, 0, (1 - fy) * (1 - fx)),
                    (1, 0, fy * (1 - fx)),
                    (0, 1, (1 - fy) * fx),
                    (1, 1, fy * fx),
                ):
                    auto[y0 + dy, x0 + dx] += level * w
    return auto


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((0.0, 128.0), (128.0, 0.0)),  # as generated
        ((0.0, 96.0), (128.0, 0.0)),  # stretched to 0.75 along x
        ((0.0, 64.0), (64.0, 0.0)),  # halved
        ((-128 * np.sin(0.05), 128 * np.cos(0.05)), (128 * np.cos(0.05), 128 * np.sin(0.05))),  # 2.9°
    ],
)
def test_the_basis_of_a_lattice_is_found_to_a_fraction_of_a_pixel(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    found = lattice_bases(spikes(a, b), 1)
    assert found
    assert found[0][0] == pytest.approx(np.array(a), abs=0.2)
    assert found[0][1] == pytest.approx(np.array(b), abs=0.2)


def test_noise_has_no_strong_lattice() -> None:
    """Any basis found in noise is one more geometry to try, never a decision: bounded in count."""
    assert len(lattice_bases(np.random.default_rng(1).normal(0, 1, (256, 256)), 3)) <= 3


def test_the_affine_map_sends_the_tile_sides_to_the_basis() -> None:
    basis = np.array([[2.0, 100.0], [120.0, -3.0]])  # (row, column) of a and b
    warp = affine_for(basis, 128)
    assert warp @ np.array([128.0, 0.0]) == pytest.approx(np.array([100.0, 2.0]))  # nominal x → a, as (x, y)
    assert warp @ np.array([0.0, 128.0]) == pytest.approx(np.array([-3.0, 120.0]))


def test_the_eight_symmetries_are_distinct_and_closed() -> None:
    tile = np.arange(16.0).reshape(4, 4)
    images = [dihedral(tile, e) for e in range(DIHEDRAL)]
    assert len({im.tobytes() for im in images}) == DIHEDRAL
    flipped = {np.fliplr(tile).tobytes(), np.flipud(tile).tobytes(), np.rot90(tile, 1).tobytes()}
    assert flipped <= {im.tobytes() for im in images}
