"""Where the tile went: the geometry a marked image went through, measured from the mark itself.

The tile repeats exactly, so the whitened residual's autocorrelation has spikes on a lattice
{i·a + j·b}: a and b are the images of the tile's two sides (128 px along x and y) under
whatever the image went through — a rescale (one factor per axis), a small rotation, a flip or a
quarter turn. Content rarely repeats like that. `lattice_bases` finds a and b: the strongest
local maxima of the autocorrelation are paired into bases, each basis scored by the spikes of
the lattice it spans, densified while the spikes show it skipped every second point (pairs of
peaks often span two tiles' lag), and refined by least squares over every lattice point within
reach (sub-pixel peaks): a fraction of a pixel over a map whose lattice points reach 500 px, so
the angle and each axis' scale are good to ~0.05 %. `autocorrelation` computes the map (from
the spectrally whitened power spectrum); `isotropic_periods` is the fallback for lattices too
faint for single spikes (one period for both axes, scored over 24 lattice points at once).

A basis fixes the geometry only up to the lattice's own symmetries: a and b may be swapped or
negated, which is a flip or a quarter turn of the tile. `affine_for` maps the basis vector
nearest the x axis to x and the other to y; what is left over is one of the 8 elements of the
dihedral group, which `dihedral` applies to the folded 128×128 tile, at the cost of one sync
correlation each instead of one decode of the image each.

Pure numpy; no I/O.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
DIHEDRAL = 8  # rotations by 0/90/180/270°, each with and without a transpose
_PEAKS = 24  # strongest local maxima paired into bases
_MIN_LAG = 24.0  # pixels: shorter lags are the residual's own correlation (0.19 of a tile)
_MIN_SINE = 0.6  # |sin| of the angle between a basis' vectors: a lattice from a rectangle, not a line
_BIN_FROM = 1536  # short side from which the autocorrelation is computed on 2×2 sums
_REFINE_REACH = (2, 4, 8)  # lattice points used by each least-squares pass (max |i|, |j|)
_MIN_SPIKE = 8.0  # a spike, in mean absolute values of the map: the noise's 3×3 maxima stay below ~4
_DENSER = 0.3  # a half-lag spike this strong relative to the basis' own means the basis skipped it


def box_sum(a: FloatArray, radius: int) -> FloatArray:
    """Sum over a (2r+1)² window, edges replicated; cumulative sums, O(pixels)."""
    k = 2 * radius + 1
    c = np.pad(np.pad(a, radius, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]  # type: ignore[no-any-return]


def _isotropic_score(auto: FloatArray, periods: FloatArray, reach: int) -> FloatArray:
    """`geometry.lattice_score` of the square lattices (i·P, j·P), one per period P."""
    bases = periods[:, None, None] * np.array([[0.0, 1.0], [1.0, 0.0]])[None]
    return lattice_score(auto, bases, reach)


def autocorrelation(r: FloatArray, min_period: float) -> tuple[FloatArray, int] | None:
    """The whitened residual's autocorrelation (lag 0 at the centre, spikes kept, content's smooth
    part removed) and the binning it was computed at: images 1536 px or more on their short side
    are summed 2×2 first, so that a 3× enlargement's tiles (384 px) still fit twice in the map."""
    binning = 2 if min(r.shape) >= _BIN_FROM else 1
    if binning == 2:
        rows, cols = r.shape[0] // 2 * 2, r.shape[1] // 2 * 2
        r = r[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2).sum(axis=(1, 3))
    h, w = (min(n, 1024) // 32 * 32 for n in r.shape)  # sizes the FFT likes; the centre is enough
    if min(h, w) < 2 * min_period:
        return None
    top, left = (r.shape[0] - h) // 2, (r.shape[1] - w) // 2
    r = r[top : top + h, left : left + w]
    power = np.abs(np.fft.rfft2(r - r.mean())) ** 2
    # Spectral whitening: the tile's repetition is a lattice of lines in the power spectrum, a
    # texture's is a broad hump. Dividing by the locally smoothed spectrum keeps the lines and
    # flattens the hump, so grass or gravel no longer outscore the tile's period.
    smooth = np.fft.ifftshift(box_sum(np.fft.fftshift(power, axes=0), 3), axes=0) / 49.0
    power /= smooth + 1e-9 * power.mean() + 1e-30
    auto = np.fft.fftshift(np.fft.irfft2(power, s=r.shape))
    auto = auto - box_sum(auto, 3) / 49.0  # the content's autocorrelation is smooth: keep the spikes
    auto /= np.abs(auto).mean() + 1e-12
    return auto, binning


def isotropic_periods(
    auto: FloatArray, binning: int, tile: int, scales: tuple[float, float], count: int = 3
) -> list[float]:
    """Candidate isotropic tile periods (pixels of the image), best first: the lattice (i·P, j·P)
    scored on a 0.25-pixel grid over `scales` tiles (as far as the map reaches), refined to 0.02."""
    reach = min(auto.shape) / 2 - 2
    coarse = np.arange(scales[0] * tile / binning, min(scales[1] * tile / binning, reach), 0.25)
    coarse = coarse[coarse >= _MIN_LAG / binning]
    if not len(coarse):
        return []
    scores = _isotropic_score(auto, coarse, 2)
    found: list[float] = []
    for index in np.argsort(scores)[::-1]:
        if len(found) == count:
            break
        if any(abs(coarse[index] - f) < 2 for f in found):
            continue
        fine = coarse[index] + np.arange(-0.3, 0.31, 0.02)
        points = int(np.clip(reach // (coarse[index] + 0.3), 2, 6))  # as far as the map reaches
        found.append(float(fine[np.argmax(_isotropic_score(auto, fine, points))]))
    return [f * binning for f in found]


def dihedral(tile: FloatArray, element: int) -> FloatArray:
    """One of the 8 symmetries of a square tile: `element` quarter turns, transposed first when ≥ 4."""
    if element >= DIHEDRAL // 2:
        tile = tile.T
    return np.rot90(tile, element % (DIHEDRAL // 2))


def _lattice_points(reach: int) -> npt.NDArray[np.int64]:
    steps = np.arange(-reach, reach + 1)
    ii, jj = np.meshgrid(steps, steps, indexing="ij")
    keep = (ii != 0) | (jj != 0)
    return np.stack([ii[keep], jj[keep]], axis=1)


def _sample(auto: FloatArray, points: FloatArray) -> FloatArray:
    """`auto` bilinearly at (row, column) `points` (..., 2) relative to the centre; 0 outside."""
    h, w = auto.shape
    y = h // 2 + points[..., 0]
    x = w // 2 + points[..., 1]
    inside = (y >= 0) & (y < h - 1) & (x >= 0) & (x < w - 1)
    y, x = np.where(inside, y, 0), np.where(inside, x, 0)
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = y - y0, x - x0
    value = (
        auto[y0, x0] * (1 - fy) * (1 - fx)
        + auto[y0 + 1, x0] * fy * (1 - fx)
        + auto[y0, x0 + 1] * (1 - fy) * fx
        + auto[y0 + 1, x0 + 1] * fy * fx
    )
    return np.where(inside, value, 0.0)


def lattice_score(auto: FloatArray, bases: FloatArray, reach: int = 2) -> FloatArray:
    """Mean of `auto` over the lattice points i·a + j·b (0 < max(|i|, |j|) ≤ reach) of each basis
    (n, 2, 2) — rows a and b, each (row, column) — counting only the points inside the map."""
    ij = _lattice_points(reach).astype(np.float64)
    points = ij[None, :, :1, None] * bases[:, None, 0:1, :] + ij[None, :, 1:, None] * bases[:, None, 1:2, :]
    points = points[:, :, 0, :]
    h, w = auto.shape
    inside = (np.abs(points[..., 0]) < h // 2 - 1) & (np.abs(points[..., 1]) < w // 2 - 1)
    values = _sample(auto, points)
    return values.sum(axis=1) / np.maximum(inside.sum(axis=1), 1) ** 0.5  # type: ignore[no-any-return]


def _reduce(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Gauss (Lagrange) reduction: the two shortest vectors spanning the same lattice."""
    for _ in range(16):
        if a @ a > b @ b:
            a, b = b, a
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    return a, b


def _orient(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """a: the vector nearest the x axis, pointing to +x; b the other, pointing to +y."""
    a, b = (a, b) if abs(a[1]) * np.hypot(*b) >= abs(b[1]) * np.hypot(*a) else (b, a)
    a = a if a[1] > 0 or (a[1] == 0 and a[0] > 0) else -a
    b = b if b[0] > 0 or (b[0] == 0 and b[1] > 0) else -b
    return a, b


def _peaks(auto: FloatArray, max_lag: float) -> FloatArray:
    """Strongest local maxima (3×3) of `auto` in the upper half plane, as (row, column) lags."""
    h, w = auto.shape
    core = auto[1:-1, 1:-1]
    is_max = np.ones(core.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                is_max &= core >= auto[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
    rows, cols = np.nonzero(is_max)
    lag_y, lag_x = rows + 1 - h // 2, cols + 1 - w // 2
    radius = np.hypot(lag_y, lag_x)
    upper = (lag_y > 0) | ((lag_y == 0) & (lag_x > 0))
    keep = upper & (radius >= _MIN_LAG) & (radius <= max_lag)
    rows, cols, lag_y, lag_x = rows[keep], cols[keep], lag_y[keep], lag_x[keep]
    order = np.argsort(core[rows, cols])[::-1][:_PEAKS]
    return np.stack([lag_y[order], lag_x[order]], axis=1).astype(np.float64)


def _refine(auto: FloatArray, a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Least squares of every lattice point within reach against its sub-pixel peak."""
    h, w = auto.shape
    for reach in _REFINE_REACH:
        ij = _lattice_points(reach).astype(np.float64)
        predicted = ij[:, :1] * a + ij[:, 1:] * b
        inside = (np.abs(predicted[:, 0]) < h // 2 - 3) & (np.abs(predicted[:, 1]) < w // 2 - 3)
        ij, predicted = ij[inside], predicted[inside]
        if len(ij) < 4:
            break
        centre = np.rint(predicted).astype(np.int64) + np.array([h // 2, w // 2])
        offsets = np.arange(-1, 2)
        window = auto[
            centre[:, 0, None, None] + offsets[None, :, None], centre[:, 1, None, None] + offsets[None, None, :]
        ]  # (n, 3, 3) around each predicted point
        best = window.reshape(len(ij), -1).argmax(axis=1)
        by, bx = np.divmod(best, 3)
        peak = centre + np.stack([by - 1, bx - 1], axis=1)
        value = auto[peak[:, 0], peak[:, 1]]

        def vertex(lo: FloatArray, mid: FloatArray, hi: FloatArray) -> FloatArray:
            denominator = lo - 2 * mid + hi
            return np.where(denominator < 0, 0.5 * (lo - hi) / np.where(denominator < 0, denominator, -1.0), 0.0)

        py, px = np.clip(peak[:, 0], 1, h - 2), np.clip(peak[:, 1], 1, w - 2)
        sub_y = vertex(auto[py - 1, px], auto[py, px], auto[py + 1, px])
        sub_x = vertex(auto[py, px - 1], auto[py, px], auto[py, px + 1])
        measured = peak - np.array([h // 2, w // 2]) + np.stack([sub_y, sub_x], axis=1)
        weight = np.sqrt(np.clip(value, 0.0, None))
        if weight.sum() <= 0:
            break
        solution, *_ = np.linalg.lstsq(ij * weight[:, None], measured * weight[:, None], rcond=None)
        a, b = solution[0], solution[1]
    return a, b


def _spike(auto: FloatArray, lag: FloatArray) -> float:
    """The largest value of `auto` within a pixel of `lag` and of -lag, summed (0 outside)."""
    h, w = auto.shape
    total = 0.0
    for point in (lag, -lag):
        y, x = round(h // 2 + float(point[0])), round(w // 2 + float(point[1]))
        if 1 <= y < h - 1 and 1 <= x < w - 1:
            total += float(auto[y - 1 : y + 2, x - 1 : x + 2].max())
    return total


def _densify(auto: FloatArray, a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The finest lattice the spikes support. Pairs of peaks often span a sublattice (every second
    point of the tile's lattice: two tiles' lag, or a diagonal), which reads the image at half or
    twice its scale; while one of the three index-2 refinements (a/2, b/2, (a+b)/2 added) lands on
    a spike comparable to the basis' own, take it."""
    for _ in range(4):
        level = min(_spike(auto, a), _spike(auto, b))
        halves = [(a / 2, (a / 2, b)), (b / 2, (a, b / 2)), ((a + b) / 2, (a, (a + b) / 2))]
        best = max(halves, key=lambda half: _spike(auto, half[0]) if np.hypot(*half[0]) >= _MIN_LAG else -np.inf)
        if np.hypot(*best[0]) < _MIN_LAG or _spike(auto, best[0]) < max(_MIN_SPIKE, _DENSER * level):
            break
        a, b = _reduce(*best[1])
    return a, b


def lattice_bases(auto: FloatArray, count: int = 2) -> list[FloatArray]:
    """Up to `count` candidate lattice bases (2, 2): rows a, b as (row, column) lags, best first.
    `auto` is the whitened residual's autocorrelation with lag 0 at the centre."""
    h, w = auto.shape
    peaks = _peaks(auto, min(h, w) / 2 - 4)
    if len(peaks) < 2:
        return []
    seen: set[tuple[int, int, int, int]] = set()
    bases = []
    for i in range(len(peaks)):
        for j in range(i + 1, len(peaks)):
            u, v = peaks[i], peaks[j]
            cross = abs(u[0] * v[1] - u[1] * v[0])
            if cross < _MIN_SINE * np.hypot(*u) * np.hypot(*v):
                continue
            a, b = _orient(*_reduce(u, v))
            signature = (round(a[0]), round(a[1]), round(b[0]), round(b[1]))
            if signature not in seen:
                seen.add(signature)
                bases.append(np.stack([a, b]))
    if not bases:
        return []
    stacked = np.stack(bases)
    scores = lattice_score(auto, stacked)
    out: list[FloatArray] = []
    for index in np.argsort(scores)[::-1][: 2 * count]:
        a, b = _refine(auto, *_densify(auto, stacked[index, 0], stacked[index, 1]))
        a, b = _orient(a, b)
        if any(np.abs(np.stack([a, b]) - o).max() < 1.0 for o in out):
            continue
        out.append(np.stack([a, b]))
        if len(out) == count:
            break
    return out


def affine_for(basis: FloatArray, tile: int) -> FloatArray:
    """The 2×2 matrix J, in (x, y) order, with observed = J · nominal: nominal x goes to the basis
    vector a (the one nearest the x axis), nominal y to b, each `tile` pixels long."""
    a, b = basis[0], basis[1]
    return np.array([[a[1], b[1]], [a[0], b[0]]]) / tile
