"""A keyed spread-spectrum watermark that carries a 64-bit id through JPEG, resizing and cropping.

Layout. A 128×128-pixel tile of 64×64 cells, each cell 2×2 pixels, is repeated over the image's
luminance. A quarter of the cells are synchronisation cells (a keyed ±1 chip each); the rest carry
the payload: 64-bit id ‖ 48-bit MAC, convolutionally coded (rate 1/2, K = 7, generators 171/133),
each coded bit spread over ~13 cells, each cell multiplied by its own keyed chip. Which cells
sync, which coded bit each payload cell carries, and every chip derive from
HMAC-SHA-256(key, salt): without the key the pattern is white noise to an observer.

Embedding (`zguard.provenance.embedder`, one torch implementation for the CPU and the engine's device) is
*informed*: it reads the picture as the decoder will and spends a fixed budget (PSNR ≈ 42.05 dB,
never below 42.01) where it counts: per coded bit, enough to lift what the picture alone
contributes to a common margin (host cancellation); more in flat areas than in texture; blurred
cells where the area is flat (JPEG keeps their coarser detail); sync cells at the level their
predicted peak needs; and the delta split over R, G and B in proportion to their luminance
weights (1.16× the luminance change of an equal split, at the same PSNR). This module reads marks
and owns the layout; it never imports torch.

Per image. Each image draws one of `SALTS` keyed patterns and a random cyclic offset of the tile
(0..127 px in x and y). The decoder tries every salt and finds the offset anyway (it must, for
crops), so this costs nothing in robustness; it is what resists an insider who averages many
marked images to estimate "the" pattern: the marks of different images are at unrelated offsets
under unrelated chip sets, so they do not add up — the average tends to zero like noise (1/√N),
while the images' own content averages to a smooth picture. To estimate one pattern an attacker
must first group images by salt and align them, which needs the pattern (or a cross-correlation
search over pairs of faint residuals per image pair); `bench/bench_watermark.py` measures the
plain averaging attack.

Decoding. Luminance → high-pass residual → divided by its local standard deviation (so textured
areas, where the content is loud, do not drown flat ones) → folded (summed) into one 128×128 tile
→ 2×2 cell sums → FFT cross-correlation with each salt's sync template gives the offset (a crop
only shifts the folded tile cyclically) → soft payload values → list Viterbi (the `LIST_SIZE`
best paths, not only the best: where the best path is wrong the right one is usually close
behind, and the MAC tells them apart) → MAC check of each.

Geometry (issue 17: what people do to an image they re-share). The decoder tries, in order, a
bounded list of geometries, each an affine map from the generated image to the one uploaded:
(1) the image as it is; (2) each lattice the residual's autocorrelation shows — the tile repeats
exactly, so the autocorrelation (computed from the spectrally whitened power spectrum, so a
texture's own broad spectrum does not outscore the tile's lines) has spikes on the lattice
i·a + j·b, whose basis a, b gives the scale of each axis (0.25×-3×, separately: stretches), a
rotation (any angle the lattice shows; measured to ±5°) and the
sign of a flip (`zguard.provenance.geometry`; at most `_LATTICES_TRIED` bases); (3) the image
halved (always: a halved image's faint lattice is the commonest miss); (4) the best isotropic
periods over 0.25-3 tiles (3 resamplings around each of 3, up to 9 for the short periods of a
shrunk image: `_scale_steps`), for images whose lattice is too faint for single spikes but not
for a sum over 24. Each geometry resamples the
residual back to the generated size (an image shrunk below 0.6× is enlarged and whitened at that
size; one enlarged past 1.25× is shrunk, antialiased, and whitened at the generated size; in
between the residual whitened once at the uploaded size is resampled), folds it, and then tries
the 8 flips and quarter turns of the folded tile, which is what they do to the fold up to a
cyclic shift: 8 small sync correlations, not 8 decodes. The (symmetry, salt) pairs are ranked by
their sync z-score; read are the two best salts of the unturned fold (`LIST_SIZE` paths, then 1)
and the best pair of the 7 other symmetries (`LIST_SIZE` paths).

Bounded work. A mark is read at the size the image was generated at, and `detect`'s
`max_pixels` (the trace endpoint passes `provenance.trace_max_pixels`, the largest image it
reads) says how large that can be: a geometry that would resample the image to more pixels than
that is skipped. Without that, a 2048² upload read "as if halved" was whitened at 4096²
(~180 bytes a pixel of the upload, 0.7 GB); with it one decode holds at most
`DECODE_BYTES_PER_PIXEL` bytes per pixel of the budget (it peaks when the upload is as large as
the budget: its luminance and residual are held while a resampled copy is whitened). The work stops at its next step
(`DecodeStopped`) once `should_stop()` says so: a deadline passed or the client left.

False traces. A result is returned only when the decoded 48-bit MAC equals
HMAC-SHA-256(key, salt ‖ id) truncated to 48 bits. For an unmarked image, or one marked under
another key, the decoded bits are independent of that HMAC, so each candidate passes with
probability 2^-48. The geometric search adds candidates, never a decision: at most 1 + 3 + 1 + 27
= 32 geometries, each 2 · `LIST_SIZE` + 1 = 33 MAC checks, and the count is capped at
`MAX_CANDIDATES` (1,024) whatever the search finds, hence P(false trace) ≤ 1024 · 2^-48 = 2^-38 ≈
3.6e-12 per decode, by construction and whatever the image (the synchronisation statistic only
ranks candidates, it decides nothing: its null tail is heavy, the MAC's is not). 48 bits rather
than 64 give each payload bit 14 % more of the budget.

Pure: plain numpy arrays and bytes in, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from zguard.provenance.geometry import (
    DIHEDRAL,
    affine_for,
    autocorrelation,
    box_sum,
    dihedral,
    isotropic_periods,
    lattice_bases,
)

TILE = 128  # pixels
CELL = 2  # pixels per cell side
CELLS = TILE // CELL  # cells per tile side
SYNC_FRACTION = 4  # one cell in four synchronises
SALTS = 16  # keyed patterns an image may carry
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601: the luminance the mark lives in (JPEG's too)
MAX_DELTA = 6  # levels any channel of any pixel may change by, at most (most change by 0-3)
ID_BITS = 64
MAC_BITS = 48
MAX_CANDIDATES = 1024  # MAC checks per decode, at most: the false-trace bound depends on it
LIST_SIZE = 16  # paths the list Viterbi decoder returns per read, each one MAC check
_K = 7  # constraint length of the convolutional code
_G = (0o171, 0o133)
_PAYLOAD_BITS = ID_BITS + MAC_BITS
_CODED_BITS = 2 * (_PAYLOAD_BITS + _K - 1)
_SCALE_STEP = 0.0015
_PERIOD_SLACK = 0.35  # pixels: how far an isotropic period estimate may be off (`_scale_steps`)
_MIN_SIDE = 64  # below this, nothing to decode
_MIN_SCALE, _MAX_SCALE = 0.25, 3.0  # the sizes, relative to the generated one, a mark is looked for at
_MIN_PERIOD = 0.25 * TILE  # pixels: the shortest tile period looked for
_LATTICES_TRIED = 3  # lattice bases from the autocorrelation's peaks, each one geometry
_ENLARGED = 1.25  # an image this much larger than generated is shrunk before whitening
_SHRUNK = 0.6  # one this much smaller is enlarged before whitening
DECODE_BYTES_PER_PIXEL = 96  # peak bytes a decode holds per pixel of its budget (measured 46-82; numpy temporaries)

FloatArray = npt.NDArray[np.float64]
StopFlag = Callable[[], bool]


class DecodeStopped(Exception):
    """`Watermarker.detect` stopped before it finished: its `should_stop()` returned True."""


def _never() -> bool:
    return False


@dataclass(frozen=True)
class WatermarkFound:
    """A decoded mark: the id, the salt it was found under, the scale the image was at, and the
    synchronisation z-score (for the report; the MAC decided)."""

    watermark_id: int
    salt: int
    scale: tuple[float, float]
    sync_score: float

    @property
    def hex_id(self) -> str:
        return f"{self.watermark_id:016x}"


def new_watermark_id() -> int:
    return secrets.randbits(ID_BITS)


def draw_placement(salt: int | None = None, offset: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """An image's salt and cyclic tile offset (y, x): drawn at random, unless given."""
    salt = secrets.randbelow(SALTS) if salt is None else salt
    offset = (secrets.randbelow(TILE), secrets.randbelow(TILE)) if offset is None else offset
    return salt, offset


def _parity(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    x = x.copy()
    for shift in (4, 2, 1):
        x ^= x >> shift
    return x & 1


_STATES = 1 << (_K - 1)


def conv_encode(bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Rate-1/2, K=7 convolutional code, terminated with K-1 zero bits.

    The shift register before output i holds inputs i, i-1, ..., i-K+1 (the newest as its top
    bit), so all registers are built at once from shifted copies of the input; each output is
    the parity of a register under one generator."""
    n = len(bits) + _K - 1
    stream = np.concatenate([np.zeros(_K - 1, np.int64), bits.astype(np.int64), np.zeros(_K - 1, np.int64)])
    reg = np.zeros(n, np.int64)
    for age in range(_K):  # the input `age` steps old sits at bit K-1-age
        reg |= stream[_K - 1 - age : _K - 1 - age + n] << (_K - 1 - age)
    out = np.empty(2 * n, dtype=np.uint8)
    out[0::2] = _parity(reg & _G[0])
    out[1::2] = _parity(reg & _G[1])
    return out


def _trellis() -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    new = np.arange(_STATES, dtype=np.int64)
    bit = new >> (_K - 2)
    prev = np.stack([((new & (_STATES // 2 - 1)) << 1) | x for x in (0, 1)])  # (2, states)
    reg = (bit << (_K - 1)) | prev
    sign0 = 1.0 - 2.0 * _parity(reg & _G[0])  # expected soft sign of each output, per branch
    sign1 = 1.0 - 2.0 * _parity(reg & _G[1])
    return prev, sign0, sign1


_PREV, _SIGN0, _SIGN1 = _trellis()


def viterbi(soft: FloatArray) -> npt.NDArray[np.uint8]:
    """Maximum-correlation decoding of `conv_encode`'s output; `soft` > 0 means bit 0."""
    steps = len(soft) // 2
    metric = np.full(_STATES, -np.inf)
    metric[0] = 0.0
    choices = np.empty((steps, _STATES), dtype=np.int64)
    for i in range(steps):
        cand = metric[_PREV] + soft[2 * i] * _SIGN0 + soft[2 * i + 1] * _SIGN1
        pick = np.argmax(cand, axis=0)
        choices[i] = pick
        metric = cand[pick, np.arange(_STATES)]
    state = 0  # terminated: the encoder ends in state 0
    bits = np.empty(steps, dtype=np.uint8)
    for i in range(steps - 1, -1, -1):
        bits[i] = state >> (_K - 2)
        state = int(_PREV[choices[i, state], state])
    return bits[: steps - (_K - 1)]


def list_viterbi(soft: FloatArray, size: int) -> list[npt.NDArray[np.uint8]]:
    """The `size` best paths through `conv_encode`'s terminated trellis, best first (parallel list
    Viterbi: each state keeps its `size` best survivors); the first is `viterbi`'s."""
    steps = len(soft) // 2
    metric = np.full((size, _STATES), -np.inf)
    metric[0, 0] = 0.0
    back = np.empty((steps, size, _STATES), dtype=np.int64)  # predecessor bit * size + its rank
    for i in range(steps):
        branch = soft[2 * i] * _SIGN0 + soft[2 * i + 1] * _SIGN1  # (2, states)
        cand = (metric[:, _PREV] + branch[None]).transpose(1, 0, 2).reshape(2 * size, _STATES)
        top = np.argsort(-cand, axis=0, kind="stable")[:size]
        metric = np.take_along_axis(cand, top, axis=0)
        back[i] = top
    ranks = np.flatnonzero(np.isfinite(metric[:, 0]))  # fewer distinct paths than asked, early on
    state = np.zeros(len(ranks), dtype=np.int64)  # terminated: every path ends in state 0
    bits = np.empty((len(ranks), steps), dtype=np.uint8)
    for i in range(steps - 1, -1, -1):  # all paths traced back together
        bits[:, i] = state >> (_K - 2)
        x, ranks = np.divmod(back[i, ranks, state], size)
        state = _PREV[x, state]
    return list(bits[:, : steps - (_K - 1)])


def _bits(value: int, count: int) -> npt.NDArray[np.uint8]:
    """The low `count` bits of `value`, most significant first."""
    if count % 8 == 0:
        return np.unpackbits(np.frombuffer((value & ((1 << count) - 1)).to_bytes(count // 8, "big"), np.uint8))
    return np.array([(value >> (count - 1 - i)) & 1 for i in range(count)], dtype=np.uint8)


def _int(bits: npt.NDArray[np.uint8]) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


def luminance(rgb: npt.NDArray[np.uint8]) -> FloatArray:
    f = rgb.astype(np.float64)
    if f.ndim == 2:
        return f
    return f[..., 0] * LUMA_WEIGHTS[0] + f[..., 1] * LUMA_WEIGHTS[1] + f[..., 2] * LUMA_WEIGHTS[2]


def whiten(y: FloatArray) -> FloatArray:
    """High-pass residual divided by its local standard deviation."""
    residual = y - box_sum(y, 2) / 25.0
    energy = box_sum(residual * residual, 7) / 225.0
    return residual / np.sqrt(energy + 4.0)


def fold(r: FloatArray) -> FloatArray:
    h, w = r.shape
    ph, pw = -h % TILE, -w % TILE
    padded = np.pad(r, ((0, ph), (0, pw)))
    return padded.reshape(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE).sum(axis=(0, 2))  # type: ignore[no-any-return]


class Watermarker:
    """Embeds and reads marks under one secret key (≥ 16 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the watermark key must be at least 16 bytes")
        self._key = key
        self._coded_cache: dict[int, npt.NDArray[np.uint8]] = {}

    def _prng(self, label: bytes) -> np.random.Generator:
        digest = hmac.new(self._key, b"zguard/watermark/v1/" + label, hashlib.sha256).digest()
        return np.random.default_rng(int.from_bytes(digest, "big"))

    @cached_property
    def _patterns(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
        """Per salt: chips (SALTS, CELLS, CELLS), sync mask, and the coded bit each payload cell carries."""
        chips = np.empty((SALTS, CELLS, CELLS))
        sync = np.zeros((SALTS, CELLS, CELLS), dtype=bool)
        assign = np.full((SALTS, CELLS, CELLS), -1, dtype=np.int64)
        n = CELLS * CELLS
        n_sync = n // SYNC_FRACTION
        for s in range(SALTS):
            rng = self._prng(b"pattern" + bytes([s]))
            chips[s] = rng.choice(np.array([-1.0, 1.0]), size=(CELLS, CELLS))
            order = rng.permutation(n)
            sync.reshape(SALTS, n)[s, order[:n_sync]] = True
            payload_cells = order[n_sync:]
            assign.reshape(SALTS, n)[s, payload_cells] = np.arange(len(payload_cells)) % _CODED_BITS
        return chips, sync, assign

    @cached_property
    def _sync_spectra(self) -> npt.NDArray[np.complex128]:
        """FFT (conjugated) of each salt's sync template on the cell grid (CELLS×CELLS): the
        template has chips at even pixels only, so the pixel-grid correlation is four cell-grid
        ones, one per parity of the offset (a quarter of the work)."""
        chips, sync, _ = self._patterns
        return np.conj(np.fft.rfft2(np.where(sync, chips, 0.0)))

    def mac(self, salt: int, watermark_id: int) -> int:
        msg = b"zguard/watermark/v1/mac" + bytes([salt]) + watermark_id.to_bytes(8, "big")
        return int.from_bytes(hmac.new(self._key, msg, hashlib.sha256).digest()[: MAC_BITS // 8], "big")

    def layout(self, watermark_id: int, salt: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """The tile's cells (CELLS×CELLS) for `watermark_id` under `salt`: each cell's sign (its
        keyed chip, times its coded bit's ±1 for a payload cell) and the coded bit it carries
        (-1 for a synchronisation cell). What the embedder spends its budget on."""
        if not 0 <= watermark_id < 1 << ID_BITS:
            raise ValueError("the watermark id must fit in 64 bits")
        if not 0 <= salt < SALTS:
            raise ValueError(f"the salt must be in 0..{SALTS - 1}")
        payload = np.concatenate([_bits(watermark_id, ID_BITS), _bits(self.mac(salt, watermark_id), MAC_BITS)])
        coded = conv_encode(payload)
        chips, sync, assign = self._patterns
        signs = chips[salt] * np.where(sync[salt], 1.0, 1.0 - 2.0 * coded[np.maximum(assign[salt], 0)])
        return signs, np.where(sync[salt], -1, assign[salt])

    def detect(
        self, image: Image.Image, *, should_stop: StopFlag = _never, max_pixels: int | None = None
    ) -> WatermarkFound | None:
        """The mark under this key, or None. See the module docstring for the false-trace bound.

        Geometries that would resample the image to more than `max_pixels` (None: no bound) are
        not tried; `should_stop` is asked between steps, and DecodeStopped raised when it says so."""

        def step() -> None:
            if should_stop():
                raise DecodeStopped

        y = luminance(np.asarray(image.convert("RGB")))
        if min(y.shape) < _MIN_SIDE:
            return None
        step()
        white = whiten(y)  # computed once: scale 1, the lattice search and most geometries use it
        if not white.any():  # a flat image: no residual, so no mark, at any geometry
            return None
        y = y.astype(np.float32)  # what resampling reads anyway (Pillow's "F"): half the bytes held
        checked = 0
        for warp in self._geometries(white, step):
            residual = _resample(y, white, warp, max_pixels)
            if residual is None:
                continue
            step()
            for salt, soft, score, paths in self._reads(residual):
                step()
                for bits in list_viterbi(soft, paths):
                    if checked >= MAX_CANDIDATES:
                        return None
                    checked += 1
                    watermark_id, mac = _int(bits[:ID_BITS]), _int(bits[ID_BITS:])
                    expected = self.mac(salt, watermark_id)
                    if hmac.compare_digest(mac.to_bytes(8, "big"), expected.to_bytes(8, "big")):
                        scale = (float(np.hypot(*warp[:, 1])), float(np.hypot(*warp[:, 0])))
                        return WatermarkFound(watermark_id=watermark_id, salt=salt, scale=scale, sync_score=score)
        return None

    def _geometries(self, white: FloatArray, step: Callable[[], None]) -> Iterator[FloatArray]:
        """Affine maps J (x, y order; observed = J · nominal) to try, cheapest and likeliest first:
        the image as it is, then each lattice the residual's autocorrelation shows (any scale per
        axis from 0.25× to 3×, rotated, flipped: `geometry.lattice_bases`), halved, then the best
        isotropic periods (the lattice may be too faint for single peaks but not for the sum over
        24; up to 9 scales each, `_scale_steps`). At most 1 + 3 + 1 + 27 = 32. The dihedral group is searched in `_reads`, so a flip
        costs nothing here."""
        tried: list[FloatArray] = []

        def fresh(warp: FloatArray) -> bool:
            size = np.sqrt(abs(np.linalg.det(warp)))  # one step is relative: 0.15 % of the scale
            if any(np.abs(warp - t).max() < size * _SCALE_STEP / 2 for t in tried):
                return False
            tried.append(warp)
            return True

        yield np.eye(2)
        fresh(np.eye(2))
        step()
        found = autocorrelation(white, _MIN_PERIOD)
        if found is not None:
            for basis in lattice_bases(found[0], _LATTICES_TRIED):
                warp = affine_for(basis * found[1], TILE)
                if _MIN_SCALE <= np.sqrt(abs(np.linalg.det(warp))) <= _MAX_SCALE and fresh(warp):
                    yield warp
        if fresh(0.5 * np.eye(2)):
            yield 0.5 * np.eye(2)
        if found is None:
            return
        auto, binning = found
        for period in isotropic_periods(auto, binning, TILE, (_MIN_SCALE, _MAX_SCALE)):
            for k in _scale_steps(period):
                warp = np.eye(2) * period / TILE * (1 + k * _SCALE_STEP)
                if fresh(warp):
                    yield warp

    def _reads(self, residual: FloatArray) -> list[tuple[int, FloatArray, float, int]]:
        """Soft payload values of a residual at the nominal scale, and how many list-Viterbi paths
        each gets: the tile folded, each of the 8 flips and quarter turns of the fold correlated
        with each salt's sync template (one fold and 8 small FFTs, not 8 decodes). Read: the two
        best salts of the fold as it is (`LIST_SIZE` paths, then 1: what the decoder read before
        it searched symmetries, so an unflipped image competes with 15 other salts, not 127), and
        the best (symmetry, salt) pair of the 7 others (`LIST_SIZE` paths). The synchronisation
        statistic orders them; the MAC decides."""
        folded = fold(residual)
        tiles = np.stack([dihedral(folded, element) for element in range(DIHEDRAL)])
        cells = tiles + np.roll(tiles, -1, 1) + np.roll(tiles, -1, 2) + np.roll(tiles, (-1, -1), (1, 2))
        corr = np.empty((DIHEDRAL, SALTS, TILE, TILE))
        for py in range(CELL):
            for px in range(CELL):
                spectrum = np.fft.rfft2(cells[:, py::CELL, px::CELL])[:, None] * self._sync_spectra[None]
                corr[:, :, py::CELL, px::CELL] = np.fft.irfft2(spectrum, s=(CELLS, CELLS))
        flat = corr.reshape(DIHEDRAL * SALTS, -1)
        peaks = flat.argmax(axis=1)
        scores = flat[np.arange(len(flat)), peaks] / (flat.std(axis=1) + 1e-12)
        upright = np.argsort(scores[:SALTS])[::-1][:2]
        turned = SALTS + int(np.argmax(scores[SALTS:]))
        picks = sorted(zip([*upright, turned], (LIST_SIZE, 1, LIST_SIZE), strict=True), key=lambda p: -scores[p[0]])
        reads: list[tuple[int, FloatArray, float, int]] = []
        chips, sync, assign = self._patterns
        for index, paths in picks:
            element, salt = divmod(int(index), SALTS)
            dy, dx = divmod(int(peaks[index]), TILE)
            grid = np.roll(cells[element], (-dy, -dx), axis=(0, 1))[::CELL, ::CELL]
            values = grid * chips[salt]
            mask = ~sync[salt]
            soft = np.bincount(assign[salt][mask], weights=values[mask], minlength=_CODED_BITS)
            reads.append((salt, soft / (np.abs(soft).mean() + 1e-12), float(scores[index]), paths))
        return reads


def _scale_steps(period: float) -> list[int]:
    """Multiples of `_SCALE_STEP` to try around an isotropic period, nearest first: 0 and ±1, and
    for short periods every second step out to `_PERIOD_SLACK` pixels. A period measured on a
    faint lattice is good to ~0.3 px (sampling the map between pixels favours whole lags), which
    is 0.7 % of a 0.35× shrink's 45-px tile but 0.2 % at full size; a read tolerates ~0.3 %."""
    reach = _PERIOD_SLACK / period / _SCALE_STEP + 0.5
    outer = [sign * k for k in range(3, int(reach) + 1, 2) for sign in (-1, 1)]
    return [0, -1, 1, *outer]


def _resample(y: FloatArray, white: FloatArray, warp: FloatArray, max_pixels: int | None) -> FloatArray | None:
    """The whitened residual at the nominal geometry (None: it would exceed `max_pixels`).

    Identity: the residual as it is. An image shrunk to 0.6× or less (its 2×2 cells became a
    pixel or less) is enlarged and whitened at that size: whitening at the small size would blur
    the cells away. One enlarged 1.25× or more is shrunk first (antialiased, so the content's
    fine detail does not alias onto the mark) and whitened at the nominal size: the high-pass
    would drop most of a mark whose cells are 3 pixels or wider. In between, the residual
    already whitened at the observed size is resampled: the same reading for one whitening."""
    if np.abs(warp - np.eye(2)).max() < 1e-9:
        return white
    scale = float(np.sqrt(abs(np.linalg.det(warp))))
    height, width = y.shape
    if scale > _ENLARGED:  # shrink each observed axis by its own factor first, then the rest
        factors = np.hypot(warp[:, 0], warp[:, 1])  # observed x, y per nominal length, roughly
        size = (max(1, round(width / factors[0])), max(1, round(height / factors[1])))
        shrunk = Image.fromarray(y.astype(np.float32), "F").resize(size, Image.Resampling.BICUBIC)
        source = np.asarray(shrunk, np.float64)
        rest = np.diag([size[0] / width, size[1] / height]) @ warp
        out = _warp(source, rest, max_pixels)
        return None if out is None else whiten(out)
    if scale < _SHRUNK:
        out = _warp(y, warp, max_pixels)
        return None if out is None else whiten(out)
    return _warp(white, warp, max_pixels)


def _warp(source: FloatArray, warp: FloatArray, max_pixels: int | None) -> FloatArray | None:
    """`source` resampled (bicubic) so that source = warp · result; None past `max_pixels`."""
    height, width = source.shape
    if np.abs(warp - np.eye(2)).max() < 1e-9:
        return source
    inverse = np.linalg.inv(warp)
    corners = inverse @ np.array([[0.0, width, 0.0, width], [0.0, 0.0, height, height]])
    low, high = corners.min(axis=1), corners.max(axis=1)
    size = (max(1, int(np.ceil(high[0] - low[0]))), max(1, int(np.ceil(high[1] - low[1]))))
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        return None
    picture = Image.fromarray(source.astype(np.float32), "F")
    if abs(warp[0, 1]) < 1e-6 and abs(warp[1, 0]) < 1e-6 and warp[0, 0] > 0 and warp[1, 1] > 0:
        resized = picture.resize((round(width / warp[0, 0]), round(height / warp[1, 1])), Image.Resampling.BICUBIC)
    else:
        shift = warp @ low
        data = (warp[0, 0], warp[0, 1], shift[0], warp[1, 0], warp[1, 1], shift[1])
        resized = picture.transform(size, Image.Transform.AFFINE, data, Image.Resampling.BICUBIC)
    return np.asarray(resized, np.float64)


def _tile_periods(r: FloatArray, count: int = 3) -> list[float]:
    """Candidate isotropic tile periods (pixels) in a whitened residual, best first."""
    found = autocorrelation(r, _MIN_PERIOD)
    return [] if found is None else isotropic_periods(*found, TILE, (_MIN_SCALE, _MAX_SCALE), count=count)
