"""Encoding generated images in memory: PNG written here from the pixel array, JPEG and WebP by Pillow.

PNG. Pillow's encoder tries the five row filters on every row and deflates the result in one
thread; at 1024² that costs 60-130 ms (noise-like pixels compress worst). This writer:

- filters every row with one filter chosen for the image from a sample of its rows (None, Sub,
  Up or Average: one vectorised pass over the array, as all four are computed from the raw
  bytes), None when no filter shrinks the sample by 10 % (noise). On the demo model's images
  Average gives files about as small as Pillow's per-row choice at level 1, on photo-like ones
  smaller; without Paeth rows they decode faster than Pillow's (measured: bench/bench_encoding.py);
- deflates horizontal strips of rows in parallel threads (the compressor releases the GIL), each
  strip primed with the previous strip's last 32 KiB as its dictionary and ended with a sync flush,
  so the strips join into ONE valid zlib stream, as pigz does; each strip becomes its own IDAT
  chunk (PNG allows several; decoders read them as one stream), so each thread also computes its
  chunk's CRC, and the Adler-32 of the whole is combined from the strips';
- compresses with ISA-L (`isal`, level 1): several times faster than zlib level 1 at a similar
  size; the stream is plain deflate, which every decoder reads.

The pixels decode byte for byte to the array given (tests check with Pillow and zlib). JPEG and
WebP go through Pillow (libjpeg-turbo, libwebp) with the service's quality.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from isal import isal_zlib

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt
    from PIL.Image import Image

    from zguard.provenance.labels import ImageFormat
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_LEVEL = 1  # ISA-L levels are 0-3; 1 is its fast level with a useful ratio
MIN_STRIP_BYTES = 256 * 1024  # below this a strip costs more to hand out than it saves
MAX_THREADS = 8
_WINDOW = 32 * 1024  # deflate's window: what each strip is primed with
_ZLIB_HEADER = b"\x78\x01"  # CM 8, 32 KiB window, FLEVEL 0 (fastest), FCHECK so it divides by 31
_ADLER_BASE = 65521
_IDAT_CRC = zlib.crc32(b"IDAT")
_IDAT_HEADER_CRC = zlib.crc32(_ZLIB_HEADER, _IDAT_CRC)
_FILTER_NONE, _FILTER_SUB, _FILTER_UP, _FILTER_AVERAGE = 0, 1, 2, 3
_BPP = 3  # bytes per pixel: 8-bit RGB
_SAMPLE_EVERY = 16  # rows sampled to choose the filter
_FILTER_WINS_BELOW = 0.9  # a filter only when it makes the sampled rows at least 10 % "smaller"

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _threads() -> int:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, usable))


def _executor() -> ThreadPoolExecutor:
    """One pool for the process, made on first use (never at import time)."""
    global _pool  # noqa: PLW0603 - a lazily made process-wide pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="zguard-png")
        return _pool


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """The Adler-32 of A ‖ B from adler32(A), adler32(B) and len(B) (zlib's `adler32_combine`)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += (adler1 >> 16) + (adler2 >> 16) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def _filter(rows: npt.NDArray[np.uint8], above: npt.NDArray[np.uint8], kind: int, out: npt.NDArray[np.uint8]) -> None:
    """Write `rows` filtered by PNG filter `kind` into `out` (same shape), `above[i]` being the
    row above `rows[i]` (zeros above the first). Filters are computed from the raw bytes, so the
    whole image is one vectorised pass: uint8 arithmetic wraps mod 256 as PNG's does."""
    if kind == _FILTER_NONE:
        out[:] = rows
    elif kind == _FILTER_SUB:
        out[:, :_BPP] = rows[:, :_BPP]
        np.subtract(rows[:, _BPP:], rows[:, :-_BPP], out=out[:, _BPP:])
    elif kind == _FILTER_UP:
        np.subtract(rows, above, out=out)
    else:  # Average: minus floor((left + above) / 2), in uint16 so the sum cannot overflow
        mean = above.astype(np.uint16)
        mean[:, _BPP:] += rows[:, :-_BPP]
        mean >>= 1
        np.subtract(rows, mean, out=out, casting="unsafe")  # the low byte of the difference: mod 256


def _scanlines(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The PNG scanlines: each row prefixed with the filter type `_choose_filter` picks for the image."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    above = np.empty_like(rows)
    above[0] = 0
    above[1:] = rows[:-1]
    kind = _choose_filter(rows, above)
    out = np.empty((height, rows.shape[1] + 1), np.uint8)
    out[:, 0] = kind
    _filter(rows, above, kind, out[:, 1:])
    return out


def _choose_filter(rows: npt.NDArray[np.uint8], above: npt.NDArray[np.uint8]) -> int:
    """One filter for the whole image, by libpng's heuristic (the smallest sum of the filtered bytes
    read as signed values) on every `_SAMPLE_EVERY`-th row: None unless another is at least 10 %
    "smaller" (None costs a decoder nothing), then the smallest of Sub, Up and Average. Paeth,
    which Pillow also tries, is left out: it is the slowest to compute and to decode."""
    sample, sample_above = rows[::_SAMPLE_EVERY], above[::_SAMPLE_EVERY]
    scratch = np.empty_like(sample)

    def cost(kind: int) -> int:
        _filter(sample, sample_above, kind, scratch)
        return int(np.abs(scratch.view(np.int8).astype(np.int16)).sum())

    costs = {kind: cost(kind) for kind in (_FILTER_SUB, _FILTER_UP, _FILTER_AVERAGE)}
    best = min(costs, key=lambda kind: costs[kind])
    return best if costs[best] < cost(_FILTER_NONE) * _FILTER_WINS_BELOW else _FILTER_NONE


def _deflate_strip(view: memoryview, start: int, end: int, last: bool, level: int) -> tuple[bytes, int, int]:
    """(deflated bytes, the CRC-32 of its IDAT chunk so far, Adler-32 of the raw bytes). The
    chunk starts b"IDAT" + the zlib header for the first strip, b"IDAT" for the others."""
    zdict = bytes(view[max(0, start - _WINDOW) : start]) if start else None
    compressor = (
        isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=zdict)
        if zdict
        else isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    )
    raw = view[start:end]
    data = compressor.compress(raw) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)
    head = _IDAT_CRC if start else _IDAT_HEADER_CRC
    return data, isal_zlib.crc32(data, head), isal_zlib.adler32(raw)


def encode_png(pixels: npt.NDArray[np.uint8], *, threads: int | None = None, level: int = PNG_LEVEL) -> bytes:
    """An 8-bit RGB PNG of `pixels` (H×W×3 uint8): signature, IHDR, one IDAT per strip, IEND."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 uint8 array, not {pixels.dtype} {pixels.shape}")
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height == 0 or width == 0:
        raise ValueError("an image needs at least one pixel")
    scanlines = _scanlines(np.ascontiguousarray(pixels))
    view = memoryview(scanlines.reshape(-1).data)
    row_bytes = scanlines.shape[1]
    strips = max(1, min(threads or _threads(), scanlines.nbytes // MIN_STRIP_BYTES, height))
    bounds = [height * i // strips * row_bytes for i in range(strips + 1)]
    jobs = [(view, bounds[i], bounds[i + 1], i == strips - 1, level) for i in range(strips)]
    # One strip runs here: handing it to the pool would only add a thread switch.
    parts = [_deflate_strip(*jobs[0])] if strips == 1 else list(_executor().map(lambda j: _deflate_strip(*j), jobs))
    adler = 1
    for (_, _, strip_adler), start, end in zip(parts, bounds, bounds[1:], strict=False):
        adler = adler32_combine(adler, strip_adler, end - start)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    out = [PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
    for index, (data, crc, _) in enumerate(parts):
        head = _ZLIB_HEADER if index == 0 else b""
        tail = struct.pack(">I", adler) if index == strips - 1 else b""
        length = len(head) + len(data) + len(tail)
        out += [struct.pack(">I", length), b"IDAT", head, data, tail, struct.pack(">I", zlib.crc32(tail, crc))]
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def encode_images(images: Sequence[Image], output_format: ImageFormat, quality: int) -> list[bytes]:
    """Encode in memory only: PNG by `encode_png`, JPEG and WebP by Pillow at `quality`."""
    blobs = []
    for image in images:
        if output_format == "png":
            blobs.append(encode_png(np.asarray(image if image.mode == "RGB" else image.convert("RGB"))))
            continue
        buffer = io.BytesIO()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if output_format == "jpeg":
            rgb.save(buffer, format="JPEG", quality=quality)
        else:
            rgb.save(buffer, format="WEBP", quality=quality)
        blobs.append(buffer.getvalue())
    return blobs
