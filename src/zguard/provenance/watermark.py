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
behind, and the MAC tells them apart) → MAC check of each. Rescaled
images: the tile repeats exactly, so the residual's autocorrelation peaks at the tile period on
each axis (computed from the spectrally whitened power spectrum, so a texture's own broad
spectrum does not outscore the tile's lines); its measured period gives the scale, and the
whitened residual is resampled back before folding (one whitening per decode). Scale 1 and the halved image (×2, whitened after
resampling) are always tried.

Bounded work. A mark is read at the size the image was generated at, and `detect`'s
`max_pixels` (the trace endpoint passes `provenance.trace_max_pixels`, the largest image it
reads) says how large that can be: a scale that would resample the image to more pixels than
that is skipped. Without that, a 2048² upload read "as if halved" was whitened at 4096²
(~180 bytes a pixel of the upload, 0.7 GB); with it one decode holds about
`DECODE_BYTES_PER_PIXEL` bytes per pixel of the budget. The work stops at its next step
(`DecodeStopped`) once `should_stop()` says so: a deadline passed or the client left.

False traces. A result is returned only when the decoded 48-bit MAC equals
HMAC-SHA-256(key, salt ‖ id) truncated to 48 bits. For an unmarked image, or one marked under
another key, the decoded bits are independent of that HMAC, so each candidate passes with
probability 2^-48; a decode checks at most `MAX_CANDIDATES` (512) candidates, hence
P(false trace) ≤ 512 · 2^-48 = 2^-39 ≈ 1.8e-12 per decode, by construction and whatever the
image (the synchronisation statistic only ranks candidates, it decides nothing: its null tail is
heavy, the MAC's is not). 48 bits rather than 64 give each payload bit 14 % more of the budget.

Pure: plain numpy arrays and bytes in, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

TILE = 128  # pixels
CELL = 2  # pixels per cell side
CELLS = TILE // CELL  # cells per tile side
SYNC_FRACTION = 4  # one cell in four synchronises
SALTS = 16  # keyed patterns an image may carry
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601: the luminance the mark lives in (JPEG's too)
MAX_DELTA = 6  # levels any channel of any pixel may change by, at most (most change by 0-3)
ID_BITS = 64
MAC_BITS = 48
MAX_CANDIDATES = 512  # MAC checks per decode, at most: the false-trace bound depends on it
LIST_SIZE = 16  # paths the list Viterbi decoder returns per read, each one MAC check
_K = 7  # constraint length of the convolutional code
_G = (0o171, 0o133)
_PAYLOAD_BITS = ID_BITS + MAC_BITS
_CODED_BITS = 2 * (_PAYLOAD_BITS + _K - 1)
_SCALES_TRIED = 3  # resamplings around each measured period
_SCALE_STEP = 0.0015
_MIN_SIDE = 64  # below this, nothing to decode
DECODE_BYTES_PER_PIXEL = 64  # peak bytes a decode holds per pixel it whitens (measured 43-56; numpy temporaries)

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
    """Rate-1/2, K=7 convolutional code, terminated with K-1 zero bits."""
    padded = np.concatenate([bits.astype(np.int64), np.zeros(_K - 1, dtype=np.int64)])
    state = 0
    out = np.empty(2 * len(padded), dtype=np.uint8)
    for i, bit in enumerate(padded):
        reg = (int(bit) << (_K - 1)) | state
        out[2 * i] = bin(reg & _G[0]).count("1") & 1
        out[2 * i + 1] = bin(reg & _G[1]).count("1") & 1
        state = reg >> 1
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
    return np.array([(value >> (count - 1 - i)) & 1 for i in range(count)], dtype=np.uint8)


def _int(bits: npt.NDArray[np.uint8]) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


def box_sum(a: FloatArray, radius: int) -> FloatArray:
    """Sum over a (2r+1)² window, edges replicated; cumulative sums, O(pixels)."""
    k = 2 * radius + 1
    c = np.pad(np.pad(a, radius, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]  # type: ignore[no-any-return]


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
        """FFT (conjugated) of each salt's sync template on the pixel grid: chips at even pixels."""
        chips, sync, _ = self._patterns
        template = np.zeros((SALTS, TILE, TILE))
        template[:, ::CELL, ::CELL] = np.where(sync, chips, 0.0)
        return np.conj(np.fft.rfft2(template))

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

        Scales that would resample the image to more than `max_pixels` (None: no bound) are not
        tried; `should_stop` is asked between steps, and DecodeStopped raised when it says so."""

        def step() -> None:
            if should_stop():
                raise DecodeStopped

        y = luminance(np.asarray(image.convert("RGB")))
        if min(y.shape) < _MIN_SIDE:
            return None
        step()
        white = whiten(y)  # computed once: scale 1, the period search and every measured scale use it
        checked = 0
        for scale in self._scales(white):
            if max_pixels is not None and scale != (1.0, 1.0) and _resampled_pixels(y.shape, scale) > max_pixels:
                continue
            step()
            for rank, (salt, soft, score) in enumerate(self._reads(y, white, scale)):
                step()
                for bits in list_viterbi(soft, LIST_SIZE if rank == 0 else 1):  # a list for the best salt
                    if checked >= MAX_CANDIDATES:
                        return None
                    checked += 1
                    watermark_id, mac = _int(bits[:ID_BITS]), _int(bits[ID_BITS:])
                    expected = self.mac(salt, watermark_id)
                    if hmac.compare_digest(mac.to_bytes(8, "big"), expected.to_bytes(8, "big")):
                        return WatermarkFound(watermark_id=watermark_id, salt=salt, scale=scale, sync_score=score)
        return None

    def _scales(self, white: FloatArray) -> list[tuple[float, float]]:
        scales = [(1.0, 1.0), (0.5, 0.5)]
        for period in _tile_periods(white):
            for k in (0, -1, 1, -2, 2)[:_SCALES_TRIED]:
                factor = period / TILE * (1 + k * _SCALE_STEP)
                scale = (factor, factor)
                if all(abs(a - b) > _SCALE_STEP / 2 for s in scales[:2] for a, b in zip(scale, s, strict=True)):
                    scales.append(scale)
        return scales

    def _reads(
        self, y: FloatArray, white: FloatArray, scale: tuple[float, float]
    ) -> list[tuple[int, FloatArray, float]]:
        """Soft payload values at one scale, under the best sync peak of each of the two best salts.

        A halved image is resampled ×2 and whitened at that size (its 2×2 cells became single
        pixels: whitening them at the small size would blur them away). Any other measured scale
        resamples the residual already whitened at the observed size: the same reading (the
        cells are still 1.2 pixels or more) for one whitening per decode instead of one per
        scale, which is what keeps an unmarked 1024² image's full search under 2 s."""
        if scale == (1.0, 1.0):
            residual = white
        else:
            size = _resampled_size(y.shape, scale)
            source = y if scale == (0.5, 0.5) else white
            resized = Image.fromarray(source.astype(np.float32), "F").resize(size, Image.Resampling.BICUBIC)
            residual = np.asarray(resized, np.float64)
            if scale == (0.5, 0.5):
                residual = whiten(residual)
        folded = fold(residual)
        cells = folded + np.roll(folded, -1, 0) + np.roll(folded, -1, 1) + np.roll(folded, (-1, -1), (0, 1))
        corr = np.fft.irfft2(np.fft.rfft2(cells)[None] * self._sync_spectra, s=(TILE, TILE))
        flat = corr.reshape(SALTS, -1)
        peaks = flat.argmax(axis=1)
        scores = flat[np.arange(SALTS), peaks] / (flat.std(axis=1) + 1e-12)
        reads: list[tuple[int, FloatArray, float]] = []
        chips, sync, assign = self._patterns
        for salt in np.argsort(scores)[::-1][:2]:
            dy, dx = divmod(int(peaks[salt]), TILE)
            grid = np.roll(cells, (-dy, -dx), axis=(0, 1))[::CELL, ::CELL]
            values = grid * chips[salt]
            mask = ~sync[salt]
            soft = np.bincount(assign[salt][mask], weights=values[mask], minlength=_CODED_BITS)
            reads.append((int(salt), soft / (np.abs(soft).mean() + 1e-12), float(scores[salt])))
        return reads


def _resampled_size(shape: tuple[int, ...], scale: tuple[float, float]) -> tuple[int, int]:
    """(width, height) an image of `shape` (rows, columns) is resampled to, to read it at `scale`."""
    return round(shape[1] / scale[1]), round(shape[0] / scale[0])


def _resampled_pixels(shape: tuple[int, ...], scale: tuple[float, float]) -> int:
    width, height = _resampled_size(shape, scale)
    return width * height


def _lattice_score(auto: FloatArray, periods: FloatArray, reach: int) -> FloatArray:
    """Sum of `auto` (lag 0 at the centre) at the lattice points (i·P, j·P), 0 < max(|i|,|j|) ≤ reach,
    for each candidate period P, bilinearly interpolated; points outside the map count nothing."""
    h, w = auto.shape
    steps = np.arange(-reach, reach + 1)
    ii, jj = np.meshgrid(steps, steps, indexing="ij")
    keep = (ii != 0) | (jj != 0)
    ii, jj = ii[keep], jj[keep]
    y = h // 2 + periods[:, None] * ii[None]
    x = w // 2 + periods[:, None] * jj[None]
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
    return np.where(inside, value, 0.0).sum(axis=1)  # type: ignore[no-any-return]


def _tile_periods(r: FloatArray, count: int = 3) -> list[float]:
    """Candidate tile periods (pixels) in a whitened residual, best first: the tile repeats
    exactly, so the residual's autocorrelation has spikes on the lattice (i·P, j·P); content
    rarely does. Scored on a 0.25-pixel grid over 0.45-1.1 tiles, then refined to 0.02 pixel."""
    h, w = (min(n, 1024) // 32 * 32 for n in r.shape)  # sizes the FFT likes; the centre is enough
    if min(h, w) < 2 * TILE:
        return []
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
    coarse = np.arange(0.45 * TILE, 1.1 * TILE, 0.25)
    scores = _lattice_score(auto, coarse, 2)
    found: list[float] = []
    for index in np.argsort(scores)[::-1]:
        if len(found) == count:
            break
        if any(abs(coarse[index] - f) < 2 for f in found):
            continue
        fine = coarse[index] + np.arange(-0.3, 0.31, 0.02)
        found.append(float(fine[np.argmax(_lattice_score(auto, fine, 6))]))
    return found
